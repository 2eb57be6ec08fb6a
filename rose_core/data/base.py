"""The vocabulary every dataset module shares: cards, image sets, specs, the data folder.

This module imports nothing else from :mod:`rose_core.data`, so the dataset
builders (``real``, ``glyphs``, ``photos``, ``synthetic``, ``stress``, …) and the
registry can all depend on it without depending on each other. A builder
module describes its datasets as :class:`DatasetSpec` values in a ``DATASETS``
tuple; :mod:`rose_core.data.catalogue` lists those modules and hands the specs
to the registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

STRESS_GROUPS = ("ood", "benign", "covariate")
"""Groups of the stress suite (:mod:`rose_core.data.stress`): should be flagged, should stay
in-distribution, a real covariate shift reported without a target."""


SHORT_NAMES = {"fashion-mnist": "fmnist"}
"""Short names of distributions in checkpoint names (``rnd-fmnist``, ``vae-cifar10``); others use
their own name."""


@dataclass(frozen=True)
class DatasetCard:
    """What a dataset is and where it came from."""

    name: str
    title: str
    source: str
    licence: str
    real: bool
    """True for the real dataset, False for an offline stand-in or generated data."""
    splits: tuple[str, ...] = ("test",)
    description: str = ""
    how_to_get: str = ""
    stands_in_for: str | None = None
    stress_group: str | None = None
    """For the stress suite only: one of :data:`STRESS_GROUPS`; None for every other dataset."""
    distribution: str | None = None
    """The distribution the images are drawn from when several datasets share one (``cifar10``,
    ``cifar10-subset`` and ``cifar10-samples`` are all CIFAR-10); None = the dataset's own name. A
    dataset is never an OOD set for a model trained on a dataset of the same distribution."""
    user: bool = False
    """The user's own images, registered at run time (:mod:`rose_core.user_data`). They are offered
    wherever a dataset can be chosen, but never join a default "every available OOD set" list: a
    bundle's default OOD sets must not depend on what someone imported on one machine."""

    @property
    def distribution_name(self) -> str:
        """:attr:`distribution`, or the dataset's name when it has none."""
        return self.distribution or self.name

    @property
    def short_name(self) -> str:
        """The distribution's short name used in checkpoint names (``fmnist``, ``cifar10``, …)."""
        return SHORT_NAMES.get(self.distribution_name, self.distribution_name)

    def __post_init__(self) -> None:
        if self.stress_group is not None and self.stress_group not in STRESS_GROUPS:
            raise ValueError(f"{self.name}: stress_group must be one of {STRESS_GROUPS}, got {self.stress_group!r}.")


@dataclass
class ImageSet:
    """Images ``(N, H, W, C)`` uint8, optional integer labels, and the card."""

    images: np.ndarray
    labels: np.ndarray | None
    card: DatasetCard
    split: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"{self.card.name}: images must be uint8 (N, H, W, C), got "
                f"{self.images.dtype} {self.images.shape}"
            )
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{self.card.name}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int | None, seed: int = 0) -> "ImageSet":
        """A random subset of ``n`` images (all of them if ``n`` is None or larger)."""
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        labels = None if self.labels is None else self.labels[idx]
        return ImageSet(self.images[idx], labels, self.card, self.split)


Builder = Callable[[str], tuple[np.ndarray, "np.ndarray | None"]]
"""``build(split) -> (images uint8 (N, H, W, C), labels or None)``."""


def _always() -> bool:
    return True


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as a builder module declares it: its card, how to build a split, and a cheap
    ``available()`` probe (no downloads, must not raise) saying whether building can succeed here."""

    card: DatasetCard
    build: Builder
    available: Callable[[], bool] = _always


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``path``, else ``$ROSE_DATA``, else ``./data``."""
    return Path(path or os.environ.get("ROSE_DATA") or "data")
