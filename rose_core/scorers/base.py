"""The interface every OOD scorer shares (ROSE and the baselines).

A scorer is fitted once on in-distribution data, then scores batches::

    scorer = SomeScorer(model, ...).fit(in_dist)   # in_dist: float tensor (N, C, H, W) in [0, 1]
    result = scorer.score(batch)                   # ScoreResult, result.score: (N,) numpy, higher = more OOD

Inputs are float tensors as produced by :func:`rose_core.data.to_model_input`
(an iterable of such batches is accepted by ``fit`` for large sets). Scorers
that need no fitting return ``self`` from ``fit`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from rose_core.errors import InvalidInput

Batches = torch.Tensor | Iterable[torch.Tensor]


@dataclass
class ScoreResult:
    """Scores of one batch. ``score`` is higher for more out-of-distribution inputs.

    ``extras`` holds named per-sample arrays a scorer wants to expose
    (for ROSE: per-layer raw and z-scores; for likelihood methods: NLL).
    """

    score: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.score)

    @staticmethod
    def concat(results: list["ScoreResult"]) -> "ScoreResult":
        if not results:
            return ScoreResult(np.zeros(0))
        keys = results[0].extras.keys()
        return ScoreResult(np.concatenate([r.score for r in results]),
                           {k: np.concatenate([r.extras[k] for r in results]) for k in keys})


class Scorer:
    """Base class. Subclasses implement :meth:`_score_batch` and, if they learn
    anything from in-distribution data, :meth:`fit`."""

    name: str = "scorer"
    batch_size: int = 256

    def fit(self, in_dist: Batches) -> "Scorer":
        return self

    def score(self, x: torch.Tensor) -> ScoreResult:
        """Score a batch ``(N, C, H, W)`` of floats in [0, 1]; processed in chunks of ``batch_size``."""
        x = check_batch(x)
        parts = [self._score_batch(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return ScoreResult.concat(parts)

    def _score_batch(self, x: torch.Tensor) -> ScoreResult:
        raise NotImplementedError


def check_batch(x: torch.Tensor) -> torch.Tensor:
    """Validate a batch of model inputs: a 4-D float tensor of finite values in [0, 1]."""
    if not torch.is_tensor(x):
        raise InvalidInput(f"Expected a torch tensor (N, C, H, W), got {type(x).__name__}.")
    if x.ndim != 4:
        raise InvalidInput(f"Expected a batch of shape (N, C, H, W), got {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise InvalidInput(f"Expected float inputs in [0, 1] (see rose_core.data.to_model_input), got {x.dtype}.")
    if not torch.isfinite(x).all():
        raise InvalidInput("The batch contains NaN or infinite values.")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise InvalidInput("Inputs must lie in [0, 1]; divide uint8 images by 255 (rose_core.data.to_model_input).")
    return x


def check_model_batch(model, x: torch.Tensor) -> torch.Tensor:
    """:func:`check_batch`, and the shape the model expects (``model.input_shape``, when it has one)."""
    x = check_batch(x)
    shape = getattr(model, "input_shape", None)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise InvalidInput(f"The model expects images of shape (N, {', '.join(map(str, shape))}), "
                           f"got {tuple(x.shape)}; see rose_core.data.to_model_input.")
    return x


def iter_batches(data: Batches, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield batches from a tensor (chunked) or pass an iterable of tensors through."""
    if torch.is_tensor(data):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
    else:
        yield from data
