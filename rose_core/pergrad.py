"""Batched per-sample gradients of a per-sample loss w.r.t. chosen layers' weights.

ROSE needs, for every sample ``i`` and scored layer ``l``, the gradient
``g_l(x_i) = ∂ℓ(x_i)/∂W_l`` of that sample's loss (nats). A per-sample loop
(one backward per image) is slow; this module gets every sample's gradient
from **one forward and one backward pass over the batch**:

* The loss is **summed** over the batch and the model runs in **eval mode**
  (BatchNorm uses its running statistics, Glow's ActNorm does not
  re-initialise), so the gradient reaching sample ``i``'s activations depends
  on sample ``i`` only.
* A forward hook keeps each scored layer's input; a hook on the layer's output
  tensor keeps ``δ = ∂(Σ_j ℓ_j)/∂output``, whose slice ``i`` is ``∂ℓ_i/∂output_i``.
  (Tensor hooks see the gradient of the output *as the layer produced it*, even
  if a later in-place op such as ``ReLU(inplace=True)`` modifies it.)
* Every supported layer is, at each output position ``t``, a linear map
  ``out_t = W h_t`` (+ bias), so the per-sample gradient is the sum over
  positions of outer products ``G_i = Σ_t δ_{i,t} h_{i,t}ᵀ`` — a batched
  matrix product ``bmm(δ, hᵀ)`` after ``unfold``.

The factors are exposed (:class:`LayerFactors`: ``h`` of shape ``(N, D, T)``,
``delta`` of shape ``(N, C, T)``) so that EKFAC can rotate them into its
eigenbases *before* the product (see :mod:`rose_core.fisher`), and
:meth:`LayerFactors.grads` materialises ``G`` of shape ``(N, C, D)`` in chunks.

Layouts (the "gradient matrix" of a layer, ``C × D``):

* ``nn.Conv2d`` (groups=1; any stride, padding, dilation, padding mode):
  ``C = C_out``, ``D = C_in·kh·kw`` in the order of ``weight.flatten(1)``;
  positions ``T = H_out·W_out``.
* ``nn.Linear``: ``C = out_features``, ``D = in_features``; extra leading
  dimensions (``(N, *, D)`` inputs) are positions.
* ``nn.ConvTranspose2d`` (groups=1): written as the equivalent stride-1
  convolution of the zero-inserted, padded input with the flipped, transposed
  kernel ``W'[o, i, a, b] = W[i, o, kh-1-a, kw-1-b]``; ``C = C_out``,
  ``D = C_in·kh·kw``, ``T = H_out·W_out``. This keeps the ``C_out × D_in``
  Kronecker layout (and bias column) of a convolution;
  :meth:`LayerFactors.to_param_shape` maps back to ``weight``'s own layout.
* Glow's ``InvConv1x1``: gradients are taken w.r.t. the **effective weight**
  ``W = P L (U + diag(s))`` (``module.weight``, ``C × C``), not its LU
  parameters — ``W`` is what acts on the data. ``D = C = channels``,
  ``T = H·W``. The ``-log|det W|`` term of the NLL contributes
  ``module.weight_grad_offset()`` (the same for every sample; the hooks cannot
  see it), which is added to every sample's gradient (``LayerFactors.offset``).
  This assumes the loss contains that term with coefficient 1 per sample, as
  :meth:`Glow.per_sample_loss` does.

With a bias the input factor gets an extra row of ones, so the gradient is
``C × (D + 1)`` with the bias gradient in the last column.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn


__all__ = ["LayerFactors", "UnsupportedLayer", "capture_factors", "per_sample_grads", "grad_shape",
           "check_supported", "resolve_layers", "SUPPORTED_LAYERS", "row_chunks", "DEFAULT_CHUNK_ELEMENTS",
           "channels_inner_order"]

DEFAULT_CHUNK_ELEMENTS = 1 << 24
"""Largest number of elements of a materialised ``(n, C, D)`` gradient block (64 MiB in float32)."""


def row_chunks(n: int, c: int, d: int, max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Iterator[slice]:
    """Row slices of ``n`` samples so that one ``(rows, C, D)`` block has at most ``max_elements`` elements."""
    step = max(1, max_elements // max(1, c * d))
    for i in range(0, n, step):
        yield slice(i, min(i + step, n))


class UnsupportedLayer(ValueError):
    """A layer type (or configuration, e.g. grouped convolution) per-sample gradients do not support."""


SUPPORTED_LAYERS = ("nn.Conv2d (groups=1), nn.Linear, nn.ConvTranspose2d (groups=1, zero padding) and modules "
                    "declaring rose_layout='pointwise' (e.g. Glow's InvConv1x1)")
"""The layer types ROSE can score, as every :class:`UnsupportedLayer` message names them."""


# --------------------------------------------------------------------------------------------
# Layer adapters
# --------------------------------------------------------------------------------------------

def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


POINTWISE = "pointwise"
"""Value of a module's ``rose_layout`` attribute for a *pointwise linear map with an effective weight*
(Glow's ``InvConv1x1``): ``out = W x`` at every position of an ``(N, C, H, W)`` input, ``W`` the
module's ``weight`` (``C × C``, no bias), and ``weight_grad_offset()`` the gradient that the loss
adds to ``W`` outside the hooks (the same for every sample; e.g. ``-∂log|det W|/∂W``). Any module
that declares this protocol can be scored; pergrad imports no model."""


def _pointwise(module: nn.Module) -> bool:
    return getattr(module, "rose_layout", None) == POINTWISE


def _supported(module: nn.Module) -> bool:
    return _pointwise(module) or isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))


def check_supported(name: str, module: nn.Module) -> None:
    """Raise :class:`UnsupportedLayer` unless ``module`` is a layer this module can differentiate."""
    if _pointwise(module):
        if not callable(getattr(module, "weight_grad_offset", None)) or _has_bias(module):
            raise UnsupportedLayer(f"Layer {name!r} ({type(module).__name__}) declares rose_layout='pointwise' but "
                                   "lacks weight_grad_offset() or has a bias; see rose_core.pergrad.POINTWISE. "
                                   f"Supported layers: {SUPPORTED_LAYERS}.")
        return
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        if module.groups != 1:
            raise UnsupportedLayer(f"Layer {name!r} is a grouped {type(module).__name__} (groups={module.groups}), "
                                   f"which is not supported; supported layers: {SUPPORTED_LAYERS}.")
        if isinstance(module, nn.ConvTranspose2d) and module.padding_mode != "zeros":
            raise UnsupportedLayer(f"Layer {name!r} is a ConvTranspose2d with padding_mode={module.padding_mode!r}, "
                                   f"which is not supported; supported layers: {SUPPORTED_LAYERS}.")
        return
    if isinstance(module, nn.Linear):
        return
    raise UnsupportedLayer(f"Layer {name!r} is a {type(module).__name__}, which ROSE cannot score; supported layers: "
                           f"{SUPPORTED_LAYERS}.")


def _has_bias(module: nn.Module) -> bool:
    return getattr(module, "bias", None) is not None


def grad_shape(module: nn.Module) -> tuple[int, int]:
    """``(C, D)`` of the layer's per-sample gradient matrix (``D`` includes the bias column)."""
    b = int(_has_bias(module))
    if _pointwise(module):
        c = module.weight.shape[0]
        return (c, c)
    if isinstance(module, nn.Conv2d):
        kh, kw = _pair(module.kernel_size)
        return (module.out_channels, module.in_channels * kh * kw + b)
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = _pair(module.kernel_size)
        return (module.out_channels, module.in_channels * kh * kw + b)
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features + b)
    raise UnsupportedLayer(f"No gradient layout for {type(module).__name__}; supported layers: {SUPPORTED_LAYERS}.")


def unfold(x: torch.Tensor, kernel_size, dilation=1, padding=0, stride=1) -> torch.Tensor:
    """``F.unfold`` (zero padding) as one strided view and one copy: ``(N, C·kh·kw, T)``.

    Equal element for element to ``torch.nn.functional.unfold``; measured here on the VAE's
    second encoder layer (128×32×16×16, 4×4, stride 2): 15× faster than the CPU ``im2col``
    kernel, which was the largest single cost of a ROSE fit.

    The result is a transposed view of a position-major ``(N, T, C·kh·kw)`` contiguous tensor
    (the one copy writes that layout): the consumers multiply ``hᵀ`` per position — EKFAC's
    rotation ``(N·T, D) @ U_A`` and the Gram ``Σ h hᵀ`` — which is then one plain matrix product
    over all positions of the batch instead of ``N`` transposed ones (about 1.5-2× faster for the
    VAE's encoder on this CPU).
    """
    return _unfold_positions(x, kernel_size, dilation, padding, stride).transpose(1, 2)


def _unfold_positions(x: torch.Tensor, kernel_size, dilation=1, padding=0, stride=1) -> torch.Tensor:
    """The unfolded input in position-major layout: a contiguous ``(N, T, C·kh·kw)`` tensor."""
    kh, kw = _pair(kernel_size)
    dh, dw = _pair(dilation)
    ph, pw = _pair(padding)
    sh, sw = _pair(stride)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    n, c, hh, ww = x.shape
    oh = (hh - dh * (kh - 1) - 1) // sh + 1
    ow = (ww - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"Kernel {kh}×{kw} (dilation {dh}×{dw}) does not fit an input of {hh}×{ww}.")
    x = x.contiguous()
    sn, sc, s_h, s_w = x.stride()
    view = x.as_strided((n, oh, ow, c, kh, kw), (sn, s_h * sh, s_w * sw, sc, s_h * dh, s_w * dw))
    return view.reshape(n, oh * ow, c * kh * kw)


def _unfold_channels_inner(x: torch.Tensor, kernel_size, dilation=1, padding=0, stride=1) -> torch.Tensor:
    """The unfolded input with rows in ``(kh, kw, C)`` order: a contiguous ``(N, T, kh·kw·C)`` tensor.

    Built from a zero-padded channels-last copy of ``x``, so the gathering copy moves runs of ``C``
    contiguous floats instead of ``kw`` (measured here, one thread, 128×32×16×16, 4×4, stride 2:
    3.6 ms against 8.4 ms for :func:`_unfold_positions`)."""
    kh, kw = _pair(kernel_size)
    dh, dw = _pair(dilation)
    ph, pw = _pair(padding)
    sh, sw = _pair(stride)
    n, c, hi, wi = x.shape
    xp = x.new_zeros(n, hi + 2 * ph, wi + 2 * pw, c)
    xp[:, ph:ph + hi, pw:pw + wi] = x.permute(0, 2, 3, 1)
    hh, ww = xp.shape[1:3]
    oh = (hh - dh * (kh - 1) - 1) // sh + 1
    ow = (ww - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"Kernel {kh}×{kw} (dilation {dh}×{dw}) does not fit an input of {hh}×{ww}.")
    sn, s_h, s_w, sc = xp.stride()
    view = xp.as_strided((n, oh, ow, kh, kw, c), (sn, s_h * sh, s_w * sw, s_h * dh, s_w * dw, sc))
    return view.reshape(n, oh * ow, kh * kw * c)


def _channels_inner(module: nn.Module, positions: int) -> bool:
    """Whether :func:`_unfold_channels_inner` builds this layer's input factor faster than the canonical
    order: a zero-padded ``Conv2d`` with a kernel larger than 1×1 (for 1×1 the two orders are the
    same), more input channels than kernel columns and more than one position (with one position,
    or ``C_in ≤ kw``, the canonical copy is as cheap)."""
    return isinstance(module, nn.Conv2d) and not _pointwise(module) and module.groups == 1 \
        and not isinstance(module.padding, str) and module.padding_mode == "zeros" \
        and module.in_channels > _pair(module.kernel_size)[1] and positions > 1 \
        and _pair(module.kernel_size) != (1, 1)


def channels_inner_order(module: nn.Conv2d) -> torch.Tensor:
    """``order[j]``: the canonical column (``weight.flatten(1)`` order, bias last) of row ``j`` of a
    factor built by :func:`_unfold_channels_inner` (rows in ``(kh, kw, C_in)`` order)."""
    kh, kw = _pair(module.kernel_size)
    c = module.in_channels
    order = torch.arange(c * kh * kw).view(c, kh, kw).permute(1, 2, 0).reshape(-1)
    if _has_bias(module):
        order = torch.cat([order, torch.tensor([c * kh * kw])])
    return order


def _input_factor(module: nn.Module, x: torch.Tensor, out_hw: tuple[int, ...]) -> torch.Tensor:
    """Input factor ``h`` ``(N, D, T)`` of one layer from its raw input (for convolutions and linear
    layers a transposed view of a contiguous position-major ``(N, T, D)`` tensor; see :func:`unfold`)."""
    n = x.shape[0]
    if _pointwise(module):
        return x.reshape(n, x.shape[1], -1)
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
            padding = 0
        else:
            padding = module.padding
        ht = _unfold_positions(x, module.kernel_size, dilation=module.dilation, padding=padding,
                               stride=module.stride)
    elif isinstance(module, nn.ConvTranspose2d):
        sh, sw = _pair(module.stride)
        kh, kw = _pair(module.kernel_size)
        dh, dw = _pair(module.dilation)
        ph, pw = _pair(module.padding)
        c, hi, wi = x.shape[1:]
        if (sh, sw) != (1, 1):  # zero insertion
            up = x.new_zeros(n, c, (hi - 1) * sh + 1, (wi - 1) * sw + 1)
            up[:, :, ::sh, ::sw] = x
        else:
            up = x
        lh, lw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
        # right/bottom padding chosen so the unfold yields exactly the recorded output size
        # (this also covers output_padding and forward(..., output_size=...)).
        rh = out_hw[0] + dh * (kh - 1) - up.shape[2] - lh
        rw = out_hw[1] + dw * (kw - 1) - up.shape[3] - lw
        up = F.pad(up, (lw, rw, lh, rh))  # negative values crop
        ht = _unfold_positions(up, (kh, kw), dilation=(dh, dw))
    elif isinstance(module, nn.Linear):
        ht = x.reshape(n, -1, x.shape[-1])
    else:  # pragma: no cover - guarded by check_supported
        raise UnsupportedLayer(type(module).__name__)
    if _has_bias(module):
        ht = torch.cat([ht, ht.new_ones(n, ht.shape[1], 1)], 2)
    return ht.transpose(1, 2)


def _output_factor(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Output factor ``δ`` ``(N, C, T)`` from the gradient w.r.t. the layer output."""
    n = g.shape[0]
    if isinstance(module, nn.Linear):
        return g.reshape(n, -1, g.shape[-1]).transpose(1, 2)
    return g.reshape(n, g.shape[1], -1)


def _to_param_shape(module: nn.Module, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = g.shape[0]
    bias = g[:, :, -1] if _has_bias(module) else None
    w = g[:, :, :-1] if _has_bias(module) else g
    if _pointwise(module) or isinstance(module, nn.Linear):
        return w, bias
    if isinstance(module, nn.Conv2d):
        return w.reshape(n, *module.weight.shape), bias
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = _pair(module.kernel_size)
        wt = w.reshape(n, module.out_channels, module.in_channels, kh, kw).flip(3, 4).transpose(1, 2)
        return wt, bias
    raise UnsupportedLayer(type(module).__name__)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Factors
# --------------------------------------------------------------------------------------------

@dataclass
class LayerFactors:
    """Per-sample gradient factors of one layer for one batch.

    ``G_i = Σ_t delta[i, :, t] h[i, :, t]ᵀ + offset`` for every sample ``i``.
    ``h`` and ``delta`` are computed lazily from the raw input and output
    gradient the hooks kept (and cached), so unused layouts cost nothing.
    """

    name: str
    module: nn.Module
    raw_input: torch.Tensor
    raw_grad: torch.Tensor
    out_hw: tuple[int, ...]
    offset: torch.Tensor | None = None
    _h: torch.Tensor | None = field(default=None, repr=False)
    _delta: torch.Tensor | None = field(default=None, repr=False)
    _h_fast: tuple[torch.Tensor, torch.Tensor | None] | None = field(default=None, repr=False)

    @property
    def h(self) -> torch.Tensor:
        """Input factor ``(N, D, T)``: unfolded inputs per position (plus a row of ones for a bias)."""
        if self._h is None:
            self._h = _input_factor(self.module, self.raw_input, self.out_hw)
        return self._h

    @property
    def h_fast(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(h, order)``: the input factor with its rows in the order that is cheapest to build.

        For a convolution with more input channels than kernel columns (and more than one
        position) the rows are in ``(kh, kw, C_in)`` order (:func:`_unfold_channels_inner`) and
        ``order[j]`` is the canonical row (that of :attr:`h`) of row ``j``; otherwise ``h`` is
        :attr:`h` and ``order`` is None. Sums over rows do not depend on the order, so the Fisher
        approximations use this one and map their ``(C, D)`` weights and bases through ``order``.
        """
        if self._h_fast is None:
            # an offset is in the canonical order (and only pointwise layers have one)
            if self._h is None and self.offset is None and _channels_inner(self.module, self.positions):
                m = self.module
                ht = _unfold_channels_inner(self.raw_input, m.kernel_size, m.dilation, m.padding, m.stride)
                if _has_bias(m):
                    ht = torch.cat([ht, ht.new_ones(ht.shape[0], ht.shape[1], 1)], 2)
                self._h_fast = (ht.transpose(1, 2), channels_inner_order(m).to(ht.device))
            else:
                self._h_fast = (self.h, None)
        return self._h_fast

    @property
    def delta(self) -> torch.Tensor:
        """Output factor ``(N, C, T)``: ``∂ℓ_i/∂output`` per position."""
        if self._delta is None:
            self._delta = _output_factor(self.module, self.raw_grad)
        return self._delta

    @property
    def n(self) -> int:
        return self.raw_input.shape[0]

    def without_cache(self) -> "LayerFactors":
        """The same factors without the lazily computed ``h``/``delta`` (what a replay needs to keep)."""
        return LayerFactors(self.name, self.module, self.raw_input, self.raw_grad, self.out_hw, self.offset)

    @property
    def raw_nbytes(self) -> int:
        """Bytes of the raw input and output gradient this object holds."""
        return self.raw_input.numel() * self.raw_input.element_size() + \
            self.raw_grad.numel() * self.raw_grad.element_size()

    @property
    def shape(self) -> tuple[int, int]:
        """``(C, D)`` of the gradient matrix."""
        return grad_shape(self.module)

    @property
    def positions(self) -> int:
        """``T``, the number of positions summed over (1 for a plain linear layer)."""
        return self.delta.shape[2]

    def chunks(self, max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Iterator[slice]:
        """Row slices so that one ``(n, C, D)`` block has at most ``max_elements`` elements."""
        return row_chunks(self.n, *self.shape, max_elements)

    def grads_chunk(self, rows: slice, canonical: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample gradients ``(n, C, D)`` of the samples in ``rows`` (unfold + bmm); with
        ``canonical=False`` the columns are in :attr:`h_fast`'s order. ``out``: an ``(n, C, D)``
        tensor to write into."""
        h = self.h if canonical else self.h_fast[0]
        g = torch.bmm(self.delta[rows], h[rows].transpose(1, 2), out=out)
        if self.offset is not None:
            g += self.offset
        return g

    def grads(self, max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
        """All per-sample gradient matrices ``(N, C, D)`` (computed in chunks)."""
        return torch.cat([self.grads_chunk(r) for r in self.chunks(max_elements)], 0)

    def to_param_shape(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Map ``(N, C, D)`` gradients to ``(N, *weight.shape)`` and ``(N, C_out)`` bias (or None)."""
        return _to_param_shape(self.module, g)


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------

def resolve_layers(model: nn.Module, layers: str | list[str] | tuple[str, ...] | Mapping[str, nn.Module]
                   = "default") -> dict[str, nn.Module]:
    """Scored layers by selector: ``"default"``/``"all"`` (``model.scored_layers``), a list of
    module names (``model.named_modules()``), or a ready ``{name: module}`` mapping."""
    if isinstance(layers, str):
        out = dict(model.scored_layers(layers))
    elif isinstance(layers, Mapping):
        out = dict(layers)
    else:
        modules = dict(model.named_modules())
        names = list(layers)
        if not names:
            raise ValueError("The list of layers to score is empty.")
        missing = [n for n in names if n not in modules]
        if missing:
            known = [n for n, m in modules.items() if _supported(m)]
            raise ValueError(f"Unknown layer name(s) {missing}; scorable layers of this model include {known[:8]}.")
        if len(set(names)) != len(names):
            raise ValueError(f"Duplicate layer names in {names}.")
        out = {n: modules[n] for n in names}
    if not out:
        raise ValueError("No layers to score.")
    for name, m in out.items():
        check_supported(name, m)
    return out


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


@contextlib.contextmanager
def _params_require_grad(modules: list[nn.Module]):
    params = [p for m in modules for p in m.parameters(recurse=False)]
    old = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        for p, r in zip(params, old):
            p.requires_grad_(r)


def _denormals_flushed() -> bool:
    """Whether this thread's CPU already flushes float32 denormals to zero (there is no getter in torch)."""
    return float(torch.tensor([1e-39], dtype=torch.float32).mul(1.0)) == 0.0


@contextlib.contextmanager
def flush_denormals(device: torch.device):
    """Flush float32 denormals to zero on the CPU for the duration (``torch.set_flush_denormal``), restoring
    the previous setting afterwards.

    A generative model's backward is full of denormals: the gradient of a 256-way softmax is ``p - 1[y]``,
    and most ``p`` of unlikely pixel values are below float32's smallest normal number (1.2e-38), where x86
    CPUs take a slow microcode path. On the shipped VAE this made the decoder's output convolution backward
    several times slower than the same convolution on normal numbers; flushing halves the forward +
    activation-only backward on this CPU. Values change only where they are below 1.2e-38 (each such entry
    becomes 0), far below float32 rounding of the per-sample gradients and scores. Only the calling thread's
    flags are set (torch's intra-op workers keep theirs).
    """
    if device.type != "cpu" or _denormals_flushed():
        yield
        return
    if not torch.set_flush_denormal(True):   # CPU without the flags (no SSE3): nothing to do
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def capture_factors(model: nn.Module, x: torch.Tensor, layers: Mapping[str, nn.Module],
                    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, dict[str, LayerFactors]]:
    """One forward and one backward pass: the per-sample loss ``(N,)`` (detached) and the
    :class:`LayerFactors` of each layer in ``layers``.

    ``loss_fn`` defaults to ``model.per_sample_loss`` and must return one loss per sample.
    The model runs in eval mode (restored afterwards). Only the gradients w.r.t. the scored
    layers' outputs are computed (``torch.autograd.grad`` with those outputs as inputs): no
    parameter gradient is formed, and ``.grad`` of parameters is left untouched. Each scored
    layer must be called exactly once per forward pass. On the CPU, float32 denormals are flushed to
    zero during the passes (:func:`flush_denormals`: much faster, values change only below 1.2e-38).
    """
    loss_fn = loss_fn or model.per_sample_loss
    for name, m in layers.items():
        check_supported(name, m)
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    versions: dict[str, int] = {}
    grads: dict[str, torch.Tensor] = {}
    offsets: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def tensor_hook(g: torch.Tensor) -> None:
            grads[name] = g

        def hook(module: nn.Module, args: tuple, output) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            inputs[name].append(args[0].detach())
            outputs[name].append(out)
            versions[name] = out._version
            if out.requires_grad:
                out.register_hook(tensor_hook)
            if _pointwise(module):
                offsets[name] = module.weight_grad_offset().to(out.dtype)
        return hook

    with _eval_mode(model), torch.enable_grad(), _params_require_grad(list(layers.values())) as params, \
            flush_denormals(x.device):
        handles = [m.register_forward_hook(make_hook(name)) for name, m in layers.items()]
        try:
            loss = loss_fn(x)
        finally:
            for h in handles:
                h.remove()
        if loss.ndim != 1 or loss.shape[0] != x.shape[0]:
            raise ValueError(f"The loss must have one value per sample, shape ({x.shape[0]},); got {tuple(loss.shape)}.")
        for name in layers:
            if len(outputs[name]) != 1:
                raise RuntimeError(f"Layer {name!r} was called {len(outputs[name])} times in one forward pass; "
                                   "per-sample gradients need each scored layer to be used exactly once.")
        outs = [outputs[name][0] for name in layers]
        if not any(o.requires_grad for o in outs):
            raise RuntimeError("None of the scored layers' outputs requires a gradient.")
        # Differentiate w.r.t. the layer outputs (cheapest: nothing below them is computed). If an
        # in-place op modified an output after the layer produced it, fall back to the layers'
        # parameters; the tensor hooks still deliver the gradient of the original output.
        modified = any(o._version != versions[n] for n, o in zip(layers, outs))
        targets = params if modified else [o for o in outs if o.requires_grad]
        if loss.requires_grad:
            torch.autograd.grad(loss.sum(), targets, allow_unused=True)

    factors = {}
    for name, m in layers.items():
        out = outputs[name][0]
        g = grads.get(name)
        if g is None:
            raise ValueError(f"The loss does not depend on layer {name!r} (no gradient reaches its output); "
                             "remove it from the scored layers — it would add a constant score.")
        factors[name] = LayerFactors(name, m, inputs[name][0], g.detach(), tuple(out.shape[2:]), offsets.get(name))
    return loss.detach(), factors


def per_sample_grads(model: nn.Module, x: torch.Tensor, layers: Mapping[str, nn.Module] | str | list[str] = "default",
                     loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample loss ``(N,)`` and gradient matrices ``{name: (N, C, D)}`` (see the module doc for layouts)."""
    layers = resolve_layers(model, layers)
    loss, factors = capture_factors(model, x, layers, loss_fn)
    with torch.no_grad():
        return loss, {name: f.grads(max_elements) for name, f in factors.items()}
