"""Glow (Kingma & Dhariwal 2018) as configured in the paper's Appendix B.2.

Multi-scale architecture with ``L`` levels of ``K`` flow steps; each step is
ActNorm → invertible 1×1 convolution (LU-parameterised) → affine coupling
whose network is Conv3×3 → ActNorm → ReLU → Conv1×1 → ActNorm → ReLU →
zero-initialised Conv3×3. Split priors and the top prior are learned.
Inputs are dequantised as ``y = (round(255 x) + u) / 256 - 0.5`` with
``u ~ U[0, 1)`` in training and ``u = 0.5`` (the bin centre) for deterministic
scores, so the NLL of 8-bit data is ``-log p(y) + D log 256`` nats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from rose_core.models.base import GenerativeModel, pixel_targets

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class GlowConfig:
    channels: int = 1
    image_size: int = 32
    K: int = 16
    L: int = 2
    hidden: int = 200

    def to_dict(self) -> dict:
        return asdict(self)


GLOW_CONFIGS = {
    "fmnist": GlowConfig(channels=1, K=16, L=2, hidden=200),
    "cifar10": GlowConfig(channels=3, K=8, L=3, hidden=400),
}


def gaussian_logp(x: torch.Tensor, mean: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
    """Per-sample log-density of a diagonal Gaussian (logs = log std)."""
    return (-0.5 * (LOG_2PI + 2.0 * logs + (x - mean) ** 2 * torch.exp(-2.0 * logs))).flatten(1).sum(1)


class ActNorm(nn.Module):
    """Per-channel affine with data-dependent initialisation on the first training batch."""

    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = scale
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self._ready = False  # Python-side cache of `initialized`: reading the buffer syncs a GPU

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
        self.bias.copy_(-mean)
        self.logs.copy_(torch.log(self.scale / (std + 1e-6)))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor, logdet: torch.Tensor, reverse: bool = False):
        if self.training and not self._ready:
            if not bool(self.initialized):
                self._init(x)
            self._ready = True
        hw = x.shape[2] * x.shape[3]
        if not reverse:
            return (x + self.bias) * torch.exp(self.logs), logdet + hw * self.logs.sum()
        return x * torch.exp(-self.logs) - self.bias, logdet - hw * self.logs.sum()


class InvConv1x1(nn.Module):
    """Invertible 1×1 convolution, LU-parameterised: W = P L (U + diag(sign · exp(log_s))).

    ROSE differentiates the per-sample loss with respect to the effective weight
    ``W`` (``self.weight``); :meth:`weight_grad_offset` gives the part of that
    gradient that comes from ``log|det W|`` and is the same for every sample.
    ``rose_layout = "pointwise"`` declares that protocol to :mod:`rose_core.pergrad`.
    """

    rose_layout = "pointwise"

    def __init__(self, channels: int, seed: int | None = None) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        w, _ = np.linalg.qr(rng.standard_normal((channels, channels)))
        p, lower, upper = scipy.linalg.lu(w)
        s = np.diag(upper)
        self.register_buffer("p", torch.tensor(p, dtype=torch.float32))
        self.register_buffer("sign_s", torch.tensor(np.sign(s), dtype=torch.float32))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(torch.tensor(lower, dtype=torch.float32))
        self.upper = nn.Parameter(torch.tensor(np.triu(upper, 1), dtype=torch.float32))
        self.log_s = nn.Parameter(torch.tensor(np.log(np.abs(s)), dtype=torch.float32))
        self.channels = channels
        self.bias = None
        self.spatial: int = 0  # H·W of the last input (for weight_grad_offset)

    @property
    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x: torch.Tensor, logdet: torch.Tensor, reverse: bool = False):
        hw = x.shape[2] * x.shape[3]
        self.spatial = hw
        w = self.weight
        dlogdet = hw * self.log_s.sum()
        if not reverse:
            return F.conv2d(x, w[:, :, None, None]), logdet + dlogdet
        return F.conv2d(x, torch.inverse(w)[:, :, None, None]), logdet - dlogdet

    def weight_grad_offset(self) -> torch.Tensor:
        """∂(-log|det| term of one sample's NLL)/∂W = -H·W·W⁻ᵀ (same for every sample)."""
        with torch.no_grad():
            return -self.spatial * torch.inverse(self.weight).T


class ZeroConv2d(nn.Module):
    """Zero-initialised 3×3 convolution with a learned log-scale (Glow's Conv2dZeros)."""

    def __init__(self, cin: int, cout: int, logscale_factor: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.logs = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.logs * self.logscale_factor)


class CouplingNet(nn.Module):
    def __init__(self, cin: int, cout: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=1, bias=False)
        self.norm1 = ActNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.norm2 = ActNorm(hidden)
        self.out = ZeroConv2d(hidden, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = x.new_zeros(())
        h = F.relu(self.norm1(self.conv1(x), zero)[0])
        h = F.relu(self.norm2(self.conv2(h), zero)[0])
        return self.out(h)


class AffineCoupling(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.ca = channels // 2
        self.net = CouplingNet(self.ca, 2 * (channels - self.ca), hidden)

    def forward(self, x: torch.Tensor, logdet: torch.Tensor, reverse: bool = False):
        xa, xb = x[:, : self.ca], x[:, self.ca:]
        h = self.net(xa)
        shift, raw = h[:, 0::2], h[:, 1::2]
        scale = torch.sigmoid(raw + 2.0)
        if not reverse:
            xb = (xb + shift) * scale
            logdet = logdet + torch.log(scale).flatten(1).sum(1)
        else:
            xb = xb / scale - shift
            logdet = logdet - torch.log(scale).flatten(1).sum(1)
        return torch.cat([xa, xb], 1), logdet


class FlowStep(nn.Module):
    def __init__(self, channels: int, hidden: int, seed: int | None = None) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels, seed=seed)
        self.coupling = AffineCoupling(channels, hidden)

    def forward(self, x, logdet, reverse: bool = False):
        mods = (self.actnorm, self.invconv, self.coupling)
        for m in (mods if not reverse else reversed(mods)):
            x, logdet = m(x, logdet, reverse)
        return x, logdet


def squeeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, h * 2, w * 2)


class Split(nn.Module):
    """Factor out half the channels with a learned conditional Gaussian prior."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.prior = ZeroConv2d(channels // 2, channels)

    def forward(self, x, logp, reverse: bool = False, eps_std: float | None = None):
        if not reverse:
            z1, z2 = x.chunk(2, 1)
            h = self.prior(z1)
            return z1, z2, logp + gaussian_logp(z2, h[:, 0::2], h[:, 1::2])
        raise NotImplementedError  # reverse handled in Glow.reverse


class Glow(GenerativeModel):
    kind = "glow"

    def __init__(self, config: GlowConfig = GLOW_CONFIGS["fmnist"], seed: int = 0) -> None:
        super().__init__(config)
        c, s = config.channels, config.image_size
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()
        shapes = []
        for level in range(config.L):
            c, s = c * 4, s // 2
            self.levels.append(nn.ModuleList(
                FlowStep(c, config.hidden, seed=seed * 1000 + level * 100 + k) for k in range(config.K)))
            if level < config.L - 1:
                self.splits.append(Split(c))
                shapes.append((c // 2, s, s))
                c = c // 2
        self.top_shape = (c, s, s)
        self.top_mean = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.top_logs = nn.Parameter(torch.zeros(1, c, 1, 1))

    # --- transforms ---------------------------------------------------------
    def dequantize(self, x: torch.Tensor, noise: bool) -> torch.Tensor:
        xi = pixel_targets(x).to(x.dtype)
        u = torch.rand_like(xi) if noise else torch.full_like(xi, 0.5)
        return (xi + u) / 256.0 - 0.5

    def encode(self, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """y (dequantised, in [-0.5, 0.5)) → latents, log p(z) and log|det| per sample."""
        n = y.shape[0]
        logdet = y.new_zeros(n)
        logp = y.new_zeros(n)
        zs = []
        h = y
        for level, steps in enumerate(self.levels):
            h = squeeze(h)
            for step in steps:
                h, logdet = step(h, logdet)
            if level < len(self.splits):
                h, z2, logp = self.splits[level](h, logp)
                zs.append(z2)
        logp = logp + gaussian_logp(h, self.top_mean.expand_as(h), self.top_logs.expand_as(h))
        zs.append(h)
        return zs, logp, logdet

    def decode(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`encode` given every latent."""
        h = zs[-1]
        for level in reversed(range(len(self.levels))):
            if level < len(self.splits):
                h = torch.cat([h, zs[level]], 1)
            dummy = h.new_zeros(h.shape[0])
            for step in reversed(self.levels[level]):
                h, dummy = step(h, dummy, reverse=True)
            h = unsqueeze(h)
        return h

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 0.7) -> torch.Tensor:
        """Samples in [0, 1], drawn level by level from the learned priors."""
        dev = self.top_mean.device
        c, s, _ = self.top_shape
        h = self.top_mean + temperature * torch.exp(self.top_logs) * torch.randn(n, c, s, s, device=dev)
        for level in reversed(range(len(self.levels))):
            if level < len(self.splits):
                p = self.splits[level].prior(h)
                z2 = p[:, 0::2] + temperature * torch.exp(p[:, 1::2]) * torch.randn_like(p[:, 0::2])
                h = torch.cat([h, z2], 1)
            dummy = h.new_zeros(n)
            for step in reversed(self.levels[level]):
                h, dummy = step(h, dummy, reverse=True)
            h = unsqueeze(h)
        return (h + 0.5).clamp(0, 1)

    # --- losses ---------------------------------------------------------------
    def _nll_of(self, y: torch.Tensor) -> torch.Tensor:
        _, logp, logdet = self.encode(y)
        return -(logp + logdet) + self.num_dims() * math.log(256.0)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self._nll_of(self.dequantize(x, noise=True))

    def per_sample_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self._nll_of(self.dequantize(x, noise=False))

    @torch.no_grad()
    def nll(self, x: torch.Tensor, **_: object) -> torch.Tensor:
        """Exact NLL (nats) of the bin-centre dequantisation."""
        return self.per_sample_loss(x)

    def invconvs(self) -> dict[str, InvConv1x1]:
        return {name: m for name, m in self.named_modules() if isinstance(m, InvConv1x1)}

    def scored_layers(self, which: str = "default") -> dict[str, nn.Module]:
        if which in ("default", "invconv"):
            return dict(self.invconvs())
        if which == "all":
            return {name: m for name, m in self.named_modules() if isinstance(m, (nn.Conv2d, InvConv1x1))}
        raise ValueError(f"which must be 'default', 'invconv' or 'all', got {which!r}")
