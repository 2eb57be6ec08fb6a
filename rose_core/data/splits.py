"""Fixed halves of an in-distribution test split: *calibration* and *evaluation*.

The shipped models were trained on every training image, so training images are
not unseen data: z-normalising ROSE's layer scores and setting the verdict
threshold on them makes in-distribution test images look more unusual than
they are (measured: 7.9 % false alarms at a 95 % TPR threshold, not 5 %).
ROSE Studio therefore calibrates on in-distribution images the model never
trained on and reports on *other* such images:

* the **calibration half** of the test split feeds the z-normalisation
  statistics, the verdict threshold and the p-values (app, ``fit``/``score``,
  harness: one definition);
* the **evaluation half** is what every report, table and false-alarm rate is
  computed on; the stress sets derived from in-distribution images are built
  from it too.

The rule (deterministic, documented, no OOD data involved): the evaluation
half holds the harness's historical 1,000-image evaluation sample
(``load_dataset(name, "test", n=1000, seed=0)``, so cached results stay valid)
plus ``len/2 - 1000`` further test images drawn with seed 1 from the rest; the
calibration half is everything else. For Fashion-MNIST: 5,000 + 5,000 images.

:func:`evaluation_sample` draws report samples from the evaluation half; with
``n = 1000, seed = 0`` it returns exactly the historical sample, and samples of
other sizes or seeds never touch the calibration half.
"""

from __future__ import annotations

import numpy as np

from rose_core.data.registry import ImageSet, load_dataset

__all__ = ["calibration_indices", "evaluation_indices", "calibration_images", "evaluation_sample",
           "HISTORICAL_N", "HISTORICAL_SEED"]

HISTORICAL_N = 1000
"""Size of the harness's original evaluation sample, kept inside the evaluation half."""
HISTORICAL_SEED = 0
FILL_SEED = 1
"""Seed of the draw that fills the evaluation half beyond the historical sample."""


def _halves(n_total: int) -> tuple[np.ndarray, np.ndarray]:
    if n_total < 4:
        raise ValueError(f"A test split of {n_total} images is too small to divide into halves.")
    half = n_total // 2
    keep = min(HISTORICAL_N, half)
    first = np.sort(np.random.default_rng(HISTORICAL_SEED).choice(n_total, size=keep, replace=False)) \
        if keep < n_total else np.arange(n_total)
    rest = np.setdiff1d(np.arange(n_total), first)
    fill = np.random.default_rng(FILL_SEED).choice(len(rest), size=half - keep, replace=False)
    # order: the historical sample first (sorted, as ImageSet.subset returns it), then the fill draw
    evaluation = np.concatenate([first, rest[np.sort(fill)]])
    calibration = np.setdiff1d(np.arange(n_total), evaluation)
    return evaluation, calibration


def _test_size(name: str, root=None) -> int:
    return len(load_dataset(name, "test", root=root))


def evaluation_indices(name: str, root=None) -> np.ndarray:
    """Indices of the evaluation half of ``name``'s test split (historical sample first)."""
    return _halves(_test_size(name, root))[0]


def calibration_indices(name: str, root=None) -> np.ndarray:
    """Indices (sorted) of the calibration half of ``name``'s test split."""
    return _halves(_test_size(name, root))[1]


def _take(ds: ImageSet, idx: np.ndarray) -> ImageSet:
    idx = np.sort(idx)
    labels = None if ds.labels is None else ds.labels[idx]
    return ImageSet(ds.images[idx], labels, ds.card, ds.split)


def calibration_images(name: str, n: int | None = None, root=None) -> ImageSet:
    """The calibration half of ``name``'s test split (the first ``n`` of it in a seeded order if given)."""
    ds = load_dataset(name, "test", root=root)
    idx = _halves(len(ds))[1]
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        idx = np.random.default_rng(2).permutation(idx)[:n]
    return _take(ds, idx)


def evaluation_sample(name: str, n: int | None = None, seed: int = 0, root=None) -> ImageSet:
    """``n`` images of the evaluation half of ``name``'s test split (all of it when ``n`` is None).

    ``seed = 0`` takes a prefix of the half's fixed order, so ``n = 1000`` is exactly the
    historical ``load_dataset(name, "test", n=1000, seed=0)`` sample; other seeds draw at random
    from the half. Either way, no calibration image is returned.
    """
    ds = load_dataset(name, "test", root=root)
    idx = _halves(len(ds))[0]
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        if n > len(idx):
            raise ValueError(f"The evaluation half of {name!r} has {len(idx)} images; asked for {n}.")
        idx = idx[:n] if seed == HISTORICAL_SEED else \
            np.random.default_rng(seed).choice(idx, size=n, replace=False)
    return _take(ds, idx)
