"""Live scoring of individual images for the app (no Streamlit here).

:class:`LiveScorer` wraps one model checkpoint and its default ROSE scorer
(:mod:`rose_core.defaults`: the same fit, calibration and Fisher as the CLI and
the harness) and answers, for any uint8 images: the preprocessed model input,
the model's loss (or IWAE NLL) in nats and bits/dim, the ROSE score, the
likelihood typicality test, the verdict at a chosen TPR, the p-values and the
per-layer z-scores.

Where each piece comes from, in order of preference:

* **the ROSE fit**: ``results/<checkpoint>/fits/rose-<fisher>`` written by the
  evaluation harness (source ``"bundle"``) when it is the default definition
  (calibrated on held-out images, the default number of Fisher images); else a
  fit the app made before, cached under ``results/cache/live/<checkpoint>/``
  (``"cache"``; git-ignored); else a new default fit, with progress reported
  through the ``progress`` callback (``"fitted"``). A fit that does not match
  the model's weights, or is not the default definition, is not used, and
  :attr:`LiveScorer.messages` says why.
* **calibration** (threshold and p-values): the fit's own calibration images —
  the calibration half of the in-distribution test split, which no report uses
  (:mod:`rose_core.data.splits`). The typicality test uses the same images'
  losses.
* **the likelihood shown**: the deterministic loss ROSE differentiates by
  default (−ELBO at z = μ for the VAE, exact NLL for Glow; free), or IWAE with
  ``k`` importance samples on request (``nll="iwae"``, slower).

Verdict (the model kind's default, :func:`rose_core.defaults.default_verdict`, unless the caller
picks one):
``"rose"`` calls a sample OOD when its ROSE score is strictly above the
threshold that keeps a fraction ``tpr`` of the calibration scores;
``"rose+typicality"`` thresholds the combined min-p statistic of ROSE's test
and the two-sided likelihood typicality test
(:class:`rose_core.scorers.typicality.RoseTypicalityScorer`), calibrated the
same way. Both p-values are always reported, and :meth:`LiveResult.fired`
names the test that fired.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd

from rose_core.checkpoint import card_path, load_model
from rose_core.data import prepare_images
from rose_core.errors import CheckpointError, InvalidInput
from rose_core.metrics import auroc, threshold_at_tpr
from rose_core.results import Results, results_root

if TYPE_CHECKING:  # torch and the scorers are imported where images are scored: reading tables needs neither
    import torch

    from rose_core.scorers.rose import RoseScorer

__all__ = ["LiveScorer", "LiveResult", "Progress", "checkpoint_name", "MODEL_KINDS", "VERDICTS", "ROBUSTNESS_FILE",
           "BRIGHTNESS_FACTORS", "scorer_identity", "robustness_table", "read_robustness_table", "robustness_lookup"]

Progress = Callable[[float, str], None]
"""``progress(fraction_done, message)``, fraction in [0, 1]."""

MODEL_KINDS = ("vae", "glow")
VERDICTS = ("rose", "rose+typicality")
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
    """ROSE's p-value: upper-tail empirical p of the ROSE score among the calibration scores."""
    p_typicality: np.ndarray
    """Two-sided empirical p of the model's loss among the calibration images' losses (atypically
    high *or* low likelihood)."""
    p_combined: np.ndarray
    """Bonferroni min-p of the two tests: ``min(1, 2·min(p_value, p_typicality))``."""
    verdict_score: np.ndarray
    """The statistic the verdict thresholds: the ROSE score (verdict ``"rose"``) or ``−log p_combined``."""
    verdict_test: str
    layer_z: np.ndarray
    layer_raw: np.ndarray
    layer_names: list[str]
    nll_kind: str
    method: str

    def __len__(self) -> int:
        return len(self.score)

    def is_ood(self, threshold: float) -> np.ndarray:
        """Verdicts: True where the verdict statistic is strictly above ``threshold``."""
        return self.verdict_score > threshold

    def fired(self, threshold: float) -> np.ndarray:
        """Which test called each sample OOD at ``threshold``: ``"rose"``, ``"typicality"``, ``"both"``
        or ``"none"`` (verdict ``"rose"``: ``"rose"`` or ``"none"``)."""
        if self.verdict_test == "rose":
            return np.where(self.score > threshold, "rose", "none")
        from rose_core.scorers.typicality import fired_tests

        return fired_tests(self.p_value, self.p_typicality, threshold, "min-p")

    def to_frame(self, threshold: float | None = None, tpr: float | None = None) -> pd.DataFrame:
        """One row per image: name, loss/NLL, bits/dim, ROSE score, p-values, verdict, test that fired
        and per-layer z-scores."""
        df = pd.DataFrame({
            "image": self.names,
            "nll_nats": self.nll_nats,
            "bits_per_dim": self.bits_per_dim,
            f"{self.method}_score": self.score,
            "p_rose": self.p_value,
            "p_typicality": self.p_typicality,
            "p_combined": self.p_combined,
        })
        if threshold is not None:
            df["verdict_test"] = self.verdict_test
            df["threshold"] = threshold
            if tpr is not None:
                df["tpr"] = tpr
            df["verdict"] = np.where(self.is_ood(threshold), "OOD", "in-distribution")
            df["fired"] = self.fired(threshold)
        for j, layer in enumerate(self.layer_names):
            df[f"z[{layer}]"] = self.layer_z[:, j]
        return df


@dataclass
class _Reference:
    score: np.ndarray
    loss: np.ndarray


class LiveScorer:
    """One checkpoint + its default ROSE scorer + held-out calibration, for scoring images live.

    Parameters: ``checkpoint`` the path of a model checkpoint (``.json`` card or stem);
    ``fisher`` ``None`` (the default per model kind) or ``"ekfac"``/``"diag"``; ``results`` the
    results root (default :func:`rose_core.results.results_root`); ``data_root`` the dataset
    cache (default ``$ROSE_DATA`` or ``./data``); ``cache_dir`` where fits made here are kept
    (default ``<results>/cache/live``); ``n_fisher``/``n_calibration`` override the default fit
    sizes (``None``: the defaults' rule and the whole calibration half); ``verdict`` ``"rose"`` or
    ``"rose+typicality"`` (default: the model kind's, :func:`rose_core.defaults.default_verdict`); ``nll_k`` importance
    samples of the VAE's IWAE NLL when asked for; ``progress`` a :data:`Progress` callback; ``allow_fit=False``
    raises :class:`CheckpointError` instead of fitting when neither the bundle nor the cache has a usable fit.
    """

    def __init__(self, checkpoint: str | os.PathLike, fisher: str | None = None, *,
                 results: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, n_fisher: int | None = None,
                 n_calibration: int | None = None, verdict: str | None = None, seed: int = 0, nll_k: int = 20,
                 batch_size: int = 64, device: str = "cpu", progress: Progress | None = None,
                 allow_fit: bool = True) -> None:
        if fisher not in (None, "ekfac", "diag"):
            raise ValueError(f"fisher must be None, 'ekfac' or 'diag', got {fisher!r}.")
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}.")
        for label, v in (("n_fisher", n_fisher), ("n_calibration", n_calibration)):
            if v is not None and (not isinstance(v, int) or v < 2):
                raise ValueError(f"{label} must be an integer >= 2 or None, got {v!r}.")
        progress = progress or _no_progress
        self.checkpoint = Path(checkpoint)
        self.name = checkpoint_name(checkpoint)
        self.data_root = data_root
        self.seed, self.nll_k = int(seed), int(nll_k)
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
        if not self.dataset:
            raise CheckpointError(f"The card of {self.checkpoint} does not name its training dataset.")
        self.results = Results.for_checkpoint(self.name, results)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else results_root(results) / "cache" / "live"
        self._overrides = {k: v for k, v in (("n_fisher", n_fisher),) if v is not None}
        if fisher is not None:
            self._overrides["fisher"] = fisher
        self.n_calibration = n_calibration
        self.allow_fit = bool(allow_fit)
        self.spec = self._spec()
        self.verdict = self.spec.verdict if verdict is None else verdict
        self.fisher = self.spec.fisher
        self.method = f"rose-{self.fisher}"

        self.rose, self.fit_source = self._load_or_fit(progress)
        self.layer_names = self.rose.layer_names
        self.calibration = self.rose.calibration_scores
        self.calibration_source = (f"{self.rose.n_norm:,} held-out {self.dataset} test images "
                                   "(the calibration half, used by no report)")
        from rose_core.scorers.typicality import RoseTypicalityScorer

        self.combined = RoseTypicalityScorer.from_rose(self.rose, combine="min-p")
        progress(1.0, "Ready")

    # --- set-up ------------------------------------------------------------------------------
    def _spec(self):
        from rose_core.defaults import resolve_defaults

        return resolve_defaults(self.model, self.dataset, self.data_root, **self._overrides)

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
        cal = "all" if self.n_calibration is None else self.n_calibration
        return self.cache_dir / self.name / f"{self.method}-fisher{self.spec.n_fisher}-cal{cal}-seed{self.seed}"

    def _usable(self, scorer: RoseScorer, where: str) -> bool:
        """A loaded fit is used only if it is this definition: held-out calibration with its arrays
        stored, the default number of Fisher images and the same Fisher."""
        why = None
        if not scorer.calibrated or scorer.norm_layer_raw is None or scorer.calibration_loss is None:
            why = "it was not calibrated on held-out images (or predates stored calibration arrays)"
        elif scorer.n_fisher != self.spec.n_fisher:
            why = f"it has {scorer.n_fisher:,} Fisher images, the default is {self.spec.n_fisher:,}"
        elif self.n_calibration is not None and scorer.n_norm != self.n_calibration:
            why = f"it has {scorer.n_norm} calibration images, {self.n_calibration} were asked for"
        if why:
            self.messages.append(f"The {where} ROSE fit was not used: {why}.")
        return why is None

    def _load_or_fit(self, progress: Progress) -> tuple[RoseScorer, str]:
        from rose_core.scorers.rose import RoseScorer

        for stem, source in ((self._bundle_fit_path(), "bundle"), (self._cache_stem(), "cache")):
            if not card_path(stem).exists():
                continue
            progress(0.05, f"Loading the ROSE fit {card_path(stem)}")
            try:
                scorer = RoseScorer.load(stem, self.model)
            except CheckpointError as exc:
                self.messages.append(f"The {source} ROSE fit was not used: {exc}")
                continue
            if self._usable(scorer, source):
                return scorer, source
        if not self.allow_fit:
            raise CheckpointError(f"No usable ROSE fit of {self.name} in {self._bundle_fit_path()} or the live cache, "
                                  "and fitting was not allowed (allow_fit=False).")
        return self._fit(progress), "fitted"

    def _fit(self, progress: Progress) -> RoseScorer:
        from rose_core.defaults import fit_default_rose, fit_work

        total = fit_work(self.model, self.dataset, root=self.data_root, n_calibration=self.n_calibration,
                         **self._overrides)
        done = [0]
        label = (f"Fitting {self.spec.describe(self.n_calibration)} "
                 f"(one time, then cached: {total:,} images through the model)")

        def step(n: int) -> None:
            done[0] += n
            progress(0.05 + 0.9 * min(1.0, done[0] / max(total, 1)), label)

        progress(0.05, label)
        scorer = fit_default_rose(self.model, self.dataset, progress=step, root=self.data_root, seed=self.seed,
                                  batch_size=self.batch_size, n_calibration=self.n_calibration, **self._overrides)
        try:
            scorer.save(self._cache_stem())
        except OSError as exc:  # a read-only folder only costs a refit next time
            self.messages.append(f"The new fit could not be cached ({exc}).")
        return scorer

    def _in_dist_images(self, n: int, seed: int) -> np.ndarray:
        """``n`` in-distribution images of the evaluation half of the test split (never calibration)."""
        from rose_core.data.splits import evaluation_sample

        images = evaluation_sample(self.dataset, n, seed, root=self.data_root).images
        return prepare_images(images, self.image_size, self.channels)

    def _to_tensor(self, prepared: np.ndarray) -> torch.Tensor:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(prepared)).permute(0, 3, 1, 2).float().div_(255.0)
        return t.to(next(self.model.parameters()).device)

    # --- scoring -----------------------------------------------------------------------------
    def threshold(self, tpr: float = 0.95) -> float:
        """The threshold on the verdict statistic that keeps a fraction ``tpr`` of the calibration images
        in-distribution (ROSE scores; or, for ``"rose+typicality"``, their leave-one-out combined scores)."""
        if self.verdict == "rose":
            return threshold_at_tpr(self.calibration, tpr)
        return self.combined.threshold_at(tpr)

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
        from rose_core.scorers.nll import model_nll

        return model_nll(self.model, x, k=self.nll_k, seed=self.seed).numpy()

    def score(self, images: np.ndarray | Sequence[np.ndarray], names: Sequence[str] | None = None, *,
              nll: str = "loss", progress: Progress | None = None) -> LiveResult:
        """Score uint8 images (see :meth:`prepare`). ``nll="loss"`` reports the deterministic loss ROSE
        differentiates (free); ``"iwae"`` the IWAE NLL of the harness's ``nll`` method (slower). The
        typicality test always uses the loss, like its calibration."""
        progress = progress or _no_progress
        prepared = self.prepare(images)
        n = len(prepared)
        names = list(names) if names is not None else [f"image {i + 1}" for i in range(n)]
        if len(names) != n:
            raise ValueError(f"{len(names)} names for {n} images.")
        n_layers = len(self.layer_names)
        scores, z, raw, losses, nlls, combined = [], [], [], [], [], []
        x_all = self._to_tensor(prepared)
        with self._lock:
            for i in range(0, n, self.batch_size):
                progress(i / max(n, 1), f"Scoring images {i + 1}–{min(n, i + self.batch_size)} of {n}")
                x = x_all[i:i + self.batch_size]
                r = self.rose.score(x)
                combined.append(self.combined.combine_result(r))
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
        extra = (lambda key: cat([c.extras[key] for c in combined], (0,)))
        p_combined = extra("p_combined")
        return LiveResult(
            names=names, inputs=prepared, nll_nats=nll_nats, bits_per_dim=nll_nats / (dims * LN2),
            score=score, p_value=extra("p_rose"), p_typicality=extra("p_typicality"), p_combined=p_combined,
            verdict_score=score if self.verdict == "rose" else cat([c.score for c in combined], (0,)),
            verdict_test=self.verdict, layer_z=cat(z, (0, n_layers)), layer_raw=cat(raw, (0, n_layers)),
            layer_names=list(self.layer_names), nll_kind=self.nll_kind if nll == "iwae" else self.loss_kind,
            method=self.method)

    # --- robustness ---------------------------------------------------------------------------
    def reference(self, n: int = 100, seed: int = 1, progress: Progress | None = None) -> _Reference:
        """ROSE scores and deterministic losses of ``n`` in-distribution test images of the evaluation
        half (cached)."""
        key = (n, seed)
        if key not in self._references:
            r = self.score(self._in_dist_images(n, seed), nll="loss", progress=progress)
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
        import torch

        t = torch.from_numpy(np.ascontiguousarray(prepared)).permute(0, 3, 1, 2)
        if perturbation != "none":
            t = perturb.apply(perturbation, t, strength, seed=seed)
        perturbed = t.permute(0, 2, 3, 1).contiguous().numpy()
        r = self.score(perturbed, nll="loss", progress=lambda f, m: progress(0.5 + 0.5 * f, f"OOD: {m}"))
        return {"perturbed": perturbed, "n_in": len(ref.score), "n_ood": len(r.score),
                "auroc": {self.method: auroc(ref.score, r.score), "nll": auroc(ref.loss, r.nll_nats)}}

    def describe(self) -> dict:
        """What the scorer is built from, for display."""
        return {"checkpoint": self.name, "method": self.method, "definition": self.spec.describe(self.rose.n_norm),
                "fit_source": self.fit_source, "n_fisher": self.rose.n_fisher, "n_norm": self.rose.n_norm,
                "layers": list(self.layer_names), "calibration": self.calibration_source,
                "n_calibration": int(len(self.calibration)), "verdict": self.verdict, "nll": self.nll_kind,
                "messages": list(self.messages)}



# --- precomputed live robustness (the Robustness page's brightness bars) ----------------------

ROBUSTNESS_FILE = "live_robustness.json"
"""Written into ``results/<checkpoint>/`` by ``python -m studio.precompute`` (:func:`robustness_table`)."""
BRIGHTNESS_FACTORS = tuple(round(0.2 * k, 1) for k in range(1, 10))
"""The Robustness page's slider: the paper's Table 1 grid, 0.2× to 1.8×."""


def scorer_identity(checkpoint: str | os.PathLike, results: str | os.PathLike | None, fisher: str) -> dict:
    """SHA-256 of what a live scorer's numbers depend on: the model's weights and the bundle's ROSE fit
    (card and weights; ``None`` where missing)."""
    from rose_core.checkpoint import sha256_file, weights_path

    fits = Results.for_checkpoint(checkpoint_name(checkpoint), results).folder / "fits"

    def sha(path: Path) -> str | None:
        return sha256_file(path) if path.exists() else None

    return {"weights": sha(weights_path(card_path(checkpoint))), "fit": sha(fits / f"rose-{fisher}.json"),
            "fit_weights": sha(fits / f"rose-{fisher}.safetensors")}


def robustness_table(live: LiveScorer, ood_sets: Sequence[str], factors: Sequence[float] = BRIGHTNESS_FACTORS,
                     n: int = 64, seed: int = 1, progress: Progress | None = None) -> dict:
    """The live brightness AUROCs of :meth:`LiveScorer.perturbed_auroc` for every OOD set and factor, on the
    images the Robustness page draws (``n`` test images of each set with ``seed``, ``n`` in-distribution
    images of the evaluation half), with the identity of the scorer (:func:`scorer_identity`). Only a
    scorer whose fit comes from the results bundle is accepted: a fit cached on one machine is not shared."""
    from rose_core.data import load_dataset

    if live.fit_source != "bundle":
        raise InvalidInput(f"The live scorer of {live.name} does not use the results bundle's ROSE fit "
                           f"({live.fit_source}); compute the bundle's fit first (python -m rose_core evaluate).")
    progress = progress or _no_progress
    rows = []
    steps = [(s, f) for s in ood_sets for f in factors]
    for k, (ood, factor) in enumerate(steps):
        images = load_dataset(ood, "test", n=n, seed=seed, root=live.data_root).images
        out = live.perturbed_auroc(images, "brightness", factor, n_ref=n, seed=seed,
                                   progress=lambda f, m: progress((k + f) / len(steps), f"{ood} at {factor:.1f}×: {m}"))
        rows.append({"ood_set": ood, "factor": float(factor), "rose": float(out["auroc"][live.method]),
                     "nll": float(out["auroc"]["nll"]), "n_in": int(out["n_in"]), "n_ood": int(out["n_ood"])})
    return {"checkpoint": live.name, "method": live.method, "loss_kind": live.loss_kind, "n": int(n), "seed": int(seed),
            "identity": scorer_identity(live.checkpoint, live.results.folder.parent, live.fisher), "rows": rows}


def read_robustness_table(folder: str | os.PathLike) -> dict | None:
    """The precomputed table in a results folder (``results/<checkpoint>/``), or None when there is none
    or it cannot be read."""
    import json

    path = Path(folder) / ROBUSTNESS_FILE
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return table if isinstance(table, dict) and isinstance(table.get("rows"), list) else None


def robustness_lookup(table: dict | None, identity: dict, method: str, n: int, seed: int, ood_set: str,
                      factor: float) -> dict | None:
    """The precomputed row for one OOD set and factor, in :meth:`LiveScorer.perturbed_auroc`'s shape
    (without the perturbed images), when ``table`` was computed by this very scorer (same identity,
    method, ``n`` and ``seed``); None otherwise."""
    if not table or table.get("identity") != identity or table.get("method") != method \
            or table.get("n") != n or table.get("seed") != seed:
        return None
    for r in table["rows"]:
        if r.get("ood_set") == ood_set and abs(float(r.get("factor", -1)) - float(factor)) < 1e-6:
            return {"n_in": r["n_in"], "n_ood": r["n_ood"], "auroc": {method: r["rose"], "nll": r["nll"]}}
    return None
