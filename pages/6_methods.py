"""Methods: the Table-2-style comparison, throughput vs Overall AUROC (Figure 4) and the stress suite."""

from __future__ import annotations

import streamlit as st

from rose_core import charts
from rose_core.labels import JPEG_NOTE, METRIC_LABELS, dataset_label, dataset_short, method_label, stand_in_note
from studio import glossary, state
from studio import widgets as ui
from studio.format import best_styled, device_text, number_text, rate_text

name, _ = ui.open_page("Methods")
b = ui.require_bundle(name, ("metrics",), "This page", state.main_preset(name))
if b is None:
    st.stop()

metric = st.radio("Metric", ["auroc", "auprc_in", "fpr80"], format_func=METRIC_LABELS.get, horizontal=True,
                  key="methods_metric", help=glossary.tips("auroc", "auprc_in", "fpr80"))
table = b.comparison(metric)
if table.empty:
    ui.missing_bundle_message(name, "The comparison table", state.main_preset(name))
    st.stop()
shown = table.rename(index=method_label, columns=dataset_short)
lower_better = metric.startswith("fpr")
st.subheader(f"{METRIC_LABELS[metric]} per OOD set")
st.dataframe(best_styled(shown, lower_better), key="methods_table")
note = stand_in_note(table.columns)
st.caption(f"In-distribution: {dataset_label(b.in_dist())}. Green = best in each column "
           f"({'lower' if lower_better else 'higher'} is better). Overall = up to 1000 images of each OOD set, "
           "pooled (section 5.1). "
           + (f"Offline stand-ins and samples (not the paper's data): {note}." if note else ""))

st.subheader("Throughput vs Overall AUROC")
tv = b.throughput_view()
if tv.empty or tv["overall_auroc"].isna().all():
    ui.missing_bundle_message(name, "The throughput chart (Figure 4)", "throughput")
else:
    tv = tv.assign(device=tv["device"].map(device_text))
    device = ", ".join(sorted(set(tv["device"].astype(str))))
    st.plotly_chart(charts.throughput_figure(tv, f"Images per second vs Overall AUROC (measured on {device})"),
                    key="methods_throughput")
    st.dataframe(tv.assign(method=tv["method"].astype(str).map(method_label),
                           images_per_s=tv["images_per_s"].map(rate_text),
                           overall_auroc=tv["overall_auroc"].map(number_text)).rename(
        columns={"images_per_s": "images/s", "overall_auroc": "Overall AUROC"}), hide_index=True,
        key="methods_throughput_table",
        column_config={"Overall AUROC": st.column_config.TextColumn(help=glossary.tip("auroc"))})
    missing = tv.loc[tv["overall_auroc"].isna(), "method"].astype(str).map(method_label).tolist()
    if missing:
        st.caption(f"Not in the chart (no Overall AUROC in the bundle, e.g. scored on some OOD sets only): "
                   f"{', '.join(missing)}.")
    st.caption("All methods timed in one run on the same images and device, so ratios are comparable; absolute "
               "numbers depend on the machine.")

st.subheader("Stress suite (beyond the paper)")
if not b.has("stress"):
    ui.missing_bundle_message(name, "The stress suite", "stress")
else:
    ood = b.stress_view(("ood",))
    if not ood.empty:
        st.markdown("**AUROC on sets that should be flagged** (noise, black/white, inverted, rotated, blurred, "
                    "thin digits) against the in-distribution evaluation images")
        st.dataframe(best_styled(ood.rename(index=method_label, columns=dataset_label)), key="methods_stress_ood")
    fa = b.stress_view(("in-distribution", "benign", "covariate"))
    if not fa.empty:
        groups = fa.attrs["groups"]
        shown = fa.rename(index=method_label, columns=lambda d: f"{dataset_label(d)} ({groups[d]})")
        st.markdown("**False-alarm rate**: the fraction each method flags at its own verdict threshold "
                    "(95% TPR on the calibration half). `in-distribution`: the evaluation half of the test split; "
                    "`benign` should stay near it; `covariate` is a real shift, shown without a target.")
        st.dataframe(shown.style.format("{:.1%}", na_rep="—"), key="methods_stress_fa")
    if b.table("stress")["dataset"].str.contains("jpeg").any():
        st.caption(JPEG_NOTE)
