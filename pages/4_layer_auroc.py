"""Layer-wise AUROC: each scored layer's raw ROSE score alone, layers × OOD sets, DIAG vs EKFAC."""

from __future__ import annotations

import streamlit as st

from rose_core import charts
from rose_core.labels import dataset_label, stand_in_note
from studio import glossary, state
from studio import widgets as ui

name, _ = ui.open_page("Layer-wise AUROC")
b = state.bundle(name)
if not b.exists or not (b.has("layer_metrics") or b.has("layers")):
    ui.missing_bundle_message(name, "The layer-wise heatmap", "layerwise")
    st.stop()

available = state.fisher_order(name, b.fishers())
fisher = st.radio("Fisher approximation", available, format_func=str.upper, horizontal=True, key="layer_fisher",
                  help=glossary.tips("ekfac", "diag"))
pivot = b.layer_auroc(fisher)
if pivot.empty:
    st.warning(f"No layer-wise results for {fisher.upper()} in the bundle.")
    st.stop()
fig = charts.heatmap_figure(pivot, f"AUROC of each layer's score s_l alone — {fisher.upper()} Fisher")
# display names on both axes (the chart's x labels keep registry ids for stand-ins); module paths on hover
fig.update_traces(x=[dataset_label(c) for c in pivot.columns], y=[glossary.layer_label(n) for n in pivot.index],
                  customdata=[[n] * len(pivot.columns) for n in pivot.index],
                  hovertemplate="layer %{y} (%{customdata})<br>OOD set %{x}<br>AUROC %{z:.3f}<extra></extra>")
st.plotly_chart(fig, key="layer_heatmap")
best = pivot.idxmax(axis=0)
st.markdown("**Best single layer per OOD set:** " + ", ".join(
    f"{dataset_label(c)}: {glossary.layer_label(best[c])} ({pivot.loc[best[c], c]:.3f})"
    for c in pivot.columns if best.notna()[c]), help=glossary.tip("layer"))
note = stand_in_note(pivot.columns)
if note:
    st.caption(f"Offline stand-ins and samples (not the paper's data): {note}.")
st.caption("Rows are the layers ROSE scores (for the VAE, the encoder convolutions and the μ / log σ² heads; for "
           "Glow, the invertible 1×1 convolutions), input side at the top. Red = the layer alone detects the OOD "
           "set (AUROC near 1), blue = it ranks the OOD images as more typical (AUROC below 0.5). ROSE takes the "
           "maximum of the z-normalised layer scores, so one strong layer per OOD set is enough.")
