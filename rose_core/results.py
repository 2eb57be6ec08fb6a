"""The results bundle: what the evaluation harness writes and the app reads.

One folder per model checkpoint, ``results/<checkpoint-name>/``, holding Parquet
tables in long format (so a chart is a filter, never a recomputation):

``scores.parquet``
    one row per (image, method, perturbation setting): ``dataset`` (str),
    ``is_ood`` (bool), ``index`` (int, index into the dataset split),
    ``method`` (str, e.g. ``rose-ekfac``, ``nll``), ``perturbation`` (str,
    ``none`` or a name from :mod:`rose_core.perturb`), ``strength`` (float,
    NaN for ``none``), ``repeat`` (int), ``score`` (float, higher = more OOD),
    ``nll_nats`` (float, NaN where the method has none).
``layers.parquet``
    ROSE per-layer scores: ``dataset``, ``is_ood``, ``index``, ``fisher``
    (``diag``/``ekfac``), ``layer`` (str), ``raw`` (s_l), ``z`` (ŝ_l).
``metrics.parquet``
    ``method``, ``ood_set`` (a dataset name or ``overall``), ``perturbation``,
    ``strength``, ``repeat``, ``auroc``, ``auprc_in``, ``auprc_out``,
    ``fpr80``, ``fpr95``, ``n_in``, ``n_ood`` (conventions: :mod:`rose_core.metrics`).
``layer_metrics.parquet``
    ``fisher``, ``layer``, ``ood_set``, ``auroc`` (each layer's raw score alone).
``throughput.parquet``
    ``method``, ``images_per_s``, ``n_images``, ``batch_size``, ``device``
    (measured in one run on the same images).
``fisher_samples.parquet``
    Figure 5: ``fisher``, ``n_fit``, ``repeat``, ``ood_set``, ``auroc``.
``manifest.json``
    the checkpoint card, the in-distribution set (name, split, n, seed), the
    OOD sets with their cards (stand-ins marked), the settings and the
    library version; ``experiments`` lists what has been computed.

Any table may be missing when its experiment has not been run; readers get an
empty frame with the right columns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

TABLES: dict[str, list[str]] = {
    "scores": ["dataset", "is_ood", "index", "method", "perturbation", "strength", "repeat", "score", "nll_nats"],
    "layers": ["dataset", "is_ood", "index", "fisher", "layer", "raw", "z"],
    "metrics": ["method", "ood_set", "perturbation", "strength", "repeat", "auroc", "auprc_in", "auprc_out",
                "fpr80", "fpr95", "n_in", "n_ood"],
    "layer_metrics": ["fisher", "layer", "ood_set", "auroc"],
    "throughput": ["method", "images_per_s", "n_images", "batch_size", "device"],
    "fisher_samples": ["fisher", "n_fit", "repeat", "ood_set", "auroc"],
}


def results_root(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$ROSE_RESULTS``, else ``./results``."""
    return Path(path or os.environ.get("ROSE_RESULTS") or "results")


@dataclass
class Results:
    """A results bundle on disk; tables load lazily and are cached."""

    folder: Path
    _cache: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @classmethod
    def for_checkpoint(cls, checkpoint_name: str, root: str | os.PathLike | None = None) -> "Results":
        return cls(results_root(root) / checkpoint_name)

    @property
    def exists(self) -> bool:
        return (self.folder / "manifest.json").exists()

    @property
    def manifest(self) -> dict:
        p = self.folder / "manifest.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def table(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise KeyError(f"Unknown results table {name!r}; expected one of {sorted(TABLES)}.")
        if name not in self._cache:
            p = self.folder / f"{name}.parquet"
            self._cache[name] = pd.read_parquet(p) if p.exists() else pd.DataFrame(columns=TABLES[name])
        return self._cache[name]

    def write(self, name: str, frame: pd.DataFrame, append: bool = False) -> None:
        """Write (or append to) a table; columns are checked against the schema."""
        missing = set(TABLES[name]) - set(frame.columns)
        if missing:
            raise ValueError(f"Table {name!r} lacks columns {sorted(missing)}.")
        self.folder.mkdir(parents=True, exist_ok=True)
        frame = frame[TABLES[name]]
        if append and (self.folder / f"{name}.parquet").exists():
            frame = pd.concat([pd.read_parquet(self.folder / f"{name}.parquet"), frame], ignore_index=True)
        tmp = self.folder / f"{name}.parquet.tmp"
        frame.to_parquet(tmp, index=False, compression="zstd")
        tmp.replace(self.folder / f"{name}.parquet")
        self._cache.pop(name, None)

    def write_manifest(self, manifest: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")

    # --- convenience views used by the app -------------------------------------
    def scores(self, method: str, dataset: str | None = None, perturbation: str = "none",
               strength: float | None = None) -> pd.DataFrame:
        s = self.table("scores")
        mask = (s["method"] == method) & (s["perturbation"] == perturbation)
        if dataset is not None:
            mask &= s["dataset"] == dataset
        if strength is not None:
            mask &= (s["strength"] - strength).abs() < 1e-9
        return s[mask]

    def methods(self) -> list[str]:
        return sorted(self.table("scores")["method"].unique())

    def ood_sets(self) -> list[str]:
        s = self.table("scores")
        return sorted(s.loc[s["is_ood"].astype(bool), "dataset"].unique())
