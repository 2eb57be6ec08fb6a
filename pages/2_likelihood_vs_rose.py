"""Likelihood vs ROSE: histograms of the NLL and of the ROSE score, in-distribution vs one OOD set (Figure 1)."""

from __future__ import annotations

import math

import streamlit as st

from rose_core import charts
from rose_core.labels import dataset_label, method_label
from rose_core.paper import key_ood_set
from studio import glossary, provenance, state
from studio import widgets as ui

name, card = ui.open_page("Likelihood vs ROSE")
b = ui.require_bundle(name, ("scores",), "This page", state.main_preset(name))
if b is None:
    st.stop()

methods = b.methods()
roses = [f"rose-{f}" for f in state.fisher_order(name) if f"rose-{f}" in methods]
ood_sets = b.ood_sets()
if "nll" not in methods or not roses or not ood_sets:
    ui.missing_bundle_message(name, "The NLL and ROSE histograms (they need the `nll` and ROSE methods)",
                              state.main_preset(name))
    st.stop()

c1, c2 = st.columns([1, 1])
c3, c4 = st.columns([1, 1])
ood = c1.selectbox("OOD set", ood_sets, index=ood_sets.index(key_ood_set(card.get("kind"), card.get("dataset"), ood_sets)),
                   format_func=dataset_label, key="lvr_ood")
rose = c2.radio("ROSE Fisher", roses, horizontal=True, format_func=method_label, key="lvr_rose",
                help=glossary.tips("ekfac", "diag"))
unit = c3.radio("NLL unit", ["nats", "bits/dim"], horizontal=True, key="lvr_unit",
                help=glossary.tips("nll", "bits_per_dim"))
bins = c4.slider("Bins", 10, 120, 50, 5, key="lvr_bins")

ind = b.in_dist()
a_nll, o_nll = b.nll_split(ood)
a_rose, o_rose = b.split(rose, ood)
if min(len(a_nll), len(o_nll), len(a_rose), len(o_rose)) == 0:
    st.warning(f"The bundle has no NLL or {method_label(rose)} scores for {dataset_label(ood)}.")
    st.stop()
if unit == "bits/dim":
    cfg = b.checkpoint_card().get("config") or card.get("config") or {}
    dims = cfg.get("channels", 1) * cfg.get("image_size", 32) ** 2
    a_nll, o_nll = a_nll / (dims * math.log(2)), o_nll / (dims * math.log(2))
    x_nll = "NLL (bits per dimension)"
else:
    x_nll = "NLL (nats)"

table = b.metrics_view(ood, ["nll", rose]).set_index("method")
left, right = st.columns(2)
left.plotly_chart(charts.histogram_pair(a_nll, o_nll, dataset_label(ind), dataset_label(ood),
                                        f"Negative log-likelihood — AUROC {table.loc['nll', 'auroc']:.3f}", x_nll,
                                        bins), key="lvr_nll_chart")
right.plotly_chart(charts.histogram_pair(a_rose, o_rose, dataset_label(ind), dataset_label(ood),
                                         f"{method_label(rose)} — AUROC {table.loc[rose, 'auroc']:.3f}",
                                         "ROSE score (higher = more OOD)", bins), key="lvr_rose_chart")
st.caption(f"Histograms: {dataset_label(ind)} ({len(a_rose)} images) vs {dataset_label(ood)} ({len(o_rose)} images). "
           + provenance.counts_caption(table.reset_index(), b, ood), help="The same numbers as the ROC curves page; the "
           "Robustness page's brightness sweep and live bars rest on other, smaller image sets.")
if provenance.few_images_rows(table.reset_index()):
    st.warning(f"Few images: an AUROC here rests on under {provenance.FEW_IMAGES} images on a side.")
st.caption("AUROC with OOD as the positive class: below 0.5 means the score ranks the OOD "
           "images as *more* in-distribution than the real ones — the likelihood's failure the paper starts from.")
