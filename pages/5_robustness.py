"""Robustness: brightness of the OOD images (live and from the bundle), blur/noise sweeps (Table 1),
and AUROC vs the number of Fisher samples (Figure 5)."""

from __future__ import annotations

import streamlit as st

from rose_core import charts
from rose_core.errors import RoseError
from rose_core.labels import PERTURBATION_LABELS, dataset_label, dataset_short, method_label
from rose_core.results import method_order
from studio import provenance, state
from studio import widgets as ui
from studio.format import best_styled, upscale
from studio.paths import data_dir, env_int, evaluate_command

name, card = ui.open_page("Robustness")
b = state.bundle(name)

# --- 1. brightness, live ------------------------------------------------------------------
st.subheader("Brightness of the OOD images")
available = state.available_datasets()
in_dist = card.get("dataset")
candidates = [d for d in available if d != in_dist]
if not candidates:
    st.error("No OOD dataset is available on this machine; build the caches with `make data`.")
else:
    c1, c2, c3 = st.columns([1, 2, 1])
    ood = c1.selectbox("OOD set", candidates, index=candidates.index("mnist") if "mnist" in candidates else 0,
                       format_func=dataset_label, key="rob_ood")
    factor = c2.slider("Brightness factor (×)", 0.2, 1.8, 1.0, 0.2, format="%.1f×", key="rob_brightness",
                       help="Every OOD image's intensities are multiplied by this factor and clipped to 0–255; the "
                            "in-distribution images are left as they are (the paper's Table 1, steps of 0.2×).")
    factor = round(factor, 1)
    live_on = c3.toggle("Live ROSE + likelihood", value=True, key="rob_live",
                        help="Compute ROSE and the likelihood here on a small subset of test images "
                             "(cached per setting); the bundle's values are shown beside them.")
    n = env_int("ROSE_LIVE_N", 64)
    from rose_core.data import load_dataset

    try:
        ood_images = load_dataset(ood, "test", n=n, seed=1, root=data_dir()).images
    except RoseError as exc:
        st.error(f"{ood} cannot be loaded: {exc}")
        st.stop()
    values: dict[str, tuple[float, str]] = {}
    at_point = b.auroc_at(ood, "brightness", factor) if b.exists else {}
    bundle_counts = {m: provenance.point_counts(b, m, ood, "brightness", factor) for m in at_point}
    for method in method_order(at_point):
        values[method_label(method)] = (at_point[method],
                                        f"results bundle, {provenance.count_text(*bundle_counts[method][:2])}")
    live_out = None
    if live_on:
        live = state.live_scorer(name, state.default_fisher(name))
        if live is not None:
            key = ("brightness", state.live_key(name, live.fisher), ood, round(factor, 3), n)
            out = state.computed(key, lambda progress: live.perturbed_auroc(ood_images, "brightness", factor, n_ref=n,
                                                                         progress=progress),
                              f"Scoring {n} + {n} images at {factor:.1f}× brightness")
            live_out = (live, out)
            values[f"{method_label(live.method)} (live)"] = (out["auroc"][live.method],
                                                                 f"live, {out['n_in']} in vs {out['n_ood']} OOD")
            values[f"likelihood (live, {live.loss_kind})"] = (out["auroc"]["nll"],
                                                              f"live, {out['n_in']} in vs {out['n_ood']} OOD")
    # one OOD image at every step of the slider, each captioned with its own factor; the chosen one marked
    import numpy as np
    import torch

    from rose_core import perturb
    from rose_core.data import prepare_images

    first = torch.from_numpy(np.ascontiguousarray(prepare_images(ood_images[:1], 32))).permute(0, 3, 1, 2)
    steps = [round(0.2 * k, 1) for k in range(1, 10)]
    strip = [perturb.brightness(first, s).permute(0, 2, 3, 1).numpy()[0] for s in steps]
    st.image([upscale(im, 72) for im in strip],
             caption=[f"▶ {s:.1f}× (chosen)" if abs(s - factor) < 1e-9 else f"{s:.1f}×" for s in steps])
    st.caption(f"The first {dataset_label(ood)} image at each brightness factor; every OOD image is scored at the "
               "chosen one.")
    if values:
        st.plotly_chart(charts.auroc_bars(values, f"AUROC at {factor:.1f}× brightness of {dataset_label(ood)}"),
                        key="rob_live_chart")
        st.caption("Images under each bar: " + "; ".join(f"{k}: {src}" for k, (_, src) in values.items()) + ". "
                   f"Blue bars: {provenance.bundle_source(b)} vs {dataset_label(ood)} images of the bundle's "
                   f"brightness sweep. Red bars: a live sample drawn here ({n} {dataset_label(in_dist)} test images of "
                   f"the evaluation half and {n} {dataset_label(ood)} test images, both drawn with seed 1).")
        if live_out is not None and b.exists:
            live, out = live_out
            bundle_rose = at_point.get(live.method)
            n_in_b, n_ood_b, _ = bundle_counts.get(live.method, (0, 0, 0))
            rose_line = (f"{method_label(live.method)} at {factor:.1f}×: results bundle "
                         f"**{provenance.auroc_text(bundle_rose)}** ({provenance.count_text(n_in_b, n_ood_b)}) vs live "
                         f"**{provenance.auroc_text(out['auroc'][live.method])}** "
                         f"({provenance.count_text(out['n_in'], out['n_ood'])})" if bundle_rose is not None else
                         f"The bundle has no {method_label(live.method)} value at {factor:.1f}× to compare with the "
                         "live one")
            nll_b = at_point.get("nll")
            nll_line = (f"; NLL: bundle **{provenance.auroc_text(nll_b)}** vs live likelihood ({live.loss_kind}) "
                        f"**{provenance.auroc_text(out['auroc']['nll'])}**" if nll_b is not None else "")
            unperturbed = b.metrics_view(ood, [live.method])
            roc_note = (f" The ROC curves page's unperturbed value ({provenance.auroc_text(unperturbed['auroc'].iloc[0])}, "
                        f"{provenance.count_text(unperturbed['n_in'].iloc[0], unperturbed['n_ood'].iloc[0])}) uses yet "
                        "more OOD images." if len(unperturbed) else "")
            st.markdown(rose_line + nll_line + ".",
                        help="Why they differ: the live bars score a small sample drawn here, the bundle's on its own, "
                             "larger evaluation images (and the bundle's NLL may be another estimator than the live "
                             "model loss), so the AUROCs differ by sampling noise — not a bug.")
            st.caption(f"Why they differ: different images — the live value rests on {out['n_in']} + {out['n_ood']} "
                       "images sampled here, the bundle's on its evaluation images — so small gaps are sampling "
                       "noise." + roc_note)
    else:
        st.info("Turn on the live computation, or compute the bundle's brightness sweep with "
                f"`{evaluate_command(name, 'brightness')}`.")

# --- 2. sweeps from the bundle ------------------------------------------------------------
st.subheader("Perturbation sweeps (Table 1)")
sweeps = [p for p in PERTURBATION_LABELS if p in set(b.table("metrics")["perturbation"])] if b.exists else []
if not sweeps:
    ui.missing_bundle_message(name, "The sweeps", "brightness")
else:
    s1, s2 = st.columns(2)
    pert = s1.selectbox("Perturbation of the OOD images", sweeps, format_func=lambda p: PERTURBATION_LABELS[p][0],
                        key="rob_sweep")
    m = b.table("metrics")
    sets = sorted(m.loc[m["perturbation"] == pert, "ood_set"].unique())
    sweep_set = s2.selectbox("OOD set", sets, format_func=dataset_label, key="rob_sweep_set",
                             index=sets.index("mnist") if "mnist" in sets else 0)
    curve, summary = b.sweep(pert, sweep_set)
    label, unit = PERTURBATION_LABELS[pert]
    st.plotly_chart(charts.sweep_figure(curve, pert, f"AUROC vs {label.lower()} of {dataset_label(sweep_set)}",
                                    mark=factor if pert == "brightness" and candidates else None),
                    key="rob_sweep_chart")
    st.dataframe(summary.assign(method=summary["method"].astype(str).map(method_label)).rename(
        columns={"mean": "mean AUROC", "std": "std of AUROC", "n_strengths": "settings"}), hide_index=True,
        key="rob_summary", column_config={"mean AUROC": st.column_config.NumberColumn(format="%.3f"),
                                          "std of AUROC": st.column_config.NumberColumn(format="%.3f")})
    st.caption("Mean and standard deviation across the settings of the sweep, as Table 1's last columns: a robust "
               "detector has a high mean and a small std. Error bars: std across repeats where there are several.")

# --- 3. outlier exposure trained with each perturbation ------------------------------------
st.subheader("Outlier exposure trained with SVD / DCT / Gaussian blur / Random (Tables 10, 11)")
variants = b.exposure_variants() if b.exists else None
if variants is None or variants.empty:
    ui.missing_bundle_message(name, "The perturbation-trained baselines", "perturbations")
else:
    shown = variants.rename(index=method_label, columns=dataset_short)
    st.dataframe(best_styled(shown), key="rob_variants")
    st.caption("AUROC of RND and the Likelihood Ratio when their perturbation is SVD blur, DCT blur, Gaussian "
               "blur or random pixels: which perturbation works depends on the OOD set — the paper's argument "
               "against outlier exposure. Green = best in each column. ROSE needs no perturbation.")

# --- 4. Figure 5 --------------------------------------------------------------------------
st.subheader("AUROC vs number of Fisher samples (Figure 5)")
fs = b.table("fisher_samples") if b.exists else None
if fs is None or len(fs) == 0:
    ui.missing_bundle_message(name, "Figure 5", "fisher-samples")
else:
    sets = sorted(fs["ood_set"].unique(), key=lambda s: s != "overall")
    fs_set = st.selectbox("OOD set", sets, format_func=dataset_label, key="rob_fs_set")
    st.plotly_chart(charts.fisher_samples_figure(fs[fs["ood_set"] == fs_set],
                                             f"ROSE AUROC on {dataset_label(fs_set)} vs Fisher sample size"),
                    key="rob_fs_chart")
    st.caption("Each box: the repeats with different random in-distribution samples for the Fisher fit.")
