"""Which images the harness scores: the in-distribution evaluation sample (evaluation half of the
test split), the calibration half, the OOD subsets, the training images of the explicit
training-split ROSE variants, and the model inputs made from them."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from rose_core.methods import default_methods, parse_method

log = logging.getLogger("rose_core.evaluation")


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


def evaluation_indices(dataset: str, n: int | None, seed: int) -> np.ndarray:
    """Indices (sorted, in the full test split) of the images that
    :func:`rose_core.data.splits.evaluation_sample` returns for ``(dataset, n, seed)``: a prefix of
    the evaluation half for seed 0 (``n = 1000`` is the historical sample, so cached units stay
    valid), a seeded draw from it otherwise. Never a calibration image."""
    from rose_core.data import splits

    half = splits.evaluation_indices(dataset)
    if n is None:
        return np.sort(half)
    if n < 1 or n > len(half):
        raise ValueError(f"The evaluation half of {dataset!r} has {len(half)} images; asked for {n}.")
    pick = half[:n] if seed == splits.HISTORICAL_SEED else np.random.default_rng(seed).choice(half, size=n,
                                                                                               replace=False)
    return np.sort(pick)


def calibration_indices(dataset: str, n: int | None = None) -> np.ndarray:
    """Indices (sorted) of the calibration half of ``dataset``'s test split, the images
    :func:`rose_core.data.splits.calibration_images` returns for ``n``."""
    from rose_core.data import splits

    idx = splits.calibration_indices(dataset)
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        idx = np.random.default_rng(2).permutation(idx)[:n]
    return np.sort(idx)


def is_stress_set(name: str) -> bool:
    """True for the stress suite's datasets (their card has a ``stress_group``)."""
    from rose_core.data import get_card

    return getattr(get_card(name), "stress_group", None) is not None


class Sampling:
    """Mixin of :class:`~rose_core.evaluation.harness.Evaluation`: datasets, methods, indices, inputs."""

    @property
    def in_short_name(self) -> str:
        """The in-distribution's short name in helper checkpoint names (``rnd-fmnist``, ``rnd-cifar10``)."""
        from rose_core.data import get_card
        from rose_core.errors import UnknownDataset

        try:
            return get_card(self.in_dataset).short_name
        except UnknownDataset:
            return self.in_dataset

    def ood_sets(self) -> list[str]:
        """The settings' OOD sets, else every available dataset except the in-distribution one, the
        stress suite (run by the ``stress`` preset) and the user's own imported sets (used only when
        named, so a bundle's default sets do not depend on what was imported on one machine)."""
        from rose_core.data import ood_candidates, same_distribution

        if self.settings.ood_sets is not None:
            dropped = [s for s in self.settings.ood_sets if same_distribution(s, self.in_dataset)]
            if dropped:
                log.warning("Not OOD for a model trained on %s (same distribution), left out: %s",
                            self.in_dataset, ", ".join(dropped))
            return [s for s in self.settings.ood_sets if s not in dropped]
        return [s for s in ood_candidates(self.in_dataset, include_user=False) if not is_stress_set(s)]

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

    def indices(self, dataset: str, method: str | None = None, repeat: int = 0, n: int | None = None,
                calibration: bool = False) -> np.ndarray:
        """Indices scored for ``dataset`` (in its full test split), then the method's cap as a nested
        random subset. In-distribution: ``n_in`` images of the evaluation half
        (:func:`evaluation_indices`), or with ``calibration`` ``n_cal`` of the calibration half;
        other sets: a random ``n_ood`` subset (seed ``seed + repeat``)."""
        s = self.settings
        if calibration:
            if dataset != self.in_dataset:
                raise ValueError(f"Only the in-distribution set ({self.in_dataset}) has a calibration half.")
            idx = calibration_indices(dataset, s.n_cal if n is None else n)
        elif dataset == self.in_dataset:
            idx = evaluation_indices(dataset, s.n_in if n is None else n, s.seed)
        else:
            idx = subset_indices(len(self._prepared(dataset)), s.n_ood if n is None else n, s.seed + repeat)
        if method is not None:
            cap = s.caps.get(parse_method(method).base, s.caps.get(method))
            idx = nested_subset(idx, cap, s.seed + repeat)
        return idx

    def inputs(self, dataset: str, idx: np.ndarray, perturbation: str = "none", strength: float = math.nan,
               repeat: int = 0) -> torch.Tensor:
        """Model inputs (float, [0, 1]) for the given indices, perturbed if asked (the calibration
        half is never perturbed)."""
        from rose_core.evaluation.settings import CALIBRATION

        x = torch.from_numpy(self._prepared(dataset)[idx])
        if perturbation not in ("none", CALIBRATION):
            from rose_core import perturb

            st = None if math.isnan(strength) else strength
            x = perturb.apply(perturbation, x, st, seed=self.settings.seed + repeat)
        return x.float().div_(255.0).to(self.settings.device)

    def fit_images(self, n: int | None = None, seed: int | None = None) -> torch.Tensor:
        """``n`` (default ``n_fit``) random in-distribution *train* images as model inputs (the
        explicit training-split ROSE variants and the RND training of the perturbations preset)."""
        s = self.settings
        n = s.n_fit if n is None else n
        seed = s.seed if seed is None else seed
        data = self._prepared(self.in_dataset, "train")
        idx = subset_indices(len(data), n, seed)
        return torch.from_numpy(data[idx]).float().div_(255.0).to(s.device)
