"""Robustness: brightness of the OOD images (live and from the bundle), blur/noise sweeps (Table 1),
and AUROC vs the number of Fisher samples (Figure 5)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from rose_core import charts
from rose_core.data import same_distribution
from rose_core.errors import RoseError
from rose_core.labels import PERTURBATION_LABELS, dataset_label, dataset_short, method_label
from rose_core.methods import method_short
from rose_core.paper import key_ood_set
from rose_core.results import method_order
from studio import provenance, state
from studio import widgets as ui
from studio.format import by_method_tables, table_height, upscale
from studio.paths import data_dir, env_int, evaluate_command

LIVE_SEED = 1  # seed of the live sample (the same as `python -m studio.precompute`'s); no bare string: magic prints it


def brightened(image: np.ndarray, factor: float) -> np.ndarray:
    """A uint8 image with its intensities multiplied by ``factor`` and clipped, for the thumbnails (numpy:
    the page draws them without importing torch; the scored images go through rose_core.perturb)."""
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


name, card = ui.open_page("Robustness")
b = state.bundle(name)

# --- 1. brightness, live ------------------------------------------------------------------
st.subheader("Brightness of the OOD images")
available = state.available_datasets()
in_dist = card.get("dataset")
candidates = [d for d in available if not same_distribution(d, in_dist)]  # CIFAR-10 is never OOD for CIFAR-10
metrics = b.table("metrics") if b.exists and b.has("metrics") else None
swept = sorted(set(metrics.loc[metrics["perturbation"] == "brightness", "ood_set"]) & set(candidates)) \
    if metrics is not None else []
FISHER = state.default_fisher(name)
METHOD = f"rose-{FISHER}"
if not candidates:
    st.error("No OOD dataset is available on this machine; build the caches with `make data`.")
else:
    c1, c3 = st.columns([3, 2])
    every = bool(swept) and c3.checkbox("Every dataset here", key="rob_all_sets",
                                        help=f"Off: the OOD sets of the bundle's brightness sweep ({len(swept)}), whose "
                                             "live values are precomputed. On: every dataset on this machine; the "
                                             "others are computed live when picked.")
    sets = candidates if every or not swept else swept
    ood = c1.selectbox("OOD set", sets, index=sets.index(key_ood_set(card.get("kind"), in_dist, sets)),
                       format_func=dataset_label, key="rob_ood")
    c2, c4 = st.columns([3, 2])
    factor = c2.slider("Brightness factor (×)", 0.2, 1.8, 1.0, 0.2, format="%.1f×", key="rob_brightness",
                       help="Every OOD image's intensities are multiplied by this factor and clipped to 0–255; the "
                            "in-distribution images are left as they are (the paper's Table 1, steps of 0.2×).")
    factor = round(factor, 1)
    live_on = c4.toggle("Live ROSE + likelihood", value=True, key="rob_live",
                        help="ROSE and the likelihood on a small sample of test images drawn here, beside the "
                             "bundle's values: precomputed for the bundle's brightness sets (`python -m "
                             f"studio.precompute {name}`), computed here otherwise (cached per setting).")
    n = env_int("ROSE_LIVE_N", 64)
    try:
        ood_images = state.dataset_sample(ood, n, LIVE_SEED, str(data_dir()))
    except RoseError as exc:
        st.error(f"{ood} cannot be loaded: {exc}")
        st.stop()
    values: dict[str, tuple[float, str]] = {}
    at_point = b.auroc_at(ood, "brightness", factor) if b.exists else {}
    bundle_counts = {m: provenance.point_counts(b, m, ood, "brightness", factor) for m in at_point}
    for method in method_order(at_point):
        values[method_label(method)] = (at_point[method],
                                        f"results bundle, {provenance.count_text(*bundle_counts[method][:2])}")
    out, how, loss_kind = None, "", "the model's loss"
    if live_on:
        pre = state.precomputed_robustness(name, FISHER, n, LIVE_SEED, ood, factor)
        if pre is not None:
            out, table = pre
            loss_kind = table.get("loss_kind", loss_kind)
            how = (f"precomputed by `{table.get('command', 'python -m studio.precompute ' + name)}` with this model "
                   "and the bundle's ROSE fit, on the images a live run would draw")
        else:
            live = state.live_scorer(name, FISHER)
            if live is not None:
                key = ("brightness", state.live_key(name, live.fisher), ood, factor, n)
                out = state.computed(key, lambda progress: live.perturbed_auroc(ood_images, "brightness", factor,
                                                                                n_ref=n, seed=LIVE_SEED,
                                                                                progress=progress),
                                     f"Scoring {n} + {n} images at {factor:.1f}× brightness",
                                     cancelled="the live bars are left out, the bundle's values stay")
                loss_kind, how = live.loss_kind, "computed live here"
        if out is not None:
            live_src = f"live sample ({how.split(' ')[0]}), {out['n_in']} in vs {out['n_ood']} OOD"
            values[f"{method_label(METHOD)} (live)"] = (out["auroc"][METHOD], live_src)
            values[f"likelihood (live, {loss_kind})"] = (out["auroc"]["nll"], live_src)
    # one OOD image at every step of the slider, each captioned with its own factor; the chosen one marked
    steps = [round(0.2 * k, 1) for k in range(1, 10)]
    st.image([upscale(brightened(ood_images[0], s), 72) for s in steps],
             caption=[f"▶ {s:.1f}× (chosen)" if abs(s - factor) < 1e-9 else f"{s:.1f}×" for s in steps])
    st.caption(f"The first {dataset_label(ood)} image of the sample at each brightness factor (before resizing to "
               "the model's input); every OOD image is scored at the chosen one.")
    if values:
        st.plotly_chart(charts.auroc_bars(values, f"AUROC at {factor:.1f}× brightness of {dataset_label(ood)}"),
                        key="rob_live_chart")
        st.caption("Images under each bar: " + "; ".join(f"{k}: {src}" for k, (_, src) in values.items()) + ". "
                   f"Blue bars: {provenance.bundle_source(b)} vs {dataset_label(ood)} images of the bundle's "
                   f"brightness sweep. Red bars: a live sample ({n} {dataset_label(in_dist)} test images of "
                   f"the evaluation half and {n} {dataset_label(ood)} test images, both drawn with seed {LIVE_SEED})"
                   + (f", {how}." if out is not None else "."))
        if out is not None and b.exists:
            bundle_rose = at_point.get(METHOD)
            n_in_b, n_ood_b, _ = bundle_counts.get(METHOD, (0, 0, 0))
            rose_line = (f"{method_label(METHOD)} at {factor:.1f}×: results bundle "
                         f"**{provenance.auroc_text(bundle_rose)}** ({provenance.count_text(n_in_b, n_ood_b)}) vs live "
                         f"**{provenance.auroc_text(out['auroc'][METHOD])}** "
                         f"({provenance.count_text(out['n_in'], out['n_ood'])})" if bundle_rose is not None else
                         f"The bundle has no {method_label(METHOD)} value at {factor:.1f}× to compare with the "
                         "live one")
            nll_b = at_point.get("nll")
            nll_line = (f"; NLL: bundle **{provenance.auroc_text(nll_b)}** vs live likelihood ({loss_kind}) "
                        f"**{provenance.auroc_text(out['auroc']['nll'])}**" if nll_b is not None else "")
            unperturbed = b.metrics_view(ood, [METHOD])
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
sweeps = [p for p in PERTURBATION_LABELS if p in set(metrics["perturbation"])] if metrics is not None else []
if not sweeps:
    ui.missing_bundle_message(name, "The sweeps", "brightness")
else:
    s1, s2 = st.columns(2)
    pert = s1.selectbox("Perturbation of the OOD images", sweeps, format_func=lambda p: PERTURBATION_LABELS[p][0],
                        key="rob_sweep")
    sets = sorted(metrics.loc[metrics["perturbation"] == pert, "ood_set"].unique())
    sweep_set = s2.selectbox("OOD set", sets, format_func=dataset_label, key="rob_sweep_set",
                             index=sets.index(key_ood_set(card.get("kind"), in_dist, sets)))
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
    # the stress sets' rows are left out (the Methods page's stress suite has them), and sets with no value
    variants = variants[[c for c in variants.columns if not str(c).startswith("stress-")]].dropna(axis=1, how="all")
    for k, piece in enumerate(by_method_tables(variants.rename(index=method_short, columns=dataset_short), per=3)):
        st.dataframe(piece, key=f"rob_variants_{k}", height=table_height(variants.shape[1]), hide_index=True)
    st.caption("AUROC of RND and the Likelihood Ratio when their perturbation is SVD blur, DCT blur, Gaussian "
               "blur or random pixels: which perturbation works depends on the OOD set — the paper's argument "
               "against outlier exposure. One row per OOD set; green = the best variant for the set. "
               + "; ".join(f"{method_short(m)} = {method_label(m)}" for m in variants.index)
               + ". ROSE needs no perturbation.")

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
