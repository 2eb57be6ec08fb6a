"""Your data: import your own in-distribution images (a folder on the server or a zip), train a small VAE on
them, fit ROSE, and compare them with an OOD set; the new model joins the model picker for every page."""

from __future__ import annotations

import streamlit as st

from rose_core.user_data import PREFIX, user_checkpoint, user_data_dir, user_datasets
from studio import state
from studio import widgets as ui
from studio import your_data as yd
from studio.paths import checkpoints_dir, data_dir

ui.page_setup("Your data")
st.title("Your data")
st.markdown("Bring a folder of images from one distribution — your in-distribution data. ROSE Studio trains the "
            "paper's VAE on them, fits ROSE on the trained model, and tells you how well it separates your images "
            "from others. Files that cannot be read are listed and skipped; every image is resized to 32×32. Every "
            f"5th file (by sorted path) is held out: the model never trains on it, and ROSE calibrates on half of "
            f"these and reports on the other half. Imported images are stored in `{user_data_dir(data_dir())}`, "
            f"models as `{checkpoints_dir()}/{PREFIX}<name>` (neither is committed to git).")

st.subheader("1. Your images")
yd.import_form()
datasets = user_datasets(data_dir())
if not datasets:
    st.info("Nothing imported yet: point at a folder or upload a zip above.")
    st.stop()
names = sorted(datasets)
if st.session_state.get("yd_dataset") not in names:
    st.session_state["yd_dataset"] = names[0]
dataset = st.selectbox("Imported images", names, key="yd_dataset")
yd.dataset_summary(datasets[dataset])

st.subheader("2. Train a VAE on them")
saved = yd.train_form(dataset)
if saved is None:
    st.info("No model trained on these images yet: choose a width and the epochs, then Train.")
    st.stop()

st.subheader("3. ROSE on your model")
if not st.toggle("Fit ROSE and compare with an OOD set", key="yd_fit",
                 help="Fits the default ROSE of the model (Fisher on your training images, calibration on half of the "
                      "held-out ones) once; the fit is cached and every page reuses it."):
    st.stop()
scorer = state.live_scorer(dataset, state.default_fisher(dataset))
if scorer is None:
    st.stop()
FIT_SOURCES = {"bundle": "read from the results bundle", "cache": "read from the cache of earlier fits",
               "fitted": "made now and cached"}
st.caption(f"{scorer.spec.describe(scorer.rose.n_norm)}; the fit was {FIT_SOURCES.get(scorer.fit_source, scorer.fit_source)}.")
yd.compare(dataset, scorer)

st.subheader("4. Every page, on your model")
st.markdown(f"`{dataset}` is in the sidebar's model picker. Score images, Robustness and this page score live; "
            "the pages that read a results bundle (Likelihood vs ROSE, ROC curves, Layer-wise AUROC, Methods) "
            "say what is missing and offer to compute it here.")
if not state.bundle(dataset).exists:
    ui.missing_bundle_message(dataset, "The results bundle of your model", state.main_preset(dataset))
st.caption(f"Checkpoint: `{user_checkpoint(checkpoints_dir(), dataset)}`.")
