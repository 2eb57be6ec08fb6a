"""OOD detection metrics, computed with scikit-learn.

Conventions (the paper's, section 5 and Table 4):

* A score is **higher = more out-of-distribution** (OOD), for every scorer.
* AUROC, the ROC curve and the FPR at a TPR treat **OOD as the positive
  class**: TPR is the fraction of OOD samples flagged, FPR the fraction of
  in-distribution samples flagged, at the same threshold.
  ``fpr80`` / ``fpr95`` are the FPR at the first threshold where TPR ≥ 0.80 / 0.95.
* AUPRC comes in both conventions, named explicitly:
  ``auprc_in`` treats **in-distribution as positive** (ranked by −score), as in
  the paper's Table 4; ``auprc_out`` treats OOD as positive (ranked by score).
  Both are average precision (``sklearn.metrics.average_precision_score``).
* :func:`threshold_at_tpr` and :func:`empirical_p_value` use in-distribution
  scores only, to decide for a single new sample.

Every function rejects empty inputs and NaN or infinite scores with a
:class:`ValueError` that says which input is wrong.
"""

from __future__ import annotations

import math

import numpy as np


def _skm():
    """scikit-learn's metrics, imported on first use (it costs a second at import; the app's first page
    imports this module without computing a metric)."""
    from sklearn import metrics

    return metrics


def _scores(values, what: str) -> np.ndarray:
    """A 1-D float64 array of finite scores, or a ValueError naming ``what``."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numbers, got {type(values).__name__} ({exc}).") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of scores, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{what} is empty: at least one score is needed.")
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        raise ValueError(
            f"{what} has {int(bad.sum())} non-finite value(s) ({n_nan} NaN, {int(bad.sum()) - n_nan} infinite) "
            f"out of {arr.size}, e.g. at index {int(np.flatnonzero(bad)[0])}. "
            "Fix the scorer (a diverged model or a numerical overflow), or drop those samples."
        )
    return arr


def _labelled(in_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated scores and labels, 1 = OOD (positive), 0 = in-distribution."""
    s_in = _scores(in_scores, "in_scores")
    s_ood = _scores(ood_scores, "ood_scores")
    y = np.concatenate([np.zeros(s_in.size, dtype=np.int64), np.ones(s_ood.size, dtype=np.int64)])
    return np.concatenate([s_in, s_ood]), y


def auroc(in_scores, ood_scores) -> float:
    """Area under the ROC curve, OOD positive. 1 = every OOD score above every in-distribution
    score, 0.5 = chance, 0 = reversed. Ties count one half."""
    s, y = _labelled(in_scores, ood_scores)
    return float(_skm().roc_auc_score(y, s))


def auprc_in(in_scores, ood_scores) -> float:
    """Area under the precision-recall curve with **in-distribution as positive** (the
    paper's Table 4): samples ranked by −score. Chance level = n_in / (n_in + n_ood)."""
    s, y = _labelled(in_scores, ood_scores)
    return float(_skm().average_precision_score(1 - y, -s))


def auprc_out(in_scores, ood_scores) -> float:
    """Area under the precision-recall curve with **OOD as positive**: samples ranked by
    score. Chance level = n_ood / (n_in + n_ood)."""
    s, y = _labelled(in_scores, ood_scores)
    return float(_skm().average_precision_score(y, s))


def roc_curve(in_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve, OOD positive: ``(fpr, tpr)``, both increasing from 0 to 1, one point
    per distinct threshold (no points dropped), for plotting."""
    s, y = _labelled(in_scores, ood_scores)
    fpr, tpr, _ = _skm().roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr


def fpr_at_tpr(in_scores, ood_scores, tpr: float) -> float:
    """FPR at ``tpr`` (OOD positive): the fraction of in-distribution samples scoring at or
    above the highest threshold that flags at least a fraction ``tpr`` of the OOD samples."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}.")
    s, y = _labelled(in_scores, ood_scores)
    fpr, tprs, _ = _skm().roc_curve(y, s, drop_intermediate=False)
    idx = int(np.searchsorted(tprs, tpr - 1e-12, side="left"))
    return float(fpr[min(idx, len(fpr) - 1)])


def fpr80(in_scores, ood_scores) -> float:
    """FPR at 80% TPR, OOD positive (the paper's FPR80)."""
    return fpr_at_tpr(in_scores, ood_scores, 0.80)


def fpr95(in_scores, ood_scores) -> float:
    """FPR at 95% TPR, OOD positive."""
    return fpr_at_tpr(in_scores, ood_scores, 0.95)


def ood_metrics(in_scores, ood_scores) -> dict:
    """All metrics at once: ``auroc``, ``auprc_in``, ``auprc_out``, ``fpr80``, ``fpr95``
    (floats, conventions in the module docstring) and the counts ``n_in``, ``n_ood``."""
    s_in = _scores(in_scores, "in_scores")
    s_ood = _scores(ood_scores, "ood_scores")
    return {
        "auroc": auroc(s_in, s_ood),
        "auprc_in": auprc_in(s_in, s_ood),
        "auprc_out": auprc_out(s_in, s_ood),
        "fpr80": fpr80(s_in, s_ood),
        "fpr95": fpr95(s_in, s_ood),
        "n_in": int(s_in.size),
        "n_ood": int(s_ood.size),
    }


def threshold_at_tpr(in_scores, tpr: float = 0.95) -> float:
    """The score threshold that keeps a fraction ``tpr`` of in-distribution samples.

    Returns the smallest in-distribution score ``t`` such that at least a fraction
    ``tpr`` of ``in_scores`` are ``<= t``. A sample is then called OOD when its score
    is **strictly greater** than ``t`` (so at most a fraction 1 − tpr of the
    in-distribution scores used here would be flagged).
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}.")
    s = np.sort(_scores(in_scores, "in_scores"))
    k = math.ceil(round(tpr * s.size, 9))  # round() guards against 0.7 * 10 = 7.000000000000001
    return float(s[max(k, 1) - 1])


def empirical_p_value(in_scores, scores) -> np.ndarray:
    """Conformal p-value of each score against the in-distribution scores.

    ``p = (1 + #{in_scores >= score}) / (n_in + 1)``: small p = more unusual than
    the in-distribution samples (higher scores are more OOD). Always in
    ``[1 / (n_in + 1), 1]``. Returns an array shaped like ``scores`` (1-D).
    """
    s_in = np.sort(_scores(in_scores, "in_scores"))
    s = _scores(scores, "scores")
    at_or_above = s_in.size - np.searchsorted(s_in, s, side="left")
    return (1.0 + at_or_above) / (s_in.size + 1.0)
