"""Score images: upload files or pick dataset samples; the verdict with the test that fired, ROSE's and the
likelihood typicality p-values, NLL and per-layer z-scores."""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

from rose_core import charts
from rose_core.defaults import default_verdict
from rose_core.errors import RoseError
from rose_core.labels import JPEG_NOTE, dataset_label, method_label
from studio import glossary, state
from studio import uploads
from studio import verdict as verdict_words
from studio import widgets as ui
from studio.format import upscale
from studio.paths import data_dir
from studio.verdict import p_text

MAX_CARDS = 24
JPEG_FORMATS = ("JPEG", "MPO")

name, card = ui.open_page("Score images")

c1, c2 = st.columns([2, 1])
source = c1.radio("Images from", ["Upload files", "Dataset samples"], horizontal=True, key="score_source")
fisher = c2.radio("Fisher approximation", state.fisher_order(name), format_func=str.upper, horizontal=True,
                  key=f"score_fisher_{name}", help="The first option is the paper's choice for this model.\n\n"
                                                   + glossary.tips("ekfac", "diag"))
VERDICT_NAMES = {"rose": "ROSE", "rose+typicality": "ROSE + likelihood typicality"}
VERDICT = default_verdict(card.get("kind"))
verdict = st.radio("Verdict test", list(VERDICT_NAMES), index=list(VERDICT_NAMES).index(VERDICT), horizontal=True,
                   key="score_verdict", format_func=lambda v: VERDICT_NAMES[v] + (" (default)" if v == VERDICT else ""),
                   help="ROSE alone (the default, chosen on in-distribution and stress-suite evidence: see the README), "
                        "or ROSE combined with a two-sided test of the likelihood, which also flags images whose "
                        "likelihood is atypically high or low — e.g. noise and blank images.")
tpr = st.slider("In-distribution true-positive rate of the threshold", 0.80, 0.99, 0.95, 0.01, format="%.2f",
                key="score_tpr", help="The threshold keeps this fraction of in-distribution calibration images "
                                      "below it; images scoring above it are called OOD.\n\n" + glossary.tip("tpr"))

images: list[np.ndarray] = []
names: list[str] = []
jpegs: list[str] = []
n_rejected = 0
if source == "Upload files":
    uploads.widget_is_fresh()
    st.file_uploader("Images (PNG, JPEG, BMP, GIF, TIFF, WebP; any size, grey or colour)",
                     accept_multiple_files=True, key=uploads.widget_key(), on_change=uploads.sync,
                     help="Uploaded images stay here, with their scores, while you visit other pages, until you "
                          "press Clear.")
    kept = uploads.stored()
    if kept:
        u1, u2 = st.columns([4, 1])
        u1.caption(f"{len(kept)} uploaded file(s) kept for this browser session (they stay when you visit other "
                   "pages); the uploader above adds to them.")
        u2.button("Clear", key="score_clear", on_click=uploads.clear, icon=":material/delete:",
                  help="Drop every uploaded image and its results.")
    for u in kept:
        if u.array is None:
            st.error(f"**{u.name}** was not scored: {u.error}", icon=":material/block:")
            n_rejected += 1
            continue
        for note in u.notes:
            st.warning(f"**{u.name}**: {note}", icon=":material/info:")
        if u.format in JPEG_FORMATS:
            jpegs.append(u.name)
        images.append(u.array)
        names.append(u.name)
    if jpegs:
        st.info(f"**{', '.join(jpegs)}**: {JPEG_NOTE} Upload PNG for a lossless image.", icon=":material/photo_camera:")
else:
    available = state.available_datasets()
    if not available:
        st.error("No dataset is available on this machine; build the caches with `make data`.")
        st.stop()
    default = "mnist" if "mnist" in available else available[0]
    d1, d2, d3 = st.columns([2, 1, 1])
    ds = d1.selectbox("Dataset (test split)", available, index=available.index(default), key="score_dataset",
                      format_func=dataset_label)
    n = d2.number_input("How many", 1, 32, 6, key="score_n")
    seed = d3.number_input("Seed", 0, 10_000, 0, key="score_seed")
    try:
        from rose_core.data import load_dataset

        samples = load_dataset(ds, "test", n=int(n), seed=int(seed), root=data_dir())
    except RoseError as exc:
        st.error(f"{ds} cannot be loaded: {exc}")
        st.stop()
    images = list(samples.images)
    names = [f"{ds} sample {i + 1}" for i in range(len(images))]

if not images:
    if n_rejected:
        st.info("None of the uploaded files could be scored (see above); upload another image, or switch to "
                "dataset samples.")
    else:
        st.info("Upload one or more images, or switch to dataset samples, to score them.")
    st.stop()

live = state.live_scorer(name, fisher, verdict)
if live is None:
    st.stop()

key = ("score", state.live_key(name, fisher, verdict), state.digest(*names, *images))
last = st.session_state.get("score_last")  # this session's latest results, even if the server's store dropped them
if last is not None and last[0] == key:
    result = last[1]
else:
    result = state.computed(key, lambda progress: live.score(images, names, progress=progress),
                            f"Scoring {len(images)} image(s) with {name}")
    st.session_state["score_last"] = (key, result)
threshold = live.threshold(tpr)
verdicts = result.is_ood(threshold)
fired = result.fired(threshold)

if result.verdict_test == "rose":
    rule = (f"**Verdict test: ROSE.** Threshold {threshold:.3f} on the {method_label(live.method)} score; it keeps "
            f"{tpr:.0%} of {live.calibration_source} below it.")
else:
    rule = (f"**Verdict test: ROSE + likelihood typicality.** OOD when the combined p-value is below "
            f"{p_text(math.exp(-threshold))} (threshold {threshold:.3f} on −log p), which keeps {tpr:.0%} of "
            f"{live.calibration_source} in-distribution.")
st.markdown(f"{rule}  \n{verdict_words.meaning(result.verdict_test, tpr)}  \nLikelihood shown: {result.nll_kind}.",
            help=glossary.tips("rose_score", "iwae" if result.nll_kind.startswith("IWAE") else "nll"))
for msg in live.messages:
    st.caption(f"Note: {msg}")
if live.fit_source != "bundle":
    st.caption(f"ROSE fit made on this machine ({live.describe()['definition']}); the results bundle has no "
               "fit of this definition for this model.")

frame = result.to_frame(threshold=threshold, tpr=tpr)
summary = frame[["image", "verdict", "fired", f"{live.method}_score", "p_rose", "p_typicality", "p_combined",
                 "nll_nats", "bits_per_dim"]]
n_ood = int(verdicts.sum())
st.subheader(f"{len(result)} image(s) scored: {n_ood} OOD, {len(result) - n_ood} in-distribution")
st.dataframe(summary, hide_index=True, column_config={
    "fired": st.column_config.TextColumn("test that fired", help=glossary.tip("typicality")),
    f"{live.method}_score": st.column_config.NumberColumn("ROSE score", format="%.3f", help=glossary.tip("rose_score")),
    "p_rose": st.column_config.NumberColumn("p ROSE", format="%.4f", help=glossary.tip("p_value")),
    "p_typicality": st.column_config.NumberColumn("p typicality", format="%.4f", help=glossary.tip("typicality")),
    "p_combined": st.column_config.NumberColumn("p combined", format="%.4f", help=glossary.tip("p_value")),
    "nll_nats": st.column_config.NumberColumn("NLL (nats)", format="%.1f", help=f"{result.nll_kind}. "
                                              + glossary.tip("iwae" if result.nll_kind.startswith("IWAE") else "nll")),
    "bits_per_dim": st.column_config.NumberColumn("bits/dim", format="%.3f", help=glossary.tip("bits_per_dim"))},
    key="score_table")
st.download_button("Download all results (CSV)", frame.to_csv(index=False).encode(), file_name=f"rose-{name}.csv",
                   mime="text/csv", key="score_csv")

if len(result) > MAX_CARDS:
    st.caption(f"Details for the first {MAX_CARDS} images; the table and the CSV hold all {len(result)}.")
# the per-layer z threshold equals the verdict's only for ROSE alone with a plain max of the z-scores
flat = (result.verdict_test == "rose" and live.rose.p == math.inf and live.rose.aggregation == "relu"
        and np.all(np.asarray(live.rose.beta) == 0))
jpeg_names = set(jpegs)
for i in range(min(len(result), MAX_CARDS)):
    v = verdict_words.describe(str(fired[i]), result.p_value[i], result.p_typicality[i], result.p_combined[i],
                               result.verdict_test)
    with st.container(border=True):
        left, mid, right = st.columns([1, 1.3, 3])
        left.image(upscale(result.inputs[i]), caption=f"model input {result.inputs.shape[1]}×{result.inputs.shape[2]}")
        headline = f":red[**{v.headline}**]" if v.ood else f":green[**{v.headline}**]"
        mid.markdown(f"**{result.names[i]}**  \n{headline}  \n{v.detail}  \n"
                     f"ROSE score **{result.score[i]:.3f}**  \n"
                     f"NLL **{result.nll_nats[i]:.1f}** nats = **{result.bits_per_dim[i]:.3f}** bits/dim"
                     + ("  \n_JPEG upload: re-encoding alone can shift it (see the note above)._"
                        if result.names[i] in jpeg_names else ""))
        right.plotly_chart(charts.zscore_figure([glossary.layer_label(n) for n in result.layer_names],
                                                result.layer_z[i], threshold if flat else None,
                                                "per-layer z-scores"), key=f"z_{i}")
