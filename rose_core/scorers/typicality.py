"""Likelihood typicality, alone and combined with ROSE into one p-value.

Two scorers (higher = more out-of-distribution, like every scorer):

* :class:`TypicalityScorer` — a **two-sided** test on the model's per-sample loss
  ``ℓ(x) = −log p(x|θ)`` in nats (:meth:`GenerativeModel.per_sample_loss`, the
  same deterministic loss ROSE differentiates). It flags a loss that is atypically
  **high or low** relative to held-out in-distribution images, so it catches both
  junk the model finds unlikely (noise: ≈ 8 bits/dim) and the paper's failure
  case, images the model finds *too* likely (all-black, simple digits).
* :class:`RoseTypicalityScorer` — ROSE's one-sided test and the typicality test
  combined into one p-value, with a verdict threshold calibrated to a requested
  TPR and a record of which test fired.

Rules (every number below is computed exactly as stated):

**Calibration data.** Both tests compare against *calibration* images: held-out
in-distribution images the model never trained on (the calibration half of the
test split, :func:`rose_core.data.splits.calibration_images`). Training images
must not be used: the model fits them better, so held-out images would look
atypically high in loss. At least 2 calibration values are required; the
smallest possible p-value is ``1/(n+1)`` per tail, so detecting at level α needs
``n ≥ 2/α − 1`` calibration images for the two-sided test.

**Empirical p-values** (conformal, ``n`` calibration values ``c_1 … c_n``):

* upper tail ``p_hi(v) = (1 + #{j: c_j ≥ v}) / (n + 1)``  (ROSE's test; equal to
  :func:`rose_core.metrics.empirical_p_value`);
* lower tail ``p_lo(v) = (1 + #{j: c_j ≤ v}) / (n + 1)``;
* two-sided ``p_typicality(v) = min(1, 2 · min(p_hi(v), p_lo(v)))`` on the loss.

Each is valid (``P(p ≤ α) ≤ α`` for an exchangeable in-distribution sample), the
two-sided one by Bonferroni over the two tails. Ties count towards the tail
(``≥``/``≤``), which is conservative. ``±inf`` compares as the extreme it is; NaN
is rejected.

**Typicality score** = ``−log p_typicality`` (natural log), in ``[0, log((n+1)/2)]``.

**Combination** of ``p_rose`` (upper tail of the aggregated ROSE score against
the RoseScorer's calibration ROSE scores) and ``p_typicality``:

* ``"min-p"`` (default): Bonferroni, ``p = min(1, 2 · min(p_rose, p_typicality))``.
  Valid whatever the dependence between the two tests.
* ``"fisher"``: Fisher's method, ``X = −2 (log p_rose + log p_typicality)``,
  ``p = P(χ²₄ ≥ X) = q (1 − log q)`` with ``q = p_rose · p_typicality``. It assumes
  independent, uniform p-values; neither holds exactly here (both tests read the
  same model on the same image; conformal p-values are discrete), which is one
  more reason the verdict threshold is calibrated empirically (below) instead of
  being read off as ``p < 1 − tpr``.

**Combined score** = ``−log p_combined``; higher = more OOD.

**Verdict threshold** (:meth:`RoseTypicalityScorer.threshold_at`): leave-one-out
on the calibration set. Calibration image ``i`` gets its p-values against the
*other* ``n − 1`` calibration images (the same formulas with ``n − 1``), so its
combined score is distributed as a new in-distribution image's with ``n − 1``
calibration images; the threshold is :func:`rose_core.metrics.threshold_at_tpr`
of these ``n`` leave-one-out scores (the smallest ``t`` with at least a fraction
``tpr`` of them ``≤ t``); an image is **OOD iff its score > t**. A calibration
image scored in full (against all ``n``, itself included) never scores above its
leave-one-out score, so the threshold keeps at least ``tpr`` of the calibration
images by construction; the in-sample alternative (each image counted against
itself) would bias the threshold low and raise false alarms. The realised
false-alarm rate must still be reported on images used for neither fit nor
calibration (the evaluation half).

**Which test fired** (extra ``fired``, at threshold ``t``): a test fires when
its own p-value, combined with a neutral ``p = 1`` for the other test, already
scores above ``t`` (min-p: ``min(1, 2·p_k) < e^−t``). ``"rose"``,
``"typicality"``, ``"both"`` (each would fire alone), ``"none"`` (not OOD), and —
only possible with ``"fisher"`` — ``"joint"``: OOD, but only by the two tests'
evidence together. ``fired != "none"`` is exactly the verdict ``score > t``.

Decision procedure for the default verdict (ROSE alone, ROSE + typicality with
min-p, or with Fisher's method): the choice uses **in-distribution and
stress-suite evidence only, never the AUROC on MNIST or any other OOD
benchmark or hold-out** — tuning on those would turn the benchmarks into
training data and the reported figures into optimistic ones. Each candidate is
calibrated at the app's TPR (0.95) on the calibration half, then, in this order:

1. *False alarms on unseen in-distribution images*: the realised false-alarm
   rate on the evaluation half must lie within the binomial 95 % band around
   ``1 − tpr``; a candidate outside it is rejected.
2. *Benign stress group* (1-pixel translations, brightness 0.9–1.1): false alarms
   ≤ 6 %; a candidate above it is rejected.
3. *OOD stress group* (noise, black/white, inverted, rotated/flipped, blurred,
   eroded digits): the candidate with the higher **worst-case** AUROC over the
   group wins; a difference under 0.01 is a tie. A verdict that calls junk
   (noise, blank images) in-distribution is the product's worst failure, which is
   why the worst case, not the mean, decides.
4. Ties go to the simpler detector (ROSE alone, then min-p, then Fisher).

The decision, the numbers it rests on and the reason are written down in the
docs; MNIST and hold-out AUROCs are reported afterwards as results. Both
detectors stay available whichever is the default.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from rose_core.errors import InvalidInput
from rose_core.metrics import threshold_at_tpr
from rose_core.scorers.base import Batches, Scorer, ScoreResult, check_model_batch, iter_batches

__all__ = ["TypicalityScorer", "RoseTypicalityScorer", "COMBINE_RULES", "FIRED_VALUES", "fired_tests",
           "upper_tail_p", "lower_tail_p", "two_sided_p", "combine_p", "combined_score"]

COMBINE_RULES = ("min-p", "fisher")
FIRED_VALUES = ("none", "rose", "typicality", "both", "joint")
MIN_CALIBRATION = 2


# --------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------

def _values(values: Any, what: str, *, finite: bool) -> np.ndarray:
    """A 1-D float64 copy of ``values``; NaN (and, with ``finite``, ±inf) rejected with a message."""
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be numbers, got {type(values).__name__} ({exc}).") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidInput(f"{what} must be a 1-D array, got shape {arr.shape}.")
    bad = np.isnan(arr) | (~np.isfinite(arr) if finite else False)
    if bad.any():
        raise InvalidInput(f"{what} has {int(bad.sum())} {'non-finite' if finite else 'NaN'} value(s) of {arr.size} "
                           f"(first at index {int(np.flatnonzero(bad)[0])}): the model's loss diverged on those "
                           "images; check the model and the inputs, or drop those images.")
    return arr


def _calibration(values: Any, what: str) -> np.ndarray:
    arr = _values(values, what, finite=True)
    if arr.size < MIN_CALIBRATION:
        raise InvalidInput(f"{what} has {arr.size} value(s); at least {MIN_CALIBRATION} held-out in-distribution "
                           "images are needed (use the calibration half of the test split, "
                           "rose_core.data.splits.calibration_images).")
    return np.sort(arr)


def _counts(cal_sorted: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``#{c ≥ v}`` and ``#{c ≤ v}`` for each ``v`` (``cal_sorted`` ascending)."""
    n = cal_sorted.size
    return n - np.searchsorted(cal_sorted, v, side="left"), np.searchsorted(cal_sorted, v, side="right")


def upper_tail_p(calibration: Any, values: Any) -> np.ndarray:
    """``(1 + #{c ≥ v}) / (n + 1)`` for each value ``v`` (small = atypically high)."""
    cal = _calibration(calibration, "calibration")
    ge, _ = _counts(cal, _values(values, "values", finite=False))
    return (1.0 + ge) / (cal.size + 1.0)


def lower_tail_p(calibration: Any, values: Any) -> np.ndarray:
    """``(1 + #{c ≤ v}) / (n + 1)`` for each value ``v`` (small = atypically low)."""
    cal = _calibration(calibration, "calibration")
    _, le = _counts(cal, _values(values, "values", finite=False))
    return (1.0 + le) / (cal.size + 1.0)


def two_sided_p(calibration: Any, values: Any) -> np.ndarray:
    """``min(1, 2 · min(p_hi, p_lo))``: small = atypically high *or* low."""
    cal = _calibration(calibration, "calibration")
    ge, le = _counts(cal, _values(values, "values", finite=False))
    return np.minimum(1.0, 2.0 * (1.0 + np.minimum(ge, le)) / (cal.size + 1.0))


def _loo_tails(cal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out tail p-values of each calibration value against the other ``n − 1``:
    ``(1 + #{j ≠ i: c_j ≥ c_i}) / n`` = ``#{j: c_j ≥ c_i} / n`` (and ``≤``), in input order."""
    s = np.sort(cal)
    ge, le = _counts(s, cal)
    return ge / cal.size, le / cal.size


def _check_rule(rule: str) -> str:
    if rule not in COMBINE_RULES:
        raise ValueError(f"combine must be one of {COMBINE_RULES}, got {rule!r}.")
    return rule


def combined_score(p_rose: Any, p_typicality: Any, rule: str = "min-p") -> np.ndarray:
    """``−log p_combined`` (see :func:`combine_p`), computed in log space."""
    _check_rule(rule)
    a = np.asarray(p_rose, dtype=np.float64)
    b = np.asarray(p_typicality, dtype=np.float64)
    if np.isnan(a).any() or np.isnan(b).any() or (a <= 0).any() or (b <= 0).any() or (a > 1).any() or (b > 1).any():
        raise InvalidInput("p-values must lie in (0, 1].")
    if rule == "min-p":
        return -np.log(np.minimum(1.0, 2.0 * np.minimum(a, b)))
    log_q = np.log(a) + np.log(b)  # ≤ 0
    return -(log_q + np.log1p(-log_q))  # −log(q (1 − log q)) = −log P(χ²₄ ≥ −2 log q)


def fired_tests(p_rose: Any, p_typicality: Any, threshold: float, rule: str = "min-p") -> np.ndarray:
    """Which test calls each sample OOD at ``threshold`` (on ``−log p_combined``): a test fires if its
    own p-value, combined with p = 1 for the other, crosses it — ``"rose"``, ``"typicality"``,
    ``"both"``, ``"joint"`` (only the two together: possible with ``"fisher"``) or ``"none"``;
    ``fired != "none"`` exactly where the combined score is above ``threshold``."""
    rose_fires = combined_score(p_rose, 1.0, rule) > threshold
    typ_fires = combined_score(1.0, p_typicality, rule) > threshold
    joint = combined_score(p_rose, p_typicality, rule) > threshold
    return np.where(rose_fires & typ_fires, "both",
                    np.where(rose_fires, "rose", np.where(typ_fires, "typicality", np.where(joint, "joint", "none"))))


def combine_p(p_rose: Any, p_typicality: Any, rule: str = "min-p") -> np.ndarray:
    """One p-value from ROSE's and the typicality test's: ``"min-p"`` = ``min(1, 2·min(p, p'))``
    (Bonferroni), ``"fisher"`` = ``P(χ²₄ ≥ −2 log(p·p'))`` = ``q (1 − log q)``, ``q = p·p'``."""
    return np.exp(-combined_score(p_rose, p_typicality, rule))


def _check_tpr(tpr: float) -> float:
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be a number in (0, 1] (e.g. 0.95: keep 95 % of in-distribution images), "
                         f"got {tpr!r}.")
    return float(tpr)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


# --------------------------------------------------------------------------------------------
# Typicality alone
# --------------------------------------------------------------------------------------------

class TypicalityScorer(Scorer):
    """Two-sided likelihood typicality test on ``model.per_sample_loss`` (nats).

    ``fit(calibration_images)`` computes and stores the calibration losses (held-out
    in-distribution images, never training images; see the module doc), or
    ``fit_losses(losses)`` stores losses computed elsewhere (e.g. a RoseScorer's
    ``calibration_loss``). ``score(x)``: score = ``−log p_typicality``; extras ``loss``
    (nats) and ``p_typicality``. The model runs in eval mode without gradients.
    """

    name = "typicality"

    def __init__(self, model: nn.Module, batch_size: int = 256) -> None:
        if not callable(getattr(model, "per_sample_loss", None)):
            raise TypeError(f"The typicality test needs a model with per_sample_loss(x); got {type(model).__name__}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.model = model
        self.batch_size = batch_size
        self._cal: np.ndarray | None = None  # sorted calibration losses

    @property
    def fitted(self) -> bool:
        return self._cal is not None

    @property
    def calibration_loss(self) -> np.ndarray:
        """The calibration losses (nats), sorted ascending."""
        return self._need_fit().copy()

    def _need_fit(self) -> np.ndarray:
        if self._cal is None:
            raise RuntimeError("TypicalityScorer is not fitted: call fit(calibration_images) with held-out "
                               "in-distribution images (rose_core.data.splits.calibration_images), "
                               "or fit_losses(losses).")
        return self._cal

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        return check_model_batch(self.model, x)

    def losses(self, x: Batches) -> np.ndarray:
        """Per-sample loss (nats, float64) of a tensor ``(N, C, H, W)`` or an iterable of batches."""
        if not torch.is_tensor(x) and (isinstance(x, (str, bytes)) or not hasattr(x, "__iter__")):
            raise InvalidInput(f"Expected a tensor (N, C, H, W) or an iterable of such batches, got {type(x).__name__}.")
        device, dtype = _model_device_dtype(self.model)
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            with torch.no_grad():
                for xb in iter_batches(x, self.batch_size):
                    xb = self._check(xb)
                    for i in range(0, len(xb), self.batch_size):
                        loss = self.model.per_sample_loss(xb[i:i + self.batch_size].to(device, dtype))
                        out.append(loss.detach().to("cpu", torch.float64).numpy().reshape(-1))
        finally:
            self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros(0)

    def fit(self, calibration_images: Batches) -> "TypicalityScorer":
        """Store the losses of held-out in-distribution images (at least 2)."""
        return self.fit_losses(self.losses(calibration_images))

    def fit_losses(self, losses: Any) -> "TypicalityScorer":
        """Store precomputed calibration losses (nats, finite, at least 2)."""
        self._cal = _calibration(losses, "calibration losses")
        return self

    def score_losses(self, losses: Any) -> ScoreResult:
        """Score losses computed elsewhere (the same ``per_sample_loss``, in nats)."""
        cal = self._need_fit()
        loss = _values(losses, "losses", finite=False)
        p = two_sided_p(cal, loss)
        return ScoreResult(-np.log(p), {"loss": loss, "p_typicality": p})

    def score(self, x: torch.Tensor) -> ScoreResult:
        self._need_fit()
        return self.score_losses(self.losses(self._check(x)))

    def threshold_at(self, tpr: float = 0.95) -> float:
        """Score threshold keeping ``tpr`` of the calibration images, leave-one-out (module doc);
        OOD iff score > threshold."""
        tpr = _check_tpr(tpr)
        ge, le = _loo_tails(self._need_fit())
        return threshold_at_tpr(-np.log(np.minimum(1.0, 2.0 * np.minimum(ge, le))), tpr)


# --------------------------------------------------------------------------------------------
# ROSE + typicality
# --------------------------------------------------------------------------------------------

class RoseTypicalityScorer(Scorer):
    """ROSE's upper-tail test and the two-sided typicality test, combined into one p-value.

    ``RoseTypicalityScorer(rose, combine="min-p", tpr=0.95)``: ``rose`` is a
    :class:`~rose_core.scorers.rose.RoseScorer`; ``combine`` is ``"min-p"`` or ``"fisher"``;
    ``tpr`` sets the default verdict threshold (:attr:`threshold`). ``fit()`` reads the fitted
    RoseScorer's ``calibration_scores`` and ``calibration_loss`` (no extra pass);
    ``fit(in_dist, calibration=None)`` first fits the RoseScorer. ``score(x)`` makes exactly one
    ``rose.score(x)`` call (the loss comes from its extras) and returns score = ``−log p_combined``
    with extras ``p_rose``, ``p_typicality``, ``p_combined``, ``fired``, ``rose_score`` and
    ROSE's own (``loss``, ``layer_raw``, ``layer_z``, …).
    """

    name = "rose+typicality"

    def __init__(self, rose: Any, combine: str = "min-p", tpr: float = 0.95) -> None:
        if not callable(getattr(rose, "score", None)):
            raise TypeError(f"RoseTypicalityScorer needs a RoseScorer, got {type(rose).__name__}.")
        self.rose = rose
        self.combine = _check_rule(combine)
        self.tpr = _check_tpr(tpr)
        self.threshold: float | None = None
        """Verdict threshold at :attr:`tpr` (set by ``fit``): OOD iff score > threshold."""
        self._rose_cal: np.ndarray | None = None  # in the RoseScorer's order
        self._loss_cal: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self._rose_cal is not None

    def fit(self, in_dist: Batches | None = None, calibration: Batches | None = None) -> "RoseTypicalityScorer":
        """Without arguments: take the calibration arrays of the already fitted RoseScorer.
        With ``in_dist``: first ``rose.fit(in_dist, calibration=calibration)`` (the Fisher on
        ``in_dist``, normalisation and calibration on ``calibration`` when given)."""
        if in_dist is not None:
            if calibration is None:
                self.rose.fit(in_dist)
            else:
                self.rose.fit(in_dist, calibration=calibration)
        elif calibration is not None:
            raise ValueError("calibration= needs in_dist= too (the Fisher is fitted on in_dist); or fit the "
                             "RoseScorer first and call fit() without arguments.")
        rose_cal, loss_cal = self._read_rose_calibration()
        self._rose_cal, self._loss_cal = rose_cal, loss_cal
        self.threshold = self.threshold_at(self.tpr)
        return self

    @classmethod
    def from_rose(cls, rose: Any, combine: str = "min-p", tpr: float = 0.95) -> "RoseTypicalityScorer":
        """The combined scorer of an already fitted RoseScorer (no pass over any data)."""
        return cls(rose, combine=combine, tpr=tpr).fit()

    def _read_rose_calibration(self) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self.rose, "fitted", True) is False:
            raise RuntimeError("The RoseScorer is not fitted: call fit(in_dist, calibration=held_out_images) on "
                               "this scorer or on the RoseScorer first.")
        scores, loss = self._rose_array("calibration_scores"), self._rose_array("calibration_loss")
        if scores is None or loss is None:
            raise RuntimeError("The RoseScorer holds no calibration_scores/calibration_loss (a fit loaded from "
                               "disk, or a version without them): refit it with "
                               "fit(in_dist, calibration=held_out_images).")
        scores = _values(scores, "RoseScorer.calibration_scores", finite=True)
        loss = _values(loss, "RoseScorer.calibration_loss", finite=True)
        if scores.shape != loss.shape:
            raise RuntimeError(f"RoseScorer.calibration_scores {scores.shape} and calibration_loss {loss.shape} "
                               "must describe the same images; refit the RoseScorer.")
        _calibration(scores, "RoseScorer.calibration_scores")  # size check
        return scores, loss

    def _rose_array(self, name: str) -> Any:
        """The RoseScorer's ``name`` array, or None where it has none (its property may raise)."""
        try:
            return getattr(self.rose, name, None)
        except RuntimeError:
            return None

    def _need_fit(self) -> tuple[np.ndarray, np.ndarray]:
        if self._rose_cal is None:
            raise RuntimeError("RoseTypicalityScorer is not fitted: call fit() after fitting its RoseScorer, "
                               "or fit(in_dist, calibration=held_out_images).")
        return self._rose_cal, self._loss_cal

    # --- calibration --------------------------------------------------------------------------
    def calibration_combined_scores(self) -> np.ndarray:
        """Leave-one-out combined scores of the calibration images (module doc), in their order."""
        rose_cal, loss_cal = self._need_fit()
        p_rose = _loo_tails(rose_cal)[0]
        ge, le = _loo_tails(loss_cal)
        return combined_score(p_rose, np.minimum(1.0, 2.0 * np.minimum(ge, le)), self.combine)

    def threshold_at(self, tpr: float = 0.95) -> float:
        """The verdict threshold keeping at least ``tpr`` of the calibration images: the
        :func:`~rose_core.metrics.threshold_at_tpr` of their leave-one-out combined scores.
        OOD iff score > threshold."""
        return threshold_at_tpr(self.calibration_combined_scores(), _check_tpr(tpr))

    # --- scoring ------------------------------------------------------------------------------
    def score(self, x: torch.Tensor, threshold: float | None = None) -> ScoreResult:
        """Score a batch with one ``rose.score(x)`` call; ``fired`` at ``threshold``
        (default :attr:`threshold`, the one at :attr:`tpr`)."""
        self._need_fit()
        return self.combine_result(self.rose.score(x), threshold)

    def combine_result(self, rose_result: ScoreResult, threshold: float | None = None) -> ScoreResult:
        """The combined result from a ROSE :class:`ScoreResult` of the same RoseScorer (whose
        extras hold ``loss``), for callers that already have ROSE's scores."""
        rose_cal, loss_cal = self._need_fit()
        current = self._rose_array("calibration_scores")
        if current is None or np.shape(current) != rose_cal.shape or not np.array_equal(current, rose_cal):
            raise RuntimeError("The RoseScorer was refitted after this scorer was fitted; call fit() again.")
        if "loss" not in rose_result.extras:
            raise ValueError("The ROSE result has no 'loss' extra (the per-sample loss in nats); "
                             "pass the result of RoseScorer.score.")
        t = self.threshold if threshold is None else float(threshold)
        if t is None or math.isnan(t):
            raise ValueError(f"threshold must be a number, got {threshold!r}.")
        rose_score = _values(rose_result.score, "ROSE scores", finite=False)
        loss = _values(rose_result.extras["loss"], "ROSE's per-sample loss", finite=False)
        if loss.shape != rose_score.shape:
            raise ValueError(f"ROSE scores {rose_score.shape} and loss {loss.shape} differ in length.")
        p_rose = upper_tail_p(rose_cal, rose_score)
        p_typ = two_sided_p(loss_cal, loss)
        score = combined_score(p_rose, p_typ, self.combine)
        fired = fired_tests(p_rose, p_typ, t, self.combine)
        extras = dict(rose_result.extras)
        extras.update(rose_score=rose_score, loss=loss, p_rose=p_rose, p_typicality=p_typ,
                      p_combined=np.exp(-score), fired=fired)
        return ScoreResult(score, extras)
