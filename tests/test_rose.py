"""RoseScorer end to end on tiny models, aggregation, streaming fits, persistence and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rose_core.errors import CheckpointError, InvalidInput
from rose_core.models import VAE, Glow, GlowConfig, VAEConfig
from rose_core.scorers.rose import RoseScorer, aggregate, split_mask


def _tiny_vae(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    vae = VAE(VAEConfig(base_width=4, latent_dim=3)).to(dtype)
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return vae.eval()


def _tiny_glow(seed=0):
    torch.manual_seed(seed)
    glow = Glow(GlowConfig(K=2, L=2, hidden=8))
    with torch.no_grad():
        for p in glow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return glow.eval()


def _images(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 32, 32, generator=g, dtype=dtype) * 0.3
    base[:, :, 8:24, 8:24] += 0.6  # a bright square: a crude "in-distribution" look
    return base.clamp(0, 1)


# --- aggregation ----------------------------------------------------------------------------

def test_aggregate_inf_relu_is_max_of_relu():
    z = np.array([[-1.0, 2.0, 0.5], [-3.0, -0.1, -2.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(aggregate(z), np.maximum(0, z.max(1)))
    np.testing.assert_array_equal(aggregate(torch.tensor(z)), [2.0, 0.0, 0.0])


def test_aggregate_max_mode_and_beta():
    z = np.array([[-1.0, -2.0], [0.5, -3.0]])
    np.testing.assert_array_equal(aggregate(z, mode="max"), [-1.0, 0.5])
    np.testing.assert_array_equal(aggregate(z, beta=1.5), [0.5, 2.0])
    np.testing.assert_array_equal(aggregate(z, beta=[0.0, 3.0], mode="max"), [1.0, 0.5])
    with pytest.raises(ValueError):
        aggregate(z, p=2, mode="max")
    with pytest.raises(ValueError):
        aggregate(z, beta=[1, 2, 3])
    with pytest.raises(ValueError):
        aggregate(z, p=0.5)
    with pytest.raises(ValueError):
        aggregate(z, mode="sum")


def test_aggregate_p_norms():
    z = np.array([[3.0, -4.0, 4.0], [-1.0, -1.0, -1.0]])
    np.testing.assert_allclose(aggregate(z, p=2), [5.0, 0.0])
    np.testing.assert_allclose(aggregate(z, p=1), [7.0, 0.0])
    big = np.array([[1e200, 1e200]])
    np.testing.assert_allclose(aggregate(big, p=4), [1e200 * 2 ** 0.25])  # no overflow
    np.testing.assert_allclose(aggregate(z, p=1e6), [4.0, 0.0], rtol=1e-5)


def test_split_mask_interleaves_exactly():
    m = split_mask(0, 10, 0.5)
    assert m.tolist() == [False, True] * 5
    for n in (1, 7, 10, 101):
        assert int(split_mask(0, n, 0.3).sum()) == math.floor(n * 0.3)
    full = split_mask(0, 50, 0.37)
    assert torch.equal(torch.cat([split_mask(0, 13, 0.37), split_mask(13, 37, 0.37)]), full)


# --- end to end -----------------------------------------------------------------------------

@pytest.mark.parametrize("fisher", ["ekfac", "diag"])
def test_tiny_vae_end_to_end(fisher):
    vae = _tiny_vae()
    scorer = RoseScorer(vae, fisher=fisher, batch_size=16).fit(_images(40))
    assert scorer.layer_names == ["encoder.0", "encoder.2", "encoder.5", "mu_head", "logvar_head"]
    assert scorer.n_fisher == 20 and scorer.n_norm == 20
    x = torch.cat([_images(5, seed=1), torch.rand(5, 1, 32, 32)])
    r = scorer.score(x)
    assert r.score.shape == (10,) and r.extras["layer_raw"].shape == (10, 5)
    assert r.extras["layer_z"].shape == (10, 5) and r.extras["loss"].shape == (10,)
    assert np.isfinite(r.score).all() and (r.score >= 0).all()
    np.testing.assert_allclose(r.extras["layer_z"], (r.extras["layer_raw"] - scorer.norm_mean) / scorer.norm_std)
    np.testing.assert_allclose(r.score, np.maximum(0, r.extras["layer_z"].max(1)))
    np.testing.assert_allclose(r.extras["loss"], vae.per_sample_loss(x).detach().double().numpy(), rtol=1e-5)
    # the normalisation set's z-scores have mean 0 and std 1 by construction
    z_norm = (scorer.norm_layer_raw - scorer.norm_mean) / scorer.norm_std
    np.testing.assert_allclose(z_norm.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z_norm.std(0), 1, atol=1e-9)
    # batch size does not change a sample's score (beyond float rounding)
    r1 = scorer.score(x[:3])
    np.testing.assert_allclose(r1.extras["layer_raw"], r.extras["layer_raw"][:3], rtol=1e-4)


def test_tiny_glow_end_to_end_default_and_all():
    glow = _tiny_glow()
    x = _images(12)
    s = RoseScorer(glow, fisher="diag").fit(x)
    assert len(s.layer_names) == 4 and all("invconv" in n for n in s.layer_names)
    r = s.score(_images(3, seed=2))
    assert r.extras["layer_raw"].shape == (3, 4) and np.isfinite(r.score).all()
    s_all = RoseScorer(glow, fisher="ekfac", layers="all").fit(x)
    assert len(s_all.layer_names) > 4
    r = s_all.score(_images(3, seed=2))
    assert np.isfinite(r.extras["layer_raw"]).all()


def test_fit_with_ten_images():
    s = RoseScorer(_tiny_vae()).fit(_images(10))
    assert s.n_fisher == 5 and s.n_norm == 5
    assert np.isfinite(s.score(_images(2, seed=3)).score).all()
    with pytest.raises(InvalidInput):
        RoseScorer(_tiny_vae()).fit(_images(2))  # 1 Fisher + 1 normalisation image
    s_same = RoseScorer(_tiny_vae(), normalization="same").fit(_images(2))
    assert s_same.n_fisher == 2 and s_same.n_norm == 2


def test_same_normalization_uses_the_fisher_samples():
    vae = _tiny_vae()
    x = _images(12)
    s = RoseScorer(vae, normalization="same", batch_size=5).fit(x)
    assert s.n_fisher == 12 and s.n_norm == 12
    np.testing.assert_allclose(s.score(x).extras["layer_raw"], s.norm_layer_raw, rtol=1e-5)


@pytest.mark.parametrize("fisher", ["ekfac", "diag"])
def test_scores_invariant_to_loss_scale(fisher):
    class Scaled(VAE):
        def per_sample_loss(self, x):
            return 1000.0 * super().per_sample_loss(x)

    vae = _tiny_vae(dtype=torch.float64)
    scaled = Scaled(vae.config).to(torch.float64).eval()
    scaled.load_state_dict(vae.state_dict())
    x, test = _images(30, dtype=torch.float64), _images(6, seed=5, dtype=torch.float64)
    a = RoseScorer(vae, fisher=fisher).fit(x).score(test)
    b = RoseScorer(scaled, fisher=fisher).fit(x).score(test)
    np.testing.assert_allclose(b.extras["layer_raw"], a.extras["layer_raw"], rtol=1e-7)
    np.testing.assert_allclose(b.score, a.score, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(b.extras["loss"], 1000 * a.extras["loss"], rtol=1e-12)


def test_iterable_fit_equals_tensor_fit():
    vae = _tiny_vae()
    x = _images(37)
    test = _images(4, seed=9)
    ref = RoseScorer(vae, batch_size=8).fit(x).score(test)
    batches = [x[:5], x[5:6], x[6:20], x[20:]]
    for data in (batches, iter(batches), (b for b in batches)):
        r = RoseScorer(vae, batch_size=8).fit(data).score(test)
        np.testing.assert_array_equal(r.extras["layer_raw"], ref.extras["layer_raw"])
        np.testing.assert_array_equal(r.score, ref.score)


def test_dataloader_fit():
    from torch.utils.data import DataLoader

    vae = _tiny_vae()
    x = _images(20)
    ref = RoseScorer(vae, batch_size=8).fit(x)
    dl = DataLoader(x, batch_size=6, shuffle=False)
    s = RoseScorer(vae, batch_size=8).fit(dl)
    np.testing.assert_array_equal(s.norm_mean, ref.norm_mean)


def test_layer_list_and_beta_vector():
    vae = _tiny_vae()
    s = RoseScorer(vae, layers=["mu_head", "encoder.2"], beta=[0.5, -0.5], p=2).fit(_images(16))
    assert s.layer_names == ["mu_head", "encoder.2"]
    r = s.score(_images(3, seed=4))
    np.testing.assert_allclose(r.score, aggregate(r.extras["layer_z"], 2, [0.5, -0.5]))
    s_max = RoseScorer(vae, aggregation="max").fit(_images(16))
    r = s_max.score(_images(3, seed=4))
    np.testing.assert_allclose(r.score, r.extras["layer_z"].max(1))
    with pytest.raises(ValueError):
        RoseScorer(vae, beta=[1.0, 2.0])  # 5 default layers
    with pytest.raises(ValueError):
        RoseScorer(vae, layers=["decoder.1"])  # BatchNorm is not scorable
    with pytest.raises(ValueError):
        RoseScorer(vae, aggregation="max", p=2)
    with pytest.raises(ValueError):
        RoseScorer(vae, fisher="kfac")
    with pytest.raises(ValueError):
        RoseScorer(vae, fit_fraction=1.0)


def test_input_validation():
    vae = _tiny_vae()
    s = RoseScorer(vae)
    with pytest.raises(RuntimeError, match="not fitted"):
        s.score(_images(2))
    bad = _images(10)
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInput):
        s.fit(bad)
    with pytest.raises(InvalidInput):
        s.fit([_images(4), bad])
    s.fit(_images(10))
    with pytest.raises(InvalidInput):
        s.score(bad)
    with pytest.raises(InvalidInput):
        s.score(torch.rand(2, 3, 32, 32))  # wrong channels
    with pytest.raises(InvalidInput):
        s.score(_images(2) * 255)
    with pytest.raises(InvalidInput):
        s.fit("images")
    assert len(s.score(_images(0))) == 0


@pytest.mark.parametrize("fisher", ["ekfac", "diag"])
def test_save_load_round_trip(tmp_path, fisher):
    vae = _tiny_vae()
    s = RoseScorer(vae, fisher=fisher, p=3.0, beta=0.25).fit(_images(20))
    test = _images(5, seed=6)
    ref = s.score(test)
    card = s.save(tmp_path / "fit")
    assert card.name == "fit.json" and (tmp_path / "fit.safetensors").exists()
    loaded = RoseScorer.load(tmp_path / "fit", vae)
    assert loaded.layer_names == s.layer_names and loaded.p == 3.0 and loaded.beta == 0.25
    r = loaded.score(test)
    np.testing.assert_array_equal(r.score, ref.score)
    np.testing.assert_array_equal(r.extras["layer_raw"], ref.extras["layer_raw"])


def test_mismatched_fit_raises(tmp_path):
    vae = _tiny_vae()
    s = RoseScorer(vae).fit(_images(10))
    s.save(tmp_path / "fit")
    with pytest.raises(CheckpointError, match="config"):
        RoseScorer.load(tmp_path / "fit", VAE(VAEConfig(base_width=8, latent_dim=3)))
    with pytest.raises(CheckpointError, match="glow"):
        RoseScorer.load(tmp_path / "fit", _tiny_glow())
    with pytest.raises(CheckpointError, match="weights"):
        RoseScorer.load(tmp_path / "fit", _tiny_vae(seed=1))
    RoseScorer.load(tmp_path / "fit", _tiny_vae(seed=1), strict=False)
    # a card whose layer shapes do not match the model
    import json

    card = json.loads((tmp_path / "fit.json").read_text())
    card["layer_shapes"]["mu_head"] = [7, 7]
    (tmp_path / "fit.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="mu_head"):
        RoseScorer.load(tmp_path / "fit", vae)
    card["layers"] = ["encoder.0", "nope"]
    (tmp_path / "fit.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="nope"):
        RoseScorer.load(tmp_path / "fit", vae)
    with pytest.raises(CheckpointError):
        RoseScorer.load(tmp_path / "missing", vae)
    s.save(tmp_path / "fit2")
    (tmp_path / "fit2.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        RoseScorer.load(tmp_path / "fit2", vae)


def test_model_mode_and_grads_untouched():
    vae = _tiny_vae()
    vae.train()
    s = RoseScorer(vae).fit(_images(10))
    s.score(_images(2))
    assert vae.training
    assert all(p.grad is None for p in vae.parameters())


# --------------------------------------------------------------------------------------------
# Well-posed fits (issue 11): float32, default damping, N below / at / above the factors' dimension
# --------------------------------------------------------------------------------------------

def _head_dim(scorer) -> int:
    return max(d for c, d in scorer.fisher.layer_shapes().values())


@pytest.mark.parametrize("n_fit, deficient", [(64, True), (320, False)])
def test_rank_deficient_fit_warns_and_names_the_layer(n_fit, deficient):
    import warnings

    from rose_core.scorers.rose import RankDeficientFitWarning

    torch.manual_seed(0)
    vae = VAE(VAEConfig(base_width=2, latent_dim=3)).eval()      # heads: input dimension 2·4·16 = 128
    x = torch.rand(n_fit + 8, 1, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = RoseScorer(vae, batch_size=32).fit(x[:n_fit], calibration=x[n_fit:])
    d = _head_dim(s)
    assert d == 128
    rank_warnings = [w for w in caught if issubclass(w.category, RankDeficientFitWarning)]
    cond = s.fisher.conditioning()["mu_head"]
    if deficient:   # N < D: A has rank <= N, the message names the layer, its dimension and the image count
        assert cond["ranks"]["input factor A"] <= n_fit < d
        assert rank_warnings and "'mu_head'" in str(rank_warnings[0].message)
        assert f"dimension {d}" in str(rank_warnings[0].message) and f"{n_fit} image(s)" in str(rank_warnings[0].message)
        assert any("mu_head" in p for p in s.fit_problems)
    else:           # N > D: no warning
        assert not rank_warnings and s.fit_problems == []


def test_fit_at_dimension_boundary_counts_rank_exactly():
    torch.manual_seed(1)
    vae = VAE(VAEConfig(base_width=2, latent_dim=3)).eval()
    x = torch.rand(136, 1, 32, 32)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = RoseScorer(vae, batch_size=64).fit(x[:128], calibration=x[128:])   # N = D = 128
    for name, cond in s.fisher.conditioning().items():
        st = s.fisher.state[name]
        for factor, key in (("input factor A", "A_sum"), ("output factor B", "B_sum")):
            m = (st[key] / st["pos_count"]).numpy()
            ev = np.linalg.eigvalsh(m)
            tol = ev.max() * m.shape[0] * np.finfo(np.float32).eps
            # the rank is numpy's matrix_rank convention at the float32 noise floor
            assert cond["ranks"][factor] == np.linalg.matrix_rank(m, tol=tol), (name, factor)
    # N = D: enough image-positions for every factor, so no warning (the numerical rank may still be
    # lower: inactive ReLU units leave directions no number of images fills)
    assert s.fisher.conditioning()["mu_head"]["images"] == 128
    assert s.fit_problems == [] and not any("rank" in str(w.message) for w in caught)
    s127 = RoseScorer(vae, batch_size=64).fit(x[:127], calibration=x[128:])    # N = D - 1
    assert [p.split("'")[1] for p in s127.fit_problems] == ["mu_head", "logvar_head"]
    assert "rank is at most 127" in s127.fit_problems[0]


def test_calibration_set_feeds_normalisation_and_keeps_losses():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(base_width=2, latent_dim=3)).eval()
    x, cal = torch.rand(40, 1, 32, 32), torch.rand(12, 1, 32, 32) * 0.5
    s = RoseScorer(vae, batch_size=16).fit(x, calibration=cal)
    assert s.calibrated and (s.n_fisher, s.n_norm) == (40, 12)
    res = s.score(cal)
    np.testing.assert_allclose(s.norm_layer_raw, res.extras["layer_raw"], rtol=1e-5)
    np.testing.assert_allclose(s.norm_mean, res.extras["layer_raw"].mean(0), rtol=1e-5)
    np.testing.assert_allclose(s.calibration_loss, res.extras["loss"], rtol=1e-5)
    np.testing.assert_allclose(s.calibration_scores, res.score, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="normalization='same'"):
        RoseScorer(vae, normalization="same").fit(x, calibration=cal)


def test_second_pass_replay_is_bit_identical_to_recomputation():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(base_width=2, latent_dim=3)).eval()
    x = torch.rand(30, 1, 32, 32)
    a = RoseScorer(vae, batch_size=8).fit(x)
    b = RoseScorer(vae, batch_size=8, replay_bytes=0).fit(x)
    sa, sb = a.fisher.state_dict(), b.fisher.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    np.testing.assert_array_equal(a.norm_layer_raw, b.norm_layer_raw)


def test_scorer_never_moves_the_callers_model():
    vae = VAE(VAEConfig(base_width=2, latent_dim=3))
    with pytest.raises(ValueError, match="move it first"):
        RoseScorer(vae, device="meta")
    assert next(vae.parameters()).device.type == "cpu"


def test_saved_fit_keeps_calibration_arrays(tmp_path):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(base_width=2, latent_dim=3)).eval()
    x, cal = torch.rand(24, 1, 32, 32), torch.rand(10, 1, 32, 32)
    s = RoseScorer(vae, batch_size=8).fit(x, calibration=cal)
    s.save(tmp_path / "fit")
    t = RoseScorer.load(tmp_path / "fit", vae)
    assert t.calibrated
    np.testing.assert_array_equal(t.norm_layer_raw, s.norm_layer_raw)
    np.testing.assert_array_equal(t.calibration_loss, s.calibration_loss)
    np.testing.assert_array_equal(t.calibration_scores, s.calibration_scores)
