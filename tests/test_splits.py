"""The calibration / evaluation halves of an in-distribution test split (rose_core.data.splits)."""

import numpy as np
import pytest

from rose_core.data import load_dataset
from rose_core.data.splits import (calibration_images, calibration_indices, evaluation_indices,
                                   evaluation_sample, _halves)


def test_halves_are_disjoint_complete_and_deterministic():
    for n_total in (4, 5, 101, 10_000):
        ev, cal = _halves(n_total)
        assert len(ev) == n_total // 2 and len(cal) == n_total - n_total // 2
        assert len(np.intersect1d(ev, cal)) == 0
        assert np.array_equal(np.sort(np.concatenate([ev, cal])), np.arange(n_total))
        ev2, cal2 = _halves(n_total)
        assert np.array_equal(ev, ev2) and np.array_equal(cal, cal2)


def test_historical_sample_lies_in_the_evaluation_half():
    ev, _ = _halves(10_000)
    hist = np.sort(np.random.default_rng(0).choice(10_000, size=1000, replace=False))
    assert np.array_equal(ev[:1000], hist)


def test_fashion_mnist_samples_never_touch_calibration():
    cal = set(calibration_indices("fashion-mnist").tolist())
    assert len(cal) == 5000
    ev = evaluation_indices("fashion-mnist")
    assert not cal & set(ev.tolist())
    old = load_dataset("fashion-mnist", "test", n=1000, seed=0)
    assert np.array_equal(evaluation_sample("fashion-mnist", 1000).images, old.images)
    full = load_dataset("fashion-mnist", "test").images
    other = evaluation_sample("fashion-mnist", 300, seed=5).images
    cal_imgs = calibration_images("fashion-mnist").images
    # every drawn image is one of the evaluation half's, none of the calibration half's
    ev_bytes = {full[i].tobytes() for i in ev}
    assert all(im.tobytes() in ev_bytes for im in other)
    assert len(calibration_images("fashion-mnist", n=100)) == 100
    assert cal_imgs.shape[0] == 5000
    with pytest.raises(ValueError):
        evaluation_sample("fashion-mnist", 6000)
