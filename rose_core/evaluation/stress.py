"""The ``stress`` preset: every method on the stress suite (:mod:`rose_core.data.stress`).

* **ood** group: AUROC of each set against the in-distribution evaluation images;
* **benign** and **covariate** groups: the fraction flagged at the method's verdict threshold,
  i.e. its false-alarm rate there (the benign sets should stay in-distribution; the covariate
  sets are a real shift reported without a target);
* **in-distribution**: the realised false-alarm rate on the evaluation images, which are used
  for neither the fit nor the calibration.

The threshold keeps ``tpr`` (0.95) of the **calibration half** of the in-distribution test split,
never of the evaluation images: for the typicality methods it is the scorer's own verdict
threshold (leave-one-out on the calibration half, :mod:`rose_core.scorers.typicality`); for every
other method :func:`rose_core.metrics.threshold_at_tpr` of its scores on the calibration half
(scored as ``perturbation="calibration"`` units). An image is flagged iff its score is strictly
above the threshold. The table goes to ``<bundle>/stress.parquet`` (:data:`STRESS_COLUMNS`).
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import pandas as pd

from rose_core.evaluation.keys import Unit
from rose_core.evaluation.metrics import finite_scores, flagged_fraction, safe_metrics
from rose_core.evaluation.scorers import TYPICALITY
from rose_core.evaluation.settings import CALIBRATION, STRESS_TPR
from rose_core.methods import parse_method

STRESS_COLUMNS = ["method", "dataset", "group", "n_images", "auroc", "flagged", "threshold", "threshold_rule",
                  "n_calibration", "tpr"]
"""``stress.parquet``: one row per method × set (and the in-distribution evaluation images, group
``in-distribution``); ``flagged`` = fraction strictly above ``threshold`` (for ``benign``,
``covariate`` and ``in-distribution`` rows: the false-alarm rate); ``auroc`` against the
in-distribution evaluation images (NaN on their own row)."""

RULE_OWN = "the scorer's verdict threshold: leave-one-out on the calibration half"
RULE_CAL = "threshold_at_tpr of the method's scores on the calibration half"


def _default_sets() -> dict[str, list[str]]:
    from rose_core.data import is_available
    from rose_core.data.base import STRESS_GROUPS
    from rose_core.data.stress import stress_sets

    return {g: [d for d in stress_sets(g) if is_available(d)] for g in STRESS_GROUPS}


class StressPreset:
    """Mixin of :class:`~rose_core.evaluation.harness.Evaluation`: the stress suite."""

    @staticmethod
    def _own_threshold(method: str) -> bool:
        return parse_method(method).base in TYPICALITY

    def stress(self, methods: Sequence[str] | None = None, sets: dict[str, Sequence[str]] | None = None,
               tpr: float = STRESS_TPR) -> pd.DataFrame:
        """Score every method on the stress sets (``sets``: ``{group: [dataset, …]}``; default every
        available set of :func:`rose_core.data.stress.stress_sets`) and write ``stress.parquet``."""
        t0 = time.perf_counter()
        methods = [parse_method(m).name for m in (methods or self.methods())]
        sets = {g: list(v) for g, v in (_default_sets() if sets is None else sets).items()}
        names = [d for v in sets.values() for d in v]
        if not names:
            raise ValueError("No stress set is available here: build them with `python -m rose_core data "
                             "<name>` (see `python -m rose_core datasets`).")
        units = [Unit(m, d) for m in methods for d in [self.in_dataset, *names]]
        units += [Unit(m, self.in_dataset, CALIBRATION) for m in methods if not self._own_threshold(m)]
        self.score(units)
        self.update_metrics()
        ran = [m for m in methods if self.method_available(m)[0]]
        frame = self.stress_table(ran, sets, tpr)
        with self._locked():
            self.bundle.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.bundle.folder / "stress.parquet.tmp"
            frame.to_parquet(tmp, index=False)
            tmp.replace(self.bundle.folder / "stress.parquet")
        self.record_experiment("stress", {
            "methods": ran, "sets": sets, "tpr": tpr, "table": "stress.parquet",
            "thresholds": {"typicality methods": RULE_OWN, "other methods": RULE_CAL},
            "skipped": {m: self.method_available(m)[1] for m in methods if m not in ran},
            "wall_s": round(time.perf_counter() - t0, 1)})
        return frame

    def _threshold(self, method: str, scores: pd.DataFrame, tpr: float) -> tuple[float, str, int]:
        """``(threshold, rule, n_calibration)`` of a method at ``tpr`` (module doc)."""
        from rose_core.metrics import threshold_at_tpr

        if self._own_threshold(method):
            sc = self.scorer(method)
            n = len(sc.calibration_loss) if hasattr(sc, "calibration_loss") else len(sc.calibration_combined_scores())
            return float(sc.threshold_at(tpr)), RULE_OWN, n
        cal = scores.loc[(scores["method"] == method) & (scores["dataset"] == self.in_dataset)
                         & (scores["perturbation"] == CALIBRATION), "score"].to_numpy()
        if not len(cal):
            raise ValueError(f"{method} has no scores on the calibration half of {self.in_dataset}.")
        cal, _ = finite_scores(cal, [], f"{method} on the calibration half")
        return threshold_at_tpr(cal, tpr), RULE_CAL, len(cal)

    def stress_table(self, methods: Sequence[str], sets: dict[str, Sequence[str]],
                     tpr: float = STRESS_TPR) -> pd.DataFrame:
        """The stress table from the stored scores (and, for the typicality methods, their fits)."""
        scores = self.bundle.table("scores")
        unperturbed = scores[(scores["perturbation"] == "none") & (scores["repeat"] == 0)]
        rows = []
        for m in methods:
            s_m = unperturbed[unperturbed["method"] == m]
            ind = s_m.loc[s_m["dataset"] == self.in_dataset, "score"].to_numpy()
            if not len(ind):
                continue
            t, rule, n_cal = self._threshold(m, scores, tpr)
            common = {"method": m, "threshold": t, "threshold_rule": rule, "n_calibration": n_cal, "tpr": tpr}
            rows.append({**common, "dataset": self.in_dataset, "group": "in-distribution", "n_images": len(ind),
                         "auroc": math.nan, "flagged": flagged_fraction(ind, t, f"{m} on {self.in_dataset}")})
            for group, names in sets.items():
                for d in names:
                    sd = s_m.loc[s_m["dataset"] == d, "score"].to_numpy()
                    if not len(sd):
                        continue
                    rows.append({**common, "dataset": d, "group": group, "n_images": len(sd),
                                 "auroc": safe_metrics(ind, sd, f"{m} on {d}")["auroc"],
                                 "flagged": flagged_fraction(sd, t, f"{m} on {d}")})
        frame = pd.DataFrame(rows, columns=STRESS_COLUMNS)
        return frame.astype({"auroc": float, "flagged": float, "threshold": float})
