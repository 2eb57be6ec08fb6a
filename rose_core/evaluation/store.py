"""The bundle as a cache: unit keys, stored rows, the bundle lock and the manifest.

Each scored unit (method, dataset, perturbation, strength, repeat) is keyed in the manifest by its
number of images, seed, the digest of the image indices, the method's settings and the
checkpoint's weights hash. Processes writing the same bundle take turns under a file lock
(``<bundle>/.lock``) and re-read what the others wrote before every write.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import platform
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from rose_core.evaluation.keys import Unit, card_dict, digest, strength_key
from rose_core.methods import parse_method

log = logging.getLogger("rose_core.evaluation")

EXPERIMENT_SETTINGS = ("n_in", "n_ood", "seed", "n_fit", "k", "caps", "method_sets", "overall_per_set", "n_cal")


class Store:
    """Mixin of :class:`~rose_core.evaluation.harness.Evaluation`: cache entries, lock, manifest."""

    def _unit_key(self, unit: Unit, idx: np.ndarray) -> dict:
        return {"method": unit.method, "dataset": unit.dataset, "perturbation": unit.perturbation,
                "strength": strength_key(unit.strength), "repeat": unit.repeat, "n": int(len(idx)),
                "seed": self.settings.seed, "indices": digest(np.asarray(idx).tolist()),
                "weights": self.weights_hash, "settings": digest(self.method_settings(unit.method))}

    def _stored_rows(self, unit: Unit, idx: np.ndarray | None = None) -> pd.DataFrame | None:
        """The stored score rows of ``unit`` if the cache entry is valid (for ``idx`` if given)."""
        entry = self._manifest.get("cache", {}).get(unit.key)
        if entry is None:
            return None
        if entry.get("weights") != self.weights_hash or entry.get("seed") != self.settings.seed:
            return None
        if entry.get("settings") != digest(self.method_settings(unit.method)):
            return None
        if idx is not None and {k: v for k, v in entry.items() if k != "seconds"} != self._unit_key(unit, idx):
            return None
        scores = self.bundle.table("scores")
        rows = scores[unit.mask(scores)]
        if len(rows) != entry.get("n"):
            return None
        return rows

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
                                "sample": "evaluation half of the test split (rose_core.data.splits."
                                          "evaluation_sample); the calibration half is used for fits and "
                                          "thresholds only",
                                "card": card_dict(get_card(self.in_dataset))}
        m["fit_data"] = {"name": self.in_dataset,
                         "default": "rose-ekfac / rose-diag (and their n_fisher/layers/damping options): "
                                    "rose_core.defaults.fit_default_rose — Fisher on training images, "
                                    "z-normalisation and calibration on the calibration half of the test split",
                         "variants": {"split": "train", "n_fit": s.n_fit, "seed": s.seed, "fit_fraction": s.fit_fraction,
                                      "note": "explicit n_fit/normalization/fit_fraction variants: Fisher on "
                                              "floor(n_fit·fit_fraction) training images, z-normalisation on the "
                                              "rest (interleaved), or on the same images with normalization=same"}}
        scored = sorted({e["dataset"] for e in m.get("cache", {}).values()} - {self.in_dataset})
        sets = m.setdefault("ood_sets", {})
        for ds in scored:
            n_test = len(self._images[(ds, "test")]) if (ds, "test") in self._images else sets.get(ds, {}).get("n_test")
            sets[ds] = {**card_dict(get_card(ds)), "n_test": None if n_test is None else int(n_test)}
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
                                                     if k in EXPERIMENT_SETTINGS}, **info})
        self._write_manifest()

    # ==========================================================================================
