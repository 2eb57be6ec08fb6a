"""The named experiments (presets) and :func:`run_preset`."""

from __future__ import annotations

import os
from typing import Any

from rose_core.evaluation.settings import EvalSettings, ProgressFn

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
    "stress": "stress suite: AUROC on the ood group, false alarms at 95 % TPR (threshold from the calibration "
              "half) on the benign and covariate groups and on the in-distribution evaluation images",
    "figure6": "classifiers only: layer-wise ROSE-DIAG AUROC (cross-entropy at the predicted label, every "
               "conv/linear layer) vs MNIST, KMNIST and NotMNIST or their stand-ins (Figure 6)",
}
CLASSIFIER_PRESETS = ("figure6",)
"""The presets for classifier checkpoints (``kind: "classifier"``); every other preset is for generative models."""


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {', '.join(PRESETS)}.")
    return preset


def run_preset(preset: str, checkpoint: str | os.PathLike, results: str | os.PathLike | None = None,
               settings: EvalSettings | None = None, progress: ProgressFn | None = None,
               show_progress: bool = True, **options: Any) -> Any:
    """Run a named experiment (see :data:`PRESETS`) on ``checkpoint``; ``options`` go to the
    experiment method (e.g. ``strengths``, ``repeats``, ``sizes``, ``n``)."""
    from rose_core.evaluation.harness import Evaluation

    check_preset(preset)
    if preset == "figure6":
        from rose_core.evaluation.figure6 import figure6

        return figure6(checkpoint, results, progress=progress, **options)
    ev = Evaluation(checkpoint, results, settings, progress, show_progress)
    return getattr(ev, preset.replace("-", "_"))(**options)
