"""Random Network Distillation with blurring (SVD-RND; Choi & Chung, ICLR 2020),
the outlier-exposing baseline of the paper's Table 1 and Appendix B.3/C.4.

Two fixed, randomly initialised target networks g₀, g₁ and a trainable
predictor f (deeper than the targets, as in RND). With B a perturbation of the
in-distribution images (``rose_core.perturb``: ``svd`` K = 28 by default,
``dct`` K = 28, ``gaussian`` kernel 3 σ 0.8, ``random`` μ = 0.2 — the paper's
Table 1 settings), f is trained to minimise

    E_x ‖f(x) − g₀(x)‖² + E_x ‖f(B(x)) − g₁(B(x))‖²

so f imitates g₀ on in-distribution images and g₁ on blurred ones (blurred
images act as generated outliers, pushing f away from g₀ off the data). The OOD
score is the L2 distance ‖f(x) − g₀(x)‖₂ (higher = more OOD).

Architecture (ours, small enough for a < 5 MB checkpoint; the paper defers to
the SVD-RND code): inputs are standardised per channel with the training
mean/std; trunk Conv(C→w, 4, s2) → LeakyReLU → Conv(w→2w, 4, s2) → LeakyReLU →
Conv(2w→4w, 4, s2) → LeakyReLU → flatten; targets add Linear(→ out_dim), the
predictor adds a 3-layer MLP (hidden → hidden → out_dim). Training: Adam,
mean-over-batch of the summed squared errors, seeded initialisation and
shuffling (deterministic on the CPU under ``seed``; GPU convolutions may add
rounding-level nondeterminism). The ``random`` perturbation is redrawn for
every batch from a seed derived from ``seed``, epoch and batch.

Checkpoints: ``name.safetensors`` + ``name.json`` (no pickle). The card has
``"scorer": "rnd"`` and deliberately no ``"kind"`` so that
:func:`rose_core.checkpoint.list_checkpoints` does not take it for a
generative model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from rose_core import __version__
from rose_core.checkpoint import card_path, load_tensors, save_tensors, weights_path
from rose_core.errors import CheckpointError, InvalidInput
from rose_core.perturb import BLUR_K, PERTURBATIONS, apply as apply_perturbation
from rose_core.scorers.base import Batches, Scorer, ScoreResult, check_batch, iter_batches
from rose_core.scorers.nll import to_numpy

log = logging.getLogger(__name__)

DEFAULT_STRENGTH = {"svd": BLUR_K, "dct": BLUR_K, "gaussian": None, "random": 0.2, "brightness": 1.0}


@dataclass(frozen=True)
class RNDConfig:
    channels: int = 1
    image_size: int = 32
    width: int = 16
    out_dim: int = 64
    hidden: int = 256
    perturbation: str = "svd"
    strength: float | None = 28
    seed: int = 0

    def __post_init__(self) -> None:
        if self.perturbation not in PERTURBATIONS or self.perturbation == "brightness":
            raise ValueError(f"Unknown RND perturbation {self.perturbation!r}; expected one of "
                             "'svd', 'dct', 'gaussian', 'random'.")
        if self.image_size % 8 or self.image_size < 8:
            raise ValueError(f"image_size must be a multiple of 8, got {self.image_size}.")
        if min(self.channels, self.width, self.out_dim, self.hidden) < 1:
            raise ValueError("channels, width, out_dim and hidden must be positive.")

    def to_dict(self) -> dict:
        return asdict(self)


def _trunk(c: int, w: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Flatten(),
    )


class RNDNet(nn.Module):
    """Predictor f and the fixed targets g₀ (data) and g₁ (perturbed data)."""

    def __init__(self, config: RNDConfig) -> None:
        super().__init__()
        self.config = config
        c, w, s = config.channels, config.width, config.image_size
        feat = 4 * w * (s // 8) ** 2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.target0 = nn.Sequential(_trunk(c, w), nn.Linear(feat, config.out_dim))
            self.target1 = nn.Sequential(_trunk(c, w), nn.Linear(feat, config.out_dim))
            self.predictor = nn.Sequential(
                _trunk(c, w), nn.Linear(feat, config.hidden), nn.ReLU(),
                nn.Linear(config.hidden, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.out_dim))
        for p in list(self.target0.parameters()) + list(self.target1.parameters()):
            p.requires_grad_(False)
        self.register_buffer("input_mean", torch.zeros(c))
        self.register_buffer("input_std", torch.ones(c))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean[None, :, None, None]) / self.input_std[None, :, None, None]

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """‖f(x) − g₀(x)‖₂ per sample."""
        h = self.standardise(x)
        return (self.predictor(h) - self.target0(h)).pow(2).sum(1).sqrt()

    def loss(self, x: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        h, hb = self.standardise(x), self.standardise(xb)
        with torch.no_grad():
            t0, t1 = self.target0(h), self.target1(hb)
        return ((self.predictor(h) - t0).pow(2).sum(1).mean() + (self.predictor(hb) - t1).pow(2).sum(1).mean())


def _collect(data: Batches) -> torch.Tensor:
    parts = [check_batch(b) for b in iter_batches(data, 4096)]
    if not parts:
        raise InvalidInput("RND needs at least one in-distribution image to train on.")
    return torch.cat([p.detach().float().cpu() for p in parts], 0)


class RNDScorer(Scorer):
    """SVD-RND (or DCT/GB/Random-RND): score = ‖f(x) − g₀(x)‖₂, higher = more OOD.

    ``fit(in_dist)`` trains the predictor (``epochs``, ``lr``, ``train_batch_size``,
    seeded by ``seed``); ``save``/``load`` use safetensors + a JSON card.
    ``extras``: ``distance`` (same as the score).
    """

    name = "rnd"

    def __init__(self, channels: int = 1, image_size: int = 32, perturbation: str = "svd",
                 strength: float | None = "default", width: int = 16, out_dim: int = 64, hidden: int = 256,
                 epochs: int = 10, lr: float = 1e-3, train_batch_size: int = 64, seed: int = 0,
                 device: str | torch.device = "cpu", max_seconds: float | None = None,
                 progress: Callable[[int, float], None] | None = None, batch_size: int = 1024) -> None:
        if strength == "default":
            strength = DEFAULT_STRENGTH.get(perturbation)
        self.config = RNDConfig(channels=channels, image_size=image_size, width=width, out_dim=out_dim,
                                hidden=hidden, perturbation=perturbation, strength=strength, seed=seed)
        if epochs < 0 or lr <= 0 or train_batch_size < 1:
            raise ValueError("RND training needs epochs >= 0, lr > 0 and train_batch_size >= 1.")
        self.net = RNDNet(self.config).to(device).eval()
        self.epochs, self.lr, self.train_batch_size = int(epochs), float(lr), int(train_batch_size)
        self.max_seconds, self.progress = max_seconds, progress
        self.batch_size = int(batch_size)
        self.training_info: dict = {}

    @property
    def device(self) -> torch.device:
        return self.net.input_mean.device

    def perturb(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        c = self.config
        return apply_perturbation(c.perturbation, x, c.strength, seed=seed)

    # --- training ----------------------------------------------------------------
    def fit(self, in_dist: Batches) -> "RNDScorer":
        x = _collect(in_dist)
        c = self.config
        if tuple(x.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise InvalidInput(f"RND configured for ({c.channels}, {c.image_size}, {c.image_size}) inputs, "
                               f"got {tuple(x.shape[1:])}.")
        net, dev = self.net, self.device
        t_start = time.perf_counter()
        with torch.no_grad():
            net.input_mean.copy_(x.mean(dim=(0, 2, 3)).to(dev))
            net.input_std.copy_(x.std(dim=(0, 2, 3)).clamp_min(1e-3).to(dev))
        fixed_blur = c.perturbation != "random"
        xb_all = torch.cat([self.perturb(x[i:i + 4096]) for i in range(0, len(x), 4096)]) if fixed_blur else None
        x_dev = x.to(dev)
        xb_dev = xb_all.to(dev) if fixed_blur else None
        opt = torch.optim.Adam(net.predictor.parameters(), lr=self.lr)
        gen = torch.Generator(device="cpu").manual_seed(c.seed + 1)
        n, bs = len(x), self.train_batch_size
        t0 = time.perf_counter()
        losses: list[float] = []
        epochs_done = 0
        net.train()
        try:
            for epoch in range(self.epochs):
                order = torch.randperm(n, generator=gen)
                total, count = 0.0, 0
                for b, start in enumerate(range(0, n, bs)):
                    idx = order[start:start + bs]
                    xb = x_dev[idx.to(dev)]
                    if fixed_blur:
                        pb = xb_dev[idx.to(dev)]
                    else:
                        pb = self.perturb(xb, seed=(c.seed * 1_000_003 + epoch) * 100_003 + b)
                    loss = net.loss(xb, pb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                epochs_done = epoch + 1
                losses.append(total / count)
                log.info("RND epoch %d/%d: loss %.5f (%.0f s)", epochs_done, self.epochs, losses[-1],
                         time.perf_counter() - t0)
                if self.progress is not None:
                    self.progress(epochs_done, losses[-1])
                if self.max_seconds is not None and time.perf_counter() - t0 > self.max_seconds:
                    break
        finally:
            net.eval()
        self.training_info = {"epochs": epochs_done, "epochs_planned": self.epochs, "train_images": n,
                              "lr": self.lr, "train_batch_size": bs, "losses": losses,
                              "train_seconds": round(time.perf_counter() - t0, 2),
                              "perturb_seconds": round(t0 - t_start, 2)}
        return self

    # --- scoring -----------------------------------------------------------------
    def _score_batch(self, x: torch.Tensor) -> ScoreResult:
        c = self.config
        if tuple(x.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise InvalidInput(f"This RND expects images of shape (N, {c.channels}, {c.image_size}, "
                               f"{c.image_size}), got {tuple(x.shape)}.")
        with torch.no_grad():
            d = to_numpy(self.net.distance(x.to(self.device, torch.float32)))
        return ScoreResult(d, {"distance": d.copy()})

    # --- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike, **card) -> os.PathLike:
        """Write ``path.safetensors`` (predictor, targets, input statistics) and ``path.json``."""
        wp, cp = weights_path(path), card_path(path)
        wp.parent.mkdir(parents=True, exist_ok=True)
        sha = save_tensors(self.net.state_dict(), wp, metadata={"scorer": "rnd"})
        full = {"scorer": "rnd", "config": self.config.to_dict(), "library_version": __version__,
                "weights_sha256": sha,
                "num_parameters": sum(p.numel() for p in self.net.parameters()),
                "training": self.training_info, **card}
        tmp = cp.with_name(cp.name + ".tmp")
        tmp.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        tmp.replace(cp)
        return cp

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "RNDScorer":
        cp = card_path(path)
        if not cp.exists():
            raise CheckpointError(f"RND card {cp} does not exist (an RND checkpoint is a .safetensors "
                                  "file plus its .json card).")
        try:
            card = json.loads(cp.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"RND card {cp} is not valid JSON ({exc}).") from exc
        if not isinstance(card, dict) or card.get("scorer") != "rnd" or "config" not in card:
            raise CheckpointError(f"{cp} is not an RND checkpoint card (needs \"scorer\": \"rnd\" and a config).")
        try:
            cfg = RNDConfig(**card["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"RND card {cp} has an invalid config ({exc}).") from exc
        scorer = cls(channels=cfg.channels, image_size=cfg.image_size, perturbation=cfg.perturbation,
                     strength=cfg.strength, width=cfg.width, out_dim=cfg.out_dim, hidden=cfg.hidden,
                     seed=cfg.seed, device=device)
        state = load_tensors(weights_path(path), sha256=card.get("weights_sha256"))
        expected = scorer.net.state_dict()
        bad = sorted(set(expected) ^ set(state)) + sorted(
            k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if bad:
            raise CheckpointError(f"RND weights {weights_path(path)} do not match the card's config "
                                  f"(mismatched tensors: {bad[:5]}).")
        if any(v.is_floating_point() and not torch.isfinite(v).all() for v in state.values()):
            raise CheckpointError(f"RND weights {weights_path(path)} hold non-finite values.")
        scorer.net.load_state_dict(state)
        scorer.net.eval()
        scorer.training_info = card.get("training", {})
        scorer.card = card
        return scorer


def train_rnd(images: torch.Tensor | Batches, *, out: str | os.PathLike | None = None, perturbation: str = "svd",
              strength: float | None = "default", epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
              seed: int = 0, device: str | torch.device = "cpu", max_seconds: float | None = None,
              progress: Callable[[int, float], None] | None = None, card: dict | None = None,
              **arch) -> RNDScorer:
    """Train an RND scorer on in-distribution model inputs (N, C, H, W) in [0, 1]
    and, if ``out`` is given, save it there (``out.safetensors`` + ``out.json``).

    ``max_seconds`` stops after the epoch that passes the budget (the card records
    the epochs reached). ``arch``: ``width``, ``out_dim``, ``hidden``.
    """
    x = _collect(images)
    scorer = RNDScorer(channels=x.shape[1], image_size=x.shape[-1], perturbation=perturbation, strength=strength,
                       epochs=epochs, lr=lr, train_batch_size=batch_size, seed=seed, device=device,
                       max_seconds=max_seconds, progress=progress, **arch)
    scorer.fit(x)
    if out is not None:
        scorer.save(out, **(card or {}))
    return scorer


__all__ = ["RNDConfig", "RNDNet", "RNDScorer", "train_rnd", "DEFAULT_STRENGTH"]
