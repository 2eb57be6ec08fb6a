"""ROC curves: every method for one OOD set, with AUROC / AUPRC / FPR80 (Figure 3, Tables 2, 4, 5)."""

from __future__ import annotations

import streamlit as st

from rose_core import charts
from rose_core.labels import dataset_label, method_label
from rose_core.methods import method_short
from rose_core.paper import key_ood_set
from studio import glossary, provenance, state
from studio import widgets as ui

name, card = ui.open_page("ROC curves")
b = ui.require_bundle(name, ("scores",), "This page", state.main_preset(name))
if b is None:
    st.stop()

ood_sets, methods = b.ood_sets(), b.methods()
if not ood_sets or not methods:
    ui.missing_bundle_message(name, "The ROC curves", state.main_preset(name))
    st.stop()
c1, _ = st.columns([1, 1])
ood = c1.selectbox("OOD set", ood_sets, index=ood_sets.index(key_ood_set(card.get("kind"), card.get("dataset"), ood_sets)),
                   format_func=dataset_label, key="roc_ood")
chosen = st.multiselect("Methods", methods, default=[m for m in methods if ":" not in m] or methods,
                        format_func=method_label, key="roc_methods",
                        help="The harness's variants (e.g. other settings) are listed too, unselected.")
if not chosen:
    st.info("Pick at least one method.")
    st.stop()

inputs = b.roc_inputs(chosen, ood)
table = b.metrics_view(ood, chosen)
absent = [m for m in chosen if m not in inputs and m not in set(table["method"])]
if absent:  # a selected method with no result for this set is named, never silently dropped
    st.info("Selected but not shown for this OOD set:\n\n" + "\n\n".join(
        "- " + provenance.missing_reason(b, m, ood) for m in absent), icon=":material/visibility_off:")
curves = charts.roc_curves(inputs)
if not curves:
    st.warning(f"The bundle has no scores of these methods for {dataset_label(ood)}.")
    st.stop()
st.plotly_chart(charts.roc_figure(curves, f"{dataset_label(b.in_dist())} (in) vs {dataset_label(ood)} (OOD)"),
                key="roc_chart")

st.caption(provenance.counts_caption(table, b, ood), help="The AUROCs on this page and on Likelihood vs ROSE come "
           "from the bundle's unperturbed evaluation; the Robustness page's brightness sweep and live bars rest on "
           "other, smaller image sets, so their 1.0× values differ a little.")
scarce = provenance.few_images_rows(table)
if scarce:
    st.warning("Few images: " + "; ".join(
        f"**{method_label(m)}** rests on only {provenance.count_text(*table.set_index('method').loc[m, ['n_in', 'n_ood']])}"
        for m in scarce) + f" (under {provenance.FEW_IMAGES} on a side), so its AUROC is far less certain than the "
        "others'.", icon=":material/warning:")
shown = table.drop(columns=["source"]) if set(table["source"]) == {"bundle"} else table.copy()  # said when not
shown.insert(0, "Method", shown.pop("method").map(method_short))
shown["note"] = [f"⚠ {provenance.count_text(i, o)}" if provenance.few(i, o) else ""
                 for i, o in zip(shown["n_in"], shown["n_ood"])]
if not shown["note"].astype(bool).any():
    shown = shown.drop(columns=["note"])
st.dataframe(shown.rename(columns={"auroc": "AUROC", "auprc_in": "AUPRC (in)", "auprc_out": "AUPRC (out)",
                                   "fpr80": "FPR80", "n_in": "n in", "n_ood": "n OOD"}),
             hide_index=True, key="roc_table",
             column_config={c: st.column_config.NumberColumn(format="%.3f", help=glossary.tip(k))
                            for c, k in (("AUROC", "auroc"), ("AUPRC (in)", "auprc_in"), ("AUPRC (out)", "auprc_in"),
                                         ("FPR80", "fpr80"))} | {
                 "note": st.column_config.TextColumn(help=f"⚠: fewer than {provenance.FEW_IMAGES} images on a side")})
st.caption("Methods: " + "; ".join(f"{method_short(m)} = {method_label(m)}" for m in table["method"]) + ".")
st.caption("Conventions (rose_core.metrics): AUROC and FPR80 treat OOD as the positive class; AUPRC (in) treats "
           "in-distribution as positive (the paper's Table 4), AUPRC (out) OOD. FPR80 = fraction of in-distribution "
           "images flagged at the threshold that catches 80% of the OOD images (lower is better).")
