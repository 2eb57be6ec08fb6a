"""Build any OOD scorer by name.

    scorer = build_scorer("likelihood-ratio", vae, background_model=bg_vae)
    scorer = build_scorer("rnd", None, rnd="checkpoints/rnd-fmnist")      # or rnd=<RNDScorer>
    scorer = build_scorer("rose-ekfac", vae, ...)                         # ROSE (rose_core.scorers.rose)

Every scorer returned is higher = more OOD. Extra keyword arguments go to the
scorer's constructor.
"""

from __future__ import annotations

import os
from typing import Any

from rose_core.methods import METHODS
from rose_core.models.base import GenerativeModel
from rose_core.scorers.base import Scorer

# Method ids, names, kinds and options live in rose_core.methods (the one registry).


def build_scorer(method: str, model: GenerativeModel | None, **kwargs: Any) -> Scorer:
    """A scorer for ``method`` (an id of :data:`rose_core.methods.METHODS`) on ``model``; ``kwargs`` go to its constructor."""
    key = str(method).lower().replace("_", "-")

    # --- ROSE: rose_core.scorers.rose is imported lazily (it may not exist yet) ----------
    if key in ("rose-ekfac", "rose-diag"):
        try:
            from rose_core.scorers.rose import RoseScorer
        except ImportError as exc:
            raise ImportError(f"{method!r} needs rose_core.scorers.rose.RoseScorer, which is not available "
                              f"in this installation ({exc}).") from exc
        kwargs.setdefault("fisher", key.split("-", 1)[1])
        return RoseScorer(_need_model(key, model), **kwargs)
    # -----------------------------------------------------------------------------------

    # --- likelihood typicality (rose_core.scorers.typicality) --------------------------
    if key == "typicality":
        from rose_core.scorers.typicality import TypicalityScorer
        return TypicalityScorer(_need_model(key, model), **kwargs)
    if key == "rose+typicality":  # kwargs: combine=, tpr=, the rest go to the RoseScorer
        from rose_core.scorers.rose import RoseScorer
        from rose_core.scorers.typicality import RoseTypicalityScorer
        combined = {k: kwargs.pop(k) for k in ("combine", "tpr") if k in kwargs}
        return RoseTypicalityScorer(RoseScorer(_need_model(key, model), **kwargs), **combined)
    # -----------------------------------------------------------------------------------

    if key == "nll":
        from rose_core.scorers.nll import NLLScorer
        return NLLScorer(_need_model(key, model), **kwargs)
    if key == "likelihood-regret":
        from rose_core.scorers.likelihood_regret import LikelihoodRegretScorer
        return LikelihoodRegretScorer(_need_model(key, model), **kwargs)
    if key == "likelihood-ratio":
        from rose_core.scorers.likelihood_ratio import LikelihoodRatioScorer
        if kwargs.get("background_model") is None:
            raise ValueError("'likelihood-ratio' needs background_model=<the background model> (the same "
                             "architecture trained on noised inputs, e.g. checkpoints/vae-fmnist-background).")
        return LikelihoodRatioScorer(_need_model(key, model), **kwargs)
    if key in ("input-complexity-png", "input-complexity-jp2"):
        from rose_core.scorers.input_complexity import InputComplexityScorer
        if "compressor" in kwargs:
            raise ValueError(f"{method!r} fixes the compressor; don't pass compressor=.")
        return InputComplexityScorer(_need_model(key, model), compressor=key.rsplit("-", 1)[1], **kwargs)
    if key == "rnd":
        from rose_core.scorers.rnd import RNDScorer
        rnd = kwargs.pop("rnd", None)
        path = kwargs.pop("path", None)
        if kwargs:
            raise TypeError(f"'rnd' takes only rnd= or path=, got {sorted(kwargs)}.")
        if isinstance(rnd, RNDScorer):
            return rnd
        if rnd is None and path is None:
            raise ValueError("'rnd' needs a trained RND: rnd=<RNDScorer> or rnd=/path=<checkpoint path> "
                             "(train one with scripts/train_rnd.py).")
        if isinstance(rnd, (str, os.PathLike)) or path is not None:
            return RNDScorer.load(rnd if rnd is not None else path)
        raise TypeError(f"rnd= must be an RNDScorer or a checkpoint path, got {type(rnd).__name__}.")
    raise ValueError(f"Unknown OOD method {method!r}; expected one of {', '.join(METHODS)}.")


def _need_model(method: str, model: GenerativeModel | None) -> GenerativeModel:
    if model is None:
        raise ValueError(f"{method!r} needs a generative model (VAE or Glow).")
    return model
