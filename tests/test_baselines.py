"""Baseline OOD scorers: NLL, Likelihood Regret, Likelihood Ratio, Input Complexity, RND, registry."""

from __future__ import annotations

import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from rose_core.errors import CheckpointError, InvalidInput
from rose_core.models import VAE, Glow, GlowConfig, VAEConfig
from rose_core.scorers.base import ScoreResult
from rose_core.scorers.input_complexity import InputComplexityScorer, compressed_bits, encode_image, jpeg2000_available
from rose_core.scorers.likelihood_ratio import LikelihoodRatioScorer
from rose_core.scorers.likelihood_regret import LikelihoodRegretScorer, elbo_noise
from rose_core.scorers.nll import NLLScorer, iwae_from_posterior, iwae_noise, vae_iwae_nll
from rose_core.scorers.registry import METHODS, build_scorer
from rose_core.scorers.rnd import RNDScorer, train_rnd

LN2 = math.log(2.0)


def tiny_vae(seed: int = 0, dtype=torch.float32) -> VAE:
    torch.manual_seed(seed)
    m = VAE(VAEConfig(base_width=4, latent_dim=3))
    # Non-trivial BatchNorm statistics, so that eval mode matters.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.8, 1.2)
    return m.to(dtype).eval()


def sensitive_vae(dtype=torch.float32) -> VAE:
    """A tiny VAE whose decoder depends visibly on z: a freshly initialised decoder barely
    does (every regret ≈ 0), so scale its weights."""
    m = tiny_vae(dtype=dtype)
    with torch.no_grad():
        for mod in m.decoder:
            if isinstance(mod, torch.nn.ConvTranspose2d):
                mod.weight.mul_(6.0)
    return m


def tiny_glow(seed: int = 0) -> Glow:
    torch.manual_seed(seed)
    return Glow(GlowConfig(K=2, L=2, hidden=8), seed=seed).eval()


def images(n: int = 6, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 32, 32), generator=g).to(dtype) / 255.0)


# --- NLL ---------------------------------------------------------------------------------

def brute_force_iwae(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per image, per importance sample, written out plainly."""
    out = []
    with torch.no_grad():
        for i in range(len(x)):
            xi = x[i:i + 1]
            mu, logvar = model.encode(xi)
            std = (0.5 * logvar).exp()
            lw = []
            for j in range(len(eps)):
                z = mu + eps[j:j + 1] * std
                log_px = -model.reconstruction_nll(model.decode_logits(z), xi)
                log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
                log_qz = torch.distributions.Normal(mu, std).log_prob(z).sum(1)
                lw.append(log_px + log_pz - log_qz)
            lw = torch.cat(lw)
            out.append(-(torch.logsumexp(lw, 0) - math.log(len(eps))))
    return torch.stack(out)


def test_iwae_matches_brute_force_and_is_batch_independent():
    m, x = tiny_vae(dtype=torch.float64), images(3, dtype=torch.float64)
    eps = iwae_noise(4, 3, seed=3, dtype=torch.float64)
    ref = brute_force_iwae(m, x, eps)
    got = vae_iwae_nll(m, x, k=4, seed=3)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-8)
    # chunked decoding and batch composition do not change a sample's estimate
    mu, logvar = m.encode(x)
    with torch.no_grad():
        torch.testing.assert_close(iwae_from_posterior(m, x, mu, logvar, eps, max_decode=1), ref, rtol=0, atol=1e-8)
    s = NLLScorer(m, k=4, seed=3)
    whole = s.score(x).score
    parts = np.concatenate([s.score(x[:1]).score, s.score(x[1:]).score])
    np.testing.assert_allclose(whole, parts, rtol=0, atol=1e-9)


def test_nll_scorer_vae_units_and_seed():
    m, x = tiny_vae(), images(4)
    r = NLLScorer(m, k=20, seed=0).score(x)
    assert isinstance(r, ScoreResult) and r.score.shape == (4,)
    np.testing.assert_allclose(r.extras["nll"], r.score)
    np.testing.assert_allclose(r.extras["bits_per_dim"], r.score / (1024 * LN2))
    np.testing.assert_array_equal(NLLScorer(m, k=20, seed=0).score(x).score, r.score)
    assert not np.array_equal(NLLScorer(m, k=20, seed=1).score(x).score, r.score)
    # IWAE-20 is an estimate of the same quantity as the model's own (differently seeded) IWAE
    ref = m.iwae_nll(x, k=20).numpy()
    assert np.all(np.abs(ref - r.score) < 0.01 * np.abs(ref))


def test_nll_scorer_glow_is_exact_and_restores_mode():
    g, x = tiny_glow(), images(3)
    g.train()
    r = NLLScorer(g).score(x)
    assert g.training  # the scorer's eval mode is temporary
    g.eval()
    np.testing.assert_allclose(r.score, g.nll(x).double().numpy(), rtol=1e-6)


def test_bad_inputs_are_rejected():
    s = NLLScorer(tiny_vae())
    with pytest.raises(InvalidInput):
        s.score(images(2) * 2.0)
    with pytest.raises(InvalidInput):
        s.score(torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        s.score(torch.zeros(2, 3, 32, 32))
    with pytest.raises(TypeError):
        NLLScorer(torch.nn.Linear(2, 2))


# --- Likelihood Regret ---------------------------------------------------------------------

def naive_regret(model: VAE, xi: torch.Tensor, *, steps, lr, wd, k, elbo_samples, seed) -> float:
    """The method as written by the authors: copy the encoder, Adam on that one image."""
    m = copy.deepcopy(model).eval()
    for p in m.decoder.parameters():
        p.requires_grad_(False)
    enc_params = [*m.encoder.parameters(), *m.mu_head.parameters(), *m.logvar_head.parameters()]
    opt = torch.optim.Adam(enc_params, lr=lr, weight_decay=wd)
    eps_iwae = iwae_noise(k, m.config.latent_dim, seed, dtype=xi.dtype)
    with torch.no_grad():
        before = iwae_from_posterior(m, xi, *m.encode(xi), eps_iwae)
    for eps in elbo_noise(seed + 1, steps, elbo_samples, m.config.latent_dim):
        if eps is None:
            loss = m.neg_elbo(xi, deterministic=True).sum()
        else:
            mu, logvar = m.encode(xi)
            z = mu + eps.to(xi.dtype) * (0.5 * logvar).exp()  # (S, d): S draws for the one image
            rec = m.reconstruction_nll(m.decode_logits(z), xi.expand(len(eps), -1, -1, -1))
            loss = rec.mean() + VAE.kl(mu, logvar).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = iwae_from_posterior(m, xi, *m.encode(xi), eps_iwae)
    return float(before - after)


@pytest.mark.parametrize("elbo_samples", [0, 2])
def test_likelihood_regret_batched_equals_per_sample_loop(elbo_samples):
    m, x = sensitive_vae(dtype=torch.float64), smooth_images(3, seed=1).double()
    kw = dict(steps=4, lr=1e-2, weight_decay=5e-5, k=3, elbo_samples=elbo_samples, seed=2)
    r = LikelihoodRegretScorer(m, **kw).score(x)
    ref = [naive_regret(m, x[i:i + 1], steps=4, lr=1e-2, wd=5e-5, k=3, elbo_samples=elbo_samples, seed=2)
           for i in range(len(x))]
    np.testing.assert_allclose(r.score, ref, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(r.score, r.extras["nll_before"] - r.extras["nll_after"])
    assert np.abs(r.score).max() > 0.1  # a non-trivial regret is being compared
    # the model itself is untouched
    for p, q in zip(m.parameters(), sensitive_vae(dtype=torch.float64).parameters()):
        assert torch.equal(p, q) and p.grad is None


def test_likelihood_regret_zero_without_steps():
    m, x = tiny_vae(), images(3, seed=4)
    r0 = LikelihoodRegretScorer(m, steps=0, k=6, seed=0).score(x)
    assert np.all(r0.score == 0)
    np.testing.assert_allclose(r0.extras["nll_before"], NLLScorer(m, k=6, seed=0).score(x).score, rtol=1e-6)


def test_likelihood_regret_is_nonnegative_up_to_noise():
    m, x = sensitive_vae(), smooth_images(4)
    r = LikelihoodRegretScorer(m, steps=10, lr=3e-3, k=8, elbo_samples=2, seed=0).score(x)
    noise = 1e-5 * np.abs(r.extras["nll_before"]).max()  # float32 rounding of ~5700-nat NLLs
    assert np.all(r.score > -noise), r.score
    assert r.score.mean() > 1.0


def test_likelihood_regret_rejects_glow():
    with pytest.raises(TypeError, match="VAE"):
        LikelihoodRegretScorer(tiny_glow())


# --- Likelihood Ratio ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["vae", "glow"])
def test_likelihood_ratio_is_difference_of_nlls(kind):
    main, bg = (tiny_vae(0), tiny_vae(1)) if kind == "vae" else (tiny_glow(0), tiny_glow(1))
    x = images(5, seed=5)
    r = LikelihoodRatioScorer(main, bg, k=6, seed=9).score(x)
    expected = NLLScorer(main, k=6, seed=9).score(x).score - NLLScorer(bg, k=6, seed=9).score(x).score
    np.testing.assert_array_equal(r.score, expected)
    np.testing.assert_array_equal(r.extras["llr"], -expected)


# --- Input Complexity ----------------------------------------------------------------------

def test_input_complexity_units_hand_checked():
    m, x = tiny_vae(), images(3, seed=6)
    x[0] = 0.0  # a constant image
    r = InputComplexityScorer(m, compressor="png", k=4, seed=0).score(x)
    nll_nats = NLLScorer(m, k=4, seed=0).score(x).score
    for i in range(3):
        u8 = (x[i, 0].numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="PNG", compress_level=9)
        length_bits = 8 * len(buf.getvalue())
        assert r.extras["complexity_bits"][i] == length_bits
        assert r.score[i] == pytest.approx(nll_nats[i] / LN2 - length_bits, rel=1e-12)
    np.testing.assert_allclose(r.extras["nll_bits"] / 1024, r.extras["bits_per_dim"])
    assert r.extras["complexity_bits"][0] < r.extras["complexity_bits"][1]


@pytest.mark.parametrize("compressor", ["png", pytest.param("jpeg2000", marks=pytest.mark.skipif(
    not jpeg2000_available(), reason="Pillow without OpenJPEG"))])
def test_constant_compresses_smaller_than_noise(compressor):
    const = torch.full((1, 1, 32, 32), 0.5)
    noise = images(1, seed=7)
    assert compressed_bits(const, compressor)[0] < compressed_bits(noise, compressor)[0]
    rgb = torch.cat([torch.full((1, 3, 32, 32), 0.2), torch.rand(1, 3, 32, 32)])
    bits = compressed_bits(rgb, compressor)
    assert bits[0] < bits[1]


@pytest.mark.skipif(not jpeg2000_available(), reason="Pillow without OpenJPEG")
def test_jpeg2000_is_lossless():
    im = (images(1, seed=8)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    back = np.array(Image.open(io.BytesIO(encode_image(im, "jpeg2000"))))
    np.testing.assert_array_equal(back, im[..., 0])


def test_jpeg2000_missing_is_a_clear_error(monkeypatch):
    import rose_core.scorers.input_complexity as ic
    monkeypatch.setattr(ic, "jpeg2000_available", lambda: False)
    with pytest.raises(RuntimeError, match="JPEG 2000"):
        InputComplexityScorer(tiny_vae(), compressor="jpeg2000")
    with pytest.raises(ValueError, match="compressor"):
        InputComplexityScorer(tiny_vae(), compressor="gif")


# --- RND -------------------------------------------------------------------------------------

def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """A simple 'in-distribution': blurry blobs on a dark background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cy, cx = (torch.rand(n, 2, generator=g) * 16 + 8).unbind(1)
    r = torch.rand(n, generator=g) * 4 + 4
    d2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
    return torch.exp(-d2 / (2 * r[:, None, None] ** 2)).unsqueeze(1).clamp(0, 1)


TINY_RND = dict(width=4, hidden=32, out_dim=16, epochs=8, lr=3e-3, batch_size=64, seed=0)


def test_rnd_scores_training_distribution_below_noise_and_is_deterministic(tmp_path):
    train = smooth_images(256)
    rnd = train_rnd(train, **TINY_RND)
    test_in = rnd.score(smooth_images(200, seed=1)).score
    noise = rnd.score(torch.rand(200, 1, 32, 32)).score
    assert np.median(test_in) < np.median(noise)
    assert (noise[:, None] > test_in[None, :]).mean() > 0.9  # AUROC
    again = train_rnd(train, **TINY_RND)
    for (k, a), (_, b) in zip(rnd.net.state_dict().items(), again.net.state_dict().items()):
        assert torch.equal(a, b), k
    # save / load round trip (safetensors + JSON card; nothing pickled)
    cp = rnd.save(tmp_path / "rnd-tiny", dataset="blobs")
    card = json.loads(cp.read_text())
    assert card["scorer"] == "rnd" and "kind" not in card and card["training"]["epochs"] == 8
    loaded = RNDScorer.load(tmp_path / "rnd-tiny")
    np.testing.assert_array_equal(loaded.score(torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))).score,
                                  rnd.score(torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))).score)
    assert build_scorer("rnd", None, rnd=str(tmp_path / "rnd-tiny")).config == rnd.config
    # a byte flipped inside a tensor still parses, but the card's SHA-256 refuses it, naming the file
    wp = tmp_path / "rnd-tiny.safetensors"
    raw = bytearray(wp.read_bytes())
    raw[-5] ^= 0xFF
    wp.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="rnd-tiny.safetensors"):
        RNDScorer.load(tmp_path / "rnd-tiny")
    (tmp_path / "rnd-tiny.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError):
        RNDScorer.load(tmp_path / "rnd-tiny")


def test_rnd_random_perturbation_and_errors():
    rnd = train_rnd(smooth_images(64), perturbation="random", **{**TINY_RND, "epochs": 1})
    assert rnd.config.strength == 0.2
    with pytest.raises(InvalidInput):
        rnd.score(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError):
        RNDScorer(perturbation="brightness")


# --- registry ----------------------------------------------------------------------------------

def test_registry_builds_every_baseline():
    vae, bg = tiny_vae(0), tiny_vae(1)
    x = images(2)
    methods = ["nll", "likelihood-regret", "likelihood-ratio", "input-complexity-png"]
    methods += ["input-complexity-jp2"] if jpeg2000_available() else []
    for method in methods:
        kw = {"background_model": bg} if method == "likelihood-ratio" else {}
        if method == "likelihood-regret":
            kw = {"steps": 1, "k": 2, "elbo_samples": 1}
        s = build_scorer(method, vae, **kw)
        assert s.name == method
        assert np.isfinite(s.score(x).score).all()
    with pytest.raises(ValueError, match="background_model"):
        build_scorer("likelihood-ratio", vae)
    with pytest.raises(ValueError, match="needs a trained RND"):
        build_scorer("rnd", None)
    with pytest.raises(ValueError, match="Unknown OOD method"):
        build_scorer("mahalanobis", vae)
    assert {"rose-ekfac", "rose-diag", "rnd"} <= set(METHODS)


def test_registry_rose_is_lazy():
    try:
        import rose_core.scorers.rose  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="RoseScorer"):
            build_scorer("rose-ekfac", tiny_vae())
    else:
        assert build_scorer("rose-diag", tiny_vae()) is not None
