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
from studio.format import export_name, upscale
from studio.paths import data_dir
from studio.verdict import p_text

# (no bare strings at the top level of a page: Streamlit's "magic" would print them)
MAX_CARDS = 8  # images shown with a detail card (each draws a chart); the table, CSV and comparison hold them all
SHRINK_NOTE = 2  # an upload more than this many times the model's input size on a side gets a "shrunk" note
JPEG_FORMATS = ("JPEG", "MPO")

name, card = ui.open_page("Score images")
state.warm_up(name)  # landing here first: the scorer loads while the user picks images (once per server)

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
        size = int((card.get("config") or {}).get("image_size", 32))
        h, w = u.array.shape[:2]
        if max(h, w) > SHRINK_NOTE * size:
            st.warning(f"**{u.name}**: shrunk from {w}×{h} to {size}×{size} pixels, the model's input size (shorter side "
                       f"to {size}, then the centre cropped), so fine detail is lost; the verdict is about the "
                       "shrunk image shown in its card.", icon=":material/info:")
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
    # the kept choice becomes the widget's default: a number input recreated (after a visit elsewhere) with a kept
    # value other than its default ignores the user typing the default back (Streamlit 1.67's frontend)
    n = d2.number_input("How many", 1, 32, st.session_state.pop("score_n", 6), key="score_n")
    seed = d3.number_input("Seed", 0, 10_000, st.session_state.pop("score_seed", 0), key="score_seed")
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
                            f"Scoring {len(images)} image(s) with {name}", cancelled="no verdicts are shown")
    if result is None:  # cancelled by this session: the note and "Run it again" are on the page
        st.stop()
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
    st.caption(f"Scored live here. ROSE fit made on this machine ({live.describe()['definition']}); the results "
               "bundle has no fit of this definition for this model.")
else:
    st.caption(f"Scored live here, with the results bundle's ROSE fit (`results/{name}/fits/{live.method}`); nothing "
               "on this page is precomputed.")

frame = result.to_frame(threshold=threshold, tpr=tpr)
n_ood = int(verdicts.sum())
st.subheader(f"{len(result)} image(s) scored: {n_ood} OOD, {len(result) - n_ood} in-distribution")
VERDICT_COLOURS = {"OOD": "background-color: #f8d0d0", "in-distribution": "background-color: #c7e9c0"}
image_column = st.column_config.TextColumn("image", width="medium")
# two narrow tables rather than one that scrolls sideways: the verdicts, then the p-values
verdict_table = frame[["image", "verdict", "fired", f"{live.method}_score", "nll_nats"]]
st.dataframe(verdict_table.style.map(lambda v: VERDICT_COLOURS.get(v, ""), subset=["verdict"]), hide_index=True,
             column_config={
                 "image": image_column,
                 "fired": st.column_config.TextColumn("fired", help="The test that fired. " + glossary.tip("typicality")),
                 f"{live.method}_score": st.column_config.NumberColumn("ROSE score", format="%.3f",
                                                                       help=glossary.tip("rose_score")),
                 "nll_nats": st.column_config.NumberColumn("NLL (nats)", format="%.1f", help=f"{result.nll_kind}. "
                                                           + glossary.tip("iwae" if result.nll_kind.startswith("IWAE")
                                                                          else "nll"))},
             key="score_table")
st.dataframe(frame[["image", "p_rose", "p_typicality", "p_combined", "bits_per_dim"]], hide_index=True,
             column_config={
                 "image": image_column,
                 "p_rose": st.column_config.NumberColumn("p ROSE", format="%.4f", help=glossary.tip("p_value")),
                 "p_typicality": st.column_config.NumberColumn("p typicality", format="%.4f",
                                                               help=glossary.tip("typicality")),
                 "p_combined": st.column_config.NumberColumn("p combined", format="%.4f", help=glossary.tip("p_value")),
                 "bits_per_dim": st.column_config.NumberColumn("bits/dim", format="%.3f",
                                                               help=glossary.tip("bits_per_dim"))},
             key="score_p_table")
st.download_button("Download all results (CSV)", frame.to_csv(index=False).encode(),
                   file_name=export_name(name, fisher, verdict), mime="text/csv", key="score_csv")

# the per-layer z threshold equals the verdict's only for ROSE alone with a plain max of the z-scores
flat = (result.verdict_test == "rose" and live.rose.p == math.inf and live.rose.aggregation == "relu"
        and np.all(np.asarray(live.rose.beta) == 0))
jpeg_names = set(jpegs)


def image_card(i: int, key: str, y_range: list[float] | None = None, narrow: bool = False) -> None:
    """One image's card: the model input, the verdict and what fired, the ROSE score, NLL and per-layer z-scores
    (``narrow``: the chart under the text, for a half-width column)."""
    v = verdict_words.describe(str(fired[i]), result.p_value[i], result.p_typicality[i], result.p_combined[i],
                               result.verdict_test)
    with st.container(border=True):
        left, mid, right = st.columns([1, 2]) + [None] if narrow else st.columns([1, 1.3, 3])
        left.image(upscale(result.inputs[i]), caption=f"model input {result.inputs.shape[1]}×{result.inputs.shape[2]}")
        headline = f":red[**{v.headline}**]" if v.ood else f":green[**{v.headline}**]"
        mid.markdown(f"**{result.names[i]}**  \n{headline}  \n{v.detail}  \n"
                     f"ROSE score **{result.score[i]:.3f}**  \n"
                     f"NLL **{result.nll_nats[i]:.1f}** nats = **{result.bits_per_dim[i]:.3f}** bits/dim"
                     + ("  \n_JPEG upload: re-encoding alone can shift it (see the note above)._"
                        if result.names[i] in jpeg_names else ""))
        fig = charts.zscore_figure([glossary.layer_label(n) for n in result.layer_names], result.layer_z[i],
                                   threshold if flat else None, "per-layer z-scores")
        if y_range is not None:
            fig.update_yaxes(range=y_range)
        (right or st).plotly_chart(fig, key=key)


if len(result) >= 2:
    st.subheader("Compare two images")
    labels = [f"{i + 1}. {n}" for i, n in enumerate(result.names)]
    for k, default in (("score_cmp_a", 0), ("score_cmp_b", 1)):
        if st.session_state.get(k) not in labels:  # new images: start from the first two
            st.session_state[k] = labels[default]
    k1, k2 = st.columns(2)
    picks = [k1.selectbox("Left", labels, key="score_cmp_a"), k2.selectbox("Right", labels, key="score_cmp_b")]
    pair = [labels.index(p) for p in picks]
    z = result.layer_z[pair]
    lo, hi = float(min(z.min(), 0.0)), float(max(z.max(), threshold if flat else 0.0))
    span = [lo - 0.1 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9)]
    for col, i, side in zip((k1, k2), pair, ("a", "b")):
        with col:
            image_card(i, key=f"cmp_{side}", y_range=span, narrow=True)
    st.caption("Side by side, on one z-score scale. " + (
        "The ROSE score is the largest per-layer z-score above zero: how many standard deviations the most unusual "
        "layer is from held-out in-distribution images." if flat else
        "The ROSE score aggregates the per-layer z-scores (see the glossary)."), help=glossary.tip("rose_score"))

st.subheader("Every image")
if len(result) > MAX_CARDS:
    st.caption(f"Details for the first {MAX_CARDS} images; the table, the CSV and the comparison above hold all "
               f"{len(result)}.")
for i in range(min(len(result), MAX_CARDS)):
    image_card(i, key=f"z_{i}")
