"""The interface every generative model in ROSE Studio implements.

Inputs are float tensors ``(N, C, H, W)`` with values in [0, 1] (see
:func:`rose_core.data.to_model_input`); pixel intensities are recovered as
``round(255 x)``. All losses are **per sample, in nats**: ``-log p(x | θ)`` (or
its bound). Scorers differentiate :meth:`per_sample_loss` and read layers from
:meth:`scored_layers`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class GenerativeModel(nn.Module):
    """Base class: a density model over 8-bit images."""

    kind: str = "base"

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.channels, c.image_size, c.image_size)

    def num_dims(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{type(self).__name__} expects inputs of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}.")
        if not torch.isfinite(x).all():
            raise ValueError("Input contains NaN or infinite values.")

    # --- to implement -------------------------------------------------
    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (nats) used for training: stochastic where the model is."""
        raise NotImplementedError

    def per_sample_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic per-sample ``-log p(x|θ)`` (nats) that ROSE differentiates."""
        raise NotImplementedError

    def nll(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Best available per-sample NLL estimate in nats (IWAE for the VAE, exact for Glow)."""
        raise NotImplementedError

    def optimise_layout(self, device: torch.device) -> "GenerativeModel":
        """Arrange the weights in the memory layout that runs fastest on ``device`` (in place; returns
        ``self``). Called by :func:`rose_core.checkpoint.load_model`; any layout gives the same results
        up to float32 rounding. The default keeps PyTorch's."""
        return self

    def scored_layers(self, which: str = "default") -> dict[str, nn.Module]:
        """Layers ROSE scores: ``"default"`` (the paper's choice) or ``"all"``."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------
    def bits_per_dim(self, nll_nats: torch.Tensor) -> torch.Tensor:
        """Convert per-sample NLL in nats (of 8-bit data) to bits per dimension."""
        return nll_nats / (self.num_dims() * math.log(2.0))


def pixel_targets(x: torch.Tensor) -> torch.Tensor:
    """Integer intensities 0..255 from inputs in [0, 1]."""
    return (x * 255.0).round().clamp_(0, 255).long()
