"""Every page of the app on a colour (CIFAR-10) model, with AppTest.

A tiny 3-channel VAE and a tiny 3-channel Glow (the two kinds that ship for CIFAR-10), "trained"
on ``cifar10-subset`` (random weights: the pages' job is to handle colour images, not to detect
well), each get a *real* results bundle from the harness on a few images (Table 2 rows, a
brightness sweep), so every page reads what the harness writes for a colour model. Checks: no page raises; the CIFAR-10 sets are never offered as OOD sets; the
Score page scores a colour upload; brightness thumbnails are colour images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from rose_core.checkpoint import save_model
from rose_core.data import load_dataset
from rose_core.evaluation import EvalSettings, run_preset
from rose_core.models import VAE, Glow, GlowConfig, VAEConfig

from test_app import REPO, texts

MODELS = {"vae": ("tiny-vae-cifar10", ["rose-ekfac", "rose-diag", "nll"]),
          "glow": ("tiny-glow-cifar10", ["rose-diag", "nll"])}
"""Per kind: the checkpoint's name and the methods of its bundle (Glow's default ROSE is DIAG)."""
IN_SET = "cifar10-subset"
OOD_SETS = ["mnist", "digits-on-photos", "cifar10-samples"]  # the last is dropped: same distribution
PAGES = ["pages/1_score_images.py", "pages/2_likelihood_vs_rose.py", "pages/3_roc_curves.py",
         "pages/4_layer_auroc.py", "pages/5_robustness.py", "pages/6_methods.py"]


@dataclass(frozen=True)
class ColourEnv:
    root: Path
    """The folder holding ``checkpoints/`` and ``results/``."""
    model: str


@pytest.fixture(scope="module", params=sorted(MODELS))
def colour_env(request, tmp_path_factory):
    name, methods = MODELS[request.param]
    tmp = tmp_path_factory.mktemp(f"colour-{request.param}")
    torch.manual_seed(0)
    if request.param == "vae":
        model = VAE(VAEConfig(channels=3, base_width=4, latent_dim=3)).eval()
    else:
        model = Glow(GlowConfig(channels=3, K=2, L=2, hidden=8)).eval()
    ckpt = tmp / "checkpoints" / name
    save_model(model, ckpt, dataset=IN_SET, epochs=1, test_bits_per_dim=7.9, train_images=5085)
    settings = EvalSettings(n_in=24, n_ood=24, ood_sets=OOD_SETS, methods=methods,
                            rose={"n_fisher": 48}, batch_size=24, n_cal=24)
    run_preset("table2" if request.param == "vae" else "table5", ckpt, tmp / "results", settings,
               show_progress=False)
    run_preset("brightness", ckpt, tmp / "results", settings, show_progress=False, ood_sets=["digits-on-photos"],
               methods=[methods[0], "nll"], strengths=[0.6, 1.0, 1.4], n=24)
    return ColourEnv(tmp, name)


@pytest.fixture
def app_env(colour_env, monkeypatch):
    monkeypatch.setenv("ROSE_CHECKPOINTS", str(colour_env.root / "checkpoints"))
    monkeypatch.setenv("ROSE_RESULTS", str(colour_env.root / "results"))
    monkeypatch.setenv("ROSE_LIVE_N_FISHER", "24")
    monkeypatch.setenv("ROSE_LIVE_N_CALIBRATION", "24")
    monkeypatch.setenv("ROSE_LIVE_N", "8")
    return colour_env


def _open(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_bundle_of_a_colour_model_has_no_cifar10_set_as_ood(colour_env):
    from rose_core.results import Results

    b = Results.for_checkpoint(colour_env.model, colour_env.root / "results")
    assert set(b.metric_sets()) >= {"mnist", "digits-on-photos"}
    assert not any(s.startswith("cifar10") for s in b.metric_sets())


@pytest.mark.parametrize("page", [None] + PAGES)
def test_every_page_renders_for_a_colour_model(app_env, page):
    at = _open(page)
    shown = " ".join(texts(at, "markdown") + texts(at, "caption") + texts(at, "subheader"))
    assert app_env.model in shown or page is not None
    for box in at.selectbox:  # no CIFAR-10 set is offered as an OOD set of a CIFAR-10 model
        if "OOD" in str(box.label):
            assert not any(str(o).startswith("cifar10") for o in box.options), (page, box.label, box.options)


def test_a_colour_upload_is_scored(app_env):
    rgb = load_dataset("digits-on-photos", "test", n=1, seed=0).images[0]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    at = _open("pages/1_score_images.py")
    at.file_uploader(key="score_files").set_value([("house-number.png", buf.getvalue(), "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert list(table["image"]) == ["house-number.png"]
    assert np.isfinite(table.filter(like="_score").to_numpy(dtype=float)).all()
    assert np.isfinite(table["nll_nats"]).all()


def test_brightness_thumbnails_are_in_colour(app_env):
    from studio.format import upscale

    at = _open("pages/5_robustness.py")
    at.selectbox(key="rob_ood").set_value("digits-on-photos").run()
    assert not at.exception, [e.value for e in at.exception]
    strips = [el for el in at.get("image") if len(el.proto.imgs) == 9]
    assert strips, "one thumbnail per brightness step"
    rgb = load_dataset("digits-on-photos", "test", n=1, seed=0).images[0]
    big = upscale(rgb, 72)
    assert big.shape == (72, 72, 3) and not np.array_equal(big[..., 0], big[..., 1])  # colour kept
