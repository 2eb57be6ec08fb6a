"""Classifier-based OOD detectors from ``pytorch-ood`` (pinned in the ``classifiers`` extra), run on the same
classifier and the same images as ROSE in the ``figure6`` preset.

MSP (:class:`~pytorch_ood.detector.MaxSoftmax`), Energy (:class:`~pytorch_ood.detector.EnergyBased`, T = 1),
ODIN (:class:`~pytorch_ood.detector.ODIN`, the library's defaults ε = 0.0014, T = 1000), Mahalanobis
(:class:`~pytorch_ood.detector.Mahalanobis`, class-conditional Gaussians with a shared covariance, no input
preprocessing), KNN (:class:`~pytorch_ood.detector.KNN`, k = 50 on L2-normalised features) and ViM
(:class:`~pytorch_ood.detector.ViM`, principal subspace of ``min(1000, D // 2)`` dimensions). Features are the
input of the classifier's last ``nn.Linear`` (its penultimate layer); Mahalanobis, KNN and ViM are fitted on the
same training images (with their labels) as ROSE's Fisher. Every score is "higher = more OOD", as pytorch-ood's.
Nothing here re-implements a detector: without pytorch-ood, :func:`available` says why and the preset records it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

DETECTORS = ("MSP", "Energy", "ODIN", "Mahalanobis", "KNN", "ViM")


def available() -> tuple[bool, str]:
    """``(True, version)`` when pytorch-ood imports, else ``(False, why)``."""
    try:
        import pytorch_ood
    except Exception as exc:   # ImportError, or a broken install
        return False, f"pytorch-ood cannot be imported ({type(exc).__name__}: {exc}); pip install -e '.[classifiers]'"
    return True, f"pytorch-ood {pytorch_ood.__version__}"


class Penultimate(nn.Module):
    """The input of ``module``'s last ``nn.Linear``: the features the feature-based detectors use."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(module).__name__} has no nn.Linear layer to take features from.")
        self.module, self.last = module, linears[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = []
        handle = self.last.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
        try:
            self.module(x)
        finally:
            handle.remove()
        return seen[-1].flatten(1)


def _batches(x: torch.Tensor, batch_size: int):
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


def detector_scores(module: nn.Module, fit_x: torch.Tensor, fit_y: torch.Tensor, sets: dict[str, torch.Tensor],
                    batch_size: int = 64, progress=None) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Scores of every detector on every tensor of ``sets`` (name → images ``(N, 1, 32, 32)``), and each
    detector's scoring time in seconds over all of them (fitting excluded). ``progress(n, message)`` per batch."""
    from pytorch_ood.detector import KNN, ODIN, EnergyBased, Mahalanobis, MaxSoftmax, ViM

    module.eval()
    encoder = Penultimate(module)
    n_classes = encoder.last.out_features
    if len(torch.unique(fit_y)) != n_classes:
        raise ValueError(f"The detectors' fit images hold {len(torch.unique(fit_y))} of the {n_classes} classes; "
                         "Mahalanobis and ViM need every class: fit on more images.")
    with torch.no_grad():
        fit_z = torch.cat([encoder(b) for b in _batches(fit_x, batch_size)])
    dim = fit_z.shape[1]
    detectors = {
        "MSP": MaxSoftmax(module), "Energy": EnergyBased(module), "ODIN": ODIN(module),
        "Mahalanobis": Mahalanobis(encoder).fit_features(fit_z, fit_y),
        "KNN": KNN(encoder, k=min(50, len(fit_z))).fit_features(fit_z, fit_y),
        "ViM": ViM(encoder, d=min(1000, dim // 2), w=encoder.last.weight, b=encoder.last.bias).fit_features(fit_z, fit_y),
    }
    scores: dict[str, dict[str, np.ndarray]] = {m: {} for m in DETECTORS}
    seconds = {m: 0.0 for m in DETECTORS}
    for method in DETECTORS:
        det = detectors[method]
        for name, x in sets.items():
            parts = []
            t0 = time.perf_counter()
            for b in _batches(x, batch_size):
                if method == "ODIN":   # a gradient step on the input: not under no_grad
                    parts.append(det.predict(b).detach())
                else:
                    with torch.no_grad():
                        parts.append(det.predict(b))
                if progress is not None:
                    progress(len(b), f"{method} on {name}")
            seconds[method] += time.perf_counter() - t0
            scores[method][name] = torch.cat(parts).double().numpy()
    return scores, seconds
