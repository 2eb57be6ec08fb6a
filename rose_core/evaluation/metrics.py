"""Metrics from stored scores: pure functions of the bundle's tables.

Non-finite scores (rule of :func:`finite_scores`): an infinite score is a real verdict (a
model whose loss overflows on an image finds it as unlikely as it can say), so ``+inf`` ranks
above every finite score and ``−inf`` below, instead of being dropped; NaN is not a score and
is refused with an error that names the method and the set.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterable

import numpy as np
import pandas as pd

from rose_core.evaluation.keys import same_strength
from rose_core.results import TABLES

NAN_METRICS = ("auroc", "auprc_in", "auprc_out", "fpr80", "fpr95")


def finite_scores(in_scores, ood_scores, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Both score arrays (float64) with infinities mapped to finite extremes that keep every rank.

    Rule: ``+inf`` becomes the next float above the largest finite score of the two arrays,
    ``−inf`` the next float below the smallest (``+1``/``−1`` when no score is finite); infinities
    of one sign tie with each other. Rank metrics (AUROC, AUPRC, FPR at a TPR, thresholds) are
    then exactly those of the infinite scores. NaN raises ``ValueError``.
    """
    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(ood_scores, dtype=np.float64).reshape(-1)
    n_nan = int(np.isnan(a).sum()), int(np.isnan(b).sum())
    if any(n_nan):
        raise ValueError(f"{what}: {n_nan[0]} in-distribution and {n_nan[1]} OOD score(s) are NaN; a NaN is not "
                         "a score (the scorer diverged): fix the scorer or its inputs.")
    both = np.concatenate([a, b])
    fin = both[np.isfinite(both)]
    hi = np.nextafter(fin.max(), math.inf) if fin.size else 1.0
    lo = np.nextafter(fin.min(), -math.inf) if fin.size else -1.0

    def fix(x: np.ndarray) -> np.ndarray:
        return np.where(np.isposinf(x), hi, np.where(np.isneginf(x), lo, x))

    return fix(a), fix(b)


def safe_metrics(in_scores, ood_scores, what: str = "scores") -> dict:
    """:func:`rose_core.metrics.ood_metrics` with infinities ranked (:func:`finite_scores`);
    NaN metrics (and the counts) when either side is empty."""
    from rose_core.metrics import ood_metrics

    a, b = finite_scores(in_scores, ood_scores, what)
    if not len(a) or not len(b):
        return {**{k: math.nan for k in NAN_METRICS}, "n_in": len(a), "n_ood": len(b)}
    return ood_metrics(a, b)


def _auroc(in_scores, ood_scores, what: str) -> float:
    from rose_core.metrics import auroc

    return auroc(*finite_scores(in_scores, ood_scores, what))


def overall_pick(indices: np.ndarray, dataset: str, per_set: int, seed: int) -> np.ndarray:
    """Which of a set's scored ``indices`` enter the Overall set: up to ``per_set`` at random
    (deterministic in ``seed`` and the set's name)."""
    indices = np.sort(np.asarray(indices))
    if len(indices) <= per_set:
        return indices
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
    return np.sort(indices[rng.choice(len(indices), size=per_set, replace=False)])


def compute_metrics(scores: pd.DataFrame, in_dataset: str, overall_per_set: int = 1000,
                    seed: int = 0, not_in_overall: Iterable[str] = ()) -> tuple[pd.DataFrame, dict]:
    """The ``metrics`` table from the ``scores`` table.

    For each method and perturbation setting, every OOD set's scores against the method's
    unperturbed in-distribution scores (repeat 0), plus ``overall`` for unperturbed scores (see
    :func:`overall_pick`) pooled over the sets not in ``not_in_overall`` (the stress suite is
    reported on its own). Calibration rows (:data:`~rose_core.evaluation.settings.CALIBRATION`)
    are never part of a metric. Returns the table and the Overall composition per method
    ``{method: {dataset: n}}``.
    """
    rows: list[dict] = []
    composition: dict[str, dict[str, int]] = {}
    skip = set(not_in_overall)
    if scores.empty:
        return pd.DataFrame(columns=TABLES["metrics"]), composition
    for method, s_m in scores.groupby("method", sort=True):
        ind = s_m[(s_m["dataset"] == in_dataset) & (s_m["perturbation"] == "none") & (s_m["repeat"] == 0)]
        if ind.empty:
            continue
        in_scores = ind["score"].to_numpy()
        ood = s_m[s_m["dataset"] != in_dataset]
        keys = ood[["perturbation", "strength", "repeat"]].drop_duplicates()
        for _, k in keys.iterrows():
            g = ood[(ood["perturbation"] == k["perturbation"]) & same_strength(ood["strength"], k["strength"])
                    & (ood["repeat"] == k["repeat"])]
            pooled = []
            for ds, gd in g.groupby("dataset", sort=True):
                m = safe_metrics(in_scores, gd["score"].to_numpy(), f"{method} on {ds}")
                rows.append({"method": method, "ood_set": ds, "perturbation": k["perturbation"],
                             "strength": k["strength"], "repeat": int(k["repeat"]), **m})
                if k["perturbation"] == "none" and ds not in skip:
                    pick = overall_pick(gd["index"].to_numpy(), ds, overall_per_set, seed)
                    pooled.append(gd[gd["index"].isin(pick)]["score"].to_numpy())
                    if k["repeat"] == 0:
                        composition.setdefault(method, {})[ds] = len(pick)
            if k["perturbation"] == "none" and len(pooled) > 1:
                m = safe_metrics(in_scores, np.concatenate(pooled), f"{method} on overall")
                rows.append({"method": method, "ood_set": "overall", "perturbation": "none",
                             "strength": math.nan, "repeat": int(k["repeat"]), **m})
    frame = pd.DataFrame(rows, columns=TABLES["metrics"])
    frame["strength"] = frame["strength"].astype(float)
    return frame, composition


def compute_layer_metrics(layers: pd.DataFrame, in_dataset: str, overall_per_set: int = 1000,
                          seed: int = 0, not_in_overall: Iterable[str] = ()) -> pd.DataFrame:
    """Layer-wise AUROC (each layer's raw score alone) per Fisher, layer and OOD set (+ overall)."""
    rows = []
    skip = set(not_in_overall)
    if layers.empty:
        return pd.DataFrame(columns=TABLES["layer_metrics"])
    for (fisher, layer), g in layers.groupby(["fisher", "layer"], sort=False):
        ind = g[g["dataset"] == in_dataset]["raw"].to_numpy()
        if not len(ind):
            continue
        pooled = []
        for ds, gd in g[g["dataset"] != in_dataset].groupby("dataset", sort=True):
            what = f"layer {layer} ({fisher}) on {ds}"
            rows.append({"fisher": fisher, "layer": layer, "ood_set": ds,
                         "auroc": _auroc(ind, gd["raw"].to_numpy(), what)})
            if ds not in skip:
                pick = overall_pick(gd["index"].to_numpy(), ds, overall_per_set, seed)
                pooled.append(gd[gd["index"].isin(pick)]["raw"].to_numpy())
        if len(pooled) > 1:
            rows.append({"fisher": fisher, "layer": layer, "ood_set": "overall",
                         "auroc": _auroc(ind, np.concatenate(pooled), f"layer {layer} on overall")})
    return pd.DataFrame(rows, columns=TABLES["layer_metrics"])


def flagged_fraction(scores, threshold: float, what: str = "scores") -> float:
    """Fraction of ``scores`` strictly above ``threshold`` (the verdict rule of
    :func:`rose_core.metrics.threshold_at_tpr`); ``+inf`` counts as flagged, NaN is refused."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.isnan(s).any():
        raise ValueError(f"{what}: {int(np.isnan(s).sum())} score(s) are NaN; a NaN is not a score.")
    return float(np.mean(s > threshold)) if s.size else math.nan
