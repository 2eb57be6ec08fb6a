"""The pieces of the "Your data" page (``pages/7_your_data.py``): import a folder or a zip of the user's
in-distribution images (:mod:`rose_core.user_data`), train the paper's VAE on them with a progress bar that
can be stopped and resumed, fit ROSE, and compare the user's images with an OOD set.

Training runs in the page's script: the Stop button reruns the page, and Streamlit stops the running script
at the progress bar's next update (every 10 batches); the checkpoint of the last completed epoch stays, and
Train resumes from it (:mod:`rose_core.training`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from rose_core import charts
from rose_core.checkpoint import read_card, weights_path
from rose_core.data import same_distribution
from rose_core.errors import RoseError
from rose_core.labels import dataset_label
from rose_core.metrics import ood_metrics
from rose_core.user_data import (DEFAULT_EPOCHS, DEFAULT_WIDTH, PREFIX, import_images, train_user_model,
                                 user_checkpoint, user_data_dir, user_datasets)
from studio import state
from studio.paths import checkpoints_dir, data_dir
from studio.state import duration_text

WIDTHS = (8, 16, 32)
"""Base widths ``n`` offered (the paper's FMNIST VAE: 32)."""


def progress_text(event: dict) -> tuple[float, str]:
    """``(fraction done, text)`` of a training progress event (:mod:`rose_core.training`): epoch, loss,
    bits/dim and the time left at the rate of this run so far."""
    steps, first = event["steps"], event["start_epoch"]
    done = (event["epoch"] - first) * steps + event["step"]
    total = max(1, (event["epochs"] - first) * steps)
    left = event["seconds"] / max(done, 1) * (total - done)
    fraction = event["epoch"] / event["epochs"] + event["step"] / steps / event["epochs"]
    return (min(1.0, fraction),
            f"epoch {event['epoch'] + 1}/{event['epochs']} · batch {event['step']}/{steps} · loss "
            f"{event['loss']:.1f} nats ({event['bits_per_dim']:.3f} bits/dim) · {duration_text(left)} left")


# --------------------------------------------------------------------------------------------
# 1. Import
# --------------------------------------------------------------------------------------------

def import_form() -> None:
    """Where the images are (a folder on the server or an uploaded zip), a name and the channels; imports on
    the button, with a progress bar and a table of the files that could not be read."""
    source = st.radio("Your in-distribution images are", ["in a folder on this server", "in a zip file I upload"],
                      horizontal=True, key="yd_source")
    c1, c2 = st.columns([2, 1])
    if source.startswith("in a folder"):
        folder = c1.text_input("Folder (searched recursively; flat or one subfolder per class)", key="yd_folder",
                               placeholder="/path/to/images")
        upload = None
    else:
        upload = c1.file_uploader("Zip of images (flat or one subfolder per class)", type=["zip"], key="yd_zip")
        folder = None
    name = c2.text_input("Name", value="mine", key="yd_name", max_chars=40,
                         help=f"The dataset and the model are called `{PREFIX}<name>`.")
    channels = c2.selectbox("Channels", ["infer", 1, 3], key="yd_channels",
                            help="infer: 1 (grey) when every sampled file is grey, else 3 (colour).")
    if not st.button("Import the images", key="yd_import", icon=":material/upload:"):
        return
    if not (folder or upload):
        st.warning("Give a folder, or upload a zip, first.")
        return
    bar = st.progress(0.0, text="Reading the files")
    try:
        card = import_images(folder or upload.name, name, channels=None if channels == "infer" else int(channels),
                             zip_file=upload, data_root=data_dir(),
                             progress=lambda done, total: bar.progress(done / max(total, 1),
                                                                        text=f"Reading file {done:,} of {total:,}"))
    except RoseError as exc:
        bar.empty()
        st.error(str(exc))
        return
    bar.empty()
    st.session_state["yd_dataset"] = card["name"]
    st.success(f"Imported `{card['name']}`: {card['train']:,} training and {card['test']:,} held-out "
               f"images, {card['channels']} channel(s).")


def dataset_summary(card: dict) -> None:
    """What was imported: counts, the folder, its file list's hash and the files that were skipped."""
    prov = card["provenance"]
    st.markdown(f"**{card['name']}** — {card['origin']}: {prov['files']:,} files, "
                f"{prov['decoded']:,} decoded ({card['train']:,} for training, every 5th file by "
                f"sorted path — {card['test']:,} — held out), {prov['skipped']:,} skipped; resized to "
                f"32×32 with {card['channels']} channel(s) ({prov['channels']}). File-list SHA-256 "
                f"`{prov['file_list_sha256'][:16]}…`; stored in `{user_data_dir(data_dir())}`.")
    if prov["skipped_files"]:
        with st.expander(f"{prov['skipped']} file(s) could not be read"):
            st.dataframe(pd.DataFrame(prov["skipped_files"]), hide_index=True)


# --------------------------------------------------------------------------------------------
# 2. Train
# --------------------------------------------------------------------------------------------

def _saved(name: str) -> dict | None:
    path = user_checkpoint(checkpoints_dir(), name)
    if not weights_path(path).exists():
        return None
    try:
        return read_card(path)
    except RoseError:
        return None


def train_form(dataset: str) -> dict | None:
    """Width and epochs, Train (resumes a saved model) / Stop, the progress bar; returns the saved model's card."""
    saved = _saved(dataset)
    c1, c2, c3 = st.columns(3)
    width = c1.select_slider("Width n (base channels)", WIDTHS, value=DEFAULT_WIDTH, key="yd_width",
                             disabled=saved is not None,
                             help="The paper's VAE at n = 32 (Fashion-MNIST); smaller trains faster. A saved model "
                                  "keeps its width; tick 'start again' to change it.")
    epochs = int(c2.number_input("Epochs (in all)", 1, 500, DEFAULT_EPOCHS, key="yd_epochs"))
    fresh = c3.checkbox("Start again (discard the saved model)", key="yd_fresh", disabled=saved is None)
    if saved is not None:
        st.caption(f"Saved: `{user_checkpoint(checkpoints_dir(), dataset)}`, {saved.get('epochs')} epoch(s), "
                   f"width {saved['config']['base_width'] * saved['config'].get('capacity', 1):g}, test bits/dim "
                   f"{saved.get('test_bits_per_dim', '—')}. Train continues it up to the epochs above.")
    b1, b2 = st.columns([1, 4])
    go = b1.button("Train", key="yd_train", icon=":material/play_arrow:", type="primary")
    b2.button("Stop", key="yd_stop", icon=":material/stop:",
              help="Stops training at its next progress update; the last completed epoch is kept and Train resumes.")
    if st.session_state.get("yd_trained"):
        st.success(st.session_state.pop("yd_trained"))
    if st.session_state.pop("yd_running", False) and not go:   # a run this session started did not finish
        st.info("Training stopped. " + (f"The model after epoch {saved.get('epochs')} is saved; Train resumes from it."
                                        if saved is not None else "No epoch had finished, so nothing was saved."))
    if not go:
        return saved
    bar = st.progress(0.0, text="Loading the images")
    st.session_state["yd_running"] = True   # cleared when the run finishes; Stop interrupts it before that
    try:
        card = train_user_model(dataset, checkpoints_dir(), epochs=epochs, capacity=width / 32,
                                resume=not fresh, data_root=data_dir(),
                                on_progress=lambda ev: bar.progress(*progress_text(ev)))
    except RoseError as exc:
        bar.empty()
        st.session_state.pop("yd_running", None)
        st.error(str(exc))
        return saved
    bar.empty()
    st.session_state.pop("yd_running", None)
    state.model_cards.clear()   # the new model appears in the picker at once
    st.session_state["model_choice"] = dataset
    st.session_state["yd_trained"] = (
        f"Trained `{dataset}`: {card['epochs']} epoch(s), {card['train_seconds']:.0f} s of training in all, test "
        f"bits/dim {card.get('test_bits_per_dim', '—')} on {card.get('test_images')} held-out images. It is now in "
        "the model picker.")
    st.rerun()   # the sidebar's model picker was drawn before the model existed


# --------------------------------------------------------------------------------------------
# 3. ROSE and an OOD set
# --------------------------------------------------------------------------------------------

def compare(name: str, scorer) -> None:
    """ROSE and the likelihood on the held-out evaluation images vs an OOD set (any available dataset, or
    another imported folder or zip): AUROC, FPR95 and the two histograms."""
    from rose_core.data import load_dataset

    candidates = [d for d in state.available_datasets(str(data_dir()))
                  if not same_distribution(d, scorer.dataset)]
    candidates += [d for d in user_datasets(data_dir()) if d != scorer.dataset and d not in candidates]
    if not candidates:
        st.info("No OOD set is available: build them with `make data`, or import a second folder above.")
        return
    c1, c2 = st.columns([2, 1])
    ood = c1.selectbox("OOD set (a registered dataset, or another folder or zip you imported above)", candidates,
                       format_func=lambda d: d if d.startswith(PREFIX) else dataset_label(d), key="yd_ood",
                       index=candidates.index("mnist") if "mnist" in candidates else 0)
    from rose_core.data.splits import evaluation_indices

    held = len(evaluation_indices(scorer.dataset, root=data_dir()))
    n = int(c2.number_input("Images per side", 2, 2000, min(200, held), key="yd_n",
                            help=f"At most {held}: the evaluation half of your held-out images."))
    if not st.button("Compare", key="yd_compare", icon=":material/compare_arrows:"):
        return
    if n > held:
        st.info(f"Your held-out evaluation half has {held} images; {held} per side are compared.")
        n = held
    bar = st.progress(0.0, text="Scoring")
    try:
        ref = scorer.reference(n, progress=lambda f, m: bar.progress(0.5 * f, text=m))
        images = load_dataset(ood, "test", n=n, seed=1, root=data_dir()).images
        res = scorer.score(images, progress=lambda f, m: bar.progress(0.5 + 0.5 * f, text=m))
    except RoseError as exc:
        bar.empty()
        st.error(str(exc))
        return
    bar.empty()
    rose, nll = ood_metrics(ref.score, res.score), ood_metrics(ref.loss, res.nll_nats)
    st.dataframe(pd.DataFrame({"detector": ["ROSE", f"likelihood ({scorer.loss_kind})"],
                               "AUROC": [rose["auroc"], nll["auroc"]], "FPR95": [rose["fpr95"], nll["fpr95"]]}),
                 hide_index=True)
    label = ood if ood.startswith(PREFIX) else dataset_label(ood)
    st.caption(f"{len(ref.score)} held-out images of `{scorer.dataset}` (the evaluation half, never used for the "
               f"fit or its calibration) vs {len(res.score)} images of {label}; OOD is the positive class.")
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.histogram_pair(np.asarray(ref.loss), res.nll_nats, scorer.dataset, label,
                                          "Likelihood: loss (nats)", "loss (nats)"), key="yd_hist_nll")
    c2.plotly_chart(charts.histogram_pair(np.asarray(ref.score), res.score, scorer.dataset, label,
                                          "ROSE score", "ROSE score"), key="yd_hist_rose")
