"""ROSE Studio: out-of-distribution detection with deep generative models.

Run with ``make app`` (or ``streamlit run app.py``). This file is the entry
point and the Home page; the other pages are ``pages/*.py`` (Streamlit's
multipage folder). Every page starts with :func:`studio.widgets.page_setup`, which
draws the same sidebar: the page links and the model picker.
"""

from __future__ import annotations

import streamlit as st

from rose_core import charts
from rose_core.labels import dataset_label, method_label
from rose_core.paper import key_ood_set
from studio import glossary, state
from studio import widgets as ui
from studio.paths import data_dir


def separation(auroc: float) -> str:
    """What an AUROC (OOD positive) says in words."""
    if auroc >= 0.9:
        return "separates them well"
    if auroc >= 0.75:
        return "separates them only partly"
    if auroc >= 0.55:
        return "barely separates them"
    if auroc > 0.45:
        return "does no better than chance"
    return "ranks the OOD images as *more* in-distribution than the real ones: it fails"


WEAK_AUROC = 0.75  # below this ROSE AUROC on the key figure's OOD set, Home labels the model as weak (a comment:
# Streamlit's "magic" would print a bare string at the top level of the page)


def key_figure_caption(name: str, ind: str, ood: str, rose: str, view) -> str:
    """The key figure's caption, from the selected model's bundle numbers."""
    n_in, n_ood = int(view.loc[rose, "n_in"]), int(view.loc[rose, "n_ood"])
    nll, score = float(view.loc["nll", "auroc"]), float(view.loc[rose, "auroc"])
    lower = " The OOD images get *lower* NLL." if nll < 0.5 else ""
    return (f"{dataset_label(ind)} (in-distribution, {n_in} images) vs {dataset_label(ood)} ({n_ood} images) under "
            f"`{name}`, from its results bundle. Left: the likelihood (NLL AUROC {nll:.3f}) {separation(nll)}.{lower} "
            f"Right: {method_label(rose)} (AUROC {score:.3f}) {separation(score)}.")


def weak_model_note(name: str, card: dict, ood: str, rose: str, view) -> str | None:
    """A plain warning when the selected model is weak on the key figure's OOD set (ROSE AUROC below
    :data:`WEAK_AUROC`), with its epochs and the best method in its bundle; None otherwise."""
    score = float(view.loc[rose, "auroc"])
    if score >= WEAK_AUROC:
        return None
    epochs = card.get("epochs", "?")
    best = view["auroc"].astype(float).idxmax()
    beside = (f" In this bundle {method_label(best)} does better on {dataset_label(ood)} "
              f"(AUROC {view.loc[best, 'auroc']:.3f})." if best != rose else "")
    return (f"`{name}` is a weak model for this comparison: trained {epochs} epoch(s); {method_label(rose)} AUROC on "
            f"{dataset_label(ood)} is {score:.3f}.{beside} Its numbers do not show what ROSE does with a "
            f"well-trained model.")


def home() -> None:
    st.title("ROSE Studio")
    st.markdown("Out-of-distribution (OOD) detection with deep generative models: score any image with "
                "**ROSE**, the layer-wise Fisher score of its gradient, and see why the likelihood alone fails.")
    picked = ui.current_model()
    if picked is None:
        return
    name, card = picked

    st.subheader(f"Model: {name}")
    cols = st.columns([2, 1, 1, 1, 1])
    cols[0].metric("Trained on", dataset_label(card.get("dataset", "?")))
    cols[1].metric("Kind", card["kind"].upper())
    cols[2].metric("Epochs", card.get("epochs", "?"))
    bpd = card.get("test_bits_per_dim")
    cols[3].metric("Test bits/dim", f"{bpd:.3f}" if isinstance(bpd, (int, float)) else "?",
                   help="Negative log-likelihood of the test set in bits per dimension (lower is better).")
    n_params = card.get("num_parameters")
    cols[4].metric("Parameters", f"{n_params / 1e6:.2f} M" if n_params else "?")
    details = {k: card[k] for k in ("config", "optimizer", "lr", "batch_size", "train_seconds", "device",
                                    "role", "library_version") if k in card}
    with st.expander("Full model card"):
        st.json(details)

    st.subheader("How ROSE works")
    left, right = st.columns([3, 2])
    with left:
        st.markdown(
            r"""
Generative models trained on one dataset often give **higher** likelihood to images of another:
a VAE trained on Fashion-MNIST finds MNIST digits *more* likely than clothes. Thresholding the
negative log-likelihood (NLL) then flags the wrong images.

ROSE looks at *how the model would have to change* to fit an image instead. For each scored layer
$l$ it takes the gradient $g_l(x) = \partial \ell(x) / \partial W_l$ of the per-sample loss and
measures it in the metric of the in-distribution Fisher information $F_l$:

$$s_l(x) = g_l(x)^\top F_l^{-1} g_l(x),$$

with $F_l$ approximated by **EKFAC** (eigenvalue-corrected Kronecker factors) or **DIAG**. Each
$s_l$ is z-normalised with in-distribution statistics and the layers are aggregated:
$\mathrm{ROSE}(x) = \max_l \mathrm{ReLU}(\hat s_l(x))$. Higher means more out-of-distribution. Its rank
among held-out in-distribution images (test images set apart for calibration) gives a p-value, and a
threshold that keeps 95% of them gives a verdict. A two-sided **likelihood typicality** test (NLL
atypically high *or* low) gives a second p-value; the Score page names the verdict's test and the
test that fired.
""")
    with right:
        st.markdown("**Pages**")
        st.markdown("- **Score images**: upload files or pick dataset samples; verdict, the test that fired, p-values, per-layer z-scores\n"
                    "- **Likelihood vs ROSE**: the paper's Figure 1 and its fix\n"
                    "- **ROC curves**: methods overlaid, AUROC / AUPRC / FPR80\n"
                    "- **Layer-wise AUROC**: which layers detect what\n"
                    "- **Robustness**: brightness and blur sweeps, Fisher sample size\n"
                    "- **Methods**: Table-2 comparison and throughput")

    b = state.bundle(name)
    ood = key_ood_set(card.get("kind"), card.get("dataset"), b.ood_sets())  # MNIST, or SVHN's stand-in for CIFAR-10
    methods = b.methods() if b.exists else []
    rose = next((f"rose-{f}" for f in state.fisher_order(name) if f"rose-{f}" in methods), None)
    st.subheader(f"Key figure: the likelihood and ROSE on {dataset_label(ood)}" if ood else "Key figure")
    if not b.exists or ood is None or "nll" not in methods or rose is None:
        ui.missing_bundle_message(name, "The key figure", state.main_preset(name))
    else:
        ind = b.in_dist()
        a_nll, o_nll = b.nll_split(ood)
        a_rose, o_rose = b.split(rose, ood)
        view = b.metrics_view(ood, methods).set_index("method")
        auc = view["auroc"]
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.histogram_pair(a_nll, o_nll, dataset_label(ind), dataset_label(ood),
                                              f"NLL (AUROC {auc['nll']:.3f})", "NLL (nats)"), key="home_nll")
        c2.plotly_chart(charts.histogram_pair(a_rose, o_rose, dataset_label(ind), dataset_label(ood),
                                              f"{method_label(rose)} (AUROC {auc[rose]:.3f})",
                                              "ROSE score (higher = more OOD)"), key="home_rose")
        st.caption(key_figure_caption(name, ind, ood, rose, view), help=glossary.tip("auroc"))
        weak = weak_model_note(name, card, ood, rose, view)
        if weak:
            st.warning(weak, icon=":material/warning:")

    with st.expander("Glossary: the words and numbers on these pages"):
        st.markdown(glossary.markdown())

    st.subheader("Datasets on this machine")
    table = state.datasets_table(str(data_dir()))
    yes_no = {True: "yes", False: "no"}
    # a static table: its long "how to get it" texts wrap instead of being cut (a data grid cuts them)
    st.table(table.assign(**{c: table[c].map(yes_no) for c in ("real data", "available here")})[
        ["dataset", "title", "real data", "stands in for", "available here", "how to get it"]].set_index("dataset"))
    st.caption("Stand-ins are named as such and never carry the real dataset's name. Build every cache with "
               "`make data`.")
    state.warm_up(name)  # the Score page's scorer, loaded while the user reads this page


ui.page_setup("Home")
home()
