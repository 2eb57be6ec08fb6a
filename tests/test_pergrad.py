"""Per-sample gradients from one batched pass equal torch.func.vmap(grad(...)) (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from rose_core.models import VAE, Glow, GlowConfig, VAEConfig
from rose_core.models.glow import InvConv1x1
from rose_core.pergrad import (LayerFactors, UnsupportedLayer, capture_factors, grad_shape, per_sample_grads,
                               resolve_layers)

TOL = dict(rtol=1e-9, atol=1e-10)
pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning"),
              pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")]


def _randomise(model: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


class _LossModule(nn.Module):
    """``forward`` = the wrapped model's ``per_sample_loss`` (so functional_call can substitute parameters)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m.per_sample_loss(x)


def _reference(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients of every parameter by torch.func.vmap(grad), one sample at a time."""
    model = model.eval()
    wrapper = _LossModule(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {f"m.{k}": v for k, v in model.named_buffers()}

    def f(p, xi):
        state = {**{f"m.{k}": v for k, v in p.items()}, **buffers}
        return functional_call(wrapper, state, (xi[None],))[0]

    return vmap(grad(f), in_dims=(None, 0))(params, x)


class TinyNet(nn.Module):
    """Conv2d (stride/padding), Conv2d (dilation, reflect), Conv2d ('same'), ConvTranspose2d, Linear."""

    def __init__(self, bias: bool, inplace: bool = False):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=bias)
        self.c2 = nn.Conv2d(4, 5, 3, stride=1, padding=2, dilation=2, padding_mode="reflect", bias=bias)
        self.c3 = nn.Conv2d(5, 3, (3, 2), padding="same", bias=bias)
        self.t1 = nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1, bias=bias)
        self.t2 = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, dilation=1, bias=bias)
        self.t3 = nn.ConvTranspose2d(2, 2, 3, stride=1, padding=2, dilation=2, bias=bias)
        self.lin = nn.Linear(2 * 16 * 16, 6, bias=bias)
        self.seq = nn.Linear(4, 3, bias=bias)  # applied to (N, T, 4): positions
        self.act = nn.ReLU(inplace=True) if inplace else nn.Tanh()

    def per_sample_loss(self, x):
        h = self.act(self.c1(x))          # 8x8
        h = torch.tanh(self.c2(h))
        h = torch.tanh(self.c3(h))
        h = torch.tanh(self.t1(h))        # 16x16
        h = torch.tanh(self.t2(h))        # 32x32
        h = self.t3(h)                    # 32x32
        h = F.avg_pool2d(h, 2)            # 16x16
        out = self.lin(h.flatten(1))
        s = self.seq(h[:, :, :2, :2].reshape(h.shape[0], 2, 4))
        return (out ** 2).sum(1) + torch.sin(out).sum(1) + (s ** 3).flatten(1).sum(1)


def _check_against_reference(model, x, layers, ref_model=None):
    loss, grads = per_sample_grads(model, x, layers)
    ref = _reference(ref_model or model, x)
    names = dict(model.named_modules())
    assert torch.allclose(loss, model.per_sample_loss(x).detach(), **TOL)
    for name, g in grads.items():
        m = names[name]
        assert g.shape == (len(x), *grad_shape(m))
        _, factors = capture_factors(model, x, {name: m})
        w, b = factors[name].to_param_shape(g)
        key = f"{name}.weight"
        assert torch.allclose(w, ref[key], **TOL), (name, (w - ref[key]).abs().max())
        if b is not None:
            assert torch.allclose(b, ref[f"{name}.bias"], **TOL), name


@pytest.mark.parametrize("bias", [False, True])
def test_conv_convtranspose_linear_match_vmap(bias):
    torch.manual_seed(0)
    model = TinyNet(bias).double()
    x = torch.randn(5, 2, 16, 16, dtype=torch.float64)
    layers = ["c1", "c2", "c3", "t1", "t2", "t3", "lin", "seq"]
    _check_against_reference(model, x, layers)


def test_inplace_activation_after_layer():
    torch.manual_seed(1)
    model = TinyNet(True, inplace=True).double()
    x = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    _check_against_reference(model, x, ["c1", "c2", "lin"])


class LeafInvConv(nn.Module):
    """Reference InvConv: the effective weight W is a leaf parameter and log|det W| is computed from W."""

    def __init__(self, inv: InvConv1x1):
        super().__init__()
        self.weight = nn.Parameter(inv.weight.detach().clone())

    def forward(self, x, logdet, reverse=False):
        hw = x.shape[2] * x.shape[3]
        return F.conv2d(x, self.weight[:, :, None, None]), logdet + hw * torch.linalg.slogdet(self.weight)[1]


def _tiny_glow():
    torch.manual_seed(0)
    glow = _randomise(Glow(GlowConfig(K=2, L=2, hidden=8)).double(), scale=0.2).eval()
    ref = copy.deepcopy(glow)
    for level in ref.levels:
        for step in level:
            step.invconv = LeafInvConv(step.invconv)
    return glow, ref


def test_invconv_effective_weight_with_logdet_offset():
    glow, ref = _tiny_glow()
    x = torch.rand(4, 1, 32, 32, dtype=torch.float64)
    assert torch.allclose(glow.per_sample_loss(x), ref.per_sample_loss(x), **TOL)
    layers = glow.scored_layers("default")
    assert len(layers) == 4
    _check_against_reference(glow, x, layers, ref_model=ref)


def test_glow_all_layers_including_biased_convs():
    glow, ref = _tiny_glow()
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    layers = glow.scored_layers("all")
    assert any(m.bias is not None for m in layers.values() if isinstance(m, nn.Conv2d))
    _check_against_reference(glow, x, layers, ref_model=ref)


@pytest.mark.parametrize("which", ["default", "all"])
def test_tiny_vae(which):
    torch.manual_seed(0)
    vae = _randomise(VAE(VAEConfig(base_width=4, latent_dim=3)).double(), scale=0.1)
    with torch.no_grad():  # non-trivial running statistics
        for m in vae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    vae.train()  # capture must switch to eval mode and restore this
    x = torch.rand(4, 1, 32, 32, dtype=torch.float64)
    vae.eval()
    ref = _reference(vae, x)
    vae.train()
    loss, grads = per_sample_grads(vae, x, which)
    assert vae.training and all(m.training for m in vae.modules())
    names = dict(vae.named_modules())
    assert set(grads) == set(vae.scored_layers(which))
    for name, g in grads.items():
        _, f = capture_factors(vae, x, {name: names[name]})
        w, _ = f[name].to_param_shape(g)
        assert torch.allclose(w, ref[f"{name}.weight"], **TOL), name


def test_chunked_equals_unchunked_and_grad_untouched():
    torch.manual_seed(0)
    model = TinyNet(True).double()
    x = torch.randn(7, 2, 16, 16, dtype=torch.float64)
    _, f = capture_factors(model, x, resolve_layers(model, ["c2", "lin"]))
    for fac in f.values():
        assert torch.equal(fac.grads(max_elements=1), fac.grads())
        assert len(list(fac.chunks(1))) == 7
    assert all(p.grad is None for p in model.parameters())


def test_frozen_parameters_still_work():
    torch.manual_seed(0)
    model = TinyNet(False).double()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    _, grads = per_sample_grads(model, x, ["c1"])
    assert grads["c1"].abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())


def test_unsupported_layers():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.BatchNorm2d(4))
    with pytest.raises(UnsupportedLayer):
        resolve_layers(model, ["0"])
    with pytest.raises(UnsupportedLayer):
        resolve_layers(model, ["1"])
    with pytest.raises(ValueError):
        resolve_layers(model, ["nope"])


def test_layer_called_twice_raises():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def per_sample_loss(self, x):
            return self.lin(self.lin(x)).sum(1)

    m = Twice()
    with pytest.raises(RuntimeError, match="called 2 times"):
        capture_factors(m, torch.randn(2, 3), {"lin": m.lin})


@pytest.mark.parametrize("shape, k, d, p, s", [((3, 2, 9, 7), 3, 1, 1, 2), ((2, 4, 16, 16), 4, 1, 1, 2),
                                               ((2, 3, 8, 10), (2, 3), (2, 1), (0, 2), (1, 3)),
                                               ((1, 1, 5, 5), 5, 1, 0, 1)])
def test_strided_unfold_equals_torch_unfold(shape, k, d, p, s):
    import torch.nn.functional as F

    from rose_core.pergrad import unfold

    x = torch.randn(shape, dtype=torch.float64)
    assert torch.equal(unfold(x, k, d, p, s), F.unfold(x, k, dilation=d, padding=p, stride=s))


@pytest.mark.parametrize("k,d,p,s,bias", [(3, 1, 1, 2, True), ((3, 2), 2, (2, 1), 1, False), (4, 1, 0, 3, True)])
def test_channels_inner_factor_is_the_canonical_factor_reordered(k, d, p, s, bias):
    """``h_fast`` (rows in (kh, kw, C_in) order) holds the rows of ``h`` in ``order``, and the
    per-sample gradients in that order are the canonical ones with their columns reordered."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, k, stride=s, padding=p, dilation=d, bias=bias)
    x = torch.randn(3, 6, 11, 9)
    out = conv(x)
    grad = torch.randn_like(out)
    fast = LayerFactors("c", conv, x, grad, tuple(out.shape[2:]))
    canonical = LayerFactors("c", conv, x, grad, tuple(out.shape[2:]))
    h, order = fast.h_fast
    assert order is not None and sorted(order.tolist()) == list(range(canonical.shape[1]))
    assert torch.equal(h, canonical.h[:, order])
    g_fast = fast.grads_chunk(slice(0, 3), canonical=False)
    assert torch.allclose(g_fast, canonical.grads()[:, :, order], rtol=1e-5, atol=1e-6)
    assert torch.allclose(fast.grads(), canonical.grads(), rtol=1e-5, atol=1e-6)


def test_a_layer_the_loss_never_reaches_is_an_error_not_a_zero_gradient():
    from rose_core.pergrad import capture_factors

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)

        def per_sample_loss(self, x):
            self.unused(x)                        # called, but the loss ignores its output
            return self.used(x).square().sum(1)

    m = TwoHeads()
    with pytest.raises(ValueError, match="'unused'"):
        capture_factors(m, torch.randn(3, 4), {"used": m.used, "unused": m.unused})


def test_any_module_declaring_the_pointwise_protocol_is_scored_like_invconv():
    from rose_core.pergrad import UnsupportedLayer, check_supported, grad_shape

    class Pointwise(torch.nn.Module):
        rose_layout = "pointwise"

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.eye(3))

        def weight_grad_offset(self):
            return torch.zeros(3, 3)

    class Broken(torch.nn.Module):
        rose_layout = "pointwise"

    check_supported("p", Pointwise())
    assert grad_shape(Pointwise()) == (3, 3)
    with pytest.raises(UnsupportedLayer, match="weight_grad_offset"):
        check_supported("b", Broken())


def test_capture_flushes_denormals_only_while_it_runs():
    """capture_factors flushes float32 denormals during its passes (speed) and restores the caller's setting."""
    from rose_core.pergrad import _denormals_flushed

    vae = VAE(VAEConfig(base_width=4, latent_dim=3)).eval()
    x = torch.rand(3, 1, 32, 32)
    seen = []
    hook = vae.encoder[0].register_forward_hook(lambda m, a, o: seen.append(_denormals_flushed()))
    try:
        assert not _denormals_flushed()
        capture_factors(vae, x, resolve_layers(vae, "default"))
        assert seen == [True] and not _denormals_flushed()
        torch.set_flush_denormal(True)          # a caller who flushes keeps flushing
        capture_factors(vae, x, resolve_layers(vae, "default"))
        assert _denormals_flushed()
    finally:
        torch.set_flush_denormal(False)
        hook.remove()
