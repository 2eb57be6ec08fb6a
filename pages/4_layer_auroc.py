"""Layer-wise AUROC: each scored layer's raw ROSE score alone, layers × OOD sets, DIAG vs EKFAC."""

from __future__ import annotations

import streamlit as st

import app_common as ac

name, _ = ac.open_page("Layer-wise AUROC")
b = ac.bundle(name)
if not b.exists or not (b.has("layer_metrics") or b.has("layers")):
    ac.missing_bundle_message(name, "The layer-wise heatmap", "layerwise")
    st.stop()

available = ac.fisher_order(name, set(b.table("layer_metrics")["fisher"]) | set(b.table("layers")["fisher"]))
fisher = st.radio("Fisher approximation", available, format_func=str.upper, horizontal=True, key="layer_fisher")
pivot = ac.layer_auroc_view(b, fisher)
if pivot.empty:
    st.warning(f"No layer-wise results for {fisher.upper()} in the bundle.")
    st.stop()
st.plotly_chart(ac.heatmap_figure(pivot, f"AUROC of each layer's score s_l alone — {fisher.upper()} Fisher"),
                key="layer_heatmap")
best = pivot.idxmax(axis=0)
st.markdown("**Best single layer per OOD set:** " + ", ".join(
    f"{ac.dataset_label(c)}: `{best[c]}` ({pivot.loc[best[c], c]:.3f})" for c in pivot.columns if best.notna()[c]))
note = ac.stand_in_note(pivot.columns)
if note:
    st.caption(f"Offline stand-ins and samples (not the paper's data): {note}.")
st.caption("Rows are the layers ROSE scores (for the VAE, the encoder convolutions and the μ / log σ² heads; for "
           "Glow, the invertible 1×1 convolutions), input side at the top. Red = the layer alone detects the OOD "
           "set (AUROC near 1), blue = it ranks the OOD images as more typical (AUROC below 0.5). ROSE takes the "
           "maximum of the z-normalised layer scores, so one strong layer per OOD set is enough.")
