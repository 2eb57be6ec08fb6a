"""One registry of named image datasets, cached as compressed ``.npz``.

Every dataset yields uint8 images of shape ``(N, H, W, C)`` with labels where
they exist, plus a :class:`DatasetCard` (source, licence, real or stand-in,
counts). :func:`load_dataset` builds on first use and caches under the data
directory (``$ROSE_DATA``, default ``./data``). A cache file that cannot be read
is rebuilt.

Where the datasets come from: this module knows no builder. The built-in ones
are listed once, explicitly, in :mod:`rose_core.data.catalogue`, which
``rose_core.data`` (the package, imported before any of its modules) registers
with :func:`register`. Tests and plug-ins may :func:`register` more.
Dependencies run one way: ``base`` ← builders ← ``catalogue`` → ``registry``.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rose_core.data.base import Builder, DatasetCard, DatasetSpec, ImageSet, data_dir
from rose_core.errors import DatasetUnavailable, UnknownDataset

__all__ = ["Builder", "DatasetCard", "DatasetSpec", "ImageSet", "available_datasets", "cache_path", "data_dir",
           "dataset_names", "get_card", "is_available", "load_dataset", "register", "register_spec"]

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    card: DatasetCard
    build: Builder
    available: Callable[[], bool]


_REGISTRY: dict[str, _Entry] = {}


def register(card: DatasetCard, build: Builder, available: Callable[[], bool] | None = None) -> None:
    """Add a dataset (or replace the one of that name). ``build(split)`` returns
    ``(images, labels)``; ``available()`` is a cheap check that building can succeed here."""
    _REGISTRY[card.name] = _Entry(card, build, available or (lambda: True))


def register_spec(spec: DatasetSpec) -> None:
    """:func:`register` a :class:`DatasetSpec` as a builder module declares it."""
    register(spec.card, spec.build, spec.available)


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def get_card(name: str) -> DatasetCard:
    return _entry(name).card


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDataset(
            f"Unknown dataset {name!r}. Known datasets: {', '.join(sorted(_REGISTRY))}."
        ) from None


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


def available_datasets(root: str | os.PathLike | None = None, include_stress: bool = False,
                       include_user: bool = True) -> list[str]:
    """Datasets whose test split is cached or can be built here.

    The stress suite (cards with a ``stress_group``) is left out unless ``include_stress``: it is
    run as its own group (``rose_core.data.stress.stress_sets``), so adding it does not grow every
    experiment that scores "all available OOD sets". The user's own imported sets (``card.user``)
    are left out when ``include_user`` is False (the harness's default OOD sets).
    """
    return [n for n in dataset_names()
            if (include_stress or _REGISTRY[n].card.stress_group is None)
            and (include_user or not _REGISTRY[n].card.user) and is_available(n, "test", root)]


def same_distribution(a: str, b: str) -> bool:
    """Whether datasets ``a`` and ``b`` draw from one distribution (``cifar10-subset`` and
    ``cifar10-samples`` do); a name the registry does not know only matches itself."""
    if a == b:
        return True
    try:
        return get_card(a).distribution_name == get_card(b).distribution_name
    except UnknownDataset:
        return False


def ood_candidates(in_dataset: str, root: str | os.PathLike | None = None, include_stress: bool = False,
                   include_user: bool = True) -> list[str]:
    """The available datasets that can serve as OOD sets for a model trained on ``in_dataset``:
    every one not drawn from the same distribution (:func:`same_distribution`); the user's own sets
    only with ``include_user`` (see :attr:`DatasetCard.user`)."""
    return [n for n in available_datasets(root, include_stress, include_user) if not same_distribution(n, in_dataset)]


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
