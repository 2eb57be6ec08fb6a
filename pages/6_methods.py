"""Methods: the Table-2-style comparison, throughput vs Overall AUROC (Figure 4) and the stress suite."""

from __future__ import annotations

import streamlit as st

from rose_core import charts
from rose_core.labels import JPEG_NOTE, METRIC_LABELS, dataset_label, dataset_short, method_label, stand_in_note
from rose_core.methods import method_short
from rose_core.reporting.classifiers import FIGURE6_SETS, detector_comparison
from studio import glossary, state
from studio import widgets as ui
from studio.format import best_styled, by_method_tables, detector_blocks, device_text, number_text, rate_text, table_height

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
lower_better = metric.startswith("fpr")
main = table.loc[[m for m in table.index if ":" not in str(m)]]
sets = [c for c in main.columns if not str(c).startswith("stress-")]  # the stress sets have their own section
st.subheader(f"{METRIC_LABELS[metric]} per OOD set")
pieces = by_method_tables(main[sets].rename(index=method_short, columns=dataset_short), lower_better)
for k, piece in enumerate(pieces):
    st.dataframe(piece, key=f"methods_table_{k}", height=table_height(len(sets)), hide_index=True)
note = stand_in_note(sets)
st.caption(f"In-distribution: {dataset_label(b.in_dist())}. One row per OOD set, one column per method (split in "
           f"pieces to fit the page); green = the best method for the set ({'lower' if lower_better else 'higher'} is "
           "better). Overall = up to 1000 images of each OOD set, pooled (section 5.1). Methods: "
           + "; ".join(f"{method_short(m)} = {method_label(m)}" for m in main.index) + ". "
           + (f"Offline stand-ins and samples (not the paper's data): {note}. " if note else "")
           + "The stress sets are in the stress suite below.")
variants = table.loc[[m for m in table.index if ":" in str(m)]]
if len(variants):
    with st.expander(f"The harness's {len(variants)} variants (other settings of a method)"):
        cols = [c for c in ("overall", "mnist") if c in variants.columns]
        st.dataframe(best_styled(variants[cols].rename(index=method_label, columns=dataset_short), lower_better),
                     key="methods_variants")
        st.caption("Overall and MNIST only; every set is in the bundle (`rose_core.results.Results.comparison`).")

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
        for k, piece in enumerate(by_method_tables(ood.rename(index=method_short), per=4, label="stress set")):
            st.dataframe(piece, key=f"methods_stress_ood_{k}", height=table_height(ood.shape[1]), hide_index=True)
        st.caption("Stress sets: " + "; ".join(f"{d} = {dataset_label(d)}" for d in ood.columns) + ".")
    fa = b.stress_view(("in-distribution", "benign", "covariate"))
    if not fa.empty:
        groups = fa.attrs["groups"]
        shown = fa.rename(index=method_short, columns=lambda d: f"{d} ({groups[d]})")
        st.markdown("**False-alarm rate**: the fraction each method flags at its own verdict threshold "
                    "(95% TPR on the calibration half). `in-distribution`: the evaluation half of the test split; "
                    "`benign` should stay near it; `covariate` is a real shift, shown without a target.")
        for k, piece in enumerate(by_method_tables(shown, per=4, fmt="{:.1%}".format, mark_best=False, label="set (group)")):
            st.dataframe(piece, key=f"methods_stress_fa_{k}", height=table_height(shown.shape[1]), hide_index=True)
    if b.table("stress")["dataset"].str.contains("jpeg").any():
        st.caption(JPEG_NOTE)

st.subheader("Beside classifier-based detectors (Figure 6 sets)")
if b.in_dist() != "fashion-mnist":
    st.caption(f"The shipped classifiers are trained on Fashion-MNIST; this model's in-distribution is "
               f"{dataset_label(b.in_dist())}, so there is no like-for-like comparison to show.")
else:
    det = detector_comparison(state.all_bundles())
    if det.empty:
        st.info("No classifier results yet: the Classifiers page computes them (preset `figure6`), or run "
                "`python -m rose_core evaluate --checkpoint checkpoints/cls-basic-cnn-fmnist --preset figure6`.")
    else:
        for k, (model, counts, styler) in enumerate(detector_blocks(det, {s: dataset_short(s) for s in FIGURE6_SETS})):
            st.markdown(f"**{model}** · {counts} images (in / per OOD set)")
            st.dataframe(styler, hide_index=True, key=f"methods_detectors_{k}", height=table_height(len(styler.data)))
        st.caption("AUROC per OOD set; mean = mean AUROC over the sets; FPR95 = the false-alarm rate at 95 % of the "
                   "OOD images detected, averaged over the sets (lower is better); img/s = images per second, "
                   "scoring only, from each bundle's throughput run; green = the best in its block. Classifier "
                   "blocks: ROSE-DIAG on the cross-entropy at the predicted label and pytorch-ood's detectors, one "
                   "network and one set of images per block. The generative models' blocks come from their own "
                   "bundles (other images), so compare across blocks as a summary. "
                   "The same table is in `docs/results.md` (Figure 6 section).")
