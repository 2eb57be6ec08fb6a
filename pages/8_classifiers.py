"""Classifiers (Figure 6): layer-wise ROSE AUROC of classifiers trained on Fashion-MNIST, one panel per network,
AUROC vs layer depth with one line per OOD set."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from rose_core.checkpoint import list_checkpoints, read_card
from rose_core.errors import RoseError
from rose_core.labels import CLASSIFIER_TITLES as TITLES, classifier_rank, dataset_label, dataset_short, stand_in_note
from rose_core.reporting.classifiers import FIGURE6_SETS, detector_comparison
from rose_core.results import Results
from studio import state
from studio import widgets as ui
from studio.format import detector_blocks, table_height
from studio.paths import checkpoints_dir

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def classifiers() -> dict[str, dict]:
    """Classifier checkpoints (``kind: "classifier"``) in the checkpoints folder, by name."""
    found = {}
    for p in list_checkpoints(checkpoints_dir()):
        try:
            card = read_card(p)
        except RoseError:
            continue
        if card.get("kind") == "classifier":
            found[p.name[: -len(".json")]] = card
    return found


def curves(bundle: Results) -> pd.DataFrame:
    """The bundle's layer-wise AUROC with each layer's depth (from the manifest); empty when not computed."""
    lm = bundle.table("layer_metrics")
    depths = (bundle.meta.get("figure6") or {}).get("layer_depths") or {}
    if lm.empty or not depths:
        return pd.DataFrame()
    lm = lm[lm["fisher"] == "diag"].assign(depth=lambda d: d["layer"].map(depths))
    return lm.dropna(subset=["depth"]).sort_values(["ood_set", "depth"])


ui.page_setup("Classifiers")
st.title("Classifiers: ROSE layer by layer (Figure 6)")
st.markdown("ROSE scores any model with a per-sample loss. For a classifier the paper uses the cross-entropy at the "
            "**predicted** label and the DIAG Fisher, and reads each layer's score alone: how well does layer *l* "
            "separate Fashion-MNIST test images from MNIST, KMNIST and NotMNIST? Its finding: in a shallow CNN the "
            "AUROC rises with depth; in VGG and ResNet it rises, then falls at the deepest layers.")
nets = classifiers()
if not nets:
    st.info(f"No classifier checkpoint in `{checkpoints_dir()}`. Train one with "
            "`python -m rose_core train-classifier --arch basic-cnn --epochs 2 --subset 20000 --out "
            "checkpoints/cls-basic-cnn-fmnist`.")
    st.stop()
order = sorted(nets, key=lambda n: (classifier_rank(nets[n]["config"]["architecture"]), n))
ready, missing = {}, []
for name in order:
    c = curves(state.bundle(name))
    (ready.__setitem__(name, c) if not c.empty else missing.append(name))

if ready:
    sets = sorted({s for c in ready.values() for s in c["ood_set"]})
    fig = make_subplots(rows=1, cols=len(ready), shared_yaxes=True, subplot_titles=[
        f"{TITLES.get(nets[n]['config']['architecture'], n)} (test accuracy {nets[n].get('test_accuracy', 0):.1%})"
        for n in ready])
    for col, (name, c) in enumerate(ready.items(), start=1):
        for k, s in enumerate(sets):
            part = c[c["ood_set"] == s]
            fig.add_trace(go.Scatter(x=part["depth"], y=part["auroc"], mode="lines+markers", name=dataset_label(s),
                                     legendgroup=s, showlegend=col == 1, line=dict(color=COLOURS[k % len(COLOURS)]),
                                     customdata=part["layer"],
                                     hovertemplate="layer %{customdata} (depth %{x})<br>AUROC %{y:.3f}<extra>"
                                                   + dataset_label(s) + "</extra>"), row=1, col=col)
        fig.update_xaxes(title_text="layer depth", dtick=1 if c["depth"].max() <= 10 else 2, row=1, col=col)
    fig.update_yaxes(title_text="AUROC of the layer's score", row=1, col=1)
    fig.update_layout(title="Layer-wise ROSE-DIAG AUROC, Fashion-MNIST test vs each OOD set", height=420,
                      legend=dict(orientation="h", y=-0.25))
    st.plotly_chart(fig, key="cls_figure6")
    rows, counts = [], {}
    for name, c in ready.items():
        card, meta = nets[name], state.bundle(name).meta.get("figure6", {})
        acc, secs = card.get("test_accuracy"), card.get("train_seconds")
        rows.append({"network": TITLES.get(card["config"]["architecture"], name),
                     "test accuracy": "—" if acc is None else f"{acc:.1%}",
                     "epochs": str(card.get("epochs", "—")),
                     "training images": "—" if card.get("train_images") is None else f"{card['train_images']:,}",
                     "training": "—" if secs is None else f"{secs / 60:.0f} min",
                     "best layer": c.groupby("layer")["auroc"].mean().idxmax()})
        counts[name] = (f"{meta.get('n_fisher')} Fisher, {meta.get('n_calibration')} calibration, {meta.get('n_in')} "
                        f"in-distribution and {meta.get('n_ood')} images per OOD set")
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="cls_networks", height=table_height(len(rows)))
    st.caption("Best layer: the highest mean AUROC over the OOD sets. Images: "
               + "; ".join(f"`{n}`: {t}" for n, t in counts.items()) + ". Training budgets as on the cards: "
               + "; ".join(f"`{n}`: {nets[n].get('budget', '?')}" for n in ready) + ".")
    note = stand_in_note(sets)
    if note:
        st.caption(f"Offline stand-ins (not the paper's data): {note}.")
    st.caption("Depth counts the convolutions and the one fully-connected layer in forward order (ResNet's 1×1 "
               "shortcut convolutions where they run). Each AUROC uses one layer's raw score alone; OOD is the "
               "positive class. The networks were trained for a few epochs on this CPU (the budget column), far "
               "less than the paper's.")
if ready:
    st.subheader("ROSE beside the classifier detectors of pytorch-ood")
    table = detector_comparison(state.all_bundles())
    for k, (model, counts, styler) in enumerate(detector_blocks(table, {s: dataset_short(s) for s in FIGURE6_SETS})):
        st.markdown(f"**{model}** · {counts} images (in / per OOD set)")
        st.dataframe(styler, hide_index=True, key=f"cls_detectors_{k}", height=table_height(len(styler.data)))
    notes = {n: (state.bundle(n).meta.get("figure6") or {}).get("detectors") for n in ready}
    st.caption("Within a network, the same classifier and the same images for every row: in-distribution = the "
               "evaluation half of the Fashion-MNIST test split; OOD positive. The generative models' blocks (VAE, "
               "Glow) come from their own bundles (other images), a summary beside them. mean = mean AUROC over "
               "the sets; FPR95 = the false-alarm rate at 95 % of the OOD images detected, averaged over the sets "
               "(lower is better); img/s: scoring only (fits excluded), in one run per bundle; green = the best in "
               "its block. Detectors: "
               + " ".join(f"`{n}`: {v}." for n, v in notes.items() if v))

for name in missing:
    st.info(f"`{name}` has no Figure 6 results yet.")
    ui.compute_button(name, "figure6")
