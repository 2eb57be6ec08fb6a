"""The paper's VAE (Appendix B.1): a DCGAN-style conv VAE with a 256-way
categorical likelihood per pixel.

Encoder (for 32×32 inputs, base width ``n``): Conv(C→n, 4, s2) → LeakyReLU →
Conv(n→2n, 4, s2) → BN → LeakyReLU → Conv(2n→4n, 4, s2) → BN → LeakyReLU, then
two heads Conv(4n→z, 4, s1, valid) for μ and log σ². No biases. The decoder
mirrors it with ConvTranspose2d and outputs 256 logits per pixel and channel.
This follows the public code of Xiao et al. (2020) that the paper's VAE is
taken from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from rose_core.models.base import GenerativeModel, pixel_targets
from rose_core.models.categorical import categorical_nll


@dataclass(frozen=True)
class VAEConfig:
    channels: int = 1
    image_size: int = 32
    base_width: int = 32
    latent_dim: int = 100
    capacity: float = 1.0
    """Width multiplier for the paper's Table 3 (0.5, 1, 2, 4)."""

    @property
    def width(self) -> int:
        return max(1, int(round(self.base_width * self.capacity)))

    def to_dict(self) -> dict:
        return asdict(self)


IWAE_LOGITS_BYTES = 2 ** 30
"""Most bytes of decoder logits :meth:`VAE.iwae_nll` holds at once (the peak is a few times this)."""

VAE_CONFIGS = {
    "fmnist": VAEConfig(channels=1, base_width=32, latent_dim=100),
    "cifar10": VAEConfig(channels=3, base_width=64, latent_dim=200),
}


class VAE(GenerativeModel):
    kind = "vae"

    def __init__(self, config: VAEConfig = VAE_CONFIGS["fmnist"]) -> None:
        super().__init__(config)
        if config.image_size != 32:
            raise ValueError("The paper's VAE is defined for 32×32 inputs.")
        n, c, z = config.width, config.channels, config.latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(c, n, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
            nn.Conv2d(n, 2 * n, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * n), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * n, 4 * n, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * n), nn.LeakyReLU(0.2),
        )
        self.mu_head = nn.Conv2d(4 * n, z, 4, 1, 0, bias=False)
        self.logvar_head = nn.Conv2d(4 * n, z, 4, 1, 0, bias=False)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(z, 4 * n, 4, 1, 0, bias=False), nn.BatchNorm2d(4 * n), nn.ReLU(),
            nn.ConvTranspose2d(4 * n, 2 * n, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * n), nn.ReLU(),
            nn.ConvTranspose2d(2 * n, n, 4, 2, 1, bias=False), nn.BatchNorm2d(n), nn.ReLU(),
            nn.ConvTranspose2d(n, c * 256, 4, 2, 1, bias=False),
        )

    def optimise_layout(self, device: torch.device) -> "VAE":
        """On the CPU, the decoder's weights go channels-last: it then writes its 256 logits per pixel
        next to each other, so :func:`~rose_core.models.categorical.categorical_nll` runs fused over
        contiguous classes, and oneDNN's transposed convolutions skip their layout copies. The encoder
        stays in the default layout: in channels-last, its gradients (the ones ROSE scores) were markedly
        less accurate against a float64 reference than in the default layout, while the decoder's were
        not (``benchmarks/bench_floor.py`` measures the speed and the scores' difference; the test
        ``tests/test_integration_real.py::test_optimised_layout_is_as_accurate_as_the_default`` holds the
        accuracy). Accelerators keep the default layout."""
        fmt = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
        self.decoder.to(memory_format=fmt)
        return self

    # --- pieces ---------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu_head(h).flatten(1), self.logvar_head(h).flatten(1)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 256, C, H, W)`` of the categorical likelihood."""
        out = self.decoder(z[:, :, None, None])
        n, _, h, w = out.shape
        return out.view(n, self.config.channels, 256, h, w).transpose(1, 2)

    def reconstruction_nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``-log p(x|z)`` per sample, nats."""
        return categorical_nll(logits, pixel_targets(x)).flatten(1).sum(1)

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)

    # --- losses -------------------------------------------------------------
    def neg_elbo(self, x: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Per-sample negative ELBO in nats; ``deterministic`` decodes at z = μ."""
        mu, logvar = self.encode(x)
        z = mu if deterministic else mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.reconstruction_nll(self.decode_logits(z), x) + self.kl(mu, logvar)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.neg_elbo(x, deterministic=False)

    def per_sample_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.neg_elbo(x, deterministic=True)

    @torch.no_grad()
    def iwae_nll(self, x: torch.Tensor, k: int = 20, chunk: int = 5) -> torch.Tensor:
        """Importance-weighted NLL estimate with ``k`` samples (Burda et al.), nats.

        ``log p(x) ≈ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k``,
        computed in chunks of ``chunk`` samples per image, numerically stable. A batch whose decoder
        logits for one chunk would pass :data:`IWAE_LOGITS_BYTES` is scored in groups of images (the
        estimate of each image is the same; its random draws differ from one ungrouped call).
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        per_image = min(chunk, k) * self.config.channels * 256 * x.shape[-2] * x.shape[-1] * 4  # logits bytes
        group = max(1, IWAE_LOGITS_BYTES // per_image)
        if len(x) > group:  # e.g. 500 CIFAR-10 images × 5 samples would hold 8 GB of logits at once
            return torch.cat([self.iwae_nll(x[i:i + group], k, chunk) for i in range(0, len(x), group)])
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        n, d = mu.shape
        log_w = []
        for start in range(0, k, chunk):
            kk = min(chunk, k - start)
            eps = torch.randn(kk, n, d, device=x.device, dtype=x.dtype)
            z = mu + eps * std  # (kk, n, d)
            logits = self.decode_logits(z.reshape(kk * n, d))
            rec = self.reconstruction_nll(logits, x.repeat(kk, 1, 1, 1)).view(kk, n)
            log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
            log_qz = -0.5 * (eps.pow(2) + math.log(2 * math.pi) + logvar).sum(-1)
            log_w.append(-rec + log_pz - log_qz)
        lw = torch.cat(log_w, 0)
        return -(torch.logsumexp(lw, 0) - math.log(k))

    def nll(self, x: torch.Tensor, k: int = 20) -> torch.Tensor:
        return self.iwae_nll(x, k=k)

    def scored_layers(self, which: str = "default") -> dict[str, nn.Module]:
        enc = {f"encoder.{i}": m for i, m in enumerate(self.encoder) if isinstance(m, nn.Conv2d)}
        enc["mu_head"] = self.mu_head
        enc["logvar_head"] = self.logvar_head
        if which == "default" or which == "encoder":
            return enc
        if which == "all":
            dec = {f"decoder.{i}": m for i, m in enumerate(self.decoder) if isinstance(m, nn.ConvTranspose2d)}
            return {**enc, **dec}
        raise ValueError(f"which must be 'default', 'encoder' or 'all', got {which!r}")
