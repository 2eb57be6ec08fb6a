"""Likelihood Regret, LR(E) (Xiao, Yan & Amit, NeurIPS 2020), batched.

For each test image x, a copy of the VAE's *encoder* (conv trunk, BatchNorm
affine parameters, μ and log σ² heads) is optimised to maximise that image's
ELBO while the decoder stays fixed; the score is how much the NLL improves:

    LR(x) = NLL_θ(x) − NLL_{θ, φ*(x)}(x)   (nats, ≥ 0 up to estimation noise;
                                            higher = more OOD)

Settings as the authors ran it (their public code, paper Appendix B.1/B.3 and
the project notes): Adam, lr 1e-4, weight decay 5e-5 (PyTorch's coupled L2),
100 steps, BatchNorm in eval mode, NLL before and after by IWAE with k = 20;
each optimisation step minimises the negative ELBO averaged over
``elbo_samples = 20`` reparameterised draws (their code repeats the image 20
times in a batch and takes the batch mean). ``elbo_samples = 0`` instead decodes
at z = μ (a deterministic loss; faster, and handy for tests). That loss is not an
ELBO (σ gets no reconstruction signal, so it shrinks towards the prior's), and
the IWAE NLL after optimising it can be *worse*: negative regrets are then
expected, not a bug.

Noise (all seeded, see :mod:`rose_core.scorers.nll`): the IWAE noise block is
the *same* for the "before" and "after" estimates (common random numbers, so
the difference is not swamped by IWAE noise), and the ELBO noise of step t is
one ``(elbo_samples, d)`` block shared by all images. An image's score is
therefore independent of its batch-mates and of the batch size.

Speed: the optimisation is run for many images at once. Every encoder
parameter is stacked into a leaf tensor of shape ``(N, *shape)`` (one copy per
image); the encoder is evaluated with ``torch.func.functional_call`` under
``torch.func.vmap`` (image i with copy i), the fixed decoder runs as one batch,
and the loss is the **sum** of the per-image losses. Because copy i only
influences image i's loss, the gradient of the sum w.r.t. copy i is exactly the
gradient of image i's own loss. One ``torch.optim.Adam`` over the stacked
tensors then equals N independent Adams: Adam (with coupled weight decay) is
elementwise — each scalar's moment estimates, bias corrections and update
depend only on that scalar's own gradient history, the step count and the
shared hyper-parameters; nothing (no norm, no clipping) couples elements. So
the batched result matches a per-image loop up to floating-point rounding
(tested), at a fraction of the cost.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from rose_core.models.vae import VAE
from rose_core.scorers.base import Scorer, ScoreResult
from rose_core.scorers.nll import (check_model, check_shape, eval_mode, frozen, iwae_from_posterior, iwae_noise,
                                   model_device, model_dtype, to_numpy)


class _Encoder(nn.Module):
    """The VAE's encoder as one module (shares, not copies, the VAE's layers)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self.mu_head = vae.mu_head
        self.logvar_head = vae.logvar_head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu_head(h).flatten(1), self.logvar_head(h).flatten(1)


def elbo_noise(seed: int, steps: int, samples: int, latent_dim: int):
    """Generator yielding the ``(samples, latent_dim)`` ELBO noise block of each step (CPU, seeded)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    for _ in range(steps):
        yield torch.randn(samples, latent_dim, generator=g) if samples > 0 else None


def neg_elbo_given_posterior(model: VAE, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                             eps: torch.Tensor | None) -> torch.Tensor:
    """Per-sample negative ELBO (nats) for posterior ``(mu, logvar)``: averaged over the draws
    ``z = mu + eps_s σ`` for ``eps`` (S, d), or decoded at ``z = mu`` when ``eps`` is None."""
    kl = VAE.kl(mu, logvar)
    if eps is None:
        return model.reconstruction_nll(model.decode_logits(mu), x) + kl
    s, d = eps.shape
    n = x.shape[0]
    z = mu.unsqueeze(0) + eps.unsqueeze(1) * (0.5 * logvar).exp().unsqueeze(0)  # (S, N, d)
    rec = model.reconstruction_nll(model.decode_logits(z.reshape(s * n, d)), x.repeat(s, 1, 1, 1))
    return rec.view(s, n).mean(0) + kl


class LikelihoodRegretScorer(Scorer):
    """LR(E): NLL before minus NLL after optimising a per-image copy of the encoder.

    Parameters
    ----------
    model: a :class:`~rose_core.models.VAE` (Glow has no encoder: TypeError).
    steps, lr, weight_decay: the per-image Adam optimisation (authors: 100, 1e-4, 5e-5).
    k: importance samples of the IWAE NLL before and after (authors: 20).
    elbo_samples: reparameterised draws averaged in each step's loss (authors: 20);
        0 decodes at z = μ instead.
    seed: seeds the IWAE and ELBO noise.
    batch_size: images optimised together (memory grows as batch_size × elbo_samples
        decoded images per step).

    ``extras``: ``nll_before``, ``nll_after`` (nats).
    """

    name = "likelihood-regret"

    def __init__(self, model: VAE, steps: int = 100, lr: float = 1e-4, weight_decay: float = 5e-5,
                 k: int = 20, elbo_samples: int = 20, seed: int = 0, batch_size: int = 32) -> None:
        check_model(model, allow=(VAE,), method="Likelihood Regret (it re-optimises the VAE's encoder)")
        if steps < 0 or k < 1 or elbo_samples < 0 or lr < 0 or weight_decay < 0 or batch_size < 1:
            raise ValueError("Likelihood Regret needs steps >= 0, k >= 1, elbo_samples >= 0, lr >= 0, "
                             "weight_decay >= 0 and batch_size >= 1.")
        self.model = model
        self.steps, self.lr, self.weight_decay = int(steps), float(lr), float(weight_decay)
        self.k, self.elbo_samples, self.seed = int(k), int(elbo_samples), int(seed)
        self.batch_size = int(batch_size)

    def _score_batch(self, x: torch.Tensor) -> ScoreResult:
        check_shape(self.model, x)
        model = self.model
        x = x.to(model_device(model), model_dtype(model))
        n = x.shape[0]
        enc = _Encoder(model)
        with eval_mode(model), frozen(model):
            buffers = {name: b for name, b in enc.named_buffers()}
            params = {name: p.detach().unsqueeze(0).expand(n, *p.shape).clone().requires_grad_(True)
                      for name, p in enc.named_parameters()}

            def encode_one(p: dict[str, torch.Tensor], xi: torch.Tensor):
                mu, logvar = functional_call(enc, (p, buffers), (xi.unsqueeze(0),))
                return mu.squeeze(0), logvar.squeeze(0)

            encode_all = vmap(encode_one)
            with torch.no_grad():
                mu, logvar = encode_all(params, x)
                eps_iwae = iwae_noise(self.k, mu.shape[1], self.seed, x.device, mu.dtype)
                nll_before = iwae_from_posterior(model, x, mu, logvar, eps_iwae)

            if self.steps > 0:
                opt = torch.optim.Adam(list(params.values()), lr=self.lr, weight_decay=self.weight_decay)
                for eps in elbo_noise(self.seed + 1, self.steps, self.elbo_samples, mu.shape[1]):
                    mu, logvar = encode_all(params, x)
                    eps = None if eps is None else eps.to(x.device, mu.dtype)
                    loss = neg_elbo_given_posterior(model, x, mu, logvar, eps).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

            with torch.no_grad():
                mu, logvar = encode_all(params, x)
                nll_after = iwae_from_posterior(model, x, mu, logvar, eps_iwae)
        before, after = to_numpy(nll_before), to_numpy(nll_after)
        return ScoreResult(before - after, {"nll_before": before, "nll_after": after})
