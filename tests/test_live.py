"""LiveScorer: fits, calibration sources, scoring of uint8 images of any size, robustness AUROC.

Tiny models saved to a temporary folder; the fit data are real Fashion-MNIST images."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rose_core.checkpoint import save_model
from rose_core.data import load_dataset, to_model_input
from rose_core.errors import CheckpointError, DatasetUnavailable, InvalidInput
from rose_core.live import LiveScorer
from rose_core.metrics import empirical_p_value, threshold_at_tpr
from rose_core.models import Glow, GlowConfig, VAE, VAEConfig
from rose_core.results import Results
from rose_core.scorers.rose import RoseScorer

FIT_N = 32


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    model = VAE(VAEConfig(channels=1, base_width=4, latent_dim=3)).eval()
    save_model(model, tmp_path / "ckpt" / "tiny-vae", dataset="fashion-mnist", epochs=0, test_bits_per_dim=8.0)
    return tmp_path / "ckpt" / "tiny-vae.json", model


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One live fit (EKFAC, no bundle) shared by the tests that only score."""
    tmp = tmp_path_factory.mktemp("live")
    torch.manual_seed(0)
    model = VAE(VAEConfig(channels=1, base_width=4, latent_dim=3)).eval()
    save_model(model, tmp / "ckpt" / "tiny-vae", dataset="fashion-mnist", epochs=0)
    seen = []
    live = make(tmp / "ckpt" / "tiny-vae.json", tmp, progress=lambda f, m: seen.append((f, m)))
    return live, seen, tmp


def make(ckpt, tmp_path, **kw) -> LiveScorer:
    kw.setdefault("fit_n", FIT_N)
    kw.setdefault("calib_n", 40)
    kw.setdefault("nll_k", 4)
    return LiveScorer(ckpt, results=tmp_path / "results", **kw)


def test_fits_when_nothing_exists_then_uses_the_cache(fitted):
    live, seen, tmp_path = fitted
    ckpt = live.checkpoint
    assert live.fit_source == "fitted" and live.name == "tiny-vae"
    assert live.rose.n_fisher + live.rose.n_norm == FIT_N
    assert len(live.calibration) == live.rose.n_norm == FIT_N // 2
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("pass 3 of 3" in m for _, m in seen)  # EKFAC: two Fisher passes + the normalisation pass
    cached = list((tmp_path / "results" / "cache" / "live" / "tiny-vae").glob("*"))
    assert {p.suffix for p in cached} >= {".json", ".safetensors", ".npy"}
    assert not (tmp_path / "results" / "tiny-vae").exists()  # the bundle folder is never written

    again = make(ckpt, tmp_path)
    assert again.fit_source == "cache"
    images = load_dataset("mnist", "test", n=5, seed=3).images
    np.testing.assert_allclose(again.score(images, nll="loss").score, live.score(images, nll="loss").score)
    np.testing.assert_array_equal(again.calibration, live.calibration)


def test_scores_match_the_rose_scorer_and_images_of_any_size(fitted):
    live = fitted[0]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (28, 28), dtype=np.uint8),            # grey, 2-D
              rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),         # colour, non-square
              rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)]
    r = live.score(images, names=["a", "b", "c"])
    assert r.inputs.shape == (3, 32, 32, 1) and r.inputs.dtype == np.uint8
    assert r.layer_z.shape == (3, len(live.layer_names)) and len(live.layer_names) == 5
    direct = live.rose.score(torch.from_numpy(r.inputs).permute(0, 3, 1, 2).float() / 255.0)
    np.testing.assert_allclose(r.score, direct.score)
    np.testing.assert_allclose(r.layer_z, direct.extras["layer_z"])
    np.testing.assert_allclose(r.bits_per_dim, r.nll_nats / (1024 * math.log(2)))
    assert np.isfinite(r.nll_nats).all() and r.nll_kind == "IWAE, k = 4"
    np.testing.assert_allclose(r.p_value, empirical_p_value(live.calibration, r.score))
    assert np.isnan(r.nll_p_value).all()  # no bundle, no NLL calibration
    # IWAE is seeded: the same image gives the same NLL whatever else is in the batch
    again = live.score(images[:1], nll="iwae")
    np.testing.assert_allclose(again.nll_nats, r.nll_nats[:1], rtol=1e-6)

    t = live.threshold(0.9)
    assert t == threshold_at_tpr(live.calibration, 0.9)
    df = r.to_frame(threshold=t, tpr=0.9)
    assert list(df["image"]) == ["a", "b", "c"]
    assert set(df["verdict"]) <= {"OOD", "in-distribution"}
    assert (df["verdict"] == "OOD").tolist() == (r.score > t).tolist()
    assert [c for c in df.columns if c.startswith("z[")] == [f"z[{n}]" for n in live.layer_names]
    # at TPR 100% no calibration image is above the threshold
    assert (live.calibration <= live.threshold(1.0)).all()

    empty = live.score([])
    assert len(empty) == 0 and empty.layer_z.shape == (0, 5)
    assert live.rose.fisher_kind == "ekfac"
    with pytest.raises(InvalidInput):
        live.score([np.zeros((2, 3, 4, 5), np.uint8)])


def _write_bundle(tmp_path, model, fisher="diag", with_scores=True):
    """A bundle fit for ``model`` and (optionally) its in-distribution scores, as the harness writes them."""
    fit_x = to_model_input(load_dataset("fashion-mnist", "train", n=24, seed=5).images, channels=1)
    scorer = RoseScorer(model, fisher=fisher).fit(fit_x)
    res = Results.for_checkpoint("tiny-vae", tmp_path / "results")
    scorer.save(res.folder / "fits" / f"rose-{fisher}")
    test_x = to_model_input(load_dataset("fashion-mnist", "test", n=20, seed=6).images, channels=1)
    in_scores = scorer.score(test_x).score
    if with_scores:
        rows = pd.DataFrame({"dataset": "fashion-mnist", "is_ood": False, "index": np.arange(20),
                             "method": f"rose-{fisher}", "perturbation": "none", "strength": np.nan,
                             "repeat": 0, "score": in_scores, "nll_nats": np.nan})
        nll = rows.assign(method="nll", score=np.linspace(2000, 2500, 20), nll_nats=np.linspace(2000, 2500, 20))
        res.write("scores", pd.concat([rows, nll], ignore_index=True))
    res.write_manifest({"checkpoint": "tiny-vae"})
    return scorer, in_scores


def test_uses_the_bundle_fit_and_its_calibration(tiny_ckpt, tmp_path):
    ckpt, model = tiny_ckpt
    fitted, in_scores = _write_bundle(tmp_path, model)
    live = make(ckpt, tmp_path, fisher="diag")
    assert live.fit_source == "bundle"
    np.testing.assert_allclose(np.sort(live.calibration), np.sort(in_scores))
    assert "20 in-distribution test images of the results bundle" == live.calibration_source
    images = load_dataset("mnist", "test", n=4, seed=0).images
    r = live.score(images)
    np.testing.assert_allclose(r.score, fitted.score(to_model_input(images, channels=1)).score)
    assert np.isfinite(r.nll_p_value).all()  # the bundle has the nll method's in-distribution scores
    assert live.describe()["fit_source"] == "bundle"


def test_bundle_fit_without_scores_is_calibrated_on_test_images(tiny_ckpt, tmp_path):
    ckpt, model = tiny_ckpt
    _write_bundle(tmp_path, model, with_scores=False)
    live = make(ckpt, tmp_path, fisher="diag", calib_n=16)
    assert live.fit_source == "bundle" and len(live.calibration) == 16
    assert "test images" in live.calibration_source
    assert make(ckpt, tmp_path, fisher="diag", calib_n=16).calibration_source == live.calibration_source


def test_a_bundle_fit_of_other_weights_is_not_used(tiny_ckpt, tmp_path):
    ckpt, model = tiny_ckpt
    torch.manual_seed(1)
    other = VAE(model.config).eval()
    _write_bundle(tmp_path, other)
    live = make(ckpt, tmp_path, fisher="diag")
    assert live.fit_source == "fitted"
    assert any("fingerprint" in m for m in live.messages)


def test_perturbed_auroc(fitted):
    live = fitted[0]
    ood = load_dataset("mnist", "test", n=8, seed=2).images
    a = live.perturbed_auroc(ood, "brightness", 0.4, n_ref=8)
    b = live.perturbed_auroc(ood, "brightness", 1.0, n_ref=8)
    assert set(a["auroc"]) == {"rose-ekfac", "nll"} and a["n_in"] == 8 and a["n_ood"] == 8
    assert all(0.0 <= v <= 1.0 for v in a["auroc"].values())
    assert a["perturbed"].mean() < b["perturbed"].mean()
    np.testing.assert_array_equal(b["perturbed"], live.prepare(ood))  # 1.0× changes nothing


def test_glow_inputs_follow_the_model_size(tmp_path):
    torch.manual_seed(0)
    glow = Glow(GlowConfig(channels=1, image_size=8, K=2, L=2, hidden=8))
    glow.train()
    glow.per_sample_loss(torch.rand(8, 1, 8, 8))
    glow.eval()
    save_model(glow, tmp_path / "ckpt" / "tiny-glow", dataset="fashion-mnist", epochs=0)
    live = LiveScorer(tmp_path / "ckpt" / "tiny-glow", results=tmp_path / "results", fit_n=16, fisher="diag")
    r = live.score([np.full((30, 30), 100, np.uint8)])
    assert r.inputs.shape == (1, 8, 8, 1) and r.nll_kind == "exact"
    assert np.isfinite(r.score).all() and np.isfinite(r.nll_nats).all()


def test_errors_say_what_is_wrong(tmp_path, tiny_ckpt):
    with pytest.raises(CheckpointError, match="does not exist"):
        LiveScorer(tmp_path / "nope.json", results=tmp_path / "results")
    ckpt, model = tiny_ckpt
    save_model(model, tmp_path / "ckpt" / "svhn-vae", dataset="svhn", epochs=0)
    with pytest.raises(DatasetUnavailable):
        LiveScorer(tmp_path / "ckpt" / "svhn-vae", results=tmp_path / "results", fit_n=8)
    with pytest.raises(ValueError, match="fisher"):
        LiveScorer(ckpt, fisher="kfac")
