"""Plotly figures of OOD results, built from plain data (arrays, dicts, the pandas views of
:class:`rose_core.results.Results`): the app's charts, and the same figures in a notebook::

    from rose_core.results import Results
    from rose_core import charts
    b = Results.for_checkpoint("vae-fmnist")
    charts.roc_figure(charts.roc_curves(b.roc_inputs(["rose-ekfac", "nll"], "mnist")), "FMNIST vs MNIST")

No Streamlit here; traces are labelled with :mod:`rose_core.labels`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from rose_core.labels import dataset_short, method_label, perturbation_label
from rose_core.metrics import auroc, roc_curve

PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
IN_COLOUR, OOD_COLOUR = "#1f77b4", "#d62728"
FLAG_COLOUR = "#d62728"
"""Bars above a threshold, or computed live (red); the rest blue."""


def color_map(methods: list[str]) -> dict[str, str]:
    """One palette colour per method, in the given order."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


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


def roc_curves(inputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """``method → (fpr, tpr, AUROC)`` from ``method → (in-distribution scores, OOD scores)``
    (:meth:`rose_core.results.Results.roc_inputs`); methods without both sides are left out."""
    return {m: (*roc_curve(a, o), auroc(a, o)) for m, (a, o) in inputs.items() if len(a) and len(o)}


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
    label, unit = perturbation_label(perturbation)
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
    return _layout(fig, title, "method (red: the live sample drawn here; blue: the results bundle)",
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


LABEL_FONT_PX = 12
"""Plotly's default text size; a label's box is estimated at 0.62 of it per character."""
_PLACES = ("top center", "bottom center", "middle right", "middle left", "top right", "top left", "bottom right",
           "bottom left")


def _label_box(x: float, y: float, text: str, place: str, marker: float) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) in pixels of ``text`` placed at ``place`` around a marker at (x, y)."""
    w, h, gap = 0.62 * LABEL_FONT_PX * len(text), LABEL_FONT_PX + 4, marker / 2 + 2
    vert, horiz = place.split()
    cx = x if horiz == "center" else (x + gap + w / 2 if horiz == "right" else x - gap - w / 2)
    cy = y if vert == "middle" else (y + gap + h / 2 if vert == "top" else y - gap - h / 2)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _overlap(a: tuple, b: tuple) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def label_places(xs: np.ndarray, ys: np.ndarray, texts: list[str], width: float, height: float,
                 marker: float = 14) -> list[str]:
    """A plotly ``textposition`` for each point's label so that labels overlap neither each other, nor other
    markers, nor the plot's edges: greedily, points left to right, the first free place of :data:`_PLACES` (the one
    overlapping least when none is free). ``xs``/``ys`` are in pixels of a ``width`` × ``height`` plot area."""
    markers = [(x - marker / 2, y - marker / 2, x + marker / 2, y + marker / 2) for x, y in zip(xs, ys)]
    placed: list[tuple] = []
    out = [""] * len(texts)
    for i in sorted(range(len(texts)), key=lambda k: (xs[k], ys[k])):
        def cost(place: str) -> float:
            box = _label_box(xs[i], ys[i], texts[i], place, marker)
            edge = max(0.0, -box[0]) + max(0.0, box[2] - width) + max(0.0, -box[1]) + max(0.0, box[3] - height)
            return (sum(_overlap(box, o) for o in placed) + sum(_overlap(box, m) for j, m in enumerate(markers) if j != i)
                    + 50 * edge)
        best = min(_PLACES, key=lambda p: (cost(p) > 0, cost(p)))  # the first free place, else the least bad
        out[i] = best
        placed.append(_label_box(xs[i], ys[i], texts[i], best, marker))
    return out


def throughput_figure(tv: pd.DataFrame, title: str, width: float = 640) -> go.Figure:
    """Images per second (log axis) vs Overall AUROC, one labelled marker per method. Labels are placed so they
    do not overlap (:func:`label_places`) on a plot at least ``width`` pixels wide (the page's narrowest)."""
    tv = tv.dropna(subset=["overall_auroc"])
    height, margin = 440, dict(l=60, r=20, t=60, b=50)
    fig = go.Figure()
    if tv.empty:
        return _layout(fig, title, "throughput (images per second, log scale)", "Overall AUROC", height=height)
    lx = np.log10(tv["images_per_s"].astype(float).to_numpy())
    y = tv["overall_auroc"].astype(float).to_numpy()
    x_span, y_span = max(lx.max() - lx.min(), 0.5), max(y.max() - y.min(), 0.05)
    x_range = [lx.min() - 0.12 * x_span, lx.max() + 0.12 * x_span]
    y_range = [y.min() - 0.15 * y_span, y.max() + 0.15 * y_span]
    plot_w, plot_h = width - margin["l"] - margin["r"], height - margin["t"] - margin["b"]
    px = (lx - x_range[0]) / (x_range[1] - x_range[0]) * plot_w
    py = (y - y_range[0]) / (y_range[1] - y_range[0]) * plot_h
    names = [method_label(str(m)) for m in tv["method"]]
    places = label_places(px, py, names, plot_w, plot_h)
    colours = color_map(list(tv["method"].astype(str)))
    for (_, r), label, place in zip(tv.iterrows(), names, places):
        m = str(r["method"])
        fig.add_trace(go.Scatter(x=[r["images_per_s"]], y=[r["overall_auroc"]], mode="markers+text",
                                 text=[label], textposition=place, name=label, cliponaxis=False,
                                 marker=dict(size=14, color=colours[m]),
                                 hovertemplate=f"{label}<br>%{{x:.3g}} images/s<br>"
                                               "Overall AUROC %{y:.3f}<extra></extra>"))
    # ticks at 1, 10, 100 … when the rates span two decades or more; else plotly's finer log ticks (2, 5, …)
    fig.update_xaxes(type="log", range=x_range, dtick=1 if lx.max() - lx.min() >= 2 else None)
    fig.update_yaxes(range=y_range)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, "throughput (images per second, log scale)", "Overall AUROC", height=height)
