"""The fused 256-way categorical NLL against ``F.cross_entropy`` and a float64 reference, its layout
condition, its one-backward guard, and the VAE running it (channels-last on the CPU)."""

from __future__ import annotations

import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from rose_core.allocator import OPT_OUT_ENV, reuse_freed_memory
from rose_core.models import VAE, VAEConfig
from rose_core.models.categorical import categorical_nll, classes_innermost


def _logits(n=3, k=256, c=2, h=4, w=5, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inner = torch.randn(n, c, h, w, k, generator=g) * 4       # classes innermost in memory
    return inner.permute(0, 4, 1, 2, 3), torch.randint(0, k, (n, c, h, w), generator=g)


def test_layout_condition():
    lg, _ = _logits()
    assert classes_innermost(lg)
    assert not classes_innermost(lg.contiguous())                  # classes strided: F.cross_entropy
    assert not classes_innermost(lg[:, ::2])                        # classes not dense
    nhwc = torch.randn(2, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    assert classes_innermost(nhwc)
    assert classes_innermost(nhwc.view(2, 1, 8, 3, 3).transpose(1, 2))   # the VAE's (N, 256, C, H, W) view


def test_values_and_gradient_match_cross_entropy_and_float64():
    lg, y = _logits()
    lg = lg.detach().requires_grad_()
    go = torch.rand(y.shape)
    fused = categorical_nll(lg, y)
    (g_fused,) = torch.autograd.grad(fused, lg, go)
    ref_lg = lg.detach().double().requires_grad_()
    ref = F.cross_entropy(ref_lg, y, reduction="none")
    (g_ref,) = torch.autograd.grad(ref, ref_lg, go.double())
    plain = F.cross_entropy(lg.detach().contiguous().requires_grad_(), y, reduction="none")
    # float32 rounding of a logsumexp over 256 terms of magnitude ~10: a few ulps of the result
    assert torch.allclose(fused.double(), ref, rtol=1e-6, atol=1e-5)
    assert torch.allclose(fused, plain, rtol=1e-6, atol=1e-5)
    assert torch.allclose(g_fused.double(), g_ref, rtol=1e-5, atol=1e-7)
    assert g_fused.stride(1) == 1          # the gradient keeps the logits' layout


def test_no_grad_forward_and_fallback_layout():
    lg, y = _logits()
    with torch.no_grad():
        a = categorical_nll(lg, y)
    b = categorical_nll(lg.contiguous(), y)             # F.cross_entropy path
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-5)


def test_second_backward_through_the_same_graph_raises():
    lg, y = _logits()
    lg = lg.detach().requires_grad_()
    loss = categorical_nll(lg, y).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_bad_shapes_are_refused():
    lg, y = _logits()
    with pytest.raises(ValueError, match=r"\(N, K, \*S\)"):
        categorical_nll(lg, y[:, :1])


def test_torch_func_transforms_use_the_plain_path():
    lg, y = _logits(n=2)
    per_sample = torch.func.vmap(torch.func.grad(lambda z, t: categorical_nll(z[None], t[None]).sum()))(lg, y)
    whole = lg.detach().requires_grad_()
    (expected,) = torch.autograd.grad(categorical_nll(whole, y).sum(), whole)   # samples are independent
    assert torch.allclose(per_sample, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("channels", [1, 3])
def test_vae_optimised_layout_runs_the_fused_path_and_matches_the_default(channels):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(channels=channels, base_width=4, latent_dim=3)).eval()
    x = torch.rand(3, channels, 32, 32)
    with torch.no_grad():
        z = vae.encode(x)[0]
        assert not classes_innermost(vae.decode_logits(z))
        default = vae.per_sample_loss(x)
        assert vae.optimise_layout(torch.device("cpu")) is vae
        assert vae.decoder[-1].weight.is_contiguous(memory_format=torch.channels_last)
        assert vae.encoder[0].weight.is_contiguous()             # the scored encoder keeps the default layout
        assert classes_innermost(vae.decode_logits(z))          # the fused path is the one that runs
        fast = vae.per_sample_loss(x)
    # sums of 1,024·C per-pixel NLLs of ~5.5 nats: float32 rounding of different summation orders
    assert torch.allclose(fast, default, rtol=1e-5)
    vae.optimise_layout(torch.device("meta"))                   # accelerators: back to the default layout
    assert vae.decoder[-1].weight.is_contiguous()


def test_reuse_freed_memory_is_idempotent_and_can_be_opted_out(monkeypatch):
    import rose_core.allocator as alloc

    first = reuse_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first is True
    assert reuse_freed_memory() is first                      # applied once per process
    monkeypatch.setattr(alloc, "_applied", None)
    monkeypatch.setenv(OPT_OUT_ENV, "1")
    assert reuse_freed_memory() is False


def test_extreme_logit_gaps_match_the_float64_reference():
    """Gaps below EXP_FLOOR (the slow underflow path of x86 exp) are raised to it: the loss is unchanged
    and the gradient moves by less than exp(EXP_FLOOR) per class."""
    from rose_core.models.categorical import EXP_FLOOR

    lg, y = _logits(seed=1)
    lg = lg.detach().clone()
    lg[:, 100:] -= 500.0                      # most classes far below the floor, as a trained decoder's are
    lg = lg.requires_grad_()
    fused = categorical_nll(lg, y)
    (g,) = torch.autograd.grad(fused.sum(), lg)
    ref_lg = lg.detach().double().requires_grad_()
    ref = F.cross_entropy(ref_lg, y, reduction="none")
    (g_ref,) = torch.autograd.grad(ref.sum(), ref_lg)
    assert torch.allclose(fused.double(), ref, rtol=1e-6, atol=1e-5)
    assert float((g.double() - g_ref).abs().max()) < 1e-6
    far = g[:, 100:].detach()
    far_ref = g_ref[:, 100:]
    assert float((far.double() - far_ref).abs().max()) <= 2 * torch.exp(torch.tensor(EXP_FLOOR)).item() + 1e-300
