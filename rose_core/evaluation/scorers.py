"""Scorer construction for the harness: which companion checkpoints a method needs, what its
scores depend on (the cache key), and the ready scorer.

ROSE comes in two kinds of spec:

* the plain ``rose-ekfac`` / ``rose-diag`` and the options ``n_fisher``, ``layers``, ``damping``
  (and the aggregation ``p``, ``beta``, ``aggregation``): the project's **default fit**,
  :func:`rose_core.defaults.fit_default_rose` — Fisher on training images, z-normalisation and
  calibration on the calibration half of the test split — with the options overriding its fields;
* explicit **training-split variants** (``n_fit``, ``normalization``, ``fit_fraction``): Fisher and
  normalisation on ``n_fit`` training images, as the harness fitted before the default existed
  (kept so that the bundle's variants stay comparable, e.g. ``rose-ekfac:n_fit=10000,normalization=same``).

``typicality`` and ``rose+typicality`` reuse the default ROSE fit of the model kind's Fisher (or
``fisher=``): its calibration ROSE scores and losses are their reference.
Fits are saved in ``<bundle>/fits/`` and reused while their key (settings + weights) is unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rose_core.evaluation.keys import digest, maybe_sha
from rose_core.evaluation.settings import LEGACY_FIT_OPTIONS
from rose_core.methods import (METHODS, ROSE_AGG_OPTIONS, ROSE_LEGACY_OPTIONS, MethodSpec, format_method,
                               format_value, parse_method)
from rose_core.methods import ROSE_FIT_OPTIONS as DEFAULT_FIT_OPTIONS

log = logging.getLogger("rose_core.evaluation")

TYPICALITY = ("typicality", "rose+typicality")


class RoseView:
    """A fitted :class:`RoseScorer` seen with another aggregation (p, β, ReLU/max); the Fisher,
    the normalisation and the calibration arrays are shared (nothing of the fit is changed)."""

    fitted = True

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

    @property
    def calibration_scores(self) -> np.ndarray:
        """This aggregation of the fit's calibration (normalisation) images' z-scores."""
        from rose_core.scorers.rose import aggregate

        if self.base.norm_layer_raw is None:
            raise RuntimeError("The ROSE fit holds no calibration layer scores; refit it.")
        z = (self.base.norm_layer_raw - self.base.norm_mean) / self.base.norm_std
        return aggregate(z, self.p, self.beta, self.aggregation)

    @property
    def calibration_loss(self) -> np.ndarray | None:
        return self.base.calibration_loss

    def score(self, x: torch.Tensor):
        from rose_core.scorers.base import ScoreResult
        from rose_core.scorers.rose import aggregate

        r = self.base.score(x)
        return ScoreResult(aggregate(r.extras["layer_z"], self.p, self.beta, self.aggregation), r.extras)


def _layers(layers):
    """A layer selection as JSON keeps it (a name list, not a tuple), so stored keys compare equal."""
    return list(layers) if isinstance(layers, (list, tuple)) else layers


def _fields(obj) -> dict:
    return asdict(obj) if is_dataclass(obj) else dict(vars(obj))


class Scorers:
    """Mixin of :class:`~rose_core.evaluation.harness.Evaluation`: companions, settings, scorers."""

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
        short = self.in_short_name
        p = self.checkpoint.parent / f"rnd-{short}"
        return p if p.with_name(p.name + ".json").exists() else None

    def method_available(self, method: str) -> tuple[bool, str]:
        """Whether ``method`` can run for this checkpoint, and why not."""
        spec = parse_method(method)
        if spec.base == "likelihood-regret" and self.kind != "vae":
            return False, "Likelihood Regret re-optimises a VAE encoder; it is not defined for Glow."
        if self.kind not in METHODS[spec.base].kinds:
            return False, f"{spec.base} is not defined for a {self.kind} model."
        if spec.base == "likelihood-ratio" and self.background_path(spec) is None:
            return False, (f"no background model ({self.checkpoint}-background); train one with "
                           f"`python -m rose_core train --model {self.kind} --noise-fraction 0.3 "
                           f"--out {self.checkpoint}-background`.")
        if spec.base == "rnd" and self.rnd_path(spec) is None:
            return False, "no RND checkpoint (checkpoints/rnd-fmnist); train one with `python scripts/train_rnd.py`."
        if spec.base == "rnd" and maybe_sha(self.rnd_path(spec)) is None:
            return False, (f"the RND checkpoint {self.rnd_path(spec)} is missing (not committed when trained by "
                           "the perturbations preset: rerun it with --train-missing).")
        if spec.base == "likelihood-ratio" and maybe_sha(self.background_path(spec)) is None:
            return False, f"the background checkpoint {self.background_path(spec)} is missing."
        if spec.base == "input-complexity-jp2":
            from rose_core.scorers.input_complexity import jpeg2000_available
            if not jpeg2000_available():
                return False, "this Pillow has no JPEG 2000 (OpenJPEG) support."
        return True, ""

    # --- ROSE settings -------------------------------------------------------------------------
    def _rose_options(self, spec: MethodSpec) -> dict:
        return {**self.settings.rose, **spec.opts}

    def is_legacy(self, spec: MethodSpec) -> bool:
        """A training-split ROSE variant (``n_fit``/``normalization``/``fit_fraction`` in the spec or in
        ``settings.rose``), not the project's default fit."""
        return spec.is_rose and any(k in self._rose_options(spec) for k in ROSE_LEGACY_OPTIONS)

    def default_rose_fields(self) -> dict:
        """The fields of :func:`rose_core.defaults.default_rose` for this model."""
        from rose_core.defaults import default_rose

        if getattr(self, "_default_fields", None) is None:
            self._default_fields = _fields(default_rose(self.model))
        return dict(self._default_fields)

    def rose_spec_for(self, method: str) -> MethodSpec:
        """The ROSE spec a method's scores come from: itself for ROSE, else (typicality methods) the
        default ROSE of the model kind's Fisher (or ``fisher=``) with the spec's ROSE options."""
        spec = parse_method(method)
        if spec.is_rose:
            return spec
        if spec.base not in TYPICALITY:
            raise ValueError(f"{spec.name} has no ROSE fit.")
        fisher = spec.opts.get("fisher") or self.default_rose_fields()["fisher"]
        opts = {k: v for k, v in spec.options if k in DEFAULT_FIT_OPTIONS + ROSE_AGG_OPTIONS}
        return parse_method(format_method(f"rose-{fisher}", opts))

    def _rose_fit_key(self, spec: MethodSpec) -> dict:
        s, o = self.settings, self._rose_options(spec)
        if self.is_legacy(spec):
            return {"fisher": spec.fisher, "layers": o.get("layers", "default"),
                    "normalization": o.get("normalization", "separate"),
                    "fit_fraction": float(o.get("fit_fraction", s.fit_fraction)),
                    "damping": float(o.get("damping", 1e-8)), "n_fit": int(o.get("n_fit", s.n_fit)),
                    "seed": s.seed, "dataset": self.in_dataset, "split": "train", "weights": self.weights_hash}
        d = self.default_rose_fields()
        return {"definition": "rose_core.defaults.fit_default_rose", "fisher": spec.fisher,
                "layers": _layers(o.get("layers", d["layers"])), "n_fisher": int(o.get("n_fisher", d["n_fisher"])),
                "damping": float(o.get("damping", d["damping"])), "dataset": self.in_dataset,
                "calibration": "calibration half of the test split", "weights": self.weights_hash}

    def _rose_agg(self, spec: MethodSpec) -> dict:
        o = self._rose_options(spec)
        d = {"p": math.inf, "beta": 0.0, "aggregation": "relu"} if self.is_legacy(spec) else self.default_rose_fields()
        p = o.get("p", d["p"])
        return {"p": "inf" if p == math.inf else float(p), "beta": o.get("beta", d["beta"]),
                "aggregation": o.get("aggregation", d["aggregation"])}

    def method_settings(self, method: str) -> dict:
        """Everything a method's scores depend on besides the images (cache key and manifest)."""
        spec = parse_method(method)
        s = self.settings
        if spec.is_rose:
            return {"fit": self._rose_fit_key(spec), **self._rose_agg(spec)}
        if spec.base == "typicality":
            return {"rose_fit": self._rose_fit_key(self.rose_spec_for(spec.name)),
                    "test": "two-sided typicality of the per-sample loss against the calibration half"}
        if spec.base == "rose+typicality":
            return {"rose": self.method_settings(self.rose_spec_for(spec.name).name),
                    "combine": spec.opts.get("combine", "min-p")}
        if spec.base in ("nll", "input-complexity-png", "input-complexity-jp2"):
            return {"k": s.k, "seed": s.seed, "nll": "iwae" if self.kind == "vae" else "exact"}
        if spec.base == "likelihood-ratio":
            bg = self.background_path(spec)
            return {"k": s.k, "seed": s.seed, "background": str(bg), "background_sha256": maybe_sha(bg)}
        if spec.base == "likelihood-regret":
            o = spec.opts
            return {"steps": o.get("steps", 100), "lr": o.get("lr", 1e-4), "weight_decay": o.get("weight_decay", 5e-5),
                    "elbo_samples": o.get("elbo_samples", 20), "k": s.k, "seed": s.seed}
        if spec.base == "rnd":
            p = self.rnd_path(spec)
            return {"rnd": str(p), "rnd_sha256": maybe_sha(p)}
        return {}

    # --- ROSE fits -----------------------------------------------------------------------------
    def _fit_file(self, spec: MethodSpec) -> Path:
        opts = LEGACY_FIT_OPTIONS if self.is_legacy(spec) else DEFAULT_FIT_OPTIONS
        fit_opts = {k: v for k, v in spec.options if k in opts}
        stem = f"rose-{spec.fisher}" + "".join(f"-{k}-{format_value(v)}" for k, v in sorted(fit_opts.items()))
        stem = "".join(c if c.isalnum() or c in "-._" else "_" for c in stem)
        return self.bundle.folder / "fits" / stem

    def _load_fit(self, spec: MethodSpec, fit_key: dict, path: Path):
        """The saved fit when its key matches (and, for a default fit, it has its calibration arrays)."""
        from rose_core.errors import CheckpointError
        from rose_core.scorers.rose import RoseScorer

        stored = self._manifest.get("fits", {}).get(path.name, {})
        if stored.get("key") != fit_key or not path.with_name(path.name + ".json").exists():
            return None
        try:
            scorer = RoseScorer.load(path, self.model)
        except CheckpointError as exc:
            log.warning("Refitting ROSE: %s", exc)
            return None
        if not self.is_legacy(spec) and scorer.norm_layer_raw is None:
            log.warning("Refitting ROSE: the fit %s has no calibration arrays.", path)
            return None
        log.info("Loaded the ROSE fit %s", path)
        return scorer

    def _fit_rose(self, spec: MethodSpec, fit_key: dict):
        from rose_core.scorers.rose import RoseScorer

        if self.is_legacy(spec):
            o = self._rose_options(spec)
            scorer = RoseScorer(self.model, fisher=spec.fisher, layers=fit_key["layers"],
                                normalization=o.get("normalization", "separate"),
                                fit_fraction=fit_key["fit_fraction"], damping=fit_key["damping"],
                                batch_size=self.settings.batch_size)
            x = self.fit_images(fit_key["n_fit"])
            self._report(0, 0, f"fitting {spec.name} on {len(x)} {self.in_dataset} train images")
            return scorer.fit(x)
        from rose_core.defaults import fit_default_rose

        d = self.default_rose_fields()
        d["layers"] = _layers(d["layers"])
        overrides = {k: fit_key[k] for k in ("fisher", "layers", "n_fisher", "damping") if fit_key[k] != d[k]}
        self._report(0, 0, f"fitting {spec.name} (the default ROSE{', ' + str(overrides) if overrides else ''})")
        return fit_default_rose(self.model, self.in_dataset, **overrides)

    def rose_scorer(self, method: str) -> RoseView:
        """The fitted ROSE of a ROSE spec (loaded from ``fits/`` or fitted and saved), seen with the
        spec's aggregation."""
        spec = parse_method(method)
        fit_key = self._rose_fit_key(spec)
        fk = digest(fit_key)
        if fk not in self._fits:
            path = self._fit_file(spec)
            scorer = self._load_fit(spec, fit_key, path)
            if scorer is None:
                t0 = time.perf_counter()
                scorer = self._fit_rose(spec, fit_key)
                fit_s = time.perf_counter() - t0
                scorer.save(path)
                self._set("fits", path.name, {
                    "key": fit_key, "file": f"fits/{path.name}.safetensors", "fit_seconds": round(fit_s, 2),
                    "n_fisher": scorer.n_fisher, "n_norm": scorer.n_norm, "layers": scorer.layer_names,
                    "calibrated": bool(getattr(scorer, "calibrated", False)),
                    "rank_problems": list(getattr(scorer, "fit_problems", []))})
                self._write_manifest()
            self._fits[fk] = scorer
        agg = self._rose_agg(spec)
        return RoseView(self._fits[fk], math.inf if agg["p"] == "inf" else agg["p"], agg["beta"], agg["aggregation"])

    # --- every method --------------------------------------------------------------------------
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
        elif spec.base == "typicality":
            from rose_core.scorers.typicality import TypicalityScorer

            rose = self.rose_scorer(self.rose_spec_for(spec.name).name)
            sc = TypicalityScorer(self.model, batch_size=s.batch_size).fit_losses(rose.calibration_loss)
        elif spec.base == "rose+typicality":
            from rose_core.scorers.typicality import RoseTypicalityScorer

            rose = self.rose_scorer(self.rose_spec_for(spec.name).name)
            sc = RoseTypicalityScorer(rose, combine=spec.opts.get("combine", "min-p")).fit()
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
