"""Generative models: the paper's VAE and Glow, built from a kind and a config; any other model through
:class:`ScorableModel` / :class:`ClassifierModel` (:mod:`rose_core.models.wrap`)."""

from __future__ import annotations

from rose_core.models.base import GenerativeModel
from rose_core.models.glow import GLOW_CONFIGS, Glow, GlowConfig
from rose_core.models.vae import VAE, VAE_CONFIGS, VAEConfig
from rose_core.models.wrap import ClassifierModel, ScorableModel

__all__ = ["GenerativeModel", "VAE", "VAEConfig", "VAE_CONFIGS", "Glow", "GlowConfig", "GLOW_CONFIGS",
           "build_model", "ScorableModel", "ClassifierModel"]

_KINDS = {"vae": (VAE, VAEConfig, VAE_CONFIGS), "glow": (Glow, GlowConfig, GLOW_CONFIGS)}


def build_model(kind: str, config: dict | str = "fmnist") -> GenerativeModel:
    """Build a model from its kind (``vae``/``glow``) and a preset name or config dict."""
    if kind not in _KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; expected one of {sorted(_KINDS)}.")
    cls, cfg_cls, presets = _KINDS[kind]
    if isinstance(config, str):
        if config not in presets:
            raise ValueError(f"Unknown {kind} preset {config!r}; expected one of {sorted(presets)}.")
        cfg = presets[config]
    else:
        cfg = cfg_cls(**config)
    return cls(cfg)
