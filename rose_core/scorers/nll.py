"""Negative log-likelihood as an OOD score (the plain likelihood baseline).

* VAE: the IWAE estimate (Burda et al. 2016) with ``k`` importance samples,
  ``k = 20`` as the authors ran it (paper Appendix B.1);
* Glow: the exact NLL of the bin-centre dequantisation.

Score = NLL in nats (higher = more OOD); ``extras`` hold ``nll`` (nats) and
``bits_per_dim``.

Reproducibility: the importance-sampling noise is drawn from a generator
seeded with ``seed``, as one ``(k, latent_dim)`` block that is *shared by every
image of the batch*. Each image's estimate is therefore an ordinary IWAE
estimate, and it does not depend on which other images are in the batch, on
the batch size or on the chunking (the same image always gets the same score
under the same seed). The helpers here are reused by the Likelihood-Regret,
Likelihood-Ratio and Input-Complexity scorers.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import torch
from torch import nn

from rose_core.models.base import GenerativeModel
from rose_core.models.glow import Glow
from rose_core.models.vae import VAE
from rose_core.scorers.base import Scorer, ScoreResult

LOG_2PI = math.log(2.0 * math.pi)
LN2 = math.log(2.0)


# --- shared helpers ------------------------------------------------------------------

def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        return p.dtype
    return torch.get_default_dtype()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (BatchNorm uses its running statistics, so a
    sample's score does not depend on its batch) and restore the previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily switch off ``requires_grad`` on every parameter of ``model``
    (so no gradient is computed or accumulated for them), then restore the flags."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def check_model(model: object, *, allow: tuple[type, ...] = (VAE, Glow), method: str = "This scorer") -> None:
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"{method} needs a rose_core generative model (VAE or Glow), got {type(model).__name__}.")
    if not isinstance(model, allow):
        names = " or ".join(c.__name__ for c in allow)
        raise TypeError(f"{method} is defined for {names} models only, got {type(model).__name__}.")


def check_shape(model: GenerativeModel, x: torch.Tensor) -> None:
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise ValueError(f"This {type(model).__name__} expects images of shape (N, "
                         f"{', '.join(map(str, model.input_shape))}), got {tuple(x.shape)}. "
                         "Prepare them with rose_core.data.to_model_input(images, channels=...).")


def iwae_noise(k: int, latent_dim: int, seed: int, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``(k, latent_dim)`` standard-normal block shared by all images (drawn on the CPU
    so it is the same on every device)."""
    if k < 1:
        raise ValueError(f"k (importance samples) must be >= 1, got {k}.")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(k, latent_dim, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def iwae_from_posterior(model: VAE, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                        eps: torch.Tensor, max_decode: int = 512) -> torch.Tensor:
    """Per-sample IWAE NLL (nats) of ``x`` under ``model``'s decoder and prior, for the
    Gaussian posterior ``(mu, logvar)`` (N, d) and noise ``eps`` (k, d):

    ``-[logsumexp_j (log p(x|z_j) + log p(z_j) - log q(z_j|x)) - log k]``, ``z_j = mu + eps_j σ``.

    Decodes at most about ``max_decode`` latents at a time. Differentiable.
    """
    k, d = eps.shape
    n = x.shape[0]
    std = (0.5 * logvar).exp()
    per = max(1, max_decode // max(n, 1))
    parts = []
    for start in range(0, k, per):
        e = eps[start:start + per]  # (kk, d)
        kk = e.shape[0]
        z = mu.unsqueeze(0) + e.unsqueeze(1) * std.unsqueeze(0)  # (kk, n, d)
        logits = model.decode_logits(z.reshape(kk * n, d))
        rec = model.reconstruction_nll(logits, x.repeat(kk, 1, 1, 1)).view(kk, n)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz = -0.5 * (e.pow(2).unsqueeze(1) + LOG_2PI + logvar.unsqueeze(0)).sum(-1)
        parts.append(-rec + log_pz - log_qz)
    log_w = torch.cat(parts, 0)
    return -(torch.logsumexp(log_w, 0) - math.log(k))


def vae_iwae_nll(model: VAE, x: torch.Tensor, k: int = 20, seed: int = 0, max_decode: int = 512) -> torch.Tensor:
    """Seeded IWAE NLL (nats) per sample; ``model`` should be in eval mode."""
    with torch.no_grad():
        mu, logvar = model.encode(x)
        eps = iwae_noise(k, mu.shape[1], seed, mu.device, mu.dtype)
        return iwae_from_posterior(model, x, mu, logvar, eps, max_decode)


def model_nll(model: GenerativeModel, x: torch.Tensor, k: int = 20, seed: int = 0) -> torch.Tensor:
    """Best per-sample NLL in nats: seeded IWAE-``k`` for the VAE, exact for Glow.
    Runs in eval mode on the model's device; returns a CPU float64 tensor."""
    check_model(model, method="The NLL")
    check_shape(model, x)
    x = x.to(model_device(model), model_dtype(model))
    with eval_mode(model), torch.no_grad():
        if isinstance(model, VAE):
            out = vae_iwae_nll(model, x, k=k, seed=seed)
        else:
            out = model.nll(x)
    return out.detach().to("cpu", torch.float64)


# --- the scorer -------------------------------------------------------------------

class NLLScorer(Scorer):
    """Score = NLL in nats (IWAE with ``k`` samples for the VAE, exact for Glow).

    ``extras``: ``nll`` (nats), ``bits_per_dim``.
    """

    name = "nll"

    def __init__(self, model: GenerativeModel, k: int = 20, seed: int = 0, batch_size: int = 256) -> None:
        check_model(model, method="NLLScorer")
        if k < 1:
            raise ValueError(f"k (importance samples) must be >= 1, got {k}.")
        self.model = model
        self.k = int(k)
        self.seed = int(seed)
        self.batch_size = int(batch_size)

    def _score_batch(self, x: torch.Tensor) -> ScoreResult:
        nll = model_nll(self.model, x, k=self.k, seed=self.seed).numpy()
        bpd = nll / (self.model.num_dims() * LN2)
        return ScoreResult(nll.copy(), {"nll": nll, "bits_per_dim": bpd})


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()
