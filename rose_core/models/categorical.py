"""The VAE's 256-way categorical likelihood: ``-log p(x|z)`` per pixel, fused for class-contiguous logits.

``F.cross_entropy`` runs a log-softmax, a gather and, in the backward, a zero fill, a scatter and a
log-softmax backward: five passes over ``N × 256 × C × H × W`` logits (134 MB for a Fashion-MNIST batch of
128), each into a freshly allocated tensor. When the 256 classes are the innermost dimension in memory
(the decoder runs channels-last, see :meth:`rose_core.models.vae.VAE.optimise_layout`), one
forward pass computes the loss *and* the softmax the backward needs, and the backward turns that
softmax into the gradient ``go · (p - 1[y])`` in place. Other layouts (a reduction over a strided
dimension is slow there) and ``torch.func`` transforms use ``F.cross_entropy``.

Both give the same values up to float32 rounding (``tests/test_categorical.py`` compares them with a
float64 reference). The in-place backward can run once per forward: a second backward through the same
graph (``retain_graph=True``) raises instead of returning a wrong gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["categorical_nll", "classes_innermost", "EXP_FLOOR"]


EXP_FLOOR = -80.0
"""Logit gaps below this are raised to it before ``exp``. x86 vector ``exp`` takes a slow path (tens of
times slower) for arguments whose result underflows float32's normal range (below about -87.3), and a
trained decoder's logits hold many such gaps (unlikely pixel values). ``exp(-80) = 1.8e-35``: the
softmax sum is at least 1 (its largest term is ``exp(0)``), so the loss is unchanged to the last bit,
and a class probability changes by less than 1.8e-35 — below anything float32 can show in a gradient."""


def classes_innermost(logits: torch.Tensor) -> bool:
    """Whether dimension 1 (the classes) of ``logits`` is innermost in memory (stride 1) and the tensor
    is dense (a permutation of a contiguous layout): the fused path's condition."""
    if logits.ndim < 2 or logits.stride(1) != 1:
        return False
    expected = 1
    for size, stride in sorted(zip(logits.shape, logits.stride()), key=lambda d: (d[1], d[0])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _transforms_active() -> bool:
    """Inside ``torch.func`` transforms (``vmap``/``grad``) a classic autograd.Function cannot run."""
    check = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(check()) if check is not None else False


class _FusedCategoricalNll(torch.autograd.Function):
    """``logsumexp_k z_k - z_y`` along dimension 1; the backward is ``go · (softmax(z) - onehot(y))``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.movedim(1, -1)                    # (N, ..., K), classes innermost by the caller's check
        y = targets.unsqueeze(-1)
        top = z.amax(-1, keepdim=True)
        e = torch.sub(z, top).clamp_(min=EXP_FLOOR).exp_()
        total = e.sum(-1, keepdim=True)
        loss = (top + total.log() - z.gather(-1, y)).squeeze(-1)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(e.div_(total), targets)
        ctx.consumed = False
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("categorical_nll's fused backward reuses its saved softmax in place and can run "
                               "only once per forward; recompute the loss instead of retain_graph=True.")
        ctx.consumed = True
        p, targets = ctx.saved_tensors
        go = grad_out.unsqueeze(-1)
        grad = p.mul_(go).scatter_add_(-1, targets.unsqueeze(-1), -go)
        return grad.movedim(-1, 1), None


def categorical_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-log softmax(logits)[targets]`` along dimension 1, elementwise: ``logits (N, K, *S)``,
    integer ``targets (N, *S)`` in ``[0, K)``, result ``(N, *S)`` (nats). Same values as
    ``F.cross_entropy(logits, targets, reduction="none")``; fused when the classes are innermost."""
    if logits.ndim < 2 or targets.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"categorical_nll needs logits (N, K, *S) and targets (N, *S); got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}.")
    if not classes_innermost(logits) or _transforms_active():
        return F.cross_entropy(logits, targets, reduction="none")
    return _FusedCategoricalNll.apply(logits, targets)
