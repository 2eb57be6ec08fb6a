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
``stress.parquet``
    the stress suite (issue 11; written by the harness's ``stress`` preset): ``method``,
    ``dataset``, ``group`` (``ood``, ``benign``, ``covariate`` or ``in-distribution`` for the
    evaluation images), ``n_images``, ``auroc`` (vs the in-distribution evaluation images; NaN on
    their own row), ``flagged`` (fraction above the method's verdict threshold: the false-alarm
    rate for every group but ``ood``), ``threshold``, ``threshold_rule``, ``n_calibration``, ``tpr``.
``manifest.json``
    the checkpoint card, the in-distribution set (name, split, n, seed), the
    OOD sets with their cards (stand-ins marked), the settings and the
    library version; ``experiments`` lists what has been computed.

Any table may be missing when its experiment has not been run; readers get an
empty frame with the right columns. A table that exists but cannot be read raises
:class:`ResultsError` naming the file and the command that recomputes it; a
lenient reader (``Results(folder, strict=False)``, as the app uses) returns the
empty frame instead and records why in :attr:`Results.problems`.

:class:`Results` is the one reader of a bundle: the harness writes through it,
and the report (:mod:`rose_core.report`), the live scorer and the app read
through it. Its views (``metrics_view``, ``comparison``, ``sweep`` …) are plain
pandas, so they are testable without Streamlit; :mod:`rose_core.charts` draws
them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rose_core.errors import RoseError
from rose_core.methods import method_order
from rose_core.metrics import auroc, ood_metrics

TABLES: dict[str, list[str]] = {
    "scores": ["dataset", "is_ood", "index", "method", "perturbation", "strength", "repeat", "score", "nll_nats"],
    "layers": ["dataset", "is_ood", "index", "fisher", "layer", "raw", "z"],
    "metrics": ["method", "ood_set", "perturbation", "strength", "repeat", "auroc", "auprc_in", "auprc_out",
                "fpr80", "fpr95", "n_in", "n_ood"],
    "layer_metrics": ["fisher", "layer", "ood_set", "auroc"],
    "throughput": ["method", "images_per_s", "n_images", "batch_size", "device"],
    "fisher_samples": ["fisher", "n_fit", "repeat", "ood_set", "auroc"],
    "stress": ["method", "dataset", "group", "n_images", "auroc", "flagged", "threshold", "threshold_rule",
               "n_calibration", "tpr"],
}
STRESS_ORDER = ("in-distribution", "benign", "covariate", "ood")
"""Stress groups in display order: the false-alarm groups first, the OOD group last."""

EVALUATE_CMD = "python -m rose_core evaluate --checkpoint checkpoints/{name}"
"""The command that computes (or recomputes) a checkpoint's bundle."""

class ResultsError(RoseError):
    """A bundle file exists but cannot be read."""


def results_root(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$ROSE_RESULTS``, else ``./results``."""
    return Path(path or os.environ.get("ROSE_RESULTS") or "results")


def _close(column: pd.Series, value: float, tol: float = 1e-9) -> pd.Series:
    return (column.astype(float) - float(value)).abs() < tol


@dataclass
class Results:
    """A results bundle on disk; tables load lazily and are cached.

    ``strict`` (default): a damaged table raises :class:`ResultsError`. ``strict=False``: it reads
    as empty and the reason is kept in :attr:`problems` (table name → message) for the caller to show."""

    folder: Path
    strict: bool = True
    problems: dict[str, str] = field(default_factory=dict, repr=False)
    _cache: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    _manifest: tuple | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)

    @classmethod
    def for_checkpoint(cls, checkpoint_name: str, root: str | os.PathLike | None = None,
                       strict: bool = True) -> "Results":
        return cls(results_root(root) / checkpoint_name, strict=strict)

    @property
    def name(self) -> str:
        """The checkpoint name (the folder's name)."""
        return self.folder.name

    @property
    def exists(self) -> bool:
        return (self.folder / "manifest.json").exists()

    @property
    def manifest(self) -> dict:
        """The manifest read afresh from disk (``{}`` when absent): a new dict the caller may change
        (the harness merges its entries into it under the bundle lock, so it must see other writers)."""
        return self._read_manifest()

    @property
    def meta(self) -> dict:
        """The manifest for reading: parsed once per version of the file (its mtime and size). Do not
        change it; use :attr:`manifest` for a copy to edit."""
        p = self.folder / "manifest.json"
        try:
            stat = p.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if self._manifest is None or self._manifest[0] != stamp:
            self.problems.pop("manifest", None)
            self._manifest = (stamp, self._read_manifest())
        return self._manifest[1]

    def _read_manifest(self) -> dict:
        p = self.folder / "manifest.json"
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            self._fail("manifest", p, exc)
            return {}

    def _fail(self, name: str, path: Path, exc: Exception) -> None:
        msg = (f"`{path}` cannot be read ({type(exc).__name__}: {exc}); recompute it with "
               f"`{EVALUATE_CMD.format(name=self.name)}`.")
        if self.strict:
            raise ResultsError(msg) from exc
        self.problems[name] = msg

    def table(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise KeyError(f"Unknown results table {name!r}; expected one of {sorted(TABLES)}.")
        if name not in self._cache:
            p = self.folder / f"{name}.parquet"
            frame = pd.DataFrame(columns=TABLES[name])
            if p.exists():
                try:
                    frame = pd.read_parquet(p)
                except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
                    self._fail(name, p, exc)
            self._cache[name] = frame
        return self._cache[name]

    def has(self, name: str) -> bool:
        return len(self.table(name)) > 0

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

    # --- what the bundle holds -------------------------------------------------------------
    def in_dist(self) -> str:
        """Name of the in-distribution set (from the manifest, else from the scores)."""
        ind = self.meta.get("in_distribution") or self.meta.get("in_dist") or {}
        if isinstance(ind, dict) and ind.get("name"):
            return str(ind["name"])
        if isinstance(ind, str) and ind:
            return ind
        s = self.table("scores")
        names = s.loc[~s["is_ood"].astype(bool), "dataset"].unique()
        return str(names[0]) if len(names) else "in-distribution"

    def ood_info(self) -> dict[str, dict]:
        """The manifest's OOD set cards by name (``{}`` per set when the manifest lists names only)."""
        sets = self.meta.get("ood_sets") or {}
        return dict(sets) if isinstance(sets, dict) else {str(s): {} for s in sets}

    def checkpoint_card(self) -> dict:
        ck = self.meta.get("checkpoint")
        return (ck.get("card") or {}) if isinstance(ck, dict) else {}

    def methods(self) -> list[str]:
        """Methods with scores, ROSE first (:func:`rose_core.methods.method_order`)."""
        return method_order(self.table("scores")["method"].unique())

    def ood_sets(self, include_overall: bool = False) -> list[str]:
        """OOD sets with scores (else with metrics), sorted; ``overall`` last when asked and present."""
        s = self.table("scores")
        sets = sorted(s.loc[s["is_ood"].astype(bool), "dataset"].unique())
        if not sets:
            sets = self.metric_sets()
        if include_overall and "overall" in set(self.table("metrics")["ood_set"]):
            sets = sets + ["overall"]
        return sets

    def metric_methods(self, perturbation: str = "none") -> list[str]:
        """Methods with metrics for ``perturbation``, alphabetical."""
        m = self.table("metrics")
        return sorted(set(m.loc[m["perturbation"] == perturbation, "method"]))

    def metric_sets(self, perturbation: str = "none") -> list[str]:
        """OOD sets with metrics for ``perturbation`` (``overall`` excluded), alphabetical."""
        m = self.table("metrics")
        return sorted(set(m.loc[m["perturbation"] == perturbation, "ood_set"]) - {"overall"})

    # --- single values -----------------------------------------------------------------------
    def _metric_rows(self, method: str, ood_set: str, perturbation: str = "none", strength: float | None = None,
                     repeat: int | None = 0) -> pd.DataFrame:
        m = self.table("metrics")
        mask = (m["method"] == method) & (m["ood_set"] == ood_set) & (m["perturbation"] == perturbation)
        if repeat is not None:
            mask &= m["repeat"] == repeat
        if strength is not None:
            mask &= _close(m["strength"], strength)
        return m[mask]

    def metric(self, method: str, ood_set: str, column: str = "auroc", perturbation: str = "none",
               strength: float | None = None, repeat: int = 0) -> float:
        """One metric of one row (the first repeat by default); NaN when the bundle lacks it."""
        r = self._metric_rows(method, ood_set, perturbation, strength, repeat)
        return float(r[column].iloc[0]) if len(r) else math.nan

    def counts(self, method: str, ood_set: str) -> tuple[int, int]:
        """``(n_in, n_ood)`` of the unperturbed metric row; ``(0, 0)`` when absent."""
        r = self._metric_rows(method, ood_set)
        return (int(r["n_in"].iloc[0]), int(r["n_ood"].iloc[0])) if len(r) else (0, 0)

    def images_per_s(self) -> dict[str, float]:
        """Throughput by method (the first row of each)."""
        t = self.table("throughput")
        return {str(k): float(v) for k, v in t.groupby("method", sort=False)["images_per_s"].first().items()}

    # --- score views -------------------------------------------------------------------------
    def scores(self, method: str, dataset: str | None = None, perturbation: str = "none",
               strength: float | None = None) -> pd.DataFrame:
        s = self.table("scores")
        mask = (s["method"] == method) & (s["perturbation"] == perturbation)
        if dataset is not None:
            mask &= s["dataset"] == dataset
        if strength is not None:
            mask &= _close(s["strength"], strength)
        return s[mask]

    def split(self, method: str, ood_set: str, column: str = "score", perturbation: str = "none",
              strength: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Finite in-distribution and OOD values of ``column`` for one method and OOD set (only the OOD
        images are perturbed in the sweeps, so in-distribution rows are always the unperturbed ones;
        with several repeats, the first)."""
        s = self.table("scores")
        s = s[s["method"] == method]
        ind = s[~s["is_ood"].astype(bool) & (s["perturbation"] == "none")]
        ood = s[s["is_ood"].astype(bool) & (s["dataset"] == ood_set) & (s["perturbation"] == perturbation)]
        if strength is not None:
            ood = ood[_close(ood["strength"], strength)]
        if ood["repeat"].nunique() > 1:
            ood = ood[ood["repeat"] == ood["repeat"].min()]
        a, b = ind[column].to_numpy(np.float64), ood[column].to_numpy(np.float64)
        return a[np.isfinite(a)], b[np.isfinite(b)]

    def nll_split(self, ood_set: str) -> tuple[np.ndarray, np.ndarray]:
        """NLL in nats, in-distribution and OOD: the ``nll_nats`` column of the ``nll`` method, else its score."""
        a, o = self.split("nll", ood_set, column="nll_nats")
        return (a, o) if len(a) else self.split("nll", ood_set)

    def roc_inputs(self, methods: list[str], ood_set: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``method → (in-distribution scores, OOD scores)`` for the methods that have both."""
        out = {}
        for method in methods:
            a, o = self.split(method, ood_set)
            if len(a) and len(o):
                out[method] = (a, o)
        return out

    # --- metric views -------------------------------------------------------------------------
    def metrics_view(self, ood_set: str, methods: list[str]) -> pd.DataFrame:
        """AUROC / AUPRC / FPR80 per method for one OOD set: the metrics table (mean over repeats),
        computed from the scores where a row is missing. Columns: method, auroc, auprc_in, auprc_out,
        fpr80, n_in, n_ood, source."""
        m = self.table("metrics")
        m = m[(m["ood_set"] == ood_set) & (m["perturbation"] == "none")]
        rows = []
        for method in methods:
            mm = m[m["method"] == method]
            if len(mm):
                r = mm[["auroc", "auprc_in", "auprc_out", "fpr80"]].astype(float).mean().to_dict()
                r.update(n_in=int(mm["n_in"].iloc[0]), n_ood=int(mm["n_ood"].iloc[0]), source="bundle")
            else:
                a, o = self.split(method, ood_set)
                if len(a) == 0 or len(o) == 0:
                    continue
                full = ood_metrics(a, o)
                r = {k: full[k] for k in ("auroc", "auprc_in", "auprc_out", "fpr80", "n_in", "n_ood")}
                r["source"] = "computed from scores"
            rows.append({"method": method, **r})
        return pd.DataFrame(rows, columns=["method", "auroc", "auprc_in", "auprc_out", "fpr80", "n_in", "n_ood",
                                           "source"])

    def comparison(self, metric: str = "auroc") -> pd.DataFrame:
        """Table 2 style: methods × OOD sets (Overall first) of ``metric``, unperturbed, mean over repeats."""
        m = self.table("metrics")
        m = m[m["perturbation"] == "none"]
        if len(m) == 0:
            return pd.DataFrame()
        pivot = m.pivot_table(index="method", columns="ood_set", values=metric, aggfunc="mean")
        # Overall first: the headline column stays visible when the table scrolls sideways
        cols = (["overall"] if "overall" in pivot.columns else []) + sorted(c for c in pivot.columns if c != "overall")
        return pivot.reindex(index=method_order(pivot.index), columns=cols)

    def exposure_variants(self) -> pd.DataFrame:
        """Tables 10/11: AUROC of the outlier-exposure baselines (RND, Likelihood Ratio) trained with each
        perturbation, methods × OOD sets; empty when the bundle has no perturbation-trained variant."""
        table = self.comparison("auroc")
        if table.empty:
            return table
        rows = [m for m in table.index if m.partition(":")[0] in ("rnd", "likelihood-ratio")]
        if not any(":" in m for m in rows):
            return pd.DataFrame()
        return table.loc[rows]

    def sweep(self, perturbation: str, ood_set: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(curve, summary)`` of a perturbation sweep: curve = method, strength, auroc (mean over repeats),
        auroc_std (across repeats); summary = method, mean, std of the AUROC across strengths (population
        std, as Table 1's Mean and Std columns), n_strengths. ``method`` is ordered (:func:`rose_core.methods.method_order`)."""
        m = self.table("metrics")
        m = m[m["perturbation"] == perturbation]
        if ood_set is not None:
            m = m[m["ood_set"] == ood_set]
        if len(m) == 0:
            return pd.DataFrame(columns=["method", "strength", "auroc", "auroc_std"]), pd.DataFrame(
                columns=["method", "mean", "std", "n_strengths"])
        m = m.assign(strength=m["strength"].astype(float).fillna(0.0))
        curve = (m.groupby(["method", "strength"], as_index=False)["auroc"]
                 .agg(auroc="mean", auroc_std=lambda v: float(np.std(v)) if len(v) > 1 else 0.0))
        summary = curve.groupby("method", as_index=False)["auroc"].agg(
            mean="mean", std=lambda v: float(np.std(v)), n_strengths="count")
        order = method_order(curve["method"].unique())
        curve["method"] = pd.Categorical(curve["method"], order, ordered=True)
        summary["method"] = pd.Categorical(summary["method"], order, ordered=True)
        return (curve.sort_values(["method", "strength"]).reset_index(drop=True),
                summary.sort_values("method").reset_index(drop=True))

    def auroc_at(self, ood_set: str, perturbation: str, strength: float) -> dict[str, float]:
        """AUROC per method at one sweep point (1.0× brightness = the unperturbed rows when not swept)."""
        m = self.table("metrics")
        m = m[m["ood_set"] == ood_set]
        at = m[(m["perturbation"] == perturbation) & _close(m["strength"], strength, 1e-6)]
        if perturbation == "brightness" and abs(strength - 1.0) < 1e-9 and len(at) == 0:
            at = m[m["perturbation"] == "none"]
        return at.groupby("method")["auroc"].mean().to_dict()

    def layer_auroc(self, fisher: str) -> pd.DataFrame:
        """Layers (in scoring order) × OOD sets (``overall`` last) AUROC of each layer's raw score alone,
        from ``layer_metrics``, else computed from the per-layer scores; empty when neither has ``fisher``."""
        lm = self.table("layer_metrics")
        lm = lm[lm["fisher"] == fisher]
        if len(lm) == 0:
            lm = self._layer_auroc_from_scores(fisher)
        if len(lm) == 0:
            return pd.DataFrame()
        layer_order = list(dict.fromkeys(lm["layer"]))
        pivot = lm.pivot_table(index="layer", columns="ood_set", values="auroc", aggfunc="mean")
        cols = sorted(c for c in pivot.columns if c != "overall") + (["overall"] if "overall" in pivot.columns else [])
        return pivot.reindex(index=layer_order, columns=cols)

    def _layer_auroc_from_scores(self, fisher: str) -> pd.DataFrame:
        layers = self.table("layers")
        layers = layers[layers["fisher"] == fisher]
        rows = []
        for layer, g in layers.groupby("layer", sort=False):
            ind = g.loc[~g["is_ood"].astype(bool), "raw"].to_numpy(np.float64)
            for ood_set, go in g[g["is_ood"].astype(bool)].groupby("dataset"):
                if len(ind) and len(go):
                    rows.append({"layer": layer, "ood_set": ood_set, "auroc": auroc(ind, go["raw"].to_numpy())})
        return pd.DataFrame(rows, columns=["layer", "ood_set", "auroc"])

    def fishers(self) -> set[str]:
        """Fisher approximations with per-layer results."""
        return set(self.table("layer_metrics")["fisher"]) | set(self.table("layers")["fisher"])

    def stress_view(self, groups: tuple[str, ...]) -> pd.DataFrame:
        """The stress suite for ``groups``: methods (registry order) × sets (grouped in
        :data:`STRESS_ORDER`, then by name) of AUROC for the ``ood`` group, else of the fraction
        flagged (the false-alarm rate); the columns' group is ``view.attrs["groups"][set]``."""
        t = self.table("stress")
        t = t[t["group"].isin(groups)]
        if t.empty:
            return pd.DataFrame()
        t = t.assign(value=np.where(t["group"] == "ood", t["auroc"], t["flagged"]).astype(float))
        group_of = dict(zip(t["dataset"], t["group"]))
        rank = {g: i for i, g in enumerate(STRESS_ORDER)}
        cols = sorted(group_of, key=lambda d: (rank.get(group_of[d], len(rank)), d))
        view = t.pivot_table(index="method", columns="dataset", values="value", aggfunc="mean")
        view = view.reindex(index=method_order(view.index), columns=cols)
        view.attrs["groups"] = {d: group_of[d] for d in cols}
        return view

    def throughput_view(self) -> pd.DataFrame:
        """method (ordered), images_per_s (mean), device, overall_auroc (NaN where a method has no Overall row)."""
        t = self.table("throughput")
        if len(t) == 0:
            return pd.DataFrame(columns=["method", "images_per_s", "device", "overall_auroc"])
        t = t.groupby("method", as_index=False).agg(images_per_s=("images_per_s", "mean"),
                                                    device=("device", "first"))
        m = self.table("metrics")
        m = m[(m["perturbation"] == "none") & (m["ood_set"] == "overall")]
        ov = m.groupby("method", as_index=False)["auroc"].mean().rename(columns={"auroc": "overall_auroc"})
        out = t.merge(ov, on="method", how="left")
        out["method"] = pd.Categorical(out["method"], method_order(out["method"]), ordered=True)
        return out.sort_values("method").reset_index(drop=True)


def bundles(root: str | os.PathLike | None = None, strict: bool = True) -> dict[str, Results]:
    """Every bundle (folder with a manifest) under ``root``, by checkpoint name, sorted."""
    root = results_root(root)
    if not root.exists():
        return {}
    return {d.name: Results(d, strict=strict) for d in sorted(root.iterdir())
            if d.is_dir() and (d / "manifest.json").exists()}
