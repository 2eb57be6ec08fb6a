"""One registry of named image datasets, cached as compressed ``.npz``.

Every dataset yields uint8 images of shape ``(N, H, W, C)`` with labels where
they exist, plus a :class:`DatasetCard` (source, licence, real or stand-in,
counts). Builders are registered with :func:`register`; :func:`load_dataset`
builds on first use and caches under the data directory (``$ROSE_DATA``,
default ``./data``). A cache file that cannot be read is rebuilt.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rose_core.errors import DatasetUnavailable, UnknownDataset

log = logging.getLogger(__name__)


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


@dataclass
class _Entry:
    card: DatasetCard
    build: Builder
    available: Callable[[], bool] = field(default=lambda: True)


_REGISTRY: dict[str, _Entry] = {}


def register(card: DatasetCard, build: Builder, available: Callable[[], bool] | None = None) -> None:
    """Add a dataset. ``build(split)`` returns ``(images, labels)``;
    ``available()`` is a cheap check that building can succeed here."""
    _REGISTRY[card.name] = _Entry(card, build, available or (lambda: True))


def _ensure_loaded() -> None:
    # Importing the modules registers their datasets.
    from rose_core.data import real, standins  # noqa: F401


def dataset_names() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_card(name: str) -> DatasetCard:
    return _entry(name).card


def _entry(name: str) -> _Entry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDataset(
            f"Unknown dataset {name!r}. Known datasets: {', '.join(sorted(_REGISTRY))}."
        ) from None


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``path``, else ``$ROSE_DATA``, else ``./data``."""
    return Path(path or os.environ.get("ROSE_DATA") or "data")


def cache_path(name: str, split: str, root: str | os.PathLike | None = None) -> Path:
    return data_dir(root) / f"{name}-{split}.npz"


def is_available(name: str, split: str = "test", root: str | os.PathLike | None = None) -> bool:
    """True when the dataset is cached or can be built on this machine now."""
    entry = _entry(name)
    if split not in entry.card.splits:
        return False
    if cache_path(name, split, root).exists():
        return True
    try:
        return bool(entry.available())
    except Exception:  # an availability probe must never raise
        return False


def available_datasets(root: str | os.PathLike | None = None) -> list[str]:
    return [n for n in dataset_names() if is_available(n, "test", root)]


def _read_cache(path: Path, card: DatasetCard, split: str) -> ImageSet | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
        return ImageSet(images, labels, card, split)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("Cache file %s is unreadable (%s); rebuilding it.", path, exc)
        return None


def load_dataset(
    name: str,
    split: str = "test",
    *,
    n: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    cache: bool = True,
) -> ImageSet:
    """Load a dataset split, building and caching it on first use.

    ``n`` draws a random subset of that size with ``seed``.
    Raises :class:`UnknownDataset` for unknown names and
    :class:`DatasetUnavailable` (with instructions) when it cannot be built here.
    """
    entry = _entry(name)
    card = entry.card
    if split not in card.splits:
        raise DatasetUnavailable(f"Dataset {name!r} has no split {split!r}; it has {', '.join(card.splits)}.")
    path = cache_path(name, split, root)
    result = _read_cache(path, card, split) if (cache and path.exists()) else None
    if result is None:
        images, labels = entry.build(split)
        result = ImageSet(np.ascontiguousarray(images, dtype=np.uint8), labels, card, split)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a name per process: concurrent builders (e.g. torchrun ranks) never share a temp file
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            arrays = {"images": result.images}
            if labels is not None:
                arrays["labels"] = np.asarray(labels)
            np.savez_compressed(tmp, **arrays)
            tmp.replace(path)
    return result.subset(n, seed)
