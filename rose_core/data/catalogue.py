"""The one list of built-in datasets, handed to the registry in one place.

Builder modules only *declare* their datasets (a ``DATASETS`` tuple of
:class:`~rose_core.data.base.DatasetSpec`); nothing registers itself on import.
:func:`register_builtin` puts every declared dataset into
:mod:`rose_core.data.registry`; the package ``rose_core.data`` calls it once
when it is imported, which Python does before any of its modules, so every
``load_dataset`` sees the full catalogue.

Imports run one way, with no circle: ``base`` ← builder modules ← this module →
``registry`` → ``base``. The stress suite is derived from real images and reads
them through ``splits`` → ``registry`` at build time; the registry never imports
a builder. To add a dataset: declare a :class:`DatasetSpec` in a builder module's
``DATASETS`` (or add a new module to :data:`BUILDER_MODULES`).
"""

from __future__ import annotations

from types import ModuleType

from rose_core.data import cifar10_subset, real, standins, stress
from rose_core.data.base import DatasetSpec
from rose_core.data.registry import register_spec

BUILDER_MODULES: tuple[ModuleType, ...] = (real, cifar10_subset, standins, stress)
"""Every module whose ``DATASETS`` are built in, in listing order."""


def builtin_specs() -> tuple[DatasetSpec, ...]:
    """The built-in datasets; a name declared twice is a programming error."""
    specs = tuple(spec for module in BUILDER_MODULES for spec in module.DATASETS)
    names = [s.card.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"Datasets declared twice in {[m.__name__ for m in BUILDER_MODULES]}: {duplicates}.")
    return specs


def register_builtin() -> None:
    """Register every built-in dataset (again, if called again: same specs, same result)."""
    for spec in builtin_specs():
        register_spec(spec)
