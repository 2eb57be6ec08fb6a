"""What the harness scores and how: :class:`EvalSettings` and the experiments' constants.

Everything in :class:`EvalSettings` ends up in the bundle's ``manifest.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from rose_core.methods import ROSE_LEGACY_OPTIONS

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

STRESS_TPR = 0.95
"""The stress preset's verdict threshold keeps this fraction of the calibration images (the app's TPR)."""

CALIBRATION = "calibration"
"""``perturbation`` value of score rows computed on the calibration half of the in-distribution
test split (unperturbed images; used for thresholds only, never for a metric)."""

LEGACY_FIT_OPTIONS = ROSE_LEGACY_OPTIONS + ("layers", "damping")
"""Options of a training-split ROSE variant that change its fit (and its fit file's name)."""

ProgressFn = Callable[[int, int, str], None]


@dataclass
class EvalSettings:
    """What to score and how. Everything here ends up in ``manifest.json``."""

    n_in: int = 5000
    """In-distribution evaluation images: drawn from the *evaluation half* of the test split
    (:func:`rose_core.data.splits.evaluation_sample`), never from its calibration half."""
    n_ood: int = 1000
    """Images per OOD set (all of them when a set is smaller)."""
    ood_sets: Sequence[str] | None = None
    """OOD datasets; None = every available dataset except the in-distribution one and the stress suite."""
    methods: Sequence[str] | None = None
    """Methods; None = :func:`rose_core.methods.default_methods` of the model kind."""
    seed: int = 0
    n_fit: int = 2000
    """Training images of the explicit training-split ROSE variants (``rose-ekfac:n_fit=…``,
    ``normalization=…``, ``fit_fraction=…``) that give no ``n_fit`` of their own. The plain ROSE
    methods use the project's default fit (:mod:`rose_core.defaults`)."""
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
    """ROSE settings for every ROSE method (``p``, ``aggregation``, ``n_fisher``, ``damping``, …)."""
    background: str | None = None
    """Likelihood-Ratio background checkpoint; None = ``<checkpoint>-background`` if it exists."""
    rnd: str | None = None
    """RND checkpoint; None = ``checkpoints/rnd-<dataset short name>`` next to the checkpoint."""
    batch_size: int = 128
    chunk: int = 256
    """Images per scoring call (progress granularity)."""
    n_cal: int | None = None
    """Calibration-half images scored per method for thresholds (stress preset); None = all of them."""
    device: str = "cpu"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ood_sets"] = None if self.ood_sets is None else list(self.ood_sets)
        d["methods"] = None if self.methods is None else list(self.methods)
        return d
