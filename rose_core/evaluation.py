"""The evaluation harness: score a checkpoint with every OOD method on every OOD set
and write the results bundle (:mod:`rose_core.results`).

    from rose_core.evaluation import Evaluation, EvalSettings, run_preset

    ev = Evaluation("checkpoints/vae-fmnist", settings=EvalSettings(n_in=2000, n_ood=500))
    ev.table2()                       # methods × OOD sets (paper Table 2, VAE)
    ev.brightness()                   # Tables 1/8/9: brightness of the OOD sets
    run_preset("throughput", "checkpoints/vae-fmnist", n_in=2000)

CLI: ``python -m rose_core evaluate --checkpoint checkpoints/vae-fmnist --preset table2``.

What is scored (decisions, all recorded in ``manifest.json``)
----------------------------------------------------------------
* **In-distribution set**: ``n_in`` random images (seed ``seed``) of the test split of the
  dataset the checkpoint was trained on (its card's ``dataset``; Appendix B uses 5000 for the
  VAE, 1000 for Glow). Subsets are drawn exactly as :meth:`ImageSet.subset` draws them, and
  ``index`` in the tables is the image's index in the full split.
* **OOD sets**: by default every dataset of the registry that is available here, except the
  in-distribution one: the real sets (MNIST, and the online-only ones when downloaded), the
  offline **stand-ins** (named as such, e.g. ``letters-fonts`` for NotMNIST; the manifest marks
  every set ``real`` / ``stand-in``) and ``cifar10-samples`` (20 real CIFAR-10 images). Each
  contributes ``n_ood`` random test images (all of them if it has fewer).
* **Overall**: per method, up to ``overall_per_set`` (default 1000) random images of each
  scored OOD set, pooled (the paper's section 5.1: one thousand of each, fewer when a set is
  smaller). It is drawn from the images already scored for the set, so it needs no extra
  scoring; its composition is written to the manifest. Computed for unperturbed scores only.
* **Caps**: a method may score fewer images per set (``caps``, default Likelihood Regret 300: it
  runs 100 Adam steps × 20 ELBO samples per image, ~40× slower than ROSE on a GPU and ~1000×
  on a 2-core CPU), and ``method_sets`` may restrict it to some OOD sets. Its images are a random
  subset of the uncapped ones (same seed), in- and out-of-distribution alike; the cap is in the
  manifest and the metrics carry ``n_in`` and ``n_ood``.
* **Concurrency**: processes writing the same bundle take turns under a file lock
  (``<bundle>/.lock``) and re-read what the others wrote before every write.
* **Perturbations** (brightness, blurs, random pixels; :mod:`rose_core.perturb`) are applied to
  the **OOD images only**, as in the paper's Tables 1/8/9 ("changes in brightness of the
  CelebA dataset"); the in-distribution scores are the unperturbed ones. They act on the 8-bit
  images (after resizing to the model's 32×32), so perturbed inputs stay valid 8-bit data.
  ``repeat`` r > 0 draws another random OOD subset (seed ``seed + r``) and reseeds random
  perturbations; repeat 0 is the unperturbed subset.
* **ROSE**: the Fisher is fitted on ``n_fit`` random images of the in-distribution *train*
  split (default 2000); :class:`RoseScorer` splits them into a Fisher set and a disjoint
  normalisation set (``fit_fraction``). Fits are saved as
  ``results/<name>/fits/rose-<fisher>.safetensors`` (+ ``.json``) and reused when their
  settings and the model's weights are unchanged. Per-layer raw and z-scores of the main
  ``rose-ekfac``/``rose-diag`` scorers on unperturbed images go to ``layers.parquet``.
* **Likelihood methods share one NLL**: NLL, Input Complexity and the main-model term of the
  Likelihood Ratio are all the seeded IWAE-k NLL (exact for Glow) of
  :func:`rose_core.scorers.nll.model_nll`, which does not depend on the batch. The harness
  computes it once per image set and derives IC = NLL_bits − L(x) and LRatio =
  NLL_main − NLL_background from it — exactly what :class:`InputComplexityScorer` and
  :class:`LikelihoodRatioScorer` compute (tested), at a third of the cost. Throughput, by
  contrast, always runs each real scorer.
* **Throughput** (Figure 4) runs every method's real scorer in one process on the same
  in-distribution images; ROSE's one-off Fisher fit is excluded (reported separately).
* **Caching**: the bundle is the cache. Each scored unit (method, dataset, perturbation,
  strength, repeat) is keyed in the manifest by its number of images, seed, the digest of the
  image indices, the method's settings and the checkpoint's weights hash (SHA-256 of the
  ``.safetensors`` file). A re-run with the same inputs reuses the stored rows; a changed input
  recomputes that unit and replaces its rows.

Method names: the registry's (``rose-ekfac``, ``rose-diag``, ``nll``, ``likelihood-regret``,
``likelihood-ratio``, ``input-complexity-png``, ``input-complexity-jp2``, ``rnd``) optionally
followed by options, ``rose-ekfac:p=2,aggregation=max``, ``rose-diag:layers=all``,
``rose-ekfac:n_fit=5000``, ``rnd:path=checkpoints/rnd-fmnist-dct``. ROSE variants that differ
only in ``p``/``beta``/``aggregation`` reuse the fit and, where stored, the layer z-scores (the
aggregation is a pure function of them).

Every score is higher = more OOD. Library code does not print: progress goes to a tqdm bar
(``show_progress``) and to an optional ``progress(done, total, message)`` callback (for
Streamlit's ``st.progress``); everything else to :mod:`logging`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from rose_core.methods import (NLL_BASED, ROSE_AGG_OPTIONS, ROSE_LEGACY_OPTIONS, MethodSpec, default_methods,
                               format_value as _fmt_value, parse_method, parse_value as _parse_value,
                               split_methods)
from rose_core.results import TABLES, Results, results_root

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

DEFAULT_CAPS = {"likelihood-regret": 300}
"""Images per set for slow methods (Likelihood Regret optimises the encoder per image)."""

BRIGHTNESS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8)
"""Brightness factors of Tables 1, 8 and 9."""

PERTURBATIONS = {"svd": 28, "dct": 28, "gaussian": None, "random": 0.2}
"""The outlier-exposure perturbations of Table 1 / Appendix B.3 and their settings
(SVD: drop K = 28 singular values; DCT: keep K = 28; GB: kernel 3, σ 0.8; Random: μ = 0.2)."""

CAPACITIES = (0.5, 1.0, 2.0, 4.0)
"""VAE widths of Table 3."""

FISHER_SAMPLE_SIZES = (10, 30, 100, 300, 1000, 3000, 10000)
"""Figure 5: numbers of Fisher samples (ten to 10K)."""

ROSE_FIT_OPTIONS = ROSE_LEGACY_OPTIONS + ("layers", "damping")
"""Options of a training-split ROSE variant that change its fit (and its fit file's name)."""

ProgressFn = Callable[[int, int, str], None]


# --------------------------------------------------------------------------------------------
# Settings and small helpers
# --------------------------------------------------------------------------------------------

@dataclass
class EvalSettings:
    """What to score and how. Everything here ends up in ``manifest.json``."""

    n_in: int = 5000
    """In-distribution test images (Appendix B: 5000 random test images for the VAE)."""
    n_ood: int = 1000
    """Images per OOD set (all of them when a set is smaller)."""
    ood_sets: Sequence[str] | None = None
    """OOD datasets; None = every available dataset except the in-distribution one."""
    methods: Sequence[str] | None = None
    """Methods; None = :func:`rose_core.methods.default_methods` of the model kind."""
    seed: int = 0
    n_fit: int = 2000
    """In-distribution *train* images for the ROSE fit (Fisher + normalisation split)."""
    fit_fraction: float = 0.5
    caps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    """Per-method cap on the images scored per set (in- and out-of-distribution)."""
    method_sets: dict[str, list[str]] = field(default_factory=dict)
    """Restrict a method (base name or full name) to some OOD sets, e.g.
    ``{"likelihood-regret": ["mnist"]}`` when it is too slow for all of them."""
    overall_per_set: int = 1000
    k: int = 20
    """Importance samples of the IWAE NLL (the authors' 20)."""
    rose: dict[str, Any] = field(default_factory=dict)
    """Extra :class:`RoseScorer` settings for every ROSE method (``p``, ``aggregation``, …)."""
    background: str | None = None
    """Likelihood-Ratio background checkpoint; None = ``<checkpoint>-background`` if it exists."""
    rnd: str | None = None
    """RND checkpoint; None = ``checkpoints/rnd-<dataset short name>`` next to the checkpoint."""
    batch_size: int = 128
    chunk: int = 256
    """Images per scoring call (progress granularity)."""
    device: str = "cpu"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ood_sets"] = None if self.ood_sets is None else list(self.ood_sets)
        d["methods"] = None if self.methods is None else list(self.methods)
        return d


def subset_indices(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """Indices of the random subset that :meth:`ImageSet.subset` draws (sorted)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def nested_subset(indices: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A random subset of ``indices`` of size ``n`` (all of them if ``n`` is None or larger)."""
    if n is None or n >= len(indices):
        return np.asarray(indices)
    pick = np.random.default_rng([seed, 7919]).choice(len(indices), size=n, replace=False)
    return np.sort(np.asarray(indices)[pick])


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _maybe_sha(path: Path | None) -> str | None:
    """SHA-256 of ``path``'s ``.safetensors`` weights, None when there is no such file."""
    if path is None:
        return None
    w = path.with_name(path.name + ".safetensors")
    return file_sha256(w) if w.exists() else None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _strength_key(strength: float | None) -> str:
    if strength is None or (isinstance(strength, float) and math.isnan(strength)):
        return "nan"
    return f"{float(strength):g}"


def _strength_value(strength: float | None) -> float:
    return math.nan if strength is None else float(strength)


def _same_strength(col: pd.Series, strength: float) -> pd.Series:
    if math.isnan(strength):
        return col.isna()
    return (col - strength).abs() < 1e-9


def dataset_role(card) -> str:
    """``real``, ``generated`` (noise, constant: made the paper's way), ``stand-in for X`` or
    ``real, standing in for X`` (for tables and the report)."""
    if card.stands_in_for:
        return ("real, standing in for " if card.real else "stand-in for ") + card.stands_in_for
    return "real" if card.real else "generated"


def _card_dict(card) -> dict:
    d = asdict(card)
    d["role"] = dataset_role(card)
    d["stand_in"] = bool(card.stands_in_for)
    return d


@dataclass(frozen=True)
class Unit:
    """One scored set: a method on the images of a dataset under a perturbation setting."""

    method: str
    dataset: str
    perturbation: str = "none"
    strength: float = math.nan
    repeat: int = 0

    @property
    def key(self) -> str:
        return f"{self.method}|{self.dataset}|{self.perturbation}|{_strength_key(self.strength)}|{self.repeat}"

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        return ((frame["method"] == self.method) & (frame["dataset"] == self.dataset)
                & (frame["perturbation"] == self.perturbation) & _same_strength(frame["strength"], self.strength)
                & (frame["repeat"] == self.repeat))


# --------------------------------------------------------------------------------------------
# Metrics from stored scores (pure functions of the tables)
# --------------------------------------------------------------------------------------------

def _safe_metrics(in_scores: np.ndarray, ood_scores: np.ndarray) -> dict:
    from rose_core.metrics import ood_metrics

    in_scores = np.asarray(in_scores, dtype=np.float64)
    ood_scores = np.asarray(ood_scores, dtype=np.float64)
    ok_in, ok_ood = np.isfinite(in_scores), np.isfinite(ood_scores)
    if not ok_in.all() or not ok_ood.all():
        log.warning("Dropping %d non-finite in-distribution and %d non-finite OOD scores before the metrics.",
                    int((~ok_in).sum()), int((~ok_ood).sum()))
    in_scores, ood_scores = in_scores[ok_in], ood_scores[ok_ood]
    if not len(in_scores) or not len(ood_scores):
        return {"auroc": math.nan, "auprc_in": math.nan, "auprc_out": math.nan, "fpr80": math.nan,
                "fpr95": math.nan, "n_in": len(in_scores), "n_ood": len(ood_scores)}
    return ood_metrics(in_scores, ood_scores)


def overall_pick(indices: np.ndarray, dataset: str, per_set: int, seed: int) -> np.ndarray:
    """Which of a set's scored ``indices`` enter the Overall set: up to ``per_set`` at random
    (deterministic in ``seed`` and the set's name)."""
    indices = np.sort(np.asarray(indices))
    if len(indices) <= per_set:
        return indices
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
    return np.sort(indices[rng.choice(len(indices), size=per_set, replace=False)])


def compute_metrics(scores: pd.DataFrame, in_dataset: str, overall_per_set: int = 1000,
                    seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """The ``metrics`` table from the ``scores`` table.

    For each method and perturbation setting, every OOD set's scores against the method's
    unperturbed in-distribution scores (repeat 0), plus ``overall`` for unperturbed scores (see
    :func:`overall_pick`). Returns the table and the Overall composition per method
    ``{method: {dataset: n}}``.
    """
    rows: list[dict] = []
    composition: dict[str, dict[str, int]] = {}
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
            g = ood[(ood["perturbation"] == k["perturbation"]) & _same_strength(ood["strength"], k["strength"])
                    & (ood["repeat"] == k["repeat"])]
            pooled = []
            for ds, gd in g.groupby("dataset", sort=True):
                m = _safe_metrics(in_scores, gd["score"].to_numpy())
                rows.append({"method": method, "ood_set": ds, "perturbation": k["perturbation"],
                             "strength": k["strength"], "repeat": int(k["repeat"]), **m})
                if k["perturbation"] == "none":
                    pick = overall_pick(gd["index"].to_numpy(), ds, overall_per_set, seed)
                    pooled.append(gd[gd["index"].isin(pick)]["score"].to_numpy())
                    if k["repeat"] == 0:
                        composition.setdefault(method, {})[ds] = len(pick)
            if k["perturbation"] == "none" and len(pooled) > 1:
                m = _safe_metrics(in_scores, np.concatenate(pooled))
                rows.append({"method": method, "ood_set": "overall", "perturbation": "none",
                             "strength": math.nan, "repeat": int(k["repeat"]), **m})
    frame = pd.DataFrame(rows, columns=TABLES["metrics"])
    frame["strength"] = frame["strength"].astype(float)
    return frame, composition


def compute_layer_metrics(layers: pd.DataFrame, in_dataset: str, overall_per_set: int = 1000,
                          seed: int = 0) -> pd.DataFrame:
    """Layer-wise AUROC (each layer's raw score alone) per Fisher, layer and OOD set (+ overall)."""
    from rose_core.metrics import auroc

    rows = []
    if layers.empty:
        return pd.DataFrame(columns=TABLES["layer_metrics"])
    for (fisher, layer), g in layers.groupby(["fisher", "layer"], sort=False):
        ind = g[g["dataset"] == in_dataset]["raw"].to_numpy()
        if not len(ind):
            continue
        pooled = []
        for ds, gd in g[g["dataset"] != in_dataset].groupby("dataset", sort=True):
            rows.append({"fisher": fisher, "layer": layer, "ood_set": ds, "auroc": auroc(ind, gd["raw"].to_numpy())})
            pick = overall_pick(gd["index"].to_numpy(), ds, overall_per_set, seed)
            pooled.append(gd[gd["index"].isin(pick)]["raw"].to_numpy())
        if len(pooled) > 1:
            rows.append({"fisher": fisher, "layer": layer, "ood_set": "overall",
                         "auroc": auroc(ind, np.concatenate(pooled))})
    return pd.DataFrame(rows, columns=TABLES["layer_metrics"])


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------

class Evaluation:
    """Scores one checkpoint and maintains its results bundle ``<results>/<checkpoint name>/``.

    ``progress(done, total, message)`` is called as images are scored (for ``st.progress``);
    ``show_progress`` shows a tqdm bar on stderr.
    """

    def __init__(self, checkpoint: str | os.PathLike, results: str | os.PathLike | None = None,
                 settings: EvalSettings | None = None, progress: ProgressFn | None = None,
                 show_progress: bool = True) -> None:
        from rose_core.checkpoint import load_model, weights_path

        self.settings = settings or EvalSettings()
        self.checkpoint = Path(checkpoint)
        for suffix in (".safetensors", ".json"):
            if self.checkpoint.name.endswith(suffix):
                self.checkpoint = self.checkpoint.with_name(self.checkpoint.name[: -len(suffix)])
        self.name = self.checkpoint.name
        self.model, self.card = load_model(self.checkpoint, device=self.settings.device)
        self.kind = self.card["kind"]
        self.weights_hash = file_sha256(weights_path(self.checkpoint))
        self.in_dataset = self.card.get("dataset", "fashion-mnist")
        self.channels, self.image_size = self.model.input_shape[0], self.model.input_shape[1]
        self.bundle = Results.for_checkpoint(self.name, results)
        self.progress = progress
        self.show_progress = show_progress
        self._images: dict[tuple[str, str], np.ndarray] = {}
        self._scorers: dict[str, Any] = {}
        self._fits: dict[str, Any] = {}
        self._nll_memo: dict[tuple, dict[int, float]] = {}
        self._layer_memo: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]] = {}
        self.scorer_calls: dict[str, int] = {}
        """How many batches each method's scorer was called on in this session (tests use it)."""
        self._manifest = self.bundle.manifest if self.bundle.exists else {}
        self._dirty: dict[tuple[str, str], Any] = {}
        """Manifest entries written by this session (merged into the file under the lock)."""
        self._lock_depth = 0
        if self._manifest.get("checkpoint", {}).get("weights_sha256") not in (None, self.weights_hash):
            log.warning("The checkpoint's weights changed since the bundle %s was written: its cached scores "
                        "will be recomputed.", self.bundle.folder)

    # --- datasets ------------------------------------------------------------------------------
    def ood_sets(self) -> list[str]:
        from rose_core.data import available_datasets

        if self.settings.ood_sets is not None:
            return [s for s in self.settings.ood_sets if s != self.in_dataset]
        return [s for s in available_datasets() if s != self.in_dataset]

    def methods(self) -> list[str]:
        if self.settings.methods is not None:
            return [parse_method(m).name for m in self.settings.methods]
        return default_methods(self.kind)

    def allowed(self, method: str, dataset: str) -> bool:
        """False when ``settings.method_sets`` restricts ``method`` to other OOD sets."""
        if dataset == self.in_dataset:
            return True
        ms = self.settings.method_sets
        spec = parse_method(method)
        sets = ms.get(spec.name, ms.get(spec.base))
        return sets is None or dataset in sets

    def _prepared(self, dataset: str, split: str = "test") -> np.ndarray:
        """All images of a split, resized to the model's input, uint8 ``(N, C, H, W)``."""
        key = (dataset, split)
        if key not in self._images:
            from rose_core.data import load_dataset
            from rose_core.data.preprocess import prepare_images

            images = load_dataset(dataset, split).images
            parts = [prepare_images(images[i:i + 4096], self.image_size, self.channels)
                     for i in range(0, len(images), 4096)]
            self._images[key] = np.ascontiguousarray(np.concatenate(parts).transpose(0, 3, 1, 2))
        return self._images[key]

    def indices(self, dataset: str, method: str | None = None, repeat: int = 0, n: int | None = None) -> np.ndarray:
        """Indices scored for ``dataset`` (in the full test split): the random ``n_in``/``n_ood``
        subset (seed ``seed + repeat``), then the method's cap as a nested random subset."""
        s = self.settings
        total = len(self._prepared(dataset))
        if n is None:
            n = s.n_in if dataset == self.in_dataset else s.n_ood
        idx = subset_indices(total, n, s.seed + repeat)
        if method is not None:
            cap = s.caps.get(parse_method(method).base, s.caps.get(method))
            idx = nested_subset(idx, cap, s.seed + repeat)
        return idx

    def inputs(self, dataset: str, idx: np.ndarray, perturbation: str = "none", strength: float = math.nan,
               repeat: int = 0) -> torch.Tensor:
        """Model inputs (float, [0, 1]) for the given indices, perturbed if asked."""
        x = torch.from_numpy(self._prepared(dataset)[idx])
        if perturbation != "none":
            from rose_core import perturb

            st = None if math.isnan(strength) else strength
            x = perturb.apply(perturbation, x, st, seed=self.settings.seed + repeat)
        return x.float().div_(255.0).to(self.settings.device)

    def fit_images(self, n: int | None = None, seed: int | None = None) -> torch.Tensor:
        """``n`` (default ``n_fit``) random in-distribution *train* images as model inputs."""
        s = self.settings
        n = s.n_fit if n is None else n
        seed = s.seed if seed is None else seed
        data = self._prepared(self.in_dataset, "train")
        idx = subset_indices(len(data), n, seed)
        return torch.from_numpy(data[idx]).float().div_(255.0).to(s.device)

    # --- companion checkpoints -------------------------------------------------------------------
    def background_path(self, spec: MethodSpec | None = None) -> Path | None:
        if spec is not None and "background" in spec.opts:
            return Path(spec.opts["background"])
        if self.settings.background:
            return Path(self.settings.background)
        p = self.checkpoint.with_name(self.name + "-background")
        return p if p.with_name(p.name + ".json").exists() else None

    def rnd_path(self, spec: MethodSpec | None = None) -> Path | None:
        if spec is not None and "path" in spec.opts:
            return Path(spec.opts["path"])
        if self.settings.rnd:
            return Path(self.settings.rnd)
        short = {"fashion-mnist": "fmnist", "cifar10": "cifar10"}.get(self.in_dataset, self.in_dataset)
        p = self.checkpoint.parent / f"rnd-{short}"
        return p if p.with_name(p.name + ".json").exists() else None

    def method_available(self, method: str) -> tuple[bool, str]:
        """Whether ``method`` can run for this checkpoint, and why not."""
        spec = parse_method(method)
        if spec.base in ("typicality", "rose+typicality"):
            return False, "the harness does not run the typicality methods yet."
        if spec.base == "likelihood-regret" and self.kind != "vae":
            return False, "Likelihood Regret re-optimises a VAE encoder; it is not defined for Glow."
        if spec.base == "likelihood-ratio" and self.background_path(spec) is None:
            return False, (f"no background model ({self.checkpoint}-background); train one with "
                           f"`python -m rose_core train --model {self.kind} --noise-fraction 0.3 "
                           f"--out {self.checkpoint}-background`.")
        if spec.base == "rnd" and self.rnd_path(spec) is None:
            return False, "no RND checkpoint (checkpoints/rnd-fmnist); train one with `python scripts/train_rnd.py`."
        if spec.base == "rnd" and _maybe_sha(self.rnd_path(spec)) is None:
            return False, (f"the RND checkpoint {self.rnd_path(spec)} is missing (not committed when trained by "
                           "the perturbations preset: rerun it with --train-missing).")
        if spec.base == "likelihood-ratio" and _maybe_sha(self.background_path(spec)) is None:
            return False, f"the background checkpoint {self.background_path(spec)} is missing."
        if spec.base == "input-complexity-jp2":
            from rose_core.scorers.input_complexity import jpeg2000_available
            if not jpeg2000_available():
                return False, "this Pillow has no JPEG 2000 (OpenJPEG) support."
        return True, ""

    # --- settings digests ----------------------------------------------------------------------
    def _rose_fit_key(self, spec: MethodSpec) -> dict:
        s, o = self.settings, {**self.settings.rose, **spec.opts}
        return {"fisher": spec.fisher, "layers": o.get("layers", "default"),
                "normalization": o.get("normalization", "separate"),
                "fit_fraction": float(o.get("fit_fraction", s.fit_fraction)),
                "damping": float(o.get("damping", 1e-8)), "n_fit": int(o.get("n_fit", s.n_fit)),
                "seed": s.seed, "dataset": self.in_dataset, "split": "train", "weights": self.weights_hash}

    def _rose_agg(self, spec: MethodSpec) -> dict:
        o = {**self.settings.rose, **spec.opts}
        p = o.get("p", math.inf)
        return {"p": "inf" if p == math.inf else float(p), "beta": o.get("beta", 0.0),
                "aggregation": o.get("aggregation", "relu")}

    def method_settings(self, method: str) -> dict:
        """Everything a method's scores depend on besides the images (cache key and manifest)."""
        spec = parse_method(method)
        s = self.settings
        if spec.is_rose:
            return {"fit": self._rose_fit_key(spec), **self._rose_agg(spec)}
        if spec.base in ("nll", "input-complexity-png", "input-complexity-jp2"):
            return {"k": s.k, "seed": s.seed, "nll": "iwae" if self.kind == "vae" else "exact"}
        if spec.base == "likelihood-ratio":
            bg = self.background_path(spec)
            return {"k": s.k, "seed": s.seed, "background": str(bg), "background_sha256": _maybe_sha(bg)}
        if spec.base == "likelihood-regret":
            o = spec.opts
            return {"steps": o.get("steps", 100), "lr": o.get("lr", 1e-4), "weight_decay": o.get("weight_decay", 5e-5),
                    "elbo_samples": o.get("elbo_samples", 20), "k": s.k, "seed": s.seed}
        if spec.base == "rnd":
            p = self.rnd_path(spec)
            return {"rnd": str(p), "rnd_sha256": _maybe_sha(p)}
        return {}

    # --- scorers -------------------------------------------------------------------------------
    def _fit_file(self, spec: MethodSpec) -> Path:
        fit_opts = {k: v for k, v in spec.options if k in ROSE_FIT_OPTIONS}
        stem = f"rose-{spec.fisher}" + "".join(f"-{k}-{_fmt_value(v)}" for k, v in sorted(fit_opts.items()))
        stem = "".join(c if c.isalnum() or c in "-._" else "_" for c in stem)
        return self.bundle.folder / "fits" / stem

    def rose_scorer(self, method: str):
        """The fitted :class:`RoseScorer` for a ROSE method (loaded from ``fits/`` or fitted and saved)."""
        from rose_core.errors import CheckpointError
        from rose_core.scorers.rose import RoseScorer

        spec = parse_method(method)
        fit_key = self._rose_fit_key(spec)
        fk = _digest(fit_key)
        if fk not in self._fits:
            path = self._fit_file(spec)
            stored = self._manifest.get("fits", {}).get(path.name, {})
            scorer = None
            if stored.get("key") == fit_key and path.with_name(path.name + ".json").exists():
                try:
                    scorer = RoseScorer.load(path, self.model)
                    log.info("Loaded the ROSE fit %s", path)
                except CheckpointError as exc:
                    log.warning("Refitting ROSE: %s", exc)
            if scorer is None:
                o = {**self.settings.rose, **spec.opts}
                kwargs = {k: o[k] for k in ("normalization", "damping") if k in o}
                scorer = RoseScorer(self.model, fisher=spec.fisher, layers=fit_key["layers"],
                                    fit_fraction=fit_key["fit_fraction"], batch_size=self.settings.batch_size,
                                    **kwargs)
                x = self.fit_images(fit_key["n_fit"])
                self._report(0, 0, f"fitting {spec.base} on {len(x)} {self.in_dataset} train images")
                t0 = time.perf_counter()
                scorer.fit(x)
                fit_s = time.perf_counter() - t0
                scorer.save(path)
                self._set("fits", path.name, {
                    "key": fit_key, "file": f"fits/{path.name}.safetensors", "fit_seconds": round(fit_s, 2),
                    "n_fisher": scorer.n_fisher, "n_norm": scorer.n_norm, "layers": scorer.layer_names})
                self._write_manifest()
            self._fits[fk] = scorer
        base = self._fits[fk]
        agg = self._rose_agg(spec)
        # A view of the shared fit with this method's aggregation.
        view = _RoseView(base, math.inf if agg["p"] == "inf" else agg["p"], agg["beta"], agg["aggregation"])
        return view

    def scorer(self, method: str):
        """A ready scorer for ``method`` (memoised)."""
        from rose_core.checkpoint import load_model
        from rose_core.scorers.registry import build_scorer

        spec = parse_method(method)
        if spec.name in self._scorers:
            return self._scorers[spec.name]
        ok, why = self.method_available(spec.name)
        if not ok:
            raise RuntimeError(f"{spec.name} cannot run: {why}")
        s = self.settings
        if spec.is_rose:
            sc = self.rose_scorer(spec.name)
        elif spec.base == "likelihood-ratio":
            bg, _ = load_model(self.background_path(spec), device=s.device)
            sc = build_scorer(spec.base, self.model, background_model=bg, k=s.k, seed=s.seed)
        elif spec.base == "rnd":
            sc = build_scorer("rnd", None, rnd=str(self.rnd_path(spec)))
        elif spec.base == "likelihood-regret":
            sc = build_scorer(spec.base, self.model, k=s.k, seed=s.seed, **spec.opts)
        else:
            sc = build_scorer(spec.base, self.model, k=s.k, seed=s.seed)
        self._scorers[spec.name] = sc
        return sc

    # --- NLL sharing ---------------------------------------------------------------------------
    def _nll(self, which: str, unit: Unit, idx: np.ndarray, x: torch.Tensor,
             tick: Callable[[int], None] | None = None) -> np.ndarray:
        """Per-image NLL (nats) of the main model (``which="main"``) or the background model,
        memoised per image set and, for the main model, read back from stored ``nll`` rows."""
        from rose_core.scorers.nll import model_nll

        mkey = (which, unit.dataset, unit.perturbation, _strength_key(unit.strength), unit.repeat,
                _digest(self.method_settings("nll")) if which == "main" else which)
        memo = self._nll_memo.setdefault(mkey, {})
        if which == "main" and not memo:
            stored = self._stored_rows(Unit("nll", unit.dataset, unit.perturbation, unit.strength, unit.repeat))
            if stored is not None:
                memo.update(zip(stored["index"].to_numpy().tolist(), stored["nll_nats"].to_numpy().tolist()))
        missing = [i for i, j in enumerate(idx) if int(j) not in memo]
        if missing:
            if which == "main":
                model = self.model
            else:
                model = self.scorer(which).background_model
            xm = x[missing]
            out = []
            for i in range(0, len(xm), self.settings.chunk):
                out.append(model_nll(model, xm[i:i + self.settings.chunk], k=self.settings.k,
                                     seed=self.settings.seed).numpy())
                if tick is not None:
                    tick(len(out[-1]))
            for j, v in zip(idx[missing], np.concatenate(out)):
                memo[int(j)] = float(v)
        return np.array([memo[int(j)] for j in idx], dtype=np.float64)

    # --- cache ---------------------------------------------------------------------------------
    def _unit_key(self, unit: Unit, idx: np.ndarray) -> dict:
        return {"method": unit.method, "dataset": unit.dataset, "perturbation": unit.perturbation,
                "strength": _strength_key(unit.strength), "repeat": unit.repeat, "n": int(len(idx)),
                "seed": self.settings.seed, "indices": _digest(np.asarray(idx).tolist()),
                "weights": self.weights_hash, "settings": _digest(self.method_settings(unit.method))}

    def _stored_rows(self, unit: Unit, idx: np.ndarray | None = None) -> pd.DataFrame | None:
        """The stored score rows of ``unit`` if the cache entry is valid (for ``idx`` if given)."""
        entry = self._manifest.get("cache", {}).get(unit.key)
        if entry is None:
            return None
        if entry.get("weights") != self.weights_hash or entry.get("seed") != self.settings.seed:
            return None
        if entry.get("settings") != _digest(self.method_settings(unit.method)):
            return None
        if idx is not None and {k: v for k, v in entry.items() if k != "seconds"} != self._unit_key(unit, idx):
            return None
        scores = self.bundle.table("scores")
        rows = scores[unit.mask(scores)]
        if len(rows) != entry.get("n"):
            return None
        return rows

    # --- scoring -------------------------------------------------------------------------------
    def _report(self, done: int, total: int, message: str) -> None:
        log.info("%s (%d/%d)", message, done, total)
        if self.progress is not None:
            try:
                self.progress(done, total, message)
            except Exception:  # noqa: BLE001 - a UI callback must never break a run
                log.exception("progress callback failed")

    def _score_unit(self, unit: Unit, idx: np.ndarray, bar, done: list[int], total: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        spec = parse_method(unit.method)
        x = self.inputs(unit.dataset, idx, unit.perturbation, unit.strength, unit.repeat)
        n = len(idx)
        nll = np.full(n, math.nan)
        layer_frame = None

        def tick(k: int) -> None:
            done[0] += k
            if bar is not None:
                bar.update(k)
            self._report(done[0], total, f"{unit.method} on {unit.dataset}"
                         + ("" if unit.perturbation == "none" else f" ({unit.perturbation} {_strength_key(unit.strength)})"))

        if spec.base in NLL_BASED:
            # Progress: the NLL passes this unit needs (one, two for the Likelihood Ratio) share
            # its n images on the bar.
            passes = 2 if spec.base == "likelihood-ratio" else 1
            ticked = [0]

            def part(k: int) -> None:
                k = min(k // passes, n - ticked[0])
                ticked[0] += k
                tick(k)

            main = self._nll("main", unit, idx, x, part)
            nll = main
            if spec.base == "nll":
                score = main
            elif spec.base == "likelihood-ratio":
                score = main - self._nll(spec.name, unit, idx, x, part)
            else:
                from rose_core.scorers.input_complexity import compressed_bits
                from rose_core.scorers.nll import LN2

                score = main / LN2 - compressed_bits(x, spec.base.rsplit("-", 1)[1])
            self.scorer_calls[spec.name] = self.scorer_calls.get(spec.name, 0) + 1
            tick(n - ticked[0])
        elif spec.is_rose:
            sc = self.scorer(spec.name)
            lkey = (_digest(self._rose_fit_key(spec)), unit.key.split("|", 1)[1], _digest(np.asarray(idx).tolist()))
            if lkey not in self._layer_memo and spec.is_main_rose is False and unit.perturbation == "none" \
                    and unit.repeat == 0:
                self._layers_from_bundle(spec, unit, idx, lkey)
            if lkey in self._layer_memo:
                _, raw, z, _names = self._layer_memo[lkey]
                tick(n)
            else:
                raws, zs = [], []
                for i in range(0, n, self.settings.chunk):
                    r = sc.score(x[i:i + self.settings.chunk])
                    raws.append(r.extras["layer_raw"])
                    zs.append(r.extras["layer_z"])
                    self.scorer_calls[spec.name] = self.scorer_calls.get(spec.name, 0) + 1
                    tick(len(r))
                raw, z = np.concatenate(raws), np.concatenate(zs)
                self._layer_memo[lkey] = (idx, raw, z, sc.layer_names)
            from rose_core.scorers.rose import aggregate

            score = aggregate(z, sc.p, sc.beta, sc.aggregation)
            if spec.is_main_rose and unit.perturbation == "none" and unit.repeat == 0:
                names = sc.layer_names
                layer_frame = pd.DataFrame({
                    "dataset": unit.dataset, "is_ood": unit.dataset != self.in_dataset,
                    "index": np.repeat(idx, len(names)).astype(np.int64), "fisher": spec.fisher,
                    "layer": np.tile(names, n), "raw": raw.reshape(-1), "z": z.reshape(-1)})
        else:
            sc = self.scorer(spec.name)
            parts = []
            for i in range(0, n, self.settings.chunk):
                r = sc.score(x[i:i + self.settings.chunk])
                parts.append(r)
                self.scorer_calls[spec.name] = self.scorer_calls.get(spec.name, 0) + 1
                tick(len(r))
            from rose_core.scorers.base import ScoreResult

            res = ScoreResult.concat(parts)
            score = res.score
            if "nll_before" in res.extras:
                nll = res.extras["nll_before"]
        frame = pd.DataFrame({
            "dataset": unit.dataset, "is_ood": unit.dataset != self.in_dataset, "index": idx.astype(np.int64),
            "method": unit.method, "perturbation": unit.perturbation, "strength": float(unit.strength),
            "repeat": int(unit.repeat), "score": np.asarray(score, dtype=np.float64),
            "nll_nats": np.asarray(nll, dtype=np.float64)})
        return frame, layer_frame

    def _layers_from_bundle(self, spec: MethodSpec, unit: Unit, idx: np.ndarray, lkey: tuple) -> None:
        """Fill the layer memo for an aggregation variant from the stored layers of the main fit."""
        main = parse_method(spec.base)
        if _digest(self._rose_fit_key(main)) != lkey[0]:
            return
        if self._stored_rows(Unit(main.name, unit.dataset), idx) is None:
            return
        lay = self.bundle.table("layers")
        lay = lay[(lay["dataset"] == unit.dataset) & (lay["fisher"] == main.fisher)]
        names = self.scorer(spec.name).layer_names
        if lay.empty or set(lay["layer"].unique()) != set(names):
            return
        raw = lay.pivot(index="index", columns="layer", values="raw")
        z = lay.pivot(index="index", columns="layer", values="z")
        if not set(int(i) for i in idx) <= set(int(i) for i in raw.index):
            return
        self._layer_memo[lkey] = (idx, raw.loc[idx, names].to_numpy(), z.loc[idx, names].to_numpy(), names)

    def score(self, units: Iterable[Unit], n: dict[str, int] | None = None) -> list[Unit]:
        """Make sure every unit is in the bundle (computing what the cache lacks); returns the
        units that were computed. ``n`` overrides the number of images per dataset."""
        units = list(dict.fromkeys(units))
        self.refresh()
        todo: list[tuple[Unit, np.ndarray]] = []
        for u in units:
            ok, why = self.method_available(u.method)
            if not ok:
                self._note_missing(u.method, why)
                continue
            if not self.allowed(u.method, u.dataset):
                continue
            idx = self.indices(u.dataset, u.method, u.repeat if u.dataset != self.in_dataset else 0,
                               None if n is None else n.get(u.dataset))
            if self._stored_rows(u, idx) is None:
                todo.append((u, idx))
        total = sum(len(i) for _, i in todo)
        if not todo:
            return []
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc=f"scoring {self.name}", unit="img", dynamic_ncols=True)
        done = [0]
        try:
            # Group by method so each scorer is built once; the shared NLL first, the slow
            # Likelihood Regret last (an interrupted run keeps everything else).
            rank = {"nll": 0, "input-complexity-png": 1, "input-complexity-jp2": 1, "likelihood-ratio": 2,
                    "likelihood-regret": 9}
            order = sorted(todo, key=lambda t: (rank.get(parse_method(t[0].method).base, 5), t[0].method,
                                                t[0].perturbation, t[0].strength if not math.isnan(t[0].strength)
                                                else -1, t[0].repeat, t[0].dataset != self.in_dataset))
            for unit, idx in order:
                if bar is not None:
                    bar.set_postfix_str(f"{unit.method} / {unit.dataset}", refresh=False)
                t0 = time.perf_counter()
                frame, layer_frame = self._score_unit(unit, idx, bar, done, total)
                self._store(unit, idx, frame, layer_frame, time.perf_counter() - t0)
        finally:
            if bar is not None:
                bar.close()
        self._report(total, total, "done")
        return [u for u, _ in todo]

    @contextlib.contextmanager
    def _locked(self):
        """Hold an exclusive lock on the bundle (``.lock``): processes writing the same bundle take
        turns, and every write re-reads what the others wrote (tables and manifest) first."""
        if self._lock_depth:
            yield
            return
        self.bundle.folder.mkdir(parents=True, exist_ok=True)
        with open(self.bundle.folder / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                self.bundle._cache.clear()
                self._manifest = self._merged_manifest()
                yield
            finally:
                self._lock_depth -= 1
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _merged_manifest(self) -> dict:
        """The manifest on disk with this session's own entries on top."""
        disk = self.bundle.manifest if self.bundle.exists else {}
        for (section, key), value in self._dirty.items():
            if key is None:
                disk[section] = value
            else:
                if isinstance(disk.get(section), list):  # an older list-valued section
                    disk[section] = {str(v): None for v in disk[section]}
                if not isinstance(disk.get(section), dict):
                    disk[section] = {}
                disk[section][key] = value
        return disk

    def _set(self, section: str, key: str | None, value: Any) -> None:
        """Set ``manifest[section][key]`` (or ``manifest[section]`` when ``key`` is None) for this session."""
        self._dirty[(section, key)] = value
        if key is None:
            self._manifest[section] = value
        else:
            if not isinstance(self._manifest.get(section), dict):
                self._manifest[section] = {}
            self._manifest[section][key] = value

    def refresh(self) -> None:
        """Re-read the bundle (what other processes wrote since)."""
        with self._locked():
            pass

    def _store(self, unit: Unit, idx: np.ndarray, frame: pd.DataFrame, layer_frame: pd.DataFrame | None,
               seconds: float) -> None:
        with self._locked():
            scores = self.bundle.table("scores")
            scores = pd.concat([scores[~unit.mask(scores)], frame], ignore_index=True) if len(scores) else frame
            self.bundle.write("scores", scores)
            if layer_frame is not None:
                lay = self.bundle.table("layers")
                if len(lay):
                    keep = ~((lay["dataset"] == unit.dataset) & (lay["fisher"] == layer_frame["fisher"].iloc[0]))
                    lay = pd.concat([lay[keep], layer_frame], ignore_index=True)
                else:
                    lay = layer_frame
                self.bundle.write("layers", lay)
            entry = self._unit_key(unit, idx)
            entry["seconds"] = round(seconds, 2)
            self._set("cache", unit.key, entry)
            spec = parse_method(unit.method)
            self._set("methods", unit.method, {"settings": self.method_settings(unit.method),
                                               "cap": self.settings.caps.get(spec.base, self.settings.caps.get(unit.method)),
                                               "ood_sets": self.settings.method_sets.get(
                                                   unit.method, self.settings.method_sets.get(spec.base))})
            self._write_manifest()

    # --- derived tables ------------------------------------------------------------------------
    def update_metrics(self) -> pd.DataFrame:
        """Rebuild ``metrics`` and ``layer_metrics`` from the stored scores."""
        s = self.settings
        with self._locked():
            metrics, composition = compute_metrics(self.bundle.table("scores"), self.in_dataset, s.overall_per_set,
                                                   s.seed)
            self.bundle.write("metrics", metrics)
            self.bundle.write("layer_metrics", compute_layer_metrics(self.bundle.table("layers"), self.in_dataset,
                                                                     s.overall_per_set, s.seed))
            self._set("overall", None, {"per_set": s.overall_per_set, "seed": s.seed, "composition": composition,
                                        "note": "Overall = up to per_set random images of each scored OOD set "
                                                "(stand-ins included; see ood_sets for which are stand-ins)."})
            self._write_manifest()
        return metrics

    def metrics(self, method: str | None = None, ood_set: str | None = None, perturbation: str = "none") -> pd.DataFrame:
        m = self.bundle.table("metrics")
        m = m[m["perturbation"] == perturbation]
        if method is not None:
            m = m[m["method"] == parse_method(method).name]
        if ood_set is not None:
            m = m[m["ood_set"] == ood_set]
        return m

    # --- manifest ------------------------------------------------------------------------------
    def _note_missing(self, what: str, why: str) -> None:
        if self._manifest.get("missing", {}).get(what) != why:
            log.warning("%s skipped: %s", what, why)
            self._set("missing", what, why)

    def _write_manifest(self) -> None:
        with self._locked():
            self._manifest = self._merged_manifest()
            self._write_manifest_locked()

    def _write_manifest_locked(self) -> None:
        from rose_core import __version__
        from rose_core.data import get_card

        m = self._manifest
        s = self.settings
        if m.get("checkpoint", {}).get("weights_sha256") not in (None, self.weights_hash):
            m["cache"] = {}  # other weights: nothing cached is valid
            m["fits"] = {}
        m["checkpoint"] = {"name": self.name, "path": str(self.checkpoint), "weights_sha256": self.weights_hash,
                           "card": self.card}
        m["in_distribution"] = {"name": self.in_dataset, "split": "test", "n": s.n_in, "seed": s.seed,
                                "card": _card_dict(get_card(self.in_dataset))}
        m["fit_data"] = {"name": self.in_dataset, "split": "train", "n_fit": s.n_fit, "seed": s.seed,
                         "fit_fraction": s.fit_fraction,
                         "note": "ROSE: Fisher on floor(n_fit·fit_fraction) images, z-normalisation on the rest "
                                 "(an interleaved split, RoseScorer normalization='separate')."}
        scored = sorted({e["dataset"] for e in m.get("cache", {}).values()} - {self.in_dataset})
        sets = m.setdefault("ood_sets", {})
        for ds in scored:
            n_test = len(self._images[(ds, "test")]) if (ds, "test") in self._images else sets.get(ds, {}).get("n_test")
            sets[ds] = {**_card_dict(get_card(ds)), "n_test": None if n_test is None else int(n_test)}
        m.setdefault("methods", {})
        m["caps"] = {meth.split(":", 1)[0]: v.get("cap") for meth, v in sorted(m["methods"].items())
                     if isinstance(v, dict) and v.get("cap") is not None}
        m["settings"] = s.to_dict()
        m["library_version"] = __version__
        m["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "device": s.device, "python": platform.python_version(),
                            "machine": platform.machine()}
        self.bundle.write_manifest(m)

    def record_experiment(self, name: str, info: dict) -> None:
        """Record that an experiment ran (or why it could not) in ``manifest["experiments"]``."""
        prev = self._manifest.get("experiments", {}).get(name, {})
        if "wall_s" in info:  # the longest run is the one that computed (re-runs hit the cache)
            info = {**info, "longest_wall_s": max(info["wall_s"], prev.get("longest_wall_s", prev.get("wall_s", 0)))}
        self._set("experiments", name, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                        "settings": {k: v for k, v in self.settings.to_dict().items()
                                                     if k in ("n_in", "n_ood", "seed", "n_fit", "k", "caps",
                                                              "method_sets", "overall_per_set")}, **info})
        self._write_manifest()

    # ==========================================================================================
    # Experiments (presets)
    # ==========================================================================================
    def table2(self, methods: Sequence[str] | None = None, ood_sets: Sequence[str] | None = None) -> pd.DataFrame:
        """Methods × OOD sets, unperturbed (paper Table 2; Tables 4/5 are the AUPRC/FPR80 columns).
        Returns the metrics (``method``, ``ood_set`` incl. ``overall``, ``auroc``, …)."""
        t0 = time.perf_counter()
        methods = [parse_method(m).name for m in (methods or self.methods())]
        sets = list(ood_sets or self.ood_sets())
        units = [Unit(m, d) for m in methods for d in [self.in_dataset, *sets]]
        computed = self.score(units)
        metrics = self.update_metrics()
        ran = [m for m in methods if self.method_available(m)[0]]
        self.record_experiment("table2" if self.kind == "vae" else "table5",
                               {"methods": ran, "ood_sets": sets, "wall_s": round(time.perf_counter() - t0, 1),
                                "units_computed": len(computed),
                                "skipped": {m: self.method_available(m)[1] for m in methods if m not in ran}})
        return metrics[(metrics["perturbation"] == "none") & metrics["method"].isin(ran)]

    table5 = table2

    def fisher(self, ood_sets: Sequence[str] | None = None) -> pd.DataFrame:
        """Table 6: ROSE with the DIAG vs the EKFAC Fisher (same layers, same images)."""
        t0 = time.perf_counter()
        sets = list(ood_sets or self.ood_sets())
        self.score([Unit(m, d) for m in ("rose-diag", "rose-ekfac") for d in [self.in_dataset, *sets]])
        metrics = self.update_metrics()
        self.record_experiment("fisher", {"methods": ["rose-diag", "rose-ekfac"], "ood_sets": sets,
                                          "wall_s": round(time.perf_counter() - t0, 1)})
        return metrics[metrics["method"].isin(["rose-diag", "rose-ekfac"]) & (metrics["perturbation"] == "none")]

    def layerwise(self, ood_sets: Sequence[str] | None = None) -> pd.DataFrame:
        """Layer-wise AUROC (each layer's raw score alone) for DIAG and EKFAC (Appendix D)."""
        self.fisher(ood_sets)
        self.record_experiment("layerwise", {"table": "layer_metrics"})
        return self.bundle.table("layer_metrics")

    def glow_layers(self, ood_sets: Sequence[str] | None = None, fisher: str = "diag") -> pd.DataFrame:
        """Table 7: ROSE on Glow's InvConv layers (the default) vs all convolutions."""
        t0 = time.perf_counter()
        sets = list(ood_sets or self.ood_sets())
        methods = [f"rose-{fisher}", f"rose-{fisher}:layers=all"]
        self.score([Unit(m, d) for m in methods for d in [self.in_dataset, *sets]])
        metrics = self.update_metrics()
        self.record_experiment("glow-layers", {"methods": methods, "ood_sets": sets,
                                               "wall_s": round(time.perf_counter() - t0, 1)})
        return metrics[metrics["method"].isin(methods) & (metrics["perturbation"] == "none")]

    def brightness(self, ood_sets: Sequence[str] | None = None, methods: Sequence[str] | None = None,
                   strengths: Sequence[float] = BRIGHTNESS, repeats: int = 1, n: int | None = None) -> pd.DataFrame:
        """Tables 1/8/9: the brightness of the **OOD** images scaled by 0.2×…1.8× (the
        in-distribution test images are left as they are). ``repeats`` > 1 draws other random
        OOD subsets. Returns one metric row per method × set × strength × repeat."""
        t0 = time.perf_counter()
        sets = list(ood_sets or self.default_brightness_sets())
        if methods is None:
            methods = [m for m in ("rose-ekfac", "likelihood-ratio", "rnd", "nll") if self.method_available(m)[0]]
        methods = [parse_method(m).name for m in methods]
        nmap = None if n is None else {d: n for d in sets}
        units = [Unit(m, self.in_dataset) for m in methods]
        units += [Unit(m, d, "brightness", float(f), r) for m in methods for d in sets for f in strengths
                  for r in range(repeats)]
        self.score(units, n=nmap)
        metrics = self.update_metrics()
        self.record_experiment("brightness", {"methods": methods, "ood_sets": sets, "strengths": list(strengths),
                                              "repeats": repeats, "n_per_set": n or self.settings.n_ood,
                                              "perturbed": "OOD images only",
                                              "wall_s": round(time.perf_counter() - t0, 1)})
        return metrics[(metrics["perturbation"] == "brightness") & metrics["method"].isin(methods)]

    def default_brightness_sets(self) -> list[str]:
        """The sets the paper brightens (CelebA, SVHN, Omniglot) or their stand-ins, plus MNIST."""
        wanted = ["celeba", "faces-lfw", "svhn", "digits-on-photos", "omniglot", "glyphs-scripts", "mnist"]
        have = set(self.ood_sets())
        real = {"celeba": "faces-lfw", "svhn": "digits-on-photos", "omniglot": "glyphs-scripts"}
        out = [d for d in wanted if d in have and not (d in real.values() and
                                                       any(r in have for r, s in real.items() if s == d))]
        return out

    def perturbations(self, ood_sets: Sequence[str] | None = None, train_missing: bool = False,
                      train_epochs: int = 3, train_subset: int | None = 10000) -> pd.DataFrame:
        """Tables 10/11: the outlier-exposure baselines trained with each perturbation
        (SVD K=28, DCT K=28, Gaussian blur, Random μ=0.2): RND with each, and the Likelihood Ratio
        with each background model. Uses ``checkpoints/rnd-<ds>[-<perturbation>]`` and
        ``<checkpoint>-background[-<perturbation>]`` when they exist; with ``train_missing`` it
        trains the missing RNDs (small and fast) into ``results/<name>/fits/``; missing background
        VAEs are reported with their train command."""
        from rose_core.checkpoint import card_path

        t0 = time.perf_counter()
        sets = list(ood_sets or self.ood_sets())
        methods, missing = [], {}
        short = {"fashion-mnist": "fmnist", "cifar10": "cifar10"}.get(self.in_dataset, self.in_dataset)
        for pert in PERTURBATIONS:
            found = None
            for cand in (self.checkpoint.parent / f"rnd-{short}-{pert}", self.checkpoint.parent / f"rnd-{short}",
                         self.bundle.folder / "fits" / f"rnd-{pert}"):
                if card_path(cand).exists() and _maybe_sha(cand) is not None:
                    cfg = json.loads(card_path(cand).read_text()).get("config", {})
                    if cfg.get("perturbation") == pert:
                        found = cand
                        break
            if found is None and train_missing:
                found = self._train_rnd(pert, train_epochs, train_subset)
            if found is None:
                missing[f"rnd ({pert})"] = (f"python scripts/train_rnd.py --perturbation {pert} "
                                            f"--out checkpoints/rnd-{short}-{pert}")
            elif self.rnd_path() is not None and Path(found) == self.rnd_path():
                methods.append("rnd")  # the default RND: same unit as in table2
            else:
                methods.append(f"rnd:path={found}")
            bg = None
            for cand in (Path(f"{self.checkpoint}-background-{pert}"), Path(f"{self.checkpoint}-background")):
                if card_path(cand).exists():
                    c = json.loads(card_path(cand).read_text())
                    if pert == "random" and c.get("noise_fraction"):
                        bg = cand
                        break
                    if c.get("perturbation") == pert:
                        bg = cand
                        break
            if bg is None:
                cmd = (f"python -m rose_core train --model {self.kind} --noise-fraction 0.2 "
                       f"--out {self.checkpoint}-background-random" if pert == "random" else
                       f"(not supported by the trainer: a {pert}-perturbed background model)")
                missing[f"likelihood-ratio ({pert})"] = cmd
            elif self.background_path() is not None and Path(bg) == self.background_path():
                methods.append("likelihood-ratio")  # the default background: same unit as in table2
            else:
                methods.append(f"likelihood-ratio:background={bg}")
        units = [Unit(m, d) for m in methods for d in [self.in_dataset, *sets]]
        self.score(units)
        metrics = self.update_metrics()
        self.record_experiment("perturbations", {"methods": methods, "ood_sets": sets, "missing": missing,
                                                 "wall_s": round(time.perf_counter() - t0, 1)})
        return metrics[metrics["method"].isin(methods) & (metrics["perturbation"] == "none")]

    def _train_rnd(self, pert: str, epochs: int, subset: int | None) -> Path | None:
        from rose_core.scorers.rnd import train_rnd

        out = self.bundle.folder / "fits" / f"rnd-{pert}"
        x = self.fit_images(subset if subset else len(self._prepared(self.in_dataset, "train")))
        self._report(0, 0, f"training RND ({pert}) on {len(x)} {self.in_dataset} train images")
        train_rnd(x, out=out, perturbation=pert, epochs=epochs, seed=self.settings.seed,
                  card={"dataset": self.in_dataset, "split": "train", "train_images": len(x),
                        "note": "trained by rose_core.evaluation perturbations preset (small, CPU)"})
        return out

    def capacity(self, ood_sets: Sequence[str] | None = None, capacities: Sequence[float] = CAPACITIES,
                 method: str = "rose-ekfac") -> dict:
        """Table 3: ROSE on VAEs of 0.5×–4× width. Uses ``<checkpoint>-x<c>`` checkpoints
        (1× is this one); the missing ones are reported with their train command. Present ones are
        evaluated into their own bundles (``results/<checkpoint>-x<c>/``)."""
        from rose_core.checkpoint import card_path

        t0 = time.perf_counter()
        if self.kind != "vae":
            info = {"status": "Table 3 varies the VAE's width; not defined for a " + self.kind}
            self.record_experiment("capacity", info)
            return info
        found, missing = {}, {}
        for c in capacities:
            if c == 1.0:
                found[c] = str(self.checkpoint)
                continue
            tag = f"x{_fmt_value(float(c))}"
            path = self.checkpoint.with_name(f"{self.name}-{tag}")
            if card_path(path).exists():
                found[c] = str(path)
            else:
                missing[tag] = (f"python -m rose_core train --model {self.kind} --capacity {_fmt_value(float(c))} "
                                f"--out {path}")
        sets = list(ood_sets or self.ood_sets())
        for c, path in found.items():
            if c == 1.0:
                self.score([Unit(method, d) for d in [self.in_dataset, *sets]])
                self.update_metrics()
            else:
                other = Evaluation(path, self.bundle.folder.parent, replace(self.settings, methods=[method]),
                                   self.progress, self.show_progress)
                other.table2([method], sets)
        info = {"method": method, "capacities": list(capacities), "found": {str(k): v for k, v in found.items()},
                "missing": missing, "wall_s": round(time.perf_counter() - t0, 1)}
        if missing:
            info["status"] = "checkpoints missing: " + ", ".join(missing)
            for tag, cmd in missing.items():
                self._note_missing(f"capacity {tag}", f"checkpoint {self.checkpoint}-{tag} not trained; run `{cmd}`")
        self.record_experiment("capacity", info)
        return info

    def throughput(self, methods: Sequence[str] | None = None, n: int = 32, min_seconds: float = 2.0,
                   max_seconds: float = 600.0) -> pd.DataFrame:
        """Figure 4: images per second of every method, measured in this process, one method after
        the other, on the same ``n`` in-distribution test images. Each method scores them
        repeatedly until ``min_seconds`` have passed (at least once; stops after ``max_seconds``);
        methods whose batch is larger than ``n`` get the images tiled up to one batch (except
        Likelihood Regret, whose cost is linear in the images anyway). The ROSE fit (one-off) is
        done before timing and excluded."""
        t0 = time.perf_counter()
        methods = [parse_method(m).name for m in (methods or self.methods())]
        methods = [m for m in methods if self.method_available(m)[0]]
        idx = subset_indices(len(self._prepared(self.in_dataset)), n, self.settings.seed)
        x = self.inputs(self.in_dataset, idx)
        rows = []
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(methods), desc="throughput", unit="method", dynamic_ncols=True)
        for i, m in enumerate(methods):
            sc = self.scorer(m)  # fits ROSE if needed, before the clock starts
            self._report(i, len(methods), f"timing {m}")
            slow = parse_method(m).base == "likelihood-regret"
            bs = int(getattr(sc, "batch_size", len(x)))
            # Fast methods see the same images tiled up to one full batch, so that every method
            # runs at its own batch size; Likelihood Regret (cost linear in the images, whatever
            # the batch) scores the n images once.
            xr = x if (slow or bs <= len(x)) else x.repeat(math.ceil(bs / len(x)), 1, 1, 1)[:bs]
            if not slow:
                sc.score(x[:2])  # warm-up (allocations, lazy initialisation)
            count, start = 0, time.perf_counter()
            while True:
                sc.score(xr)
                count += len(xr)
                el = time.perf_counter() - start
                if el >= min_seconds or el >= max_seconds:
                    break
            rows.append({"method": m, "images_per_s": count / el, "n_images": count,
                         "batch_size": min(bs, len(xr)),
                         "device": f"{self.settings.device} ({torch.get_num_threads()} threads)"})
            log.info("throughput %s: %.2f img/s (%d images in %.1f s)", m, count / el, count, el)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        frame = pd.DataFrame(rows, columns=TABLES["throughput"])
        with self._locked():
            self.bundle.write("throughput", frame)
        self.record_experiment("throughput", {
            "methods": methods, "images": {"dataset": self.in_dataset, "split": "test", "n": len(x),
                                           "seed": self.settings.seed},
            "min_seconds": min_seconds, "note": "one process, one method after the other, same images; "
                                                "ROSE fit time excluded (see fits[*].fit_seconds)",
            "wall_s": round(time.perf_counter() - t0, 1)})
        return frame

    def fisher_samples(self, sizes: Sequence[int] = FISHER_SAMPLE_SIZES, repeats: int = 10, fisher: str = "ekfac",
                       n_norm: int = 500, n_eval_in: int = 1000, n_eval_per_set: int = 100,
                       ood_sets: Sequence[str] | None = None) -> pd.DataFrame:
        """Figure 5: AUROC vs the number of Fisher samples. For each size and repeat, ROSE is fitted
        on ``size`` random in-distribution train images (a fresh draw per repeat) with a separate
        normalisation set of ``n_norm`` images drawn with them, and scores a fixed evaluation set:
        ``n_eval_in`` in-distribution test images vs up to ``n_eval_per_set`` images of each OOD
        set (``overall``; each set's own AUROC is stored too)."""
        from rose_core.scorers.rose import RoseScorer

        t0 = time.perf_counter()
        sets = list(ood_sets or self.ood_sets())
        s = self.settings
        ev_in = self.indices(self.in_dataset, n=n_eval_in)
        x_in = self.inputs(self.in_dataset, ev_in)
        ev_ood = {d: self.indices(d, n=n_eval_per_set) for d in sets}
        x_ood = {d: self.inputs(d, i) for d, i in ev_ood.items()}
        self.refresh()
        cache = self._manifest.get("fisher_samples_cache", {})
        table = self.bundle.table("fisher_samples")
        todo = []
        for size in sizes:
            for r in range(repeats):
                key = {"fisher": fisher, "n_fit": int(size), "repeat": r, "n_norm": n_norm, "seed": s.seed,
                       "eval": _digest([ev_in.tolist(), {d: i.tolist() for d, i in ev_ood.items()}]),
                       "weights": self.weights_hash}
                ck = f"{fisher}|{size}|{r}"
                have = table[(table["fisher"] == fisher) & (table["n_fit"] == size) & (table["repeat"] == r)]
                if cache.get(ck) == key and len(have):
                    continue
                todo.append((size, r, key, ck))
        n_eval = len(x_in) + sum(len(v) for v in x_ood.values())
        total = sum(2 * sz + n_norm + n_eval for sz, *_ in todo)
        bar = None
        if self.show_progress and todo:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc="fisher-samples", unit="img", dynamic_ncols=True)
        done = 0
        for size, r, key, ck in todo:
            data = self._prepared(self.in_dataset, "train")
            idx = subset_indices(len(data), size + n_norm, s.seed * 100_003 + size * 101 + r + 1)
            xf = torch.from_numpy(data[idx]).float().div_(255.0)
            frac = (size + 0.5) / (size + n_norm)  # floor(N·frac) = size Fisher samples exactly
            sc = RoseScorer(self.model, fisher=fisher, fit_fraction=frac, batch_size=s.batch_size,
                            **{k: v for k, v in s.rose.items() if k in ("p", "beta", "aggregation", "damping")})
            sc.fit(xf)
            s_in = sc.score(x_in).score
            rows, pooled = [], []
            for d, xo in x_ood.items():
                so = sc.score(xo).score
                rows.append({"fisher": fisher, "n_fit": int(size), "repeat": r, "ood_set": d,
                             "auroc": _safe_metrics(s_in, so)["auroc"]})
                pooled.append(so)
            rows.append({"fisher": fisher, "n_fit": int(size), "repeat": r, "ood_set": "overall",
                         "auroc": _safe_metrics(s_in, np.concatenate(pooled))["auroc"]})
            with self._locked():
                table = self.bundle.table("fisher_samples")
                if len(table):
                    table = table[~((table["fisher"] == fisher) & (table["n_fit"] == size) & (table["repeat"] == r))]
                    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
                else:
                    table = pd.DataFrame(rows)
                self.bundle.write("fisher_samples", table)
                self._set("fisher_samples_cache", ck, key)
                self._write_manifest()
            done += 2 * size + n_norm + n_eval
            if bar is not None:
                bar.update(2 * size + n_norm + n_eval)
            self._report(done, total, f"fisher-samples {fisher} n={size} repeat {r}")
        if bar is not None:
            bar.close()
        self.record_experiment("fisher-samples", {
            "fisher": fisher, "sizes": list(sizes), "repeats": repeats, "n_norm": n_norm,
            "eval": {"n_in": len(x_in), "n_per_set": n_eval_per_set, "ood_sets": sets},
            "wall_s": round(time.perf_counter() - t0, 1)})
        return self.bundle.table("fisher_samples")


class _RoseView:
    """A fitted :class:`RoseScorer` seen with another aggregation (p, β, ReLU/max); the
    Fisher and normalisation are shared."""

    def __init__(self, base, p: float, beta, aggregation: str) -> None:
        self.base, self.p, self.beta, self.aggregation = base, p, beta, aggregation

    @property
    def layer_names(self) -> list[str]:
        return self.base.layer_names

    @property
    def batch_size(self) -> int:
        return self.base.batch_size

    @property
    def model(self):
        return self.base.model

    def score(self, x: torch.Tensor):
        from rose_core.scorers.base import ScoreResult
        from rose_core.scorers.rose import aggregate

        r = self.base.score(x)
        return ScoreResult(aggregate(r.extras["layer_z"], self.p, self.beta, self.aggregation), r.extras)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

PRESETS: dict[str, str] = {
    "table2": "methods × OOD sets on the VAE (Table 2 left; AUPRC/FPR80 = Tables 4/5)",
    "table5": "methods × OOD sets on Glow (Table 2 right)",
    "brightness": "brightness 0.2×–1.8× of the OOD sets (Tables 1/8/9)",
    "perturbations": "RND / Likelihood Ratio trained with SVD, DCT, Gaussian blur, Random (Tables 10/11)",
    "capacity": "ROSE on VAEs of 0.5×–4× width (Table 3); reports missing checkpoints",
    "fisher": "DIAG vs EKFAC (Table 6)",
    "glow-layers": "Glow: InvConv vs all layers (Table 7)",
    "throughput": "images/s of every method in one run on the same images (Figure 4)",
    "fisher-samples": "AUROC vs number of Fisher samples (Figure 5)",
    "layerwise": "layer-wise AUROC per layer and OOD set, DIAG and EKFAC (Appendix D)",
}


def run_preset(preset: str, checkpoint: str | os.PathLike, results: str | os.PathLike | None = None,
               settings: EvalSettings | None = None, progress: ProgressFn | None = None,
               show_progress: bool = True, **options: Any) -> Any:
    """Run a named experiment (see :data:`PRESETS`) on ``checkpoint``; ``options`` go to the
    experiment method (e.g. ``strengths``, ``repeats``, ``sizes``, ``n``)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
    ev = Evaluation(checkpoint, results, settings, progress, show_progress)
    fn = getattr(ev, preset.replace("-", "_"))
    return fn(**options)


__all__ = ["Evaluation", "EvalSettings", "MethodSpec", "Unit", "PRESETS", "run_preset", "parse_method",
           "compute_metrics", "compute_layer_metrics", "subset_indices", "overall_pick", "dataset_role",
           "BRIGHTNESS", "PERTURBATIONS", "CAPACITIES", "FISHER_SAMPLE_SIZES"]


# --------------------------------------------------------------------------------------------
# Command line (registered in rose_core.cli)
# --------------------------------------------------------------------------------------------

def _kv_list(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} {item!r} must look like KEY=VALUE.")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def cli_evaluate(args) -> int:
    """Handler of ``python -m rose_core evaluate``; prints a short summary per preset."""
    from rose_core.checkpoint import read_card

    kind = read_card(args.checkpoint)["kind"]
    presets = _csv(args.preset) or (["table2"] if kind == "vae" else ["table5"])
    caps = dict(DEFAULT_CAPS)
    caps.update({k: int(v) for k, v in _kv_list(args.cap, "--cap").items()})
    rose = {k: _parse_value(v) for k, v in _kv_list(args.rose, "--rose").items()}
    settings = EvalSettings(
        n_in=args.n_in if args.n_in is not None else (5000 if kind == "vae" else 1000), n_ood=args.n_ood,
        ood_sets=_csv(args.ood_sets), methods=split_methods(args.methods), seed=args.seed, n_fit=args.n_fit, caps=caps,
        method_sets={k: _csv(v) for k, v in _kv_list(args.only, "--only").items()},
        overall_per_set=args.overall_per_set, k=args.k, rose=rose, batch_size=args.batch_size, device=args.device)
    ev = Evaluation(args.checkpoint, args.results, settings, show_progress=not args.quiet)
    for preset in presets:
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
        t0 = time.perf_counter()
        opts: dict[str, Any] = {}
        if preset == "brightness":
            if args.strengths:
                opts["strengths"] = [float(v) for v in _csv(args.strengths)]
            if args.repeats:
                opts["repeats"] = args.repeats
            opts["n"] = args.n_per_set
            opts["methods"] = split_methods(args.brightness_methods)
            opts["ood_sets"] = _csv(args.brightness_sets)
        elif preset == "fisher-samples":
            if args.sizes:
                opts["sizes"] = [int(v) for v in _csv(args.sizes)]
            if args.repeats:
                opts["repeats"] = args.repeats
            opts.update(fisher=args.fisher, n_norm=args.n_norm, n_eval_in=args.n_eval_in,
                        n_eval_per_set=args.n_eval_per_set)
        elif preset == "throughput":
            opts.update(n=args.throughput_n, min_seconds=args.min_seconds)
        elif preset == "perturbations":
            opts["train_missing"] = args.train_missing
        out = getattr(ev, preset.replace("-", "_"))(**opts)
        wall = time.perf_counter() - t0
        print(f"== {preset} on {ev.name}: {wall:.0f} s -> {ev.bundle.folder}")
        if isinstance(out, pd.DataFrame) and not out.empty:
            if "auroc" in out.columns and "method" in out.columns and "ood_set" in out.columns:
                view = out[out["repeat"] == 0] if "repeat" in out.columns else out
                if preset == "brightness":
                    print(view.pivot_table(index=["method", "ood_set"], columns="strength", values="auroc")
                          .round(3).to_string())
                else:
                    print(view.pivot_table(index="ood_set", columns="method", values="auroc").round(3).to_string())
            elif preset == "fisher-samples":
                o = out[out["ood_set"] == "overall"].groupby("n_fit")["auroc"].agg(["mean", "std", "count"])
                print(o.round(4).to_string())
            else:
                print(out.round(4).to_string())
        elif isinstance(out, dict):
            print(json.dumps(out, indent=2, default=str))
    import shlex
    import sys

    cmd = "python -m rose_core evaluate " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("evaluate") + 1:]) \
        if "evaluate" in sys.argv else None
    if cmd:
        ev._set("commands", cmd, time.strftime("%Y-%m-%dT%H:%M:%S"))
        ev._write_manifest()
    missing = ev.bundle.manifest.get("missing", {})
    for what, why in missing.items():
        print(f"skipped {what}: {why}")
    return 0
