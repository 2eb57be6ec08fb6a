"""Live scoring of individual images for the app (no Streamlit here).

:class:`LiveScorer` wraps one model checkpoint and one fitted ROSE scorer and
answers, for any uint8 images: the preprocessed model input, the NLL in nats
and bits/dim, the ROSE score, the verdict against a threshold calibrated on
in-distribution data at a chosen TPR, the empirical p-value and the per-layer
z-scores.

Where each piece comes from, in order of preference:

* **the ROSE fit**: ``results/<checkpoint>/fits/rose-<fisher>`` written by the
  evaluation harness (source ``"bundle"``); else a fit the app made before,
  cached under ``results/cache/live/<checkpoint>/`` (``"cache"``; the folder
  is git-ignored, so the committed bundle is never touched); else a new fit on
  ``fit_n`` training images of the dataset on the checkpoint's card, with
  progress reported through the ``progress`` callback (``"fitted"``). A fit
  that does not match the model's weights is not used (and the message says
  so in :attr:`LiveScorer.messages`).
* **the in-distribution calibration scores** (threshold and p-value): for a
  bundle fit, the bundle's in-distribution ROSE scores of that method
  (``scores.parquet``, the harness's in-distribution test images); if the
  bundle has none, ``calib_n`` in-distribution *test* images are scored. For a
  fit made here, the held-out normalisation half of the fit images (disjoint
  from the Fisher half; ``normalization="separate"``).
* **the NLL**: IWAE with ``k = 20`` importance samples for the VAE (seeded,
  as the harness computes the ``nll`` method), exact for Glow. An NLL p-value
  is given where the bundle holds the ``nll`` method's in-distribution scores.

Verdict: a sample is called OOD when its ROSE score is **strictly above**
the threshold :func:`rose_core.metrics.threshold_at_tpr` that keeps a
fraction ``tpr`` of the in-distribution calibration scores (so ``tpr`` is the
in-distribution true-positive rate, 95% by default).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from rose_core.checkpoint import card_path, load_model
from rose_core.data import get_card, load_dataset, prepare_images
from rose_core.errors import CheckpointError, InvalidInput
from rose_core.metrics import auroc, empirical_p_value, threshold_at_tpr
from rose_core.results import Results, results_root
from rose_core.scorers.rose import RoseScorer, aggregate

__all__ = ["LiveScorer", "LiveResult", "Progress", "checkpoint_name", "MODEL_KINDS"]

Progress = Callable[[float, str], None]
"""``progress(fraction_done, message)``, fraction in [0, 1]."""

MODEL_KINDS = ("vae", "glow")
LN2 = math.log(2.0)


def _no_progress(fraction: float, message: str) -> None:
    pass


def _calib_path(stem: Path) -> Path:
    return stem.with_name(stem.name + ".calibration.npy")


def checkpoint_name(path: str | os.PathLike) -> str:
    """``checkpoints/vae-fmnist.json`` → ``vae-fmnist``."""
    return card_path(path).name[: -len(".json")]


@dataclass
class LiveResult:
    """Scores of a list of images, in input order (arrays have one row per image)."""

    names: list[str]
    inputs: np.ndarray
    """The preprocessed model inputs, uint8 ``(N, S, S, C)``."""
    nll_nats: np.ndarray
    bits_per_dim: np.ndarray
    score: np.ndarray
    """ROSE score, higher = more out-of-distribution."""
    p_value: np.ndarray
    """Empirical p-value of the ROSE score against the in-distribution calibration scores."""
    nll_p_value: np.ndarray
    """The same for the NLL (NaN when no NLL calibration is available)."""
    layer_z: np.ndarray
    layer_raw: np.ndarray
    layer_names: list[str]
    nll_kind: str
    method: str

    def __len__(self) -> int:
        return len(self.score)

    def is_ood(self, threshold: float) -> np.ndarray:
        """Verdicts: True where the ROSE score is strictly above ``threshold``."""
        return self.score > threshold

    def to_frame(self, threshold: float | None = None, tpr: float | None = None) -> pd.DataFrame:
        """One row per image: name, NLL, bits/dim, ROSE score, p-values, verdict and per-layer z-scores."""
        df = pd.DataFrame({
            "image": self.names,
            "nll_nats": self.nll_nats,
            "bits_per_dim": self.bits_per_dim,
            f"{self.method}_score": self.score,
            "p_value": self.p_value,
            "nll_p_value": self.nll_p_value,
        })
        if threshold is not None:
            df["threshold"] = threshold
            if tpr is not None:
                df["tpr"] = tpr
            df["verdict"] = np.where(self.is_ood(threshold), "OOD", "in-distribution")
        for j, layer in enumerate(self.layer_names):
            df[f"z[{layer}]"] = self.layer_z[:, j]
        return df


@dataclass
class _Reference:
    score: np.ndarray
    loss: np.ndarray


class _ProgressBatches:
    """Re-iterable batches of a tensor that report progress over ``passes`` iterations."""

    def __init__(self, x: torch.Tensor, batch_size: int, passes: int, progress: Progress, label: str) -> None:
        self.x, self.batch_size, self.passes, self.progress, self.label = x, batch_size, passes, progress, label
        self._pass = 0

    def __iter__(self):
        k = self._pass
        self._pass += 1
        n = len(self.x)
        for start in range(0, n, self.batch_size):
            self.progress(min(1.0, (k + start / max(n, 1)) / self.passes),
                          f"{self.label}: pass {min(k + 1, self.passes)} of {self.passes}")
            yield self.x[start:start + self.batch_size]


class LiveScorer:
    """One checkpoint + one fitted ROSE scorer + in-distribution calibration, for scoring images live.

    Parameters: ``checkpoint`` the path of a model checkpoint (``.json`` card or stem);
    ``fisher`` ``"ekfac"`` or ``"diag"``; ``results`` the results root (default
    :func:`rose_core.results.results_root`); ``data_root`` the dataset cache
    (default ``$ROSE_DATA`` or ``./data``); ``cache_dir`` where fits made here are kept
    (default ``<results>/cache/live``); ``fit_n`` training images for a new fit;
    ``calib_n`` test images for calibration when the bundle has none; ``nll_k``
    importance samples of the VAE's IWAE NLL; ``progress`` a :data:`Progress` callback.
    """

    def __init__(self, checkpoint: str | os.PathLike, fisher: str = "ekfac", *,
                 results: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, fit_n: int = 1000, calib_n: int = 1000,
                 seed: int = 0, nll_k: int = 20, batch_size: int = 64, device: str = "cpu",
                 progress: Progress | None = None) -> None:
        if fisher not in ("ekfac", "diag"):
            raise ValueError(f"fisher must be 'ekfac' or 'diag', got {fisher!r}.")
        if fit_n < 4:
            raise ValueError(f"fit_n must be at least 4 (half Fisher set, half normalisation set), got {fit_n}.")
        progress = progress or _no_progress
        self.checkpoint = Path(checkpoint)
        self.name = checkpoint_name(checkpoint)
        self.fisher = fisher
        self.method = f"rose-{fisher}"
        self.data_root = data_root
        self.fit_n, self.calib_n, self.seed, self.nll_k = int(fit_n), int(calib_n), int(seed), int(nll_k)
        self.batch_size = int(batch_size)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._references: dict[tuple, _Reference] = {}

        progress(0.0, f"Loading the model {self.name}")
        self.model, self.card = load_model(self.checkpoint, device=device)
        if self.card.get("kind") not in MODEL_KINDS:
            raise CheckpointError(f"{self.checkpoint} is a {self.card.get('kind')!r} checkpoint, not a generative "
                                  f"model ({', '.join(MODEL_KINDS)}).")
        self.channels, self.image_size, _ = self.model.input_shape
        self.dataset = self.card.get("dataset")
        self.results = Results.for_checkpoint(self.name, results)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else results_root(results) / "cache" / "live"

        self.rose, self.fit_source = self._load_or_fit(progress)
        self.layer_names = self.rose.layer_names
        self.calibration, self.calibration_source = self._calibration(progress)
        self.nll_calibration = self._bundle_in_dist("nll")
        progress(1.0, "Ready")

    # --- set-up ------------------------------------------------------------------------------
    @property
    def nll_kind(self) -> str:
        return f"IWAE, k = {self.nll_k}" if self.card.get("kind") == "vae" else "exact"

    @property
    def loss_kind(self) -> str:
        """What the deterministic per-sample loss (ROSE's ``loss`` extra) is for this model."""
        return "−ELBO at z = μ" if self.card.get("kind") == "vae" else "exact NLL"

    def _bundle_fit_path(self) -> Path:
        return self.results.folder / "fits" / self.method

    def _cache_stem(self) -> Path:
        return self.cache_dir / self.name / f"{self.method}-n{self.fit_n}-seed{self.seed}"

    def _load_or_fit(self, progress: Progress) -> tuple[RoseScorer, str]:
        bundle = self._bundle_fit_path()
        if card_path(bundle).exists():
            progress(0.05, f"Loading the ROSE fit {card_path(bundle)}")
            try:
                return RoseScorer.load(bundle, self.model), "bundle"
            except CheckpointError as exc:
                self.messages.append(f"The bundle's ROSE fit was not used: {exc}")
        stem = self._cache_stem()
        if card_path(stem).exists() and _calib_path(stem).exists():
            try:
                scorer = RoseScorer.load(stem, self.model)
                self._own_calibration = np.load(_calib_path(stem))
                return scorer, "cache"
            except (CheckpointError, OSError, ValueError) as exc:
                self.messages.append(f"The cached fit {stem} was not used ({exc}); refitting.")
        return self._fit(progress), "fitted"

    def _in_dist_images(self, split: str, n: int, seed: int) -> np.ndarray:
        if not self.dataset:
            raise CheckpointError(f"The card of {self.checkpoint} does not name its training dataset.")
        splits = get_card(self.dataset).splits
        if split not in splits:
            split = splits[0]
        images = load_dataset(self.dataset, split, n=n, seed=seed, root=self.data_root).images
        return prepare_images(images, self.image_size, self.channels)

    def _to_tensor(self, prepared: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(prepared)).permute(0, 3, 1, 2).float().div_(255.0)
        return t.to(next(self.model.parameters()).device)

    def _fit(self, progress: Progress) -> RoseScorer:
        progress(0.05, f"Loading {self.fit_n} {self.dataset} training images for the ROSE fit")
        x = self._to_tensor(self._in_dist_images("train", self.fit_n, self.seed))
        scorer = RoseScorer(self.model, fisher=self.fisher, batch_size=self.batch_size)
        passes = (2 if self.fisher == "ekfac" else 1) + 1
        label = f"Fitting ROSE-{self.fisher.upper()} on {len(x)} {self.dataset} images"
        batches = _ProgressBatches(x, self.batch_size, passes,
                                   lambda f, m: progress(0.05 + 0.85 * f, m), label)
        scorer.fit(batches)
        z = (scorer.norm_layer_raw - scorer.norm_mean) / scorer.norm_std
        self._own_calibration = aggregate(z, scorer.p, scorer.beta, scorer.aggregation)
        try:
            stem = self._cache_stem()
            scorer.save(stem)
            np.save(_calib_path(stem), self._own_calibration)
        except OSError as exc:  # a read-only folder only costs a refit next time
            self.messages.append(f"The new fit could not be cached ({exc}).")
        return scorer

    def _bundle_in_dist(self, method: str) -> np.ndarray | None:
        try:
            s = self.results.scores(method)
        except (OSError, ValueError, KeyError) as exc:
            self.messages.append(f"The results bundle could not be read ({exc}).")
            return None
        s = s[~s["is_ood"].astype(bool)]
        values = s["score"].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        return values if len(values) >= 2 else None

    def _calibration(self, progress: Progress) -> tuple[np.ndarray, str]:
        if self.fit_source != "bundle":
            n = len(self._own_calibration)
            return self._own_calibration, f"{n} held-out {self.dataset} training images (the normalisation half)"
        values = self._bundle_in_dist(self.method)
        if values is not None:
            return values, f"{len(values)} in-distribution test images of the results bundle"
        key = hashlib.sha256(card_path(self._bundle_fit_path()).read_bytes()).hexdigest()[:16]
        path = self.cache_dir / self.name / f"{self.method}-bundlefit-{key}-calib{self.calib_n}.npy"
        if path.exists():
            try:
                values = np.load(path)
                return values, f"{len(values)} {self.dataset} test images"
            except (OSError, ValueError):
                pass
        progress(0.5, f"Scoring {self.calib_n} {self.dataset} test images for the threshold")
        x = self._to_tensor(self._in_dist_images("test", self.calib_n, self.seed))
        parts = []
        for i in range(0, len(x), self.batch_size):
            progress(0.5 + 0.45 * i / len(x), f"Calibrating on {len(x)} {self.dataset} test images")
            parts.append(self.rose.score(x[i:i + self.batch_size]).score)
        values = np.concatenate(parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, values)
        except OSError:
            pass
        return values, f"{len(values)} {self.dataset} test images"

    # --- scoring -----------------------------------------------------------------------------
    def threshold(self, tpr: float = 0.95) -> float:
        """The ROSE threshold that keeps a fraction ``tpr`` of the in-distribution calibration scores."""
        return threshold_at_tpr(self.calibration, tpr)

    def prepare(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """uint8 images (a batch ``(N, H, W, C)`` or a list of ``(H, W, C)``/``(H, W)`` of any sizes)
        → the model's uint8 inputs ``(N, S, S, C)``."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return prepare_images(images, self.image_size, self.channels)
        out = []
        for i, im in enumerate(images):
            a = np.asarray(im)
            if a.ndim == 2:
                a = a[..., None]
            if a.ndim != 3:
                raise InvalidInput(f"Image {i} has shape {a.shape}; expected (H, W) or (H, W, C).")
            out.append(prepare_images(a[None], self.image_size, self.channels)[0])
        if not out:
            return np.zeros((0, self.image_size, self.image_size, self.channels), np.uint8)
        return np.stack(out)

    def _nll(self, x: torch.Tensor, loss: np.ndarray, nll: str) -> np.ndarray:
        if nll == "loss":
            return loss
        if nll != "iwae":
            raise ValueError(f"nll must be 'iwae' or 'loss', got {nll!r}.")
        try:
            from rose_core.scorers.nll import model_nll
        except ImportError:  # the baselines module is optional for the app
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                with torch.no_grad():
                    kw = {"k": self.nll_k} if self.card.get("kind") == "vae" else {}
                    return self.model.nll(x, **kw).double().cpu().numpy()
        return model_nll(self.model, x, k=self.nll_k, seed=self.seed).numpy()

    def score(self, images: np.ndarray | Sequence[np.ndarray], names: Sequence[str] | None = None, *,
              nll: str = "iwae", progress: Progress | None = None) -> LiveResult:
        """Score uint8 images (see :meth:`prepare`). ``nll="iwae"`` (the NLL method of the
        bundle) or ``"loss"`` (the deterministic loss ROSE differentiates, free)."""
        progress = progress or _no_progress
        prepared = self.prepare(images)
        n = len(prepared)
        names = list(names) if names is not None else [f"image {i + 1}" for i in range(n)]
        if len(names) != n:
            raise ValueError(f"{len(names)} names for {n} images.")
        n_layers = len(self.layer_names)
        scores, z, raw, losses, nlls = [], [], [], [], []
        x_all = self._to_tensor(prepared)
        with self._lock:
            for i in range(0, n, self.batch_size):
                progress(i / max(n, 1), f"Scoring images {i + 1}–{min(n, i + self.batch_size)} of {n}")
                x = x_all[i:i + self.batch_size]
                r = self.rose.score(x)
                scores.append(r.score)
                z.append(r.extras["layer_z"])
                raw.append(r.extras["layer_raw"])
                losses.append(r.extras["loss"])
                nlls.append(self._nll(x, r.extras["loss"], nll))
        progress(1.0, f"Scored {n} images")
        cat = (lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape))
        score = cat(scores, (0,))
        nll_nats = cat(nlls, (0,)).astype(np.float64)
        dims = self.channels * self.image_size * self.image_size
        nll_p = (empirical_p_value(self.nll_calibration, nll_nats)
                 if self.nll_calibration is not None and nll == "iwae" and n else np.full(n, np.nan))
        return LiveResult(
            names=names, inputs=prepared, nll_nats=nll_nats, bits_per_dim=nll_nats / (dims * LN2),
            score=score, p_value=empirical_p_value(self.calibration, score) if n else np.zeros(0),
            nll_p_value=nll_p, layer_z=cat(z, (0, n_layers)), layer_raw=cat(raw, (0, n_layers)),
            layer_names=list(self.layer_names), nll_kind=self.nll_kind if nll == "iwae" else self.loss_kind,
            method=self.method)

    # --- robustness ---------------------------------------------------------------------------
    def reference(self, n: int = 100, seed: int = 1, progress: Progress | None = None) -> _Reference:
        """ROSE scores and deterministic losses of ``n`` in-distribution test images (cached)."""
        key = (n, seed)
        if key not in self._references:
            r = self.score(self._in_dist_images("test", n, seed), nll="loss", progress=progress)
            self._references[key] = _Reference(r.score, r.nll_nats)
        return self._references[key]

    def perturbed_auroc(self, ood_images: np.ndarray, perturbation: str, strength: float | int | None,
                        n_ref: int = 100, seed: int = 1, progress: Progress | None = None) -> dict:
        """AUROC of ROSE and of the likelihood (the deterministic loss) for in-distribution test images
        vs ``ood_images`` (uint8 ``(N, H, W, C)``) after ``perturbation`` at ``strength``
        (:func:`rose_core.perturb.apply`). Returns ``{"perturbed": uint8 inputs, "auroc": {method: value},
        "n_in", "n_ood"}``; the likelihood is keyed ``"nll"`` and described by :attr:`loss_kind`."""
        from rose_core import perturb

        progress = progress or _no_progress
        ref = self.reference(n_ref, seed, progress=lambda f, m: progress(0.5 * f, f"In-distribution: {m}"))
        prepared = self.prepare(ood_images)
        t = torch.from_numpy(np.ascontiguousarray(prepared)).permute(0, 3, 1, 2)
        if perturbation != "none":
            t = perturb.apply(perturbation, t, strength, seed=seed)
        perturbed = t.permute(0, 2, 3, 1).contiguous().numpy()
        r = self.score(perturbed, nll="loss", progress=lambda f, m: progress(0.5 + 0.5 * f, f"OOD: {m}"))
        return {"perturbed": perturbed, "n_in": len(ref.score), "n_ood": len(r.score),
                "auroc": {self.method: auroc(ref.score, r.score), "nll": auroc(ref.loss, r.nll_nats)}}

    def describe(self) -> dict:
        """What the scorer is built from, for display."""
        return {"checkpoint": self.name, "method": self.method, "fit_source": self.fit_source,
                "n_fisher": self.rose.n_fisher, "n_norm": self.rose.n_norm, "layers": list(self.layer_names),
                "calibration": self.calibration_source, "n_calibration": int(len(self.calibration)),
                "nll": self.nll_kind, "nll_calibration": None if self.nll_calibration is None
                else int(len(self.nll_calibration)), "messages": list(self.messages)}

