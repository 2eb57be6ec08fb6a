"""LiveScorer: the default fit and its held-out calibration, bundle/cache reuse, scoring of uint8
images of any size, the two verdict tests, robustness AUROC.

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
CAL_N = 24


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
    kw.setdefault("n_fisher", FIT_N)
    kw.setdefault("n_calibration", CAL_N)
    kw.setdefault("nll_k", 4)
    return LiveScorer(ckpt, results=tmp_path / "results", **kw)


def test_fits_when_nothing_exists_then_uses_the_cache(fitted):
    live, seen, tmp_path = fitted
    ckpt = live.checkpoint
    assert live.fit_source == "fitted" and live.name == "tiny-vae"
    assert (live.rose.n_fisher, live.rose.n_norm) == (FIT_N, CAL_N) and live.rose.calibrated
    assert len(live.calibration) == CAL_N and "held-out fashion-mnist test images" in live.calibration_source
    # calibration = the calibration half of the test split, exactly
    from rose_core.data.splits import calibration_images
    cal = to_model_input(calibration_images("fashion-mnist", CAL_N).images, channels=1)
    np.testing.assert_allclose(live.calibration, live.rose.score(cal).score, rtol=1e-5)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("Fitting ROSE-EKFAC: Fisher on 32 training images" in m for _, m in seen)
    cached = list((tmp_path / "results" / "cache" / "live" / "tiny-vae").glob("*"))
    assert {p.suffix for p in cached} >= {".json", ".safetensors"}
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
    assert np.isfinite(r.nll_nats).all() and r.nll_kind == "−ELBO at z = μ"   # the free loss by default
    np.testing.assert_allclose(r.nll_nats, direct.extras["loss"])
    np.testing.assert_allclose(r.p_value, empirical_p_value(live.calibration, r.score))
    # typicality: two-sided p of the loss among the calibration losses; combined = Bonferroni min-p
    lo = (1 + (live.rose.calibration_loss[None] <= r.nll_nats[:, None]).sum(1)) / (CAL_N + 1)
    hi = (1 + (live.rose.calibration_loss[None] >= r.nll_nats[:, None]).sum(1)) / (CAL_N + 1)
    np.testing.assert_allclose(r.p_typicality, np.minimum(1, 2 * np.minimum(lo, hi)))
    np.testing.assert_allclose(r.p_combined, np.minimum(1, 2 * np.minimum(r.p_value, r.p_typicality)))
    # IWAE on request, seeded: the same image gives the same NLL whatever else is in the batch
    iw = live.score(images, nll="iwae")
    assert iw.nll_kind == "IWAE, k = 4"
    again = live.score(images[:1], nll="iwae")
    np.testing.assert_allclose(again.nll_nats, iw.nll_nats[:1], rtol=1e-6)

    t = live.threshold(0.9)
    assert t == threshold_at_tpr(live.calibration, 0.9)
    df = r.to_frame(threshold=t, tpr=0.9)
    assert list(df["image"]) == ["a", "b", "c"]
    assert set(df["verdict"]) <= {"OOD", "in-distribution"}
    assert (df["verdict"] == "OOD").tolist() == (r.score > t).tolist()
    assert set(df["fired"]) <= {"rose", "none"} and r.verdict_test == live.verdict
    assert [c for c in df.columns if c.startswith("z[")] == [f"z[{n}]" for n in live.layer_names]
    # at TPR 100% no calibration image is above the threshold
    assert (live.calibration <= live.threshold(1.0)).all()

    empty = live.score([])
    assert len(empty) == 0 and empty.layer_z.shape == (0, 5)
    assert live.rose.fisher_kind == "ekfac"
    with pytest.raises(InvalidInput):
        live.score([np.zeros((2, 3, 4, 5), np.uint8)])


def _write_bundle(tmp_path, model, fisher="diag", held_out=True, n_fisher=FIT_N):
    """A bundle fit for ``model`` as the harness writes it (``held_out``: the default definition)."""
    from rose_core.defaults import fit_default_rose

    if held_out:
        scorer = fit_default_rose(model, "fashion-mnist", fisher=fisher, n_fisher=n_fisher, n_calibration=CAL_N)
    else:   # the old kind: normalised on a split of the training images
        fit_x = to_model_input(load_dataset("fashion-mnist", "train", n=2 * n_fisher, seed=5).images, channels=1)
        scorer = RoseScorer(model, fisher=fisher).fit(fit_x)
    res = Results.for_checkpoint("tiny-vae", tmp_path / "results")
    scorer.save(res.folder / "fits" / f"rose-{fisher}")
    res.write_manifest({"checkpoint": "tiny-vae"})
    return scorer


def test_uses_the_bundle_fit_and_its_calibration(tiny_ckpt, tmp_path):
    ckpt, model = tiny_ckpt
    fitted = _write_bundle(tmp_path, model)
    live = make(ckpt, tmp_path, fisher="diag")
    assert live.fit_source == "bundle"
    np.testing.assert_array_equal(live.calibration, fitted.calibration_scores)
    images = load_dataset("mnist", "test", n=4, seed=0).images
    r = live.score(images)
    np.testing.assert_allclose(r.score, fitted.score(to_model_input(images, channels=1)).score)
    assert np.isfinite(r.p_typicality).all()
    assert live.describe()["fit_source"] == "bundle"


@pytest.mark.parametrize("held_out, n_fisher, why", [(False, FIT_N, "not calibrated on held-out images"),
                                                     (True, 16, "16 Fisher images")])
def test_a_bundle_fit_of_another_definition_is_not_used(tiny_ckpt, tmp_path, held_out, n_fisher, why):
    ckpt, model = tiny_ckpt
    _write_bundle(tmp_path, model, held_out=held_out, n_fisher=n_fisher)
    live = make(ckpt, tmp_path, fisher="diag")
    assert live.fit_source == "fitted" and any(why in m for m in live.messages)


def test_combined_verdict_keeps_its_tpr_and_names_the_test(fitted):
    live = fitted[0]
    combo = LiveScorer(live.checkpoint, results=live.results.folder.parent, n_fisher=FIT_N,
                       n_calibration=CAL_N, verdict="rose+typicality")
    assert combo.fit_source == "cache"
    t = combo.threshold(0.9)
    cal_scores = combo.combined.calibration_combined_scores()
    assert (cal_scores <= t).mean() >= 0.9
    junk = [np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8)]
    r = combo.score(junk)
    np.testing.assert_allclose(r.verdict_score, -np.log(r.p_combined))
    fired = r.fired(t)
    assert set(fired) <= {"rose", "typicality", "both", "none"}
    assert ((fired != "none") == r.is_ood(t)).all()
    with pytest.raises(ValueError, match="verdict"):
        LiveScorer(live.checkpoint, verdict="fisher")


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
    live = LiveScorer(tmp_path / "ckpt" / "tiny-glow", results=tmp_path / "results", n_fisher=16,
                      n_calibration=8)
    assert live.fisher == "diag"   # the default per model kind
    r = live.score([np.full((30, 30), 100, np.uint8)])
    assert r.inputs.shape == (1, 8, 8, 1) and r.nll_kind == "exact NLL"
    assert np.isfinite(r.score).all() and np.isfinite(r.nll_nats).all()


def test_errors_say_what_is_wrong(tmp_path, tiny_ckpt):
    with pytest.raises(CheckpointError, match="does not exist"):
        LiveScorer(tmp_path / "nope.json", results=tmp_path / "results")
    ckpt, model = tiny_ckpt
    save_model(model, tmp_path / "ckpt" / "svhn-vae", dataset="svhn", epochs=0)
    with pytest.raises(DatasetUnavailable):
        LiveScorer(tmp_path / "ckpt" / "svhn-vae", results=tmp_path / "results", n_fisher=8)
    with pytest.raises(ValueError, match="fisher"):
        LiveScorer(ckpt, fisher="kfac")


def test_robustness_table_matches_live_scores_and_is_used_only_by_the_same_scorer(tmp_path):
    from rose_core.live import ROBUSTNESS_FILE, read_robustness_table, robustness_lookup, robustness_table, \
        scorer_identity

    torch.manual_seed(0)
    model = VAE(VAEConfig(channels=1, base_width=4, latent_dim=3)).eval()
    ckpt = save_model(model, tmp_path / "ckpt" / "tiny-vae", dataset="fashion-mnist", epochs=0)
    first = make(ckpt, tmp_path)
    with pytest.raises(InvalidInput, match="does not use the results bundle's ROSE fit"):
        robustness_table(first, ["mnist"], factors=(1.0,), n=6)
    first.rose.save(first.results.folder / "fits" / "rose-ekfac")  # as the harness would: the bundle's fit
    live = make(ckpt, tmp_path)
    assert live.fit_source == "bundle"
    table = robustness_table(live, ["mnist"], factors=(0.4, 1.0), n=6, seed=1)
    images = load_dataset("mnist", "test", n=6, seed=1).images
    direct = live.perturbed_auroc(images, "brightness", 0.4, n_ref=6, seed=1)
    ident = scorer_identity(ckpt, tmp_path / "results", "ekfac")
    assert table["identity"] == ident and all(ident.values())
    row = robustness_lookup(table, ident, "rose-ekfac", 6, 1, "mnist", 0.4)
    assert row["auroc"] == pytest.approx(direct["auroc"]) and (row["n_in"], row["n_ood"]) == (6, 6)
    (live.results.folder / ROBUSTNESS_FILE).write_text(__import__("json").dumps(table))
    assert read_robustness_table(live.results.folder) == table
    # another scorer, sample size, seed, set or factor: not this table's numbers
    assert robustness_lookup(table, {**ident, "fit": "0" * 64}, "rose-ekfac", 6, 1, "mnist", 0.4) is None
    assert robustness_lookup(table, ident, "rose-diag", 6, 1, "mnist", 0.4) is None
    assert robustness_lookup(table, ident, "rose-ekfac", 8, 1, "mnist", 0.4) is None
    assert robustness_lookup(table, ident, "rose-ekfac", 6, 2, "mnist", 0.4) is None
    assert robustness_lookup(table, ident, "rose-ekfac", 6, 1, "noise", 0.4) is None
    assert robustness_lookup(table, ident, "rose-ekfac", 6, 1, "mnist", 0.6) is None
    assert read_robustness_table(tmp_path / "nowhere") is None
