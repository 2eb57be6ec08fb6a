"""The paper's VAE and Glow: shapes, likelihood maths, invertibility, log-determinants."""

from __future__ import annotations

import math

import pytest
import torch

from rose_core.models import GLOW_CONFIGS, VAE_CONFIGS, Glow, GlowConfig, VAE, VAEConfig, build_model
from rose_core.models.glow import InvConv1x1, squeeze, unsqueeze


def test_vae_fmnist_matches_paper_size():
    m = VAE(VAE_CONFIGS["fmnist"])
    n_params = sum(p.numel() for p in m.parameters())
    assert 1.0e6 < n_params < 1.15e6  # ~1.07 M with the 256-way decoder (notes §3)
    convs = [m for m in m.encoder if isinstance(m, torch.nn.Conv2d)] + [m.mu_head, m.logvar_head]
    assert all(c.bias is None for c in convs)
    assert [c.out_channels for c in convs] == [32, 64, 128, 100, 100]


@pytest.mark.parametrize("capacity,width", [(0.5, 16), (1.0, 32), (2.0, 64), (4.0, 128)])
def test_vae_capacity_multiplier(capacity, width):
    m = VAE(VAEConfig(capacity=capacity))
    assert m.encoder[0].out_channels == width


def test_vae_losses_shapes_and_units(tiny_vae):
    x = torch.rand(5, 1, 32, 32)
    assert tiny_vae.per_sample_loss(x).shape == (5,)
    logits = tiny_vae.decode_logits(torch.zeros(5, 3))
    assert logits.shape == (5, 256, 1, 32, 32)
    # an untrained categorical decoder is close to uniform: about 8 bits per dimension
    bpd = tiny_vae.bits_per_dim(tiny_vae.per_sample_loss(x))
    assert torch.all((bpd > 7.0) & (bpd < 9.5))


def test_vae_deterministic_loss_is_deterministic(tiny_vae):
    x = torch.rand(4, 1, 32, 32)
    assert torch.equal(tiny_vae.per_sample_loss(x), tiny_vae.per_sample_loss(x))
    assert not torch.equal(tiny_vae.training_loss(x), tiny_vae.training_loss(x))


def test_iwae_equals_brute_force_importance_sampling(tiny_vae):
    """IWAE NLL = -(logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k), same noise."""
    from torch.distributions import Categorical, Normal

    m = tiny_vae.double()
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    k = 4
    torch.manual_seed(7)
    got = m.iwae_nll(x, k=k, chunk=k)
    torch.manual_seed(7)
    eps = torch.randn(k, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        mu, logvar = m.encode(x)
        std = (0.5 * logvar).exp()
        target = (x * 255).round().long()
        want = []
        for i in range(3):
            lw = []
            for j in range(k):
                z = mu[i] + eps[j, i] * std[i]
                logits = m.decode_logits(z[None])[0]  # (256, 1, 32, 32)
                log_px = Categorical(logits=logits.permute(1, 2, 3, 0)).log_prob(target[i]).sum()
                log_pz = Normal(0.0, 1.0).log_prob(z).sum()
                log_qz = Normal(mu[i], std[i]).log_prob(z).sum()
                lw.append(log_px + log_pz - log_qz)
            want.append(-(torch.logsumexp(torch.stack(lw), 0) - math.log(k)))
    assert torch.allclose(got, torch.stack(want), rtol=1e-10)


def test_iwae_chunking_does_not_change_result(tiny_vae):
    x = torch.rand(3, 1, 32, 32).double()
    m = tiny_vae.double()
    torch.manual_seed(5)
    a = m.iwae_nll(x, k=10, chunk=10)
    torch.manual_seed(5)
    b = m.iwae_nll(x, k=10, chunk=3)
    assert a.shape == (3,) and torch.isfinite(a).all() and torch.isfinite(b).all()
    with pytest.raises(ValueError):
        m.iwae_nll(x, k=0)


def test_iwae_scores_large_batches_in_groups_of_images(tiny_vae, monkeypatch):
    from rose_core.models import vae as vae_module

    x = torch.rand(3, 1, 32, 32).double()
    m = tiny_vae.double()
    per_image = 5 * 256 * 32 * 32 * 4
    monkeypatch.setattr(vae_module, "IWAE_LOGITS_BYTES", per_image)          # room for one image at a time
    torch.manual_seed(5)
    grouped = m.iwae_nll(x, k=10, chunk=5)
    torch.manual_seed(5)
    one_by_one = torch.cat([m.iwae_nll(x[i:i + 1], k=10, chunk=5) for i in range(3)])
    assert torch.equal(grouped, one_by_one)
    monkeypatch.setattr(vae_module, "IWAE_LOGITS_BYTES", 2 ** 40)              # one call: other draws
    torch.manual_seed(5)
    whole = m.iwae_nll(x, k=10, chunk=5)
    assert not torch.equal(whole, grouped) and torch.allclose(whole, grouped, rtol=0.05)


def test_squeeze_roundtrip():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(unsqueeze(squeeze(x)), x)


def test_glow_is_invertible(tiny_glow):
    m = tiny_glow.double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        y = m.dequantize(torch.rand(4, 1, 8, 8, dtype=torch.float64), noise=True)
        zs, _, _ = m.encode(y)
        assert (m.decode(zs) - y).abs().max() < 1e-4


def test_glow_logdet_matches_jacobian(tiny_glow):
    m = tiny_glow.double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    y = m.dequantize(torch.rand(2, 1, 8, 8, dtype=torch.float64), noise=False)
    _, _, logdet = m.encode(y)

    def flat(v):
        zs, _, _ = m.encode(v.view(1, 1, 8, 8))
        return torch.cat([z.flatten() for z in zs])

    for i in range(2):
        jac = torch.autograd.functional.jacobian(flat, y[i].flatten())
        assert torch.logdet(jac).item() == pytest.approx(logdet[i].item(), abs=1e-6)


def test_invconv_lu_weight_and_logdet():
    torch.manual_seed(0)
    conv = InvConv1x1(6, seed=1).double()
    w = conv.weight
    assert torch.slogdet(w)[1].item() == pytest.approx(conv.log_s.sum().item(), abs=1e-10)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    y, ld = conv(x, torch.zeros(2, dtype=torch.float64))
    back, _ = conv(y, ld, reverse=True)
    assert torch.allclose(back, x, atol=1e-10)
    assert ld[0].item() == pytest.approx(9 * conv.log_s.sum().item())


def test_invconv_weight_grad_offset_is_logdet_gradient():
    conv = InvConv1x1(4, seed=2).double()
    conv(torch.randn(1, 4, 5, 5, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    w = conv.weight.detach().clone().requires_grad_(True)
    (-(25 * torch.slogdet(w)[1])).backward()
    assert torch.allclose(conv.weight_grad_offset(), w.grad)


def test_glow_nll_in_bits_of_8bit_data(tiny_glow):
    x = torch.rand(3, 1, 8, 8)
    nll = tiny_glow.nll(x)
    assert nll.shape == (3,) and torch.isfinite(nll).all()
    # NLL = -log p(y) + D log 256 >= 0 for a density whose mass in a bin is at most 1
    bpd = tiny_glow.bits_per_dim(nll)
    assert torch.all(bpd > 0)
    assert tiny_glow.bits_per_dim(torch.tensor(64 * math.log(256.0))).item() == pytest.approx(8.0)


def test_glow_presets_build():
    fm = Glow(GLOW_CONFIGS["fmnist"])
    assert len(fm.invconvs()) == 16 * 2
    assert fm.top_shape == (8, 8, 8)
    c10 = GlowConfig(**{**GLOW_CONFIGS["cifar10"].to_dict(), "hidden": 16})  # paper's K/L, small hidden
    m = Glow(c10)
    assert len(m.invconvs()) == 8 * 3
    x = torch.rand(2, 3, 32, 32)
    m.train()
    assert torch.isfinite(m.training_loss(x)).all()


def test_scored_layers(tiny_vae, tiny_glow):
    assert list(tiny_vae.scored_layers()) == ["encoder.0", "encoder.2", "encoder.5", "mu_head", "logvar_head"]
    assert len(tiny_vae.scored_layers("all")) == 9
    assert all(isinstance(m, InvConv1x1) for m in tiny_glow.scored_layers().values())
    assert len(tiny_glow.scored_layers("all")) > len(tiny_glow.scored_layers())
    with pytest.raises(ValueError):
        tiny_vae.scored_layers("nope")


def test_build_model_errors():
    with pytest.raises(ValueError, match="Unknown model kind"):
        build_model("pixelcnn")
    with pytest.raises(ValueError, match="preset"):
        build_model("vae", "svhn")
    assert isinstance(build_model("vae", {"channels": 3, "base_width": 8, "latent_dim": 5}), VAE)


def test_check_input(tiny_vae):
    with pytest.raises(ValueError, match="expects inputs"):
        tiny_vae.check_input(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        tiny_vae.check_input(torch.full((1, 1, 32, 32), float("nan")))
