"""The Your data page under AppTest: import a tiny folder (good and bad files), train a 1-epoch tiny VAE, find
it in the model picker, fit ROSE, compare with MNIST, and resume training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from rose_core.data import is_available
from rose_core.data.registry import cache_path

REPO = Path(__file__).resolve().parents[1]
NAME = "user-pagetest"

pytestmark = pytest.mark.skipif(not is_available("mnist", "test"), reason="needs the MNIST cache (make data)")


@pytest.fixture()
def page_env(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(60):   # two classes of blobs, as subfolders
        sub = folder / ("round" if i % 2 else "square")
        sub.mkdir(parents=True, exist_ok=True)
        img = np.zeros((28, 28), np.uint8)
        c = rng.integers(8, 20, 2)
        img[c[0] - 5:c[0] + 5, c[1] - 5:c[1] + 5] = rng.integers(120, 255)
        Image.fromarray(img).save(sub / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    monkeypatch.setenv("ROSE_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("ROSE_USER_DATA", str(tmp_path / "user"))
    (tmp_path / "checkpoints").mkdir()
    yield {"folder": folder, "root": tmp_path}
    for split in ("train", "test"):   # the registry's cache of the imported set (under $ROSE_DATA)
        cache_path(NAME, split, REPO / "data").unlink(missing_ok=True)


def _run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    return " ".join(e.value for kind in ("success", "info", "error", "caption", "markdown") for e in at.get(kind))


def test_import_train_fit_compare_and_resume(page_env):
    at = _run(AppTest.from_file(str(REPO / "app.py"), default_timeout=300))
    at.switch_page("pages/7_your_data.py")
    _run(at)
    assert "Nothing imported yet" in _texts(at)

    at.text_input(key="yd_folder").input(str(page_env["folder"]))
    at.text_input(key="yd_name").input("pagetest")
    at.button(key="yd_import").click()
    _run(at)
    text = _texts(at)
    assert f"Imported `{NAME}`" in text and "48 training and 12 held-out" in text
    assert "1 file(s) could not be read" in [e.label for e in at.expander][0]
    assert at.selectbox(key="yd_dataset").value == NAME

    at.select_slider(key="yd_width").set_value(8)
    at.number_input(key="yd_epochs").set_value(1)
    at.button(key="yd_train").click()
    _run(at)
    assert f"Trained `{NAME}`: 1 epoch(s)" in _texts(at)
    card = json.loads((page_env["root"] / "checkpoints" / f"{NAME}.json").read_text())
    assert card["dataset"] == NAME and card["config"]["base_width"] * card["config"]["capacity"] == 8
    assert card["data"]["files"] == 61 and card["data"]["skipped"] == 1
    assert at.sidebar.selectbox(key="model_picker").value == NAME

    at.toggle(key="yd_fit").set_value(True)
    _run(at)
    assert "Fisher on 48 training images" in _texts(at)
    at.selectbox(key="yd_ood").set_value("mnist")
    at.number_input(key="yd_n").set_value(8)
    at.button(key="yd_compare").click()
    _run(at)
    table = at.dataframe[-1].value
    assert list(table["detector"])[0] == "ROSE" and table["AUROC"].between(0, 1).all()
    assert len(at.get("plotly_chart")) == 2
    assert "6 held-out images" in _texts(at)   # the evaluation half of the 12 held-out files

    at.session_state["yd_running"] = True   # what a run interrupted by Stop leaves behind
    _run(at)
    assert "Training stopped. The model after epoch 1 is saved; Train resumes from it." in _texts(at)
    _run(at)
    assert "Training stopped" not in _texts(at)   # said once

    at.number_input(key="yd_epochs").set_value(2)   # Train again resumes the saved model
    at.button(key="yd_train").click()
    _run(at)
    assert f"Trained `{NAME}`: 2 epoch(s)" in _texts(at)
    assert json.loads((page_env["root"] / "checkpoints" / f"{NAME}.json").read_text())["epochs"] == 2


def test_progress_text_counts_from_the_resumed_epoch():
    from studio.your_data import progress_text

    frac, text = progress_text({"epoch": 2, "epochs": 4, "start_epoch": 2, "step": 5, "steps": 10, "loss": 1234.5,
                                "bits_per_dim": 3.21, "seconds": 10.0})
    assert frac == pytest.approx(2 / 4 + 0.5 / 4)
    assert "epoch 3/4" in text and "1234.5 nats" in text and "3.210 bits/dim" in text
    assert "about 30 s left" in text   # 5 of 20 batches in 10 s: 15 batches left
