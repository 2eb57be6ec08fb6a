"""The harness: :class:`Evaluation` scores one checkpoint with the OOD methods and keeps its
results bundle (:mod:`rose_core.results`) up to date, computing only what the cache lacks.

The class is assembled from mixins with one job each: :class:`~.sampling.Sampling` (which images),
:class:`~.scorers.Scorers` (which scorer, and what its scores depend on), :class:`~.store.Store`
(cache, lock, manifest) and the presets (:mod:`.paper`, :mod:`.speed`, :mod:`.stress`). This module
holds the scoring loop itself.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch

from rose_core.evaluation.keys import Unit, digest, file_sha256, strength_key
from rose_core.evaluation.metrics import compute_layer_metrics, compute_metrics
from rose_core.evaluation.paper import PaperPresets
from rose_core.evaluation.sampling import Sampling
from rose_core.evaluation.scorers import TYPICALITY, Scorers
from rose_core.evaluation.settings import CALIBRATION, EvalSettings, ProgressFn
from rose_core.evaluation.speed import SpeedPresets
from rose_core.evaluation.store import Store
from rose_core.evaluation.stress import StressPreset
from rose_core.methods import NLL_BASED, MethodSpec, parse_method
from rose_core.results import Results

log = logging.getLogger("rose_core.evaluation")

_ORDER = {"nll": 0, "input-complexity-png": 1, "input-complexity-jp2": 1, "likelihood-ratio": 2,
          "likelihood-regret": 9}
"""Scoring order: the shared NLL first, the slow Likelihood Regret last (an interrupted run keeps
everything else)."""


def stress_names(datasets: Iterable[str]) -> list[str]:
    """Which of ``datasets`` belong to the stress suite (names the registry does not know are not)."""
    from rose_core.data import get_card
    from rose_core.errors import UnknownDataset

    out = []
    for d in datasets:
        try:
            if getattr(get_card(d), "stress_group", None) is not None:
                out.append(d)
        except UnknownDataset:
            pass
    return out


class Evaluation(PaperPresets, SpeedPresets, StressPreset, Store, Scorers, Sampling):
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
        self._layer_memo: dict[tuple, tuple] = {}
        """(fit, unit, indices) -> (indices, layer raw, layer z, layer names, per-sample loss or None)."""
        self.scorer_calls: dict[str, int] = {}
        """How many batches each method's scorer was called on in this session (tests use it)."""
        self._manifest = self.bundle.manifest if self.bundle.exists else {}
        self._dirty: dict[tuple[str, str], Any] = {}
        """Manifest entries written by this session (merged into the file under the lock)."""
        self._lock_depth = 0
        if self._manifest.get("checkpoint", {}).get("weights_sha256") not in (None, self.weights_hash):
            log.warning("The checkpoint's weights changed since the bundle %s was written: its cached scores "
                        "will be recomputed.", self.bundle.folder)


    # --- progress ------------------------------------------------------------------------------
    def _report(self, done: int, total: int, message: str) -> None:
        log.info("%s (%d/%d)", message, done, total)
        if self.progress is not None:
            try:
                self.progress(done, total, message)
            except Exception:  # noqa: BLE001 - a UI callback must never break a run
                log.exception("progress callback failed")

    def _count(self, method: str) -> None:
        self.scorer_calls[method] = self.scorer_calls.get(method, 0) + 1

    # --- NLL sharing ---------------------------------------------------------------------------
    def _nll(self, which: str, unit: Unit, idx: np.ndarray, x: torch.Tensor,
             tick: Callable[[int], None] | None = None) -> np.ndarray:
        """Per-image NLL (nats) of the main model (``which="main"``) or the background model,
        memoised per image set and, for the main model, read back from stored ``nll`` rows."""
        from rose_core.scorers.nll import model_nll

        mkey = (which, unit.dataset, unit.perturbation, strength_key(unit.strength), unit.repeat,
                digest(self.method_settings("nll")) if which == "main" else which)
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


    # --- scoring one unit ----------------------------------------------------------------------
    def _score_unit(self, unit: Unit, idx: np.ndarray, bar, done: list[int], total: int
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        spec = parse_method(unit.method)
        x = self.inputs(unit.dataset, idx, unit.perturbation, unit.strength, unit.repeat)
        nll = np.full(len(idx), math.nan)
        layer_frame = None

        def tick(k: int) -> None:
            done[0] += k
            if bar is not None:
                bar.update(k)
            self._report(done[0], total, f"{unit.method} on {unit.dataset}"
                         + ("" if unit.perturbation == "none" else f" ({unit.perturbation} {strength_key(unit.strength)})"))

        if spec.base in NLL_BASED:
            score, nll = self._score_nll_based(spec, unit, idx, x, tick)
        elif spec.is_rose or spec.base in TYPICALITY:
            score, layer_frame = self._score_rose_based(spec, unit, idx, x, tick)
        else:
            score, nll = self._score_plain(spec, x, tick)
        frame = pd.DataFrame({
            "dataset": unit.dataset, "is_ood": unit.dataset != self.in_dataset, "index": idx.astype(np.int64),
            "method": unit.method, "perturbation": unit.perturbation, "strength": float(unit.strength),
            "repeat": int(unit.repeat), "score": np.asarray(score, dtype=np.float64),
            "nll_nats": np.asarray(nll, dtype=np.float64)})
        return frame, layer_frame

    def _score_nll_based(self, spec: MethodSpec, unit: Unit, idx: np.ndarray, x: torch.Tensor, tick):
        """NLL, Input Complexity and the Likelihood Ratio from the one shared NLL (module doc of
        :mod:`rose_core.evaluation`); the NLL passes (two for the Likelihood Ratio) share the bar."""
        n = len(idx)
        passes = 2 if spec.base == "likelihood-ratio" else 1
        ticked = [0]

        def part(k: int) -> None:
            k = min(k // passes, n - ticked[0])
            ticked[0] += k
            tick(k)

        main = self._nll("main", unit, idx, x, part)
        if spec.base == "nll":
            score = main
        elif spec.base == "likelihood-ratio":
            score = main - self._nll(spec.name, unit, idx, x, part)
        else:
            from rose_core.scorers.input_complexity import compressed_bits
            from rose_core.scorers.nll import LN2

            score = main / LN2 - compressed_bits(x, spec.base.rsplit("-", 1)[1])
        self._count(spec.name)
        tick(n - ticked[0])
        return score, main

    def _rose_layers(self, rose_spec: MethodSpec, unit: Unit, idx: np.ndarray, x: torch.Tensor, tick,
                     need_loss: bool) -> tuple:
        """``(raw, z, names, loss)`` of ``rose_spec``'s fit on the unit's images: memoised per fit, read
        back from ``layers.parquet`` for an aggregation variant, else scored (counted for the unit's method)."""
        sc = self.rose_scorer(rose_spec.name)
        lkey = (digest(self._rose_fit_key(rose_spec)), unit.key.split("|", 1)[1], digest(np.asarray(idx).tolist()))
        if lkey not in self._layer_memo and not rose_spec.is_main_rose and unit.perturbation == "none" \
                and unit.repeat == 0:
            self._layers_from_bundle(rose_spec, unit, idx, lkey)
        if lkey in self._layer_memo and (not need_loss or self._layer_memo[lkey][4] is not None):
            _, raw, z, names, loss = self._layer_memo[lkey]
            tick(len(idx))
            return raw, z, names, loss
        raws, zs, losses = [], [], []
        for i in range(0, len(idx), self.settings.chunk):
            r = sc.score(x[i:i + self.settings.chunk])
            raws.append(r.extras["layer_raw"])
            zs.append(r.extras["layer_z"])
            losses.append(r.extras["loss"])
            self._count(unit.method)
            tick(len(r))
        out = (np.concatenate(raws), np.concatenate(zs), sc.layer_names, np.concatenate(losses))
        self._layer_memo[lkey] = (idx, *out)
        return out

    def _score_rose_based(self, spec: MethodSpec, unit: Unit, idx: np.ndarray, x: torch.Tensor, tick):
        """ROSE (any aggregation) and the typicality methods, which reuse the default ROSE fit's
        layer scores and per-sample losses of the same images."""
        from rose_core.scorers.base import ScoreResult
        from rose_core.scorers.rose import aggregate

        rose_spec = self.rose_spec_for(spec.name)
        view = self.rose_scorer(rose_spec.name)
        raw, z, names, loss = self._rose_layers(rose_spec, unit, idx, x, tick, need_loss=not spec.is_rose)
        rose_score = aggregate(z, view.p, view.beta, view.aggregation)
        layer_frame = None
        if spec.is_rose:
            score = rose_score
            if spec.is_main_rose and unit.perturbation == "none" and unit.repeat == 0:
                layer_frame = pd.DataFrame({
                    "dataset": unit.dataset, "is_ood": unit.dataset != self.in_dataset,
                    "index": np.repeat(idx, len(names)).astype(np.int64), "fisher": spec.fisher,
                    "layer": np.tile(names, len(idx)), "raw": raw.reshape(-1), "z": z.reshape(-1)})
        elif spec.base == "typicality":
            score = self.scorer(spec.name).score_losses(loss).score
        else:
            result = ScoreResult(rose_score, {"loss": loss, "layer_raw": raw, "layer_z": z})
            score = self.scorer(spec.name).combine_result(result).score
        return score, layer_frame

    def _score_plain(self, spec: MethodSpec, x: torch.Tensor, tick):
        """Any other method: its own scorer, in chunks (Likelihood Regret reports ``nll_before``)."""
        from rose_core.scorers.base import ScoreResult

        sc = self.scorer(spec.name)
        parts = []
        for i in range(0, len(x), self.settings.chunk):
            r = sc.score(x[i:i + self.settings.chunk])
            parts.append(r)
            self._count(spec.name)
            tick(len(r))
        res = ScoreResult.concat(parts)
        return res.score, res.extras.get("nll_before", np.full(len(x), math.nan))

    def _layers_from_bundle(self, spec: MethodSpec, unit: Unit, idx: np.ndarray, lkey: tuple) -> None:
        """Fill the layer memo for an aggregation variant from the stored layers of the main fit
        (the per-sample losses are not stored: None)."""
        main = parse_method(spec.base)
        if digest(self._rose_fit_key(main)) != lkey[0]:
            return
        if self._stored_rows(Unit(main.name, unit.dataset), idx) is None:
            return
        lay = self.bundle.table("layers")
        lay = lay[(lay["dataset"] == unit.dataset) & (lay["fisher"] == main.fisher)]
        names = self.rose_scorer(spec.name).layer_names
        if lay.empty or set(lay["layer"].unique()) != set(names):
            return
        raw = lay.pivot(index="index", columns="layer", values="raw")
        z = lay.pivot(index="index", columns="layer", values="z")
        if not set(int(i) for i in idx) <= set(int(i) for i in raw.index):
            return
        self._layer_memo[lkey] = (idx, raw.loc[idx, names].to_numpy(), z.loc[idx, names].to_numpy(), names, None)

    # --- scoring many units --------------------------------------------------------------------
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
                               None if n is None else n.get(u.dataset), calibration=u.perturbation == CALIBRATION)
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
            order = sorted(todo, key=lambda t: (_ORDER.get(parse_method(t[0].method).base, 5), t[0].method,
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

    # --- derived tables ------------------------------------------------------------------------
    def update_metrics(self) -> pd.DataFrame:
        """Rebuild ``metrics`` and ``layer_metrics`` from the stored scores (the stress suite is
        not part of Overall)."""
        s = self.settings
        with self._locked():
            scores = self.bundle.table("scores")
            stress = stress_names(scores["dataset"].unique()) if len(scores) else []
            metrics, composition = compute_metrics(scores, self.in_dataset, s.overall_per_set, s.seed, stress)
            self.bundle.write("metrics", metrics)
            self.bundle.write("layer_metrics", compute_layer_metrics(self.bundle.table("layers"), self.in_dataset,
                                                                     s.overall_per_set, s.seed, stress))
            self._set("overall", None, {"per_set": s.overall_per_set, "seed": s.seed, "composition": composition,
                                        "note": "Overall = up to per_set random images of each scored OOD set "
                                                "(stand-ins included; see ood_sets for which are stand-ins; the "
                                                "stress suite is reported on its own)."})
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
