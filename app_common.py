"""Shared helpers of the Streamlit pages: paths, model choice, cached loading, table views, charts.

The pages stay thin: they pick widgets and call these functions. Data views
(``*_view`` functions) are plain pandas and never call Streamlit, so they can
be tested without it; the chart builders return plotly figures.

Paths: checkpoints from ``$ROSE_CHECKPOINTS`` (default ``<repo>/checkpoints``),
results bundles from ``$ROSE_RESULTS`` (default ``<repo>/results``), dataset
caches from ``$ROSE_DATA`` (default ``<repo>/data``). Live fits use
``$ROSE_LIVE_FIT_N`` training images (default 1000) and the live robustness
AUROC ``$ROSE_LIVE_N`` images per side (default 64).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from rose_core.checkpoint import list_checkpoints, read_card
from rose_core.errors import RoseError
from rose_core.metrics import ood_metrics, roc_curve
from rose_core.results import TABLES, Results

REPO = Path(__file__).resolve().parent

# The command that computes a results bundle (the evaluation harness, rose_core/evaluation.py).
EVALUATE_CMD = "python -m rose_core evaluate --checkpoint checkpoints/{name}"

METHOD_LABELS = {
    "rose-ekfac": "ROSE (EKFAC)",
    "rose-diag": "ROSE (DIAG)",
    "nll": "NLL",
    "likelihood-ratio": "Likelihood Ratio",
    "likelihood-regret": "Likelihood Regret",
    "input-complexity-png": "Input Complexity (PNG)",
    "input-complexity-jp2": "Input Complexity (JPEG 2000)",
    "rnd": "RND",
}
PERTURBATION_LABELS = {
    "brightness": ("Brightness", "brightness factor (×)"),
    "svd": ("SVD blur", "K (smallest singular values dropped)"),
    "dct": ("DCT blur", "K (lowest frequencies kept per axis)"),
    "gaussian": ("Gaussian blur", "strength"),
    "random": ("Random pixels", "μ (fraction of pixels replaced)"),
}
METRIC_LABELS = {"auroc": "AUROC", "auprc_in": "AUPRC (in-dist. positive)",
                 "auprc_out": "AUPRC (OOD positive)", "fpr80": "FPR at 80% TPR", "fpr95": "FPR at 95% TPR"}
PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
IN_COLOUR, OOD_COLOUR = "#1f77b4", "#d62728"


# --------------------------------------------------------------------------------------------
# Paths and names
# --------------------------------------------------------------------------------------------

def checkpoints_dir() -> Path:
    return Path(os.environ.get("ROSE_CHECKPOINTS") or REPO / "checkpoints")


def results_dir() -> Path:
    return Path(os.environ.get("ROSE_RESULTS") or REPO / "results")


def data_dir() -> Path:
    return Path(os.environ.get("ROSE_DATA") or REPO / "data")


def env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def method_label(method: str) -> str:
    """Readable name of a bundle method: ``rose-ekfac`` → ``ROSE (EKFAC)``; options of the harness's
    variants are summarised, e.g. ``rnd:path=checkpoints/rnd-fmnist-dct`` → ``RND (DCT)``,
    ``rose-ekfac:p=2`` → ``ROSE (EKFAC) [p=2]``."""
    base, _, opts = str(method).partition(":")
    label = METHOD_LABELS.get(base, base)
    if not opts:
        return label
    extras = []
    for item in opts.split(","):
        key, _, value = item.partition("=")
        if key in ("path", "background", "rnd"):
            stem = Path(value).name.lower()
            pert = next((p for p in PERTURBATION_LABELS if p != "brightness" and stem.endswith("-" + p)), None)
            extras.append(PERTURBATION_LABELS[pert][0].replace(" blur", "").replace("Random pixels", "Random")
                          if pert else stem)
        else:
            extras.append(item)
    return f"{label} ({', '.join(extras)})" if all("=" not in e for e in extras) else f"{label} [{', '.join(extras)}]"


def _card_or_none(name: str):
    """The registry card of ``name``, or None for names the registry does not know."""
    from rose_core.data import get_card

    try:
        return get_card(name)
    except (RoseError, KeyError):
        return None


def dataset_label(name: str) -> str:
    """``mnist`` → ``MNIST``; stand-ins say so; ``overall`` → ``Overall``."""
    if name == "overall":
        return "Overall"
    card = _card_or_none(name)
    if card is None:
        return name
    return card.title if card.real or "stand-in" in card.title.lower() else f"{card.title} (stand-in)"


def dataset_short(name: str) -> str:
    """A compact column label: the title of a real dataset (``MNIST``), else the registry name
    (``letters-fonts``), so a stand-in never carries the name of the dataset it replaces."""
    if name == "overall":
        return "Overall"
    card = _card_or_none(name)
    if card is None:
        return name
    return card.title if card.real and not card.stands_in_for and len(card.title) <= 16 else name


def stand_in_note(names) -> str:
    """'letters-fonts = Letters A–J from fonts (NotMNIST stand-in); …' for the stand-ins among ``names``."""
    parts = [f"{n} = {dataset_label(n)}" for n in names if n != "overall" and dataset_short(n) == n]
    return "; ".join(parts)


def color_map(methods: list[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

@st.cache_data(ttl=15, show_spinner=False)
def model_cards(folder: str) -> dict[str, dict]:
    """Cards of the generative-model checkpoints (VAE, Glow) in ``folder``, by name."""
    from rose_core.live import MODEL_KINDS, checkpoint_name

    cards = {}
    for p in list_checkpoints(folder):
        try:
            card = read_card(p)
        except RoseError:
            continue
        if card.get("kind") in MODEL_KINDS:
            cards[checkpoint_name(p)] = card
    return cards


def _model_order(cards: dict[str, dict]) -> list[str]:
    # main models first (the background VAE of the likelihood ratio last), those with a bundle first,
    # then the paper's main model kind (the VAE)
    def key(name: str):
        return ("role" in cards[name], not Results.for_checkpoint(name, results_dir()).exists,
                cards[name].get("kind") != "vae", name)
    return sorted(cards, key=key)


PAGES = [  # (script relative to app.py, label, icon)
    ("app.py", "Home", ":material/home:"),
    ("pages/1_score_images.py", "Score images", ":material/image_search:"),
    ("pages/2_likelihood_vs_rose.py", "Likelihood vs ROSE", ":material/bar_chart:"),
    ("pages/3_roc_curves.py", "ROC curves", ":material/show_chart:"),
    ("pages/4_layer_auroc.py", "Layer-wise AUROC", ":material/grid_on:"),
    ("pages/5_robustness.py", "Robustness", ":material/contrast:"),
    ("pages/6_methods.py", "Methods", ":material/balance:"),
]


def page_setup(title: str) -> None:
    """First call of every page: page config, and the shared sidebar (page links, model picker).

    The app uses Streamlit's ``pages/`` folder; its default navigation is replaced by these links
    (``client.showSidebarNavigation`` off, also set in ``.streamlit/config.toml``) so the labels
    and icons are the same whichever page a visitor opens first.
    """
    st.set_page_config(page_title=f"{title} · ROSE Studio", page_icon=":material/local_florist:", layout="wide")
    for option, value in (("client.showSidebarNavigation", False), ("client.toolbarMode", "minimal")):
        try:
            st.set_option(option, value)
        except Exception:  # older or stricter runtimes: the config file still applies
            pass
    with st.sidebar:
        st.markdown("### ROSE Studio")
        for script, label, icon in PAGES:
            st.page_link(script, label=label, icon=icon)
        st.divider()
    sidebar_model_picker()


def _picked(names: list[str]) -> str:
    choice = st.session_state.get("model_choice")
    return choice if choice in names else names[0]


def _on_pick() -> None:
    st.session_state["model_choice"] = st.session_state["model_picker"]


def sidebar_model_picker() -> str | None:
    """The model selectbox in the sidebar (the same on every page); returns the checkpoint name.

    The choice lives in ``st.session_state["model_choice"]`` (a plain key, kept across pages)."""
    cards = model_cards(str(checkpoints_dir()))
    if not cards:
        st.sidebar.error(f"No model checkpoints in `{checkpoints_dir()}`.")
        return None
    names = _model_order(cards)
    choice = _picked(names)
    st.session_state["model_choice"] = choice

    def fmt(name: str) -> str:
        c = cards[name]
        role = f", {c['role']}" if c.get("role") else ""
        return f"{name} ({c['kind'].upper()}, {c.get('dataset', '?')}{role})"

    # the widget is created anew on each page (its id depends on the page), so its default is the choice
    st.sidebar.selectbox("Model", names, index=names.index(choice), key="model_picker", format_func=fmt,
                         on_change=_on_pick,
                         help="Generative models in the checkpoints folder (the .json card and its "
                              ".safetensors weights). The choice applies to every page.")
    return choice


def open_page(title: str) -> tuple[str, dict]:
    """The opening of every sub-page: page setup, title and the picked model's ``(name, card)``;
    stops the page (after :func:`current_model` explained why) when no model can be picked."""
    page_setup(title)
    st.title(title)
    picked = current_model()
    if picked is None:
        st.stop()
    return picked


def current_model() -> tuple[str, dict] | None:
    """``(name, card)`` of the model picked in the sidebar, or None after explaining what is missing."""
    cards = model_cards(str(checkpoints_dir()))
    name = st.session_state.get("model_choice")
    if not cards:
        st.error(f"No model checkpoint found in `{checkpoints_dir()}`. The shipped checkpoints are "
                 "`checkpoints/vae-fmnist` and `checkpoints/glow-fmnist` (from `git checkout -- checkpoints`); "
                 "train one with `python -m rose_core train --help`.")
        return None
    if name not in cards:
        name = _model_order(cards)[0]
    return name, cards[name]


# --------------------------------------------------------------------------------------------
# Results bundles
# --------------------------------------------------------------------------------------------

def _signature(folder: Path) -> tuple:
    if not folder.exists():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()))


@st.cache_data(show_spinner=False, max_entries=64)
def _read_table(folder: str, name: str, signature: tuple) -> pd.DataFrame:
    return Results(Path(folder)).table(name)


@st.cache_data(show_spinner=False, max_entries=16)
def _read_manifest(folder: str, signature: tuple) -> dict:
    return Results(Path(folder)).manifest


class Bundle:
    """Read-only view of ``results/<model>/`` with cached tables (reloaded when files change)."""

    def __init__(self, name: str, root: Path | None = None) -> None:
        self.name = name
        self.folder = (root or results_dir()) / name
        self.signature = _signature(self.folder)

    @property
    def exists(self) -> bool:
        return (self.folder / "manifest.json").exists()

    @property
    def manifest(self) -> dict:
        return _read_manifest(str(self.folder), self.signature)

    def table(self, name: str) -> pd.DataFrame:
        try:
            return _read_table(str(self.folder), name, self.signature)
        except (OSError, ValueError) as exc:  # a damaged Parquet file: show it as missing, say why
            st.warning(f"`{self.folder / (name + '.parquet')}` cannot be read ({exc}); recompute it with "
                       f"`{EVALUATE_CMD.format(name=self.name)}`.")
            return pd.DataFrame(columns=TABLES[name])

    def has(self, name: str) -> bool:
        return len(self.table(name)) > 0

    def in_dist(self) -> str:
        m = self.manifest
        ind = m.get("in_distribution") or m.get("in_dist") or {}
        if isinstance(ind, dict) and ind.get("name"):
            return str(ind["name"])
        if isinstance(ind, str) and ind:
            return ind
        s = self.table("scores")
        names = s.loc[~s["is_ood"].astype(bool), "dataset"].unique()
        return str(names[0]) if len(names) else "in-distribution"

    def methods(self) -> list[str]:
        return method_order(self.table("scores")["method"].unique())

    def ood_sets(self, include_overall: bool = False) -> list[str]:
        s = self.table("scores")
        sets = sorted(s.loc[s["is_ood"].astype(bool), "dataset"].unique())
        if not sets:
            m = self.table("metrics")
            sets = sorted(x for x in m["ood_set"].unique() if x != "overall")
        if include_overall and "overall" in set(self.table("metrics")["ood_set"]):
            sets = sets + ["overall"]
        return sets


def bundle(name: str) -> Bundle:
    return Bundle(name)


def method_order(methods) -> list[str]:
    """ROSE first, then the baselines in a fixed order (variants after their base), then the rest."""
    order = list(METHOD_LABELS)
    return sorted(set(methods), key=lambda m: (next((i for i, k in enumerate(order) if m.partition(":")[0] == k),
                                                    len(order)), ":" in m, m))


def main_preset(name: str) -> str:
    """The harness preset of the methods × OOD sets table for this model: table2 (VAE) or table5 (Glow)."""
    card = model_cards(str(checkpoints_dir())).get(name, {})
    return "table5" if card.get("kind") == "glow" else "table2"


def default_fisher(name: str) -> str:
    """The paper's Fisher approximation for the model: DIAG for Glow (its InvConv layers), EKFAC for the VAE."""
    card = model_cards(str(checkpoints_dir())).get(name, {})
    return "diag" if card.get("kind") == "glow" else "ekfac"


def fisher_order(name: str, available=("ekfac", "diag")) -> list[str]:
    first = default_fisher(name)
    return sorted(available, key=lambda f: f != first)


def evaluate_command(name: str, preset: str | None = None) -> str:
    cmd = EVALUATE_CMD.format(name=name)
    return cmd + (f" --preset {preset}" if preset else "")


def missing_bundle_message(name: str, what: str = "This page", preset: str | None = None) -> None:
    """Say what is missing and how to compute it; with ``preset``, also offer to compute it here."""
    st.info(f"{what}: not available yet — the results bundle `results/{name}/` has not been computed "
            f"(or lacks this experiment). Compute it with\n\n"
            f"```\n{evaluate_command(name, preset)}\n```\n"
            "The shipped checkpoints come with their bundle committed; `git checkout -- results` restores it.")
    if preset:
        compute_button(name, preset)


def _settings_for(name: str, preset: str):
    """Evaluation settings: those of the bundle's manifest when there is one (so its cached units are
    reused), else the harness's defaults for the model kind (as ``python -m rose_core evaluate``)."""
    from dataclasses import fields

    from rose_core.evaluation import EvalSettings

    known = {f.name for f in fields(EvalSettings)}
    saved = {k: v for k, v in (bundle(name).manifest.get("settings") or {}).items() if k in known}
    if preset in ("table2", "table5"):
        saved.pop("methods", None)  # the full comparison: every method of the model kind
    if "n_in" not in saved and model_cards(str(checkpoints_dir())).get(name, {}).get("kind") == "glow":
        saved["n_in"] = 1000
    return EvalSettings(**saved)


def compute_button(name: str, preset: str) -> None:
    """A button that runs the harness preset here, with a progress bar, then reloads the page."""
    try:
        from rose_core.evaluation import PRESETS, run_preset
    except ImportError:
        return
    if preset not in PRESETS:
        return
    if not st.button(f"Compute it here ({preset})", key=f"compute_{preset}",
                     help=f"{PRESETS[preset]}. Runs the evaluation harness on this machine and writes "
                          f"results/{name}/; on a CPU this can take many minutes. Keep the page open."):
        return
    bar = st.progress(0.0, text=f"Starting {preset} on {name}")

    def progress(done: int, total: int, message: str) -> None:
        bar.progress(min(max(done / total, 0.0), 1.0) if total else 0.0, text=f"{preset}: {message} ({done}/{total})")

    try:
        run_preset(preset, checkpoints_dir() / name, results=results_dir(), settings=_settings_for(name, preset),
                   progress=progress, show_progress=False)
    except (RoseError, ValueError, OSError, RuntimeError, KeyError) as exc:
        bar.empty()
        st.error(f"Computing {preset} failed: {exc}. Run `{evaluate_command(name, preset)}` in a terminal "
                 "to see the full log.")
        return
    bar.empty()
    st.rerun()


def require_bundle(name: str, tables: tuple[str, ...], what: str = "This page",
                   preset: str | None = None) -> Bundle | None:
    b = bundle(name)
    if not b.exists or not all(b.has(t) for t in tables):
        missing_bundle_message(name, what, preset)
        return None
    return b


# --------------------------------------------------------------------------------------------
# Data views (pure pandas)
# --------------------------------------------------------------------------------------------

def split_scores(scores: pd.DataFrame, method: str, ood_set: str, column: str = "score",
                 perturbation: str = "none", strength: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """In-distribution and OOD values of ``column`` for one method and OOD set (unperturbed by default;
    only the OOD images are perturbed in the bundle's sweeps, so in-distribution rows are always ``none``)."""
    s = scores[scores["method"] == method]
    ind = s[~s["is_ood"].astype(bool) & (s["perturbation"] == "none")]
    ood = s[s["is_ood"].astype(bool) & (s["dataset"] == ood_set) & (s["perturbation"] == perturbation)]
    if strength is not None:
        ood = ood[(ood["strength"] - strength).abs() < 1e-9]
    if "repeat" in ood and ood["repeat"].nunique() > 1:
        ood = ood[ood["repeat"] == ood["repeat"].min()]
    a, b = ind[column].to_numpy(np.float64), ood[column].to_numpy(np.float64)
    return a[np.isfinite(a)], b[np.isfinite(b)]


def metrics_view(b: Bundle, ood_set: str, methods: list[str]) -> pd.DataFrame:
    """AUROC / AUPRC / FPR80 per method for one OOD set: the bundle's metrics table (mean over repeats),
    computed from the scores where a row is missing. Columns: method, auroc, auprc_in, auprc_out, fpr80,
    n_in, n_ood, source."""
    m = b.table("metrics")
    m = m[(m["ood_set"] == ood_set) & (m["perturbation"] == "none")]
    rows = []
    scores = b.table("scores")
    for method in methods:
        mm = m[m["method"] == method]
        if len(mm):
            r = mm[["auroc", "auprc_in", "auprc_out", "fpr80"]].astype(float).mean().to_dict()
            r.update(n_in=int(mm["n_in"].iloc[0]), n_ood=int(mm["n_ood"].iloc[0]), source="bundle")
        else:
            a, o = split_scores(scores, method, ood_set)
            if len(a) == 0 or len(o) == 0:
                continue
            full = ood_metrics(a, o)
            r = {k: full[k] for k in ("auroc", "auprc_in", "auprc_out", "fpr80", "n_in", "n_ood")}
            r["source"] = "computed from scores"
        rows.append({"method": method, **r})
    return pd.DataFrame(rows, columns=["method", "auroc", "auprc_in", "auprc_out", "fpr80", "n_in", "n_ood",
                                       "source"])


def layer_auroc_view(b: Bundle, fisher: str) -> pd.DataFrame:
    """Layers × OOD sets AUROC of each layer's raw ROSE score alone, for ``fisher``."""
    lm = b.table("layer_metrics")
    lm = lm[lm["fisher"] == fisher]
    if len(lm) == 0:  # derive it from the per-layer scores
        from rose_core.metrics import auroc

        layers = b.table("layers")
        layers = layers[layers["fisher"] == fisher]
        rows = []
        for layer, g in layers.groupby("layer", sort=False):
            ind = g.loc[~g["is_ood"].astype(bool), "raw"].to_numpy(np.float64)
            for ood_set, go_ in g[g["is_ood"].astype(bool)].groupby("dataset"):
                if len(ind) and len(go_):
                    rows.append({"layer": layer, "ood_set": ood_set, "auroc": auroc(ind, go_["raw"].to_numpy())})
        lm = pd.DataFrame(rows, columns=["layer", "ood_set", "auroc"])
    if len(lm) == 0:
        return pd.DataFrame()
    layer_order = list(dict.fromkeys(lm["layer"]))
    pivot = lm.pivot_table(index="layer", columns="ood_set", values="auroc", aggfunc="mean")
    cols = sorted([c for c in pivot.columns if c != "overall"]) + (["overall"] if "overall" in pivot.columns else [])
    return pivot.reindex(index=layer_order, columns=cols)


def sweep_view(b: Bundle, perturbation: str, ood_set: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(curve, summary)`` of a perturbation sweep: curve = method, strength, auroc (mean over repeats),
    auroc_std (across repeats); summary = method, mean, std of the AUROC across strengths (population std,
    as Table 1's Mean and Std columns), n_strengths."""
    m = b.table("metrics")
    m = m[m["perturbation"] == perturbation]
    if ood_set is not None:
        m = m[m["ood_set"] == ood_set]
    if len(m) == 0:
        return pd.DataFrame(columns=["method", "strength", "auroc", "auroc_std"]), pd.DataFrame(
            columns=["method", "mean", "std", "n_strengths"])
    m = m.assign(strength=m["strength"].astype(float).fillna(0.0))
    curve = (m.groupby(["method", "strength"], as_index=False)["auroc"]
             .agg(auroc="mean", auroc_std=lambda v: float(np.std(v)) if len(v) > 1 else 0.0))
    summary = curve.groupby("method", as_index=False)["auroc"].agg(
        mean="mean", std=lambda v: float(np.std(v)), n_strengths="count")
    order = method_order(curve["method"].unique())
    curve["method"] = pd.Categorical(curve["method"], order, ordered=True)
    summary["method"] = pd.Categorical(summary["method"], order, ordered=True)
    return (curve.sort_values(["method", "strength"]).reset_index(drop=True),
            summary.sort_values("method").reset_index(drop=True))


def bundle_auroc_at(b: Bundle, ood_set: str, perturbation: str, strength: float) -> dict[str, float]:
    """AUROC per method of the bundle at one sweep point (1.0× brightness = the unperturbed rows)."""
    m = b.table("metrics")
    m = m[m["ood_set"] == ood_set]
    at = m[(m["perturbation"] == perturbation) & ((m["strength"].astype(float) - strength).abs() < 1e-6)]
    if perturbation == "brightness" and abs(strength - 1.0) < 1e-9 and len(at) == 0:
        at = m[m["perturbation"] == "none"]
    return at.groupby("method")["auroc"].mean().to_dict()


def comparison_view(b: Bundle, metric: str = "auroc") -> pd.DataFrame:
    """Table 2 style: methods × OOD sets (Overall last) of ``metric``, unperturbed, mean over repeats."""
    m = b.table("metrics")
    m = m[m["perturbation"] == "none"]
    if len(m) == 0:
        return pd.DataFrame()
    pivot = m.pivot_table(index="method", columns="ood_set", values=metric, aggfunc="mean")
    # Overall first: the headline column stays visible when the table scrolls sideways
    cols = (["overall"] if "overall" in pivot.columns else []) + sorted(c for c in pivot.columns if c != "overall")
    return pivot.reindex(index=method_order(pivot.index), columns=cols)


def exposure_variants_view(b: Bundle) -> pd.DataFrame:
    """Tables 10/11: AUROC of the outlier-exposure baselines (RND, Likelihood Ratio) trained with each
    perturbation, methods × OOD sets; empty when the bundle has no perturbation-trained variant."""
    table = comparison_view(b, "auroc")
    if table.empty:
        return table
    rows = [m for m in table.index if m.partition(":")[0] in ("rnd", "likelihood-ratio")]
    if not any(":" in m for m in rows):
        return pd.DataFrame()
    return table.loc[rows]


def throughput_view(b: Bundle) -> pd.DataFrame:
    """method, images_per_s, device, overall_auroc (NaN where a method has no Overall row)."""
    t = b.table("throughput")
    if len(t) == 0:
        return pd.DataFrame(columns=["method", "images_per_s", "device", "overall_auroc"])
    t = t.groupby("method", as_index=False).agg(images_per_s=("images_per_s", "mean"), device=("device", "first"))
    m = b.table("metrics")
    m = m[(m["perturbation"] == "none") & (m["ood_set"] == "overall")]
    ov = m.groupby("method", as_index=False)["auroc"].mean().rename(columns={"auroc": "overall_auroc"})
    out = t.merge(ov, on="method", how="left")
    out["method"] = pd.Categorical(out["method"], method_order(out["method"]), ordered=True)
    return out.sort_values("method").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------------

def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 380, legend: str = "top") -> go.Figure:
    """Titles and a legend above the plot (``legend="top"``) or on its right (``"right"``, for many traces)."""
    place = dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0) if legend == "top" else \
        dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02)
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height, margin=dict(l=60, r=20, t=60, b=50),
                      legend=place)
    return fig


def histogram_pair(in_values: np.ndarray, ood_values: np.ndarray, in_name: str, ood_name: str, title: str,
                   x_title: str, bins: int = 50, clip: float = 0.99) -> go.Figure:
    """Overlaid density histograms. Long tails would squeeze the bulk into a few bins, so values beyond
    the ``clip`` quantile of the pooled values are counted in the last bin (and the axis title says so)."""
    pooled = np.concatenate([in_values, ood_values])
    lo = float(pooled.min())
    hi = float(np.quantile(pooled, clip)) if 0 < clip < 1 else float(pooled.max())
    if hi <= lo:
        hi = float(pooled.max())
    clipped = bool((pooled > hi).any())
    size = (hi - lo) / bins if hi > lo else 1.0
    fig = go.Figure()
    for values, name, colour in ((in_values, in_name, IN_COLOUR), (ood_values, ood_name, OOD_COLOUR)):
        fig.add_trace(go.Histogram(x=np.minimum(values, hi), name=f"{name} (n={len(values)})", marker_color=colour,
                                   opacity=0.6, histnorm="probability density",
                                   xbins=dict(start=lo, end=hi + size, size=size)))
    fig.update_layout(barmode="overlay")
    if clipped:
        x_title = f"{x_title}; values above {hi:.4g} in the last bin"
    return _layout(fig, title, x_title, "density")


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> go.Figure:
    fig = go.Figure()
    colours = color_map(list(curves))
    for method, (fpr, tpr, auc) in curves.items():
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{method_label(method)} (AUROC {auc:.3f})",
                                 line=dict(color=colours[method], width=2)))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(color="grey", dash="dot")))
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.01])
    return _layout(fig, title, "false-positive rate (in-distribution flagged)", "true-positive rate (OOD flagged)",
                   height=480, legend="right")


def roc_curves(scores: pd.DataFrame, methods: list[str], ood_set: str) -> dict[str, tuple]:
    from rose_core.metrics import auroc

    out = {}
    for method in methods:
        a, o = split_scores(scores, method, ood_set)
        if len(a) and len(o):
            fpr, tpr = roc_curve(a, o)
            out[method] = (fpr, tpr, auroc(a, o))
    return out


def heatmap_figure(pivot: pd.DataFrame, title: str) -> go.Figure:
    z = pivot.to_numpy(dtype=float)
    text = [[("" if math.isnan(v) else f"{v:.2f}") for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=[dataset_short(c) for c in pivot.columns], y=list(pivot.index), zmin=0, zmax=1,
                               colorscale="RdBu", reversescale=True, text=text, texttemplate="%{text}",
                               colorbar=dict(title="AUROC"),
                               hovertemplate="layer %{y}<br>OOD set %{x}<br>AUROC %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, "OOD set", "layer (input side at the top)", height=max(320, 60 + 45 * len(pivot)))


def sweep_figure(curve: pd.DataFrame, perturbation: str, title: str, mark: float | None = None) -> go.Figure:
    label, unit = PERTURBATION_LABELS.get(perturbation, (perturbation, "strength"))
    fig = go.Figure()
    methods = [m for m in curve["method"].cat.categories if m in set(curve["method"])] \
        if hasattr(curve["method"], "cat") else list(dict.fromkeys(curve["method"]))
    colours = color_map(methods)
    for method in methods:
        g = curve[curve["method"] == method]
        fig.add_trace(go.Scatter(x=g["strength"], y=g["auroc"], mode="lines+markers", name=method_label(method),
                                 line=dict(color=colours[method]),
                                 error_y=dict(type="data", array=g["auroc_std"], visible=bool((g["auroc_std"] > 0).any()))))
    if mark is not None:
        fig.add_vline(x=mark, line_dash="dot", line_color="grey")
    fig.add_hline(y=0.5, line_dash="dot", line_color="lightgrey")
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, title, unit, "AUROC (OOD positive)", height=420, legend="right" if len(methods) > 4 else "top")


def auroc_bars(values: dict[str, tuple[float, str]], title: str) -> go.Figure:
    """``values``: label → (AUROC, source)."""
    labels = list(values)
    sources = [values[k][1] for k in labels]
    colours = ["#d62728" if s.startswith("live") else "#1f77b4" for s in sources]
    fig = go.Figure(go.Bar(x=labels, y=[values[k][0] for k in labels], marker_color=colours,
                           text=[f"{values[k][0]:.3f}" for k in labels], textposition="outside",
                           customdata=sources, hovertemplate="%{x}<br>AUROC %{y:.3f}<br>%{customdata}<extra></extra>"))
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance")
    fig.update_yaxes(range=[0, 1.1])
    return _layout(fig, title, "method (red: computed live here; blue: from the results bundle)",
                   "AUROC (OOD positive)", height=400)


def zscore_figure(layer_names: list[str], z: np.ndarray, threshold: float | None, title: str) -> go.Figure:
    colours = ["#d62728" if threshold is not None and v > threshold else "#1f77b4" for v in z]
    fig = go.Figure(go.Bar(x=layer_names, y=z, marker_color=colours,
                           hovertemplate="layer %{x}<br>z = %{y:.2f}<extra></extra>"))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="#d62728",
                      annotation_text=f"threshold {threshold:.2f}", annotation_position="top left")
    fig.add_hline(y=0.0, line_color="grey", line_width=1)
    return _layout(fig, title, "layer", "z-score (σ)", height=280)


def fisher_samples_figure(fs: pd.DataFrame, title: str) -> go.Figure:
    fig = go.Figure()
    for i, (fisher, g) in enumerate(fs.groupby("fisher")):
        fig.add_trace(go.Box(x=g["n_fit"].astype(int).astype(str), y=g["auroc"], name=fisher.upper(),
                             marker_color=PALETTE[i % len(PALETTE)], boxpoints="all", jitter=0.3))
    fig.update_layout(boxmode="group")
    order = [str(v) for v in sorted(fs["n_fit"].astype(int).unique())]
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order)
    return _layout(fig, title, "number of in-distribution samples for the Fisher", "AUROC (OOD positive)")


def throughput_figure(tv: pd.DataFrame, title: str) -> go.Figure:
    tv = tv.dropna(subset=["overall_auroc"])
    fig = go.Figure()
    colours = color_map(list(tv["method"].astype(str)))
    for _, r in tv.iterrows():
        m = str(r["method"])
        fig.add_trace(go.Scatter(x=[r["images_per_s"]], y=[r["overall_auroc"]], mode="markers+text",
                                 text=[method_label(m)], textposition="top center", name=method_label(m),
                                 marker=dict(size=14, color=colours[m]),
                                 hovertemplate=f"{method_label(m)}<br>%{{x:.3g}} images/s<br>"
                                               "Overall AUROC %{y:.3f}<extra></extra>"))
    fig.update_xaxes(type="log", dtick=1)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, "throughput (images per second, log scale)", "Overall AUROC", height=440)


def best_styled(table: pd.DataFrame, lower_better: bool = False, digits: int = 3):
    """A Styler of ``table`` shown as text with "—" for missing values (Streamlit would print None)
    and the best value of each column in green."""
    num = table.astype(float)
    best = num.eq(num.min() if lower_better else num.max()) & num.notna()
    text = num.map(lambda v: "—" if pd.isna(v) else f"{v:.{digits}f}")
    return text.style.apply(lambda _: np.where(best.to_numpy(), "background-color: #c7e9c0", ""), axis=None)


def rate_text(v: float) -> str:
    """Images per second with sensible digits: 1414, 19.3, 0.0173."""
    if v is None or not np.isfinite(v):
        return "—"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3g}"


def upscale(image: np.ndarray, size: int = 128) -> np.ndarray:
    """Nearest-neighbour enlargement of a small uint8 (H, W, C) image for display."""
    from PIL import Image

    a = image[..., 0] if image.shape[-1] == 1 else image
    return np.asarray(Image.fromarray(a).resize((size, size), Image.NEAREST))


# --------------------------------------------------------------------------------------------
# Long computations: shared across sessions, with a visible progress bar while they run
# --------------------------------------------------------------------------------------------

MAX_STORED = 256
"""Most results of long computations kept (live scorers excluded)."""


@st.cache_resource(show_spinner=False)
def _store() -> dict:
    """Process-wide results of long computations (cleared by Streamlit's "Clear cache")."""
    return {"_lock": threading.Lock(), "_key_locks": {}}


def computed(key: tuple, compute: Callable[[Callable[[float, str], None]], Any], label: str) -> Any:
    """``compute(progress)`` once per ``key`` for the whole server, showing ``st.progress`` while it runs."""
    store = _store()
    if key in store:
        return store[key]
    with store["_lock"]:
        done = [k for k in store if isinstance(k, tuple) and k[0] != "live"]
        for old in done[: max(0, len(done) - MAX_STORED)]:  # oldest first (dicts keep insertion order)
            store.pop(old, None)
        lock = store["_key_locks"].setdefault(key, threading.Lock())
    with lock:
        if key in store:
            return store[key]
        bar = st.progress(0.0, text=label)
        try:
            value = compute(lambda f, m: bar.progress(min(max(float(f), 0.0), 1.0), text=f"{label} — {m}"))
        finally:
            bar.empty()
        store[key] = value
        return value


def live_scorer(name: str, fisher: str = "ekfac"):
    """The :class:`rose_core.live.LiveScorer` of a checkpoint (loaded, fitted or read from the bundle once
    per server), or None after showing what is missing and how to get it."""
    from rose_core.live import LiveScorer

    path = checkpoints_dir() / f"{name}.json"
    try:
        stamp = (path.stat().st_mtime_ns, (checkpoints_dir() / f"{name}.safetensors").stat().st_mtime_ns)
    except OSError:
        st.error(f"The checkpoint `{path}` is missing. Restore the shipped checkpoints with "
                 "`git checkout -- checkpoints`, or train one with `python -m rose_core train --help`.")
        return None
    fit_card = results_dir() / name / "fits" / f"rose-{fisher}.json"
    fit_stamp = fit_card.stat().st_mtime_ns if fit_card.exists() else None
    fit_n = env_int("ROSE_LIVE_FIT_N", 1000)
    key = ("live", str(path), fisher, stamp, str(results_dir()), str(data_dir()), fit_stamp,
           _signature(results_dir() / name), fit_n)
    store = _store()
    for old in [k for k in store if isinstance(k, tuple) and k[:3] == key[:3] and k != key]:
        store.pop(old, None)  # an outdated scorer of this model (new weights, fit or bundle): free its memory
    try:
        return computed(key, lambda progress: LiveScorer(path, fisher, results=results_dir(), data_root=data_dir(),
                                                         fit_n=fit_n, progress=progress),
                        f"Preparing ROSE-{fisher.upper()} for {name}")
    except RoseError as exc:
        st.error(f"ROSE cannot be prepared for `{name}`: {exc}")
        if "dataset" in str(exc).lower():
            st.info("Build the dataset caches with `make data` (or `python -m rose_core data --all`).")
        return None
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. a model that diverged to NaN during the fit
        st.error(f"ROSE cannot be prepared for `{name}` ({type(exc).__name__}: {exc}). Check the checkpoint with "
                 f"`python -m rose_core datasets` and the logs; the other pages still work.")
        return None


def digest(*parts: bytes | str | np.ndarray) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.shape).encode())
            p = np.ascontiguousarray(p).tobytes()
        h.update(p.encode() if isinstance(p, str) else p)
    return h.hexdigest()


@st.cache_data(ttl=60, show_spinner=False)
def datasets_table(data_root: str) -> pd.DataFrame:
    from rose_core.data import dataset_names, get_card, is_available

    rows = []
    for n in dataset_names():
        c = get_card(n)
        rows.append({"dataset": n, "title": c.title, "real data": c.real,
                     "stands in for": c.stands_in_for or "", "available here": is_available(n, "test", data_root),
                     "source": c.source, "how to get it": c.how_to_get})
    return pd.DataFrame(rows)


def available_datasets(data_root: str | None = None) -> list[str]:
    t = datasets_table(str(data_root or data_dir()))
    return list(t.loc[t["available here"], "dataset"])
