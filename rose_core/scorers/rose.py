"""ROSE: the layer-wise Fisher score of a sample's gradient (paper section 4, Algorithms 1-2).

For each scored layer ``l`` and input ``x``: ``s_l(x) = g_l(x)ᵀ F_l⁻¹ g_l(x)`` with
``g_l = ∂ℓ(x)/∂W_l`` the gradient of the model's deterministic per-sample loss
``ℓ = -log p(x|θ)`` in nats (:meth:`GenerativeModel.per_sample_loss`) and ``F_l``
the layer's empirical Fisher, approximated by EKFAC (default) or DIAG
(:mod:`rose_core.fisher`). Per-sample gradients come from one batched forward
and backward pass (:mod:`rose_core.pergrad`). Scores are z-normalised per layer
with in-distribution mean and standard deviation (eq. 10) and aggregated as
``ROSE(x) = ‖ReLU(ŝ + β)‖_p`` (eq. 11; defaults ``p = ∞``, ``β = 0``).
**Higher means more out-of-distribution.**

Decisions (see also the project notes):

* Gradients of Glow's invertible 1×1 convolutions are taken w.r.t. their
  effective weight ``W`` (what acts on the data), including the ``log|det W|``
  term, not w.r.t. the LU parameters.
* ``normalization="separate"`` (default): the in-distribution data are split
  into a Fisher-fit set and a disjoint normalisation set, so the z-scores of
  in-distribution test images are not biased low by having been in the Fisher
  fit. ``"same"`` reproduces the paper/authors (both on the same samples).
  The split is deterministic and streaming: sample ``i`` (0-based, counted over
  the whole stream in order) goes to the Fisher set iff
  ``floor((i+1)·f) > floor(i·f)`` with ``f = fit_fraction`` — an interleaved
  split that gives exactly ``floor(N·f)`` Fisher samples for any ``N``, needs
  no knowledge of ``N`` in advance and is robust to class-sorted data.
* ``aggregation="relu"`` is the paper's eq. 11; ``"max"`` is the authors'
  code: the plain ``max_l (ŝ_l + β_l)`` without ReLU (only for ``p = ∞``);
  ReLU creates ties at 0 that change AUROC.
* The standard deviation in eq. 10 is the population one (``ddof=0``); a layer
  whose in-distribution scores are all equal (e.g. it does not affect the loss)
  gets ``σ = 1``.
* Damping is relative (``λ = damping · mean(Σ)``), so scores do not depend on
  the scale of the loss.
* Fitting streams batches of any size: EKFAC needs two passes over the Fisher
  set (factors, then eigenvalues in the fixed eigenbasis) and one over the
  normalisation set; DIAG one and one. A tensor is sliced; a re-iterable
  (list, ``DataLoader`` *without* shuffling) is iterated once per pass; a
  one-shot iterator/generator is first collected into memory. Incoming
  batches are re-chunked to ``batch_size`` so the results do not depend on how
  the input was batched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from rose_core.errors import CheckpointError, InvalidInput
from rose_core.fisher import FISHER_KINDS, LayerwiseFisher, make_fisher
from rose_core.pergrad import capture_factors, grad_shape, resolve_layers, check_supported, UnsupportedLayer
from rose_core.scorers.base import Batches, Scorer, ScoreResult, check_model_batch

__all__ = ["RoseScorer", "RankDeficientFitWarning", "aggregate", "split_mask"]


class RankDeficientFitWarning(UserWarning):
    """A layer's Fisher was fitted on too few images to be full rank (its score is then not
    ``gᵀF⁻¹g`` but, in the missing directions, a distance divided by the damping)."""

_CALIBRATION_PREFIX = "calibration."
"""Keys of the calibration arrays in a fit's ``.safetensors`` (no ``/``: not a Fisher layer field)."""

FORMAT = "rose-fit"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------

def aggregate(z, p: float = math.inf, beta: float | Sequence[float] = 0.0, mode: str = "relu") -> np.ndarray:
    """Aggregate z-scores ``(N, L)`` into one score per sample (paper eq. 11).

    ``mode="relu"``: ``‖ReLU(z + β)‖_p`` (``p ≥ 1`` or ``inf``).
    ``mode="max"``: ``max_l (z_l + β_l)`` without ReLU (the authors' code); requires ``p = inf``.
    ``β`` is a scalar or one value per layer. Returns float64 ``(N,)``.
    """
    z = z.detach().cpu().numpy() if torch.is_tensor(z) else np.asarray(z)
    z = z.astype(np.float64, copy=False)
    if z.ndim != 2:
        raise ValueError(f"z must have shape (N, L), got {z.shape}.")
    n, n_layers = z.shape
    if n_layers == 0:
        raise ValueError("z has no layers.")
    b = np.asarray(beta, dtype=np.float64)
    if b.ndim > 1 or (b.ndim == 1 and b.shape[0] != n_layers):
        raise ValueError(f"beta must be a scalar or have one value per layer ({n_layers}), got shape {b.shape}.")
    _check_p(p)
    v = z + b
    if mode == "max":
        if p != math.inf:
            raise ValueError("aggregation='max' (plain max of z-scores, the authors' code) is only defined for p=inf.")
        return v.max(1)
    if mode != "relu":
        raise ValueError(f"aggregation must be 'relu' or 'max', got {mode!r}.")
    v = np.maximum(v, 0.0)
    m = v.max(1)
    if p == math.inf:
        return m
    out = np.zeros(n)
    pos = m > 0
    out[pos] = m[pos] * ((v[pos] / m[pos, None]) ** p).sum(1) ** (1.0 / p)  # scaled: no overflow for large p
    return out


def _check_p(p: float) -> None:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or math.isnan(p) or p < 1:
        raise ValueError(f"p must be a number >= 1 or inf, got {p!r}.")


def split_mask(start: int, n: int, fraction: float) -> torch.Tensor:
    """Fisher-set membership of samples ``start … start+n-1`` of the stream (see the module doc)."""
    i = torch.arange(start, start + n, dtype=torch.float64)
    return torch.floor((i + 1) * fraction) > torch.floor(i * fraction)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (as float32 on the CPU), names included."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


# --------------------------------------------------------------------------------------------
# Scorer
# --------------------------------------------------------------------------------------------

class RoseScorer(Scorer):
    """ROSE OOD scorer. ``fit(in_dist)`` then ``score(batch)``; higher = more OOD.

    Parameters: ``fisher`` ``"ekfac"|"diag"``; ``layers`` ``"default"|"all"`` (the model's
    :meth:`scored_layers`) or a list of module names; ``p``, ``beta``, ``aggregation``
    (``"relu"|"max"``) as in :func:`aggregate`; ``normalization`` ``"separate"|"same"``;
    ``fit_fraction`` the share of in-distribution samples used for the Fisher when
    ``normalization="separate"``; ``damping`` relative damping; ``batch_size`` samples per
    forward/backward pass; ``device`` (``None``: the model's device; otherwise the model must
    already be there — the scorer never moves the caller's model); ``replay_bytes`` the memory
    budget for replaying EKFAC's first-pass factors in its second pass (see :meth:`fit_sets`).

    ``score(x)`` returns :class:`ScoreResult` with ``score`` ``(N,)`` and extras
    ``layer_raw`` ``(N, L)`` (``s_l``), ``layer_z`` ``(N, L)`` (``ŝ_l``) and ``loss`` ``(N,)``
    (the per-sample loss in nats), in the order of :attr:`layer_names`.
    """

    name = "rose"

    def __init__(self, model: nn.Module, fisher: str = "ekfac", layers: str | Sequence[str] = "default",
                 p: float = math.inf, beta: float | Sequence[float] = 0.0, aggregation: str = "relu",
                 normalization: str = "separate", fit_fraction: float = 0.5, damping: float = 1e-8,
                 batch_size: int = 128, device: str | torch.device | None = None,
                 replay_bytes: int = 4 << 30) -> None:
        if fisher not in FISHER_KINDS:
            raise ValueError(f"fisher must be one of {sorted(FISHER_KINDS)}, got {fisher!r}.")
        if aggregation not in ("relu", "max"):
            raise ValueError(f"aggregation must be 'relu' or 'max', got {aggregation!r}.")
        _check_p(p)
        if aggregation == "max" and p != math.inf:
            raise ValueError("aggregation='max' (plain max of z-scores, the authors' code) is only defined for p=inf.")
        if normalization not in ("separate", "same"):
            raise ValueError(f"normalization must be 'separate' or 'same', got {normalization!r}.")
        if normalization == "separate" and not (0.0 < fit_fraction < 1.0):
            raise ValueError(f"fit_fraction must lie strictly between 0 and 1, got {fit_fraction!r}.")
        if not (isinstance(damping, (int, float)) and damping >= 0 and math.isfinite(damping)):
            raise ValueError(f"damping must be a finite number >= 0, got {damping!r}.")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if not callable(getattr(model, "per_sample_loss", None)):
            raise TypeError(f"ROSE needs a model with per_sample_loss(x); got {type(model).__name__}.")
        if device is not None and not _same_device(torch.device(device), _model_device_dtype(model)[0]):
            raise ValueError(f"The model is on {_model_device_dtype(model)[0]}, not {device}; move it first "
                             "(model.to(device)) — the scorer does not move the caller's model.")
        self.model = model
        self.device, self.dtype = _model_device_dtype(model)
        self._layers = resolve_layers(model, layers if isinstance(layers, str) else list(layers))
        n_layers = len(self._layers)
        b = np.asarray(beta, dtype=np.float64)
        if b.ndim > 1 or (b.ndim == 1 and b.shape[0] != n_layers):
            raise ValueError(f"beta must be a scalar or have one value per layer ({n_layers}), got shape {b.shape}.")
        self.fisher_kind = fisher
        self.p = float(p)
        self.beta = float(b) if b.ndim == 0 else b.tolist()
        self.aggregation = aggregation
        self.normalization = normalization
        self.fit_fraction = float(fit_fraction)
        self.damping = float(damping)
        self.batch_size = batch_size
        self.replay_bytes = int(replay_bytes)
        """Memory budget for keeping EKFAC's first-pass factors so that the second pass replays them
        instead of running the model again (0: always recompute; results are identical either way)."""
        self.fisher: LayerwiseFisher | None = None
        self.norm_mean: np.ndarray | None = None
        self.norm_std: np.ndarray | None = None
        self.norm_layer_raw: np.ndarray | None = None
        """Raw layer scores ``(n_norm, L)`` of the normalisation (calibration) images."""
        self.calibration_loss: np.ndarray | None = None
        """Per-sample loss in nats ``(n_norm,)`` of the same images (for the typicality test)."""
        self.calibrated = False
        """True when the normalisation images were a separate calibration set (``fit(calibration=...)``)."""
        self.fit_problems: list[str] = []
        """Rank-deficient layers of the last fit (see :meth:`LayerwiseFisher.rank_problems`)."""
        self.n_fisher = 0
        self.n_norm = 0

    # --- properties ------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Scored layers, in the column order of ``layer_raw`` / ``layer_z``."""
        return list(self._layers)

    @property
    def fitted(self) -> bool:
        return self.fisher is not None and self.norm_mean is not None

    # --- data plumbing -----------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> torch.Tensor:
        return check_model_batch(self.model, x)

    def _source(self, data: Batches) -> Callable[[], Iterator[torch.Tensor]]:
        """A function that yields the in-distribution batches again for every pass."""
        if torch.is_tensor(data):
            data = self._check(data)
            return lambda: (data[i:i + self.batch_size] for i in range(0, len(data), self.batch_size))
        if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
            raise InvalidInput(f"fit expects a tensor (N, C, H, W) or an iterable of such batches, "
                               f"got {type(data).__name__}.")
        if iter(data) is data:  # one-shot iterator: collect it so it can be replayed
            batches = [self._check(b) for b in data]
            return lambda: iter(batches)
        return lambda: (self._check(b) for b in data)

    def _chunks(self, source: Callable[[], Iterator[torch.Tensor]], subset: str) -> Iterator[torch.Tensor]:
        """Chunks of exactly ``batch_size`` (the last may be smaller) of the ``subset``
        (``"fisher"``, ``"norm"`` or ``"all"``) of the stream, on the scorer's device."""
        start = 0
        buf: list[torch.Tensor] = []
        buffered = 0
        for b in source():
            n = len(b)
            if subset != "all":
                mask = split_mask(start, n, self.fit_fraction)
                if subset == "norm":
                    mask = ~mask
                b = b[mask.to(b.device)]
            start += n
            if len(b):
                buf.append(b)
                buffered += len(b)
            while buffered >= self.batch_size:
                cat = torch.cat(buf) if len(buf) > 1 else buf[0]
                yield cat[:self.batch_size].to(self.device, self.dtype)
                rest = cat[self.batch_size:]
                buf, buffered = ([rest], len(rest)) if len(rest) else ([], 0)
        if buffered:
            cat = torch.cat(buf) if len(buf) > 1 else buf[0]
            yield cat.to(self.device, self.dtype)

    # --- fitting -----------------------------------------------------------------------------
    def fit(self, in_dist: Batches, calibration: Batches | None = None, *, ctx=None,
            progress: Callable[[int], None] | None = None) -> "RoseScorer":
        """Fit the Fisher of every scored layer and the z-normalisation on in-distribution data.

        ``in_dist``: a float tensor ``(N, C, H, W)`` in [0, 1] or an iterable of such batches.
        ``calibration``: in-distribution images the model never trained on (e.g. the calibration
        half of the test split, :mod:`rose_core.data.splits`); when given, the Fisher is fitted on
        *all* of ``in_dist`` and the z-normalisation statistics, the calibration scores (verdict
        threshold, p-values) and the calibration losses come from ``calibration``. Without it,
        ``normalization`` decides (``"separate"``: an interleaved split of ``in_dist``; ``"same"``:
        the Fisher images themselves). ``progress(n)`` is called after every batch with its size.

        Rank-deficient layers (fewer fit images than their factors have dimensions) raise a
        :class:`RankDeficientFitWarning` and are listed in :attr:`fit_problems`.
        """
        source = self._source(in_dist)
        if calibration is not None:
            if self.normalization == "same":
                raise ValueError("normalization='same' normalises on the Fisher images; do not pass calibration= "
                                 "(or use normalization='separate').")
            fisher_sets = (source, "all")
            norm_sets = (self._source(calibration), "all")
        else:
            same = self.normalization == "same"
            fisher_sets = (source, "all" if same else "fisher")
            norm_sets = (source, "all" if same else "norm")
        return self.fit_sets(fisher_sets, norm_sets, calibrated=calibration is not None, ctx=ctx,
                             progress=progress)

    def fit_sets(self, fisher_set, norm_set, *, calibrated: bool = False, ctx=None,
                 progress: Callable[[int], None] | None = None) -> "RoseScorer":
        """The one ROSE fit (used by :meth:`fit` and by :func:`rose_core.distributed.fit_scorer`).

        ``fisher_set``/``norm_set``: ``(source, subset)`` with ``source`` a function returning the
        batches again for every pass (:meth:`_source`) and ``subset`` ``"all"``, ``"fisher"`` or
        ``"norm"`` (the interleaved split of :func:`split_mask`). ``ctx`` (a
        :class:`rose_core.distributed.DistContext`; ``None``: one process) sums every count,
        Fisher accumulator and normalisation statistic over the ranks, each rank passing its own
        shard. All sums are float64, so one process and N processes agree to float64 rounding.
        ``calibrated``: the normalisation images are a separate held-out calibration set.
        """
        from rose_core.distributed import DistContext, end_pass_everywhere

        ctx = ctx or DistContext()
        progress = progress or (lambda n: None)
        ctx.check_same((self.fisher_kind, self.layer_names, self.normalization, self.fit_fraction, self.damping,
                        self.p, self.beta, self.aggregation), "the fit settings")
        fisher = make_fisher(self.fisher_kind, damping=self.damping)
        n_fisher = 0
        replay: list[dict] | None = [] if fisher.passes > 1 else None
        held = 0
        for pass_index in range(fisher.passes):
            n = 0
            batches = ((None, f) for f in replay) if pass_index > 0 and replay is not None else \
                ((xb, None) for xb in self._chunks(*fisher_set))
            for xb, factors in batches:
                if factors is None:
                    _, factors = capture_factors(self.model, xb, self._layers)
                fisher.update(factors)
                if pass_index == 0 and replay is not None:
                    # Keep the raw factors for the next pass while they fit in the budget: the later
                    # passes then replay the same tensors (bit-identical) without forward/backward.
                    held += sum(f.raw_nbytes for f in factors.values())
                    if held > self.replay_bytes:
                        replay = None
                    else:
                        replay.append({k: f.without_cache() for k, f in factors.items()})
                batch_n = next(iter(factors.values())).n
                n += batch_n
                progress(batch_n)
            if pass_index == 0 and not fisher.state and ctx.is_distributed:
                # An empty shard joins the all-reduce with zero sums of the right shapes.
                blank = torch.zeros((1,) + tuple(self.model.input_shape), device=self.device, dtype=self.dtype)
                fisher.update(capture_factors(self.model, blank, self._layers)[1])
                for t in fisher.accumulators().values():
                    t.zero_()
            n = ctx.sum_int(n)
            if pass_index == 0:
                n_fisher = n
                if n_fisher < 1:
                    raise InvalidInput(self._too_few(n_fisher, "Fisher"))
            elif n != n_fisher:
                raise InvalidInput(f"The in-distribution data changed between passes ({n_fisher} then {n} Fisher "
                                   "samples); pass a tensor, a list or a DataLoader without shuffling.")
            end_pass_everywhere(fisher, ctx, self.device)
        self.fit_problems = fisher.rank_problems()
        if self.fit_problems:
            warnings.warn(RankDeficientFitWarning(" ".join(self.fit_problems)), stacklevel=3)

        self.fisher = fisher
        self.norm_mean = None
        self.calibrated = bool(calibrated)
        raws, losses = [], []
        for xb in self._chunks(*norm_set):
            loss, raw = self._layer_raw(xb)
            raws.append(raw)
            losses.append(loss)
            progress(len(xb))
        n_layers = len(self._layers)
        raw = np.concatenate(raws) if raws else np.zeros((0, n_layers))
        loss = np.concatenate(losses) if losses else np.zeros(0)
        stats = torch.from_numpy(np.concatenate([[len(raw)], raw.sum(0)]))
        ctx.all_reduce_sum_([stats])
        n_norm = int(stats[0])
        if n_norm < 2:
            self.fisher = None
            raise InvalidInput(self._too_few(n_norm, "normalisation"))
        mean = stats[1:].numpy() / n_norm
        sq = torch.from_numpy(((raw - mean) ** 2).sum(0) if len(raw) else np.zeros(n_layers))
        ctx.all_reduce_sum_([sq])
        std = np.sqrt(sq.numpy() / n_norm)
        gathered = ctx.all_gather_rows(torch.from_numpy(np.concatenate([raw, loss[:, None]], 1))).numpy()
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            self.fisher = None
            raise InvalidInput("The normalisation statistics are not finite (the model's loss overflowed, or an "
                               "input is extreme); check the model and the calibration images.")
        self.norm_layer_raw = gathered[:, :n_layers]
        self.calibration_loss = gathered[:, n_layers]
        self.norm_mean = mean
        self.norm_std = np.where(std > 0, std, 1.0)
        self.n_fisher, self.n_norm = n_fisher, n_norm
        return self

    @property
    def calibration_scores(self) -> np.ndarray:
        """ROSE scores ``(n_norm,)`` of the normalisation (calibration) images: the in-distribution
        reference for the verdict threshold and p-values."""
        if self.norm_layer_raw is None:
            raise RuntimeError("This scorer holds no calibration scores (it is not fitted, or was saved "
                               "without them).")
        z = (self.norm_layer_raw - self.norm_mean) / self.norm_std
        return aggregate(z, self.p, self.beta, self.aggregation)

    def _too_few(self, got: int, which: str) -> str:
        if self.normalization == "same":
            need = "at least 2 in-distribution images"
        else:
            need = (f"enough in-distribution images for both the Fisher set (fit_fraction={self.fit_fraction}) "
                    "and at least 2 normalisation images")
        return f"ROSE needs {need}; the {which} set got {got}."

    # --- scoring -----------------------------------------------------------------------------
    def _layer_raw(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        loss, factors = capture_factors(self.model, x, self._layers)
        s = self.fisher.precondition_norm(factors)
        raw = torch.stack([s[name] for name in self._layers], 1)
        return loss.double().cpu().numpy(), raw.double().cpu().numpy()

    def score(self, x: torch.Tensor) -> ScoreResult:
        """Score a batch ``(N, C, H, W)`` of floats in [0, 1] (processed in chunks of ``batch_size``)."""
        if not self.fitted:
            raise RuntimeError("RoseScorer is not fitted: call fit(in_distribution_images) or RoseScorer.load().")
        x = self._check(x)
        if len(x) == 0:
            n_layers = len(self._layers)
            return ScoreResult(np.zeros(0), {"layer_raw": np.zeros((0, n_layers)),
                                             "layer_z": np.zeros((0, n_layers)), "loss": np.zeros(0)})
        return super().score(x)

    def _score_batch(self, x: torch.Tensor) -> ScoreResult:
        loss, raw = self._layer_raw(x.to(self.device, self.dtype))
        z = (raw - self.norm_mean) / self.norm_std
        return ScoreResult(aggregate(z, self.p, self.beta, self.aggregation),
                           {"layer_raw": raw, "layer_z": z, "loss": loss})

    # --- persistence -------------------------------------------------------------------------
    def _calibration_state(self) -> dict[str, torch.Tensor]:
        """The calibration images' raw layer scores and losses, stored beside the Fisher statistics
        so that a loaded fit has its verdict threshold, p-values and typicality reference."""
        if self.norm_layer_raw is None:
            return {}
        out = {_CALIBRATION_PREFIX + "layer_raw": torch.from_numpy(np.ascontiguousarray(self.norm_layer_raw))}
        if self.calibration_loss is not None:
            out[_CALIBRATION_PREFIX + "loss"] = torch.from_numpy(np.ascontiguousarray(self.calibration_loss))
        return out

    def _load_calibration_state(self, tensors: dict[str, torch.Tensor], n_layers: int, where) -> None:
        raw = tensors.get(_CALIBRATION_PREFIX + "layer_raw")
        loss = tensors.get(_CALIBRATION_PREFIX + "loss")
        if raw is None:
            return   # fits saved before calibration arrays were stored: no threshold reference
        if raw.ndim != 2 or raw.shape[1] != n_layers or (loss is not None and loss.shape != (raw.shape[0],)):
            raise CheckpointError(f"The calibration arrays of the ROSE fit {where} have the wrong shape.")
        self.norm_layer_raw = raw.double().numpy()
        self.calibration_loss = None if loss is None else loss.double().numpy()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fit as ``<stem>.safetensors`` (Fisher statistics) and ``<stem>.json`` (settings,
        layers and shapes, normalisation, model fingerprint). Returns the JSON path."""
        from rose_core import __version__
        from rose_core.checkpoint import card_path, save_tensors, weights_path

        if not self.fitted:
            raise RuntimeError("Nothing to save: the scorer is not fitted.")
        stem = Path(path)
        for suffix in (".safetensors", ".json"):
            if stem.name.endswith(suffix):
                stem = stem.with_name(stem.name[: -len(suffix)])
        stem.parent.mkdir(parents=True, exist_ok=True)
        config = getattr(self.model, "config", None)
        card = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
            "fisher": self.fisher_kind, "damping": self.damping,
            "layers": self.layer_names,
            "layer_types": {n: type(m).__name__ for n, m in self._layers.items()},
            "layer_shapes": {n: list(grad_shape(m)) for n, m in self._layers.items()},
            "p": "inf" if self.p == math.inf else self.p, "beta": self.beta,
            "aggregation": self.aggregation, "normalization": self.normalization,
            "fit_fraction": self.fit_fraction, "batch_size": self.batch_size,
            "norm_mean": [float(v) for v in self.norm_mean], "norm_std": [float(v) for v in self.norm_std],
            "n_fisher": self.n_fisher, "n_norm": self.n_norm, "calibrated": self.calibrated,
            "rank_problems": self.fit_problems,
            "model_kind": getattr(self.model, "kind", type(self.model).__name__),
            "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
            "model_fingerprint": model_fingerprint(self.model),
        }
        # A finished fit is saved for scoring: compact (no first-pass sums) with the bases in the
        # dtype the scorer computes in, which keeps the VAE's EKFAC fit at ~40 MB instead of 160 MB.
        _, dtype = _model_device_dtype(self.model)
        # the card records the weights' SHA-256; load() refuses a file whose bytes changed since
        card["weights_sha256"] = save_tensors({**self.fisher.state_dict(compact=True, basis_dtype=dtype),
                                               **self._calibration_state()},
                                              weights_path(stem), metadata={"format": FORMAT})
        cp = card_path(stem)
        tmp = cp.with_name(cp.name + ".tmp")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        tmp.replace(cp)
        return cp

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, device: str | torch.device | None = None,
             strict: bool = True) -> "RoseScorer":
        """Load a fit saved by :meth:`save` for ``model``.

        Raises :class:`CheckpointError` when the files are missing or corrupted, or when the fit
        does not match the model: another model kind or config, missing layers, other gradient
        shapes, or (with ``strict``, the default) other weights than the fit was made with.
        """
        from rose_core.checkpoint import card_path, load_tensors, weights_path

        cp = card_path(path)
        if not cp.exists():
            raise CheckpointError(f"ROSE fit card {cp} does not exist.")
        try:
            card = json.loads(cp.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"ROSE fit card {cp} is not valid JSON ({exc}).") from exc
        if not isinstance(card, dict) or card.get("format") != FORMAT:
            raise CheckpointError(f"{cp} is not a ROSE fit (format {card.get('format') if isinstance(card, dict) else None!r}).")
        if card.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{cp} was written by a newer version (format {card['format_version']}).")
        try:
            layers = list(card["layers"])
            shapes = {k: tuple(v) for k, v in card["layer_shapes"].items()}
            kind_ok = card["model_kind"] == getattr(model, "kind", type(model).__name__)
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"ROSE fit card {cp} lacks a field ({exc}).") from exc
        if not kind_ok:
            raise CheckpointError(f"The ROSE fit {cp} was made for a {card['model_kind']} model, "
                                  f"not a {getattr(model, 'kind', type(model).__name__)}.")
        config = getattr(model, "config", None)
        if card.get("model_config") is not None and hasattr(config, "to_dict") \
                and card["model_config"] != config.to_dict():
            raise CheckpointError(f"The ROSE fit {cp} was made for a model with config {card['model_config']}, "
                                  f"but this model has {config.to_dict()}.")
        modules = dict(model.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            raise CheckpointError(f"The ROSE fit {cp} scores layers {missing} that this model does not have.")
        for n in layers:
            try:
                check_supported(n, modules[n])
                shape = grad_shape(modules[n])
            except UnsupportedLayer as exc:
                raise CheckpointError(f"The ROSE fit {cp} does not match the model: {exc}") from exc
            if shape != shapes.get(n):
                raise CheckpointError(f"The ROSE fit {cp} does not match the model: layer {n!r} has gradient "
                                      f"shape {shape}, the fit {shapes.get(n)}.")
        if strict and card.get("model_fingerprint") not in (None, model_fingerprint(model)):
            raise CheckpointError(f"The ROSE fit {cp} was made with other weights than this model's "
                                  "(fingerprint mismatch); refit, or load with strict=False.")
        # verified against the card's SHA-256 when it has one (cards from before the field load unchecked)
        tensors = load_tensors(weights_path(path), sha256=card.get("weights_sha256"))
        calibration = {k: tensors.pop(k) for k in list(tensors) if k.startswith(_CALIBRATION_PREFIX)}
        try:
            fisher = LayerwiseFisher.from_state_dict(tensors)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{weights_path(path)} does not hold a valid Fisher fit ({exc}).") from exc
        if fisher.kind != card["fisher"] or not fisher.ready or set(fisher.layers) != set(layers) \
                or fisher.layer_shapes() != {n: shapes[n] for n in layers}:
            raise CheckpointError(f"{weights_path(path)} does not match its card {cp} (Fisher kind, layers or shapes).")
        mean = np.asarray(card["norm_mean"], dtype=np.float64)
        std = np.asarray(card["norm_std"], dtype=np.float64)
        if mean.shape != (len(layers),) or std.shape != (len(layers),) or not (std > 0).all():
            raise CheckpointError(f"ROSE fit card {cp} has an invalid normalisation.")
        p = math.inf if card["p"] == "inf" else float(card["p"])
        scorer = cls(model, fisher=card["fisher"], layers=layers, p=p, beta=card["beta"],
                     aggregation=card["aggregation"], normalization=card["normalization"],
                     fit_fraction=card["fit_fraction"], damping=card["damping"],
                     batch_size=card.get("batch_size", 128), device=device)
        scorer.fisher = fisher.to(scorer.device)
        scorer.norm_mean, scorer.norm_std = mean, std
        scorer._load_calibration_state(calibration, len(layers), cp)
        scorer.calibrated = bool(card.get("calibrated", False))
        scorer.n_fisher, scorer.n_norm = int(card.get("n_fisher", 0)), int(card.get("n_norm", 0))
        return scorer
