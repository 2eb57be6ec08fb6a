"""The stress suite: registered like every dataset, deterministic, each transform doing what it says.

The sources come from the data cache that ``python -m rose_core data`` builds
(Fashion-MNIST and MNIST), as in ``tests/test_data.py``.
"""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, laplace

from rose_core.data import available_datasets, dataset_names, get_card, is_available, load_dataset, prepare_images
from rose_core.data import registry, stress
from rose_core.data.splits import calibration_indices, evaluation_indices, evaluation_sample
from rose_core.errors import DatasetUnavailable

FMNIST_DERIVED = ["stress-fmnist-inverted", "stress-fmnist-rot90", "stress-fmnist-upside-down",
                  "stress-fmnist-blurred", "stress-fmnist-shift1", "stress-fmnist-brightness",
                  "stress-fmnist-jpeg75", "stress-fmnist-jpeg95"]
GENERATED = ["stress-noise-uniform", "stress-noise-gaussian", "stress-black", "stress-white"]


@pytest.fixture(scope="module")
def half():
    """The evaluation half of the Fashion-MNIST test split: the only source of the derived sets."""
    return evaluation_sample("fashion-mnist")


def _build(name):
    return load_dataset(name, cache=False)


# --------------------------------------------------------------------------- registration and cards


def test_groups_and_registration():
    ood, benign, covariate = stress.stress_sets("ood"), stress.stress_sets("benign"), stress.stress_sets("covariate")
    assert ood == GENERATED + ["stress-fmnist-inverted", "stress-fmnist-rot90", "stress-fmnist-upside-down",
                               "stress-fmnist-blurred", "stress-mnist-thin"]
    assert benign == ["stress-fmnist-shift1", "stress-fmnist-brightness"]
    assert covariate == ["stress-fmnist-jpeg75", "stress-fmnist-jpeg95"]
    assert stress.stress_sets() == ood + benign + covariate
    assert set(stress.stress_sets()) <= set(dataset_names())
    assert sorted(n for n in dataset_names() if n.startswith(stress.PREFIX)) == sorted(stress.stress_sets())
    for group, names in (("ood", ood), ("benign", benign), ("covariate", covariate)):
        for name in names:
            card = get_card(name)
            assert card.stress_group == group and not card.real and card.splits == ("test",)
            assert card.title and card.description and card.licence and card.stands_in_for is None
            assert is_available(name)
    for name in set(dataset_names()) - set(stress.stress_sets()):
        assert get_card(name).stress_group is None
    with pytest.raises(ValueError, match="ood, benign, covariate"):
        stress.stress_sets("harmless")
    # "all available OOD sets" (the harness default) stays the paper's sets; the suite runs as its own group
    assert not set(available_datasets()) & set(stress.stress_sets())
    assert set(stress.stress_sets()) <= set(available_datasets(include_stress=True))
    assert "mnist" in available_datasets()


def test_cards_say_where_the_images_come_from():
    for name in FMNIST_DERIVED:
        card = get_card(name)
        assert "evaluation half" in card.source and "never the calibration half" in card.description
    assert "MNIST test split" in get_card("stress-mnist-thin").source
    for name in GENERATED:
        assert get_card(name).source.startswith("generated")
    for name in ("stress-fmnist-jpeg75", "stress-fmnist-jpeg95"):
        assert "real shift" in get_card(name).description


def test_only_a_test_split():
    with pytest.raises(DatasetUnavailable, match="no split 'train'"):
        load_dataset("stress-black", "train")
    with pytest.raises(DatasetUnavailable, match="only has a 'test' split"):
        stress.build("stress-black", "train")
    with pytest.raises(KeyError, match="not a stress set"):
        stress.build("stress-nothing")


# --------------------------------------------------------------------------- shapes, determinism, caching


@pytest.mark.parametrize("name", stress.stress_sets())
def test_shape_dtype_and_determinism(name, half):
    first, second = _build(name), _build(name)
    expected_n = {"stress-mnist-thin": 10000}.get(name, stress.N_GENERATED if name in GENERATED else len(half))
    assert first.images.shape == (expected_n, 28, 28, 1) and first.images.dtype == np.uint8
    np.testing.assert_array_equal(first.images, second.images)
    if name in GENERATED:
        assert first.labels is None
    else:
        assert first.labels.dtype == np.int64 and first.labels.shape == (expected_n,)
    # resized exactly like an uploaded image on the way into a 32×32 model
    assert prepare_images(first.images[:4], 32).shape == (4, 32, 32, 1)


def test_cached_like_the_others(tmp_path):
    built = load_dataset("stress-fmnist-jpeg75", root=tmp_path)
    path = registry.cache_path("stress-fmnist-jpeg75", "test", tmp_path)
    assert path.exists()
    np.testing.assert_array_equal(load_dataset("stress-fmnist-jpeg75", root=tmp_path).images, built.images)
    assert len(load_dataset("stress-fmnist-jpeg75", root=tmp_path, n=100, seed=1)) == 100


# --------------------------------------------------------------------------- derived only from the evaluation half


def test_derived_sets_use_the_evaluation_half_only(half):
    evaluation, calibration = evaluation_indices("fashion-mnist"), calibration_indices("fashion-mnist")
    assert len(half) == len(evaluation) == 5000 and not set(evaluation) & set(calibration)
    full = load_dataset("fashion-mnist", "test")
    np.testing.assert_array_equal(half.images, full.images[np.sort(evaluation)])
    for name in FMNIST_DERIVED:
        np.testing.assert_array_equal(_build(name).labels, half.labels)
    # image i of a derived set is a transform of image i of the evaluation half (not of the calibration half)
    inverted = _build("stress-fmnist-inverted").images
    np.testing.assert_array_equal(inverted, 255 - half.images)
    calib = full.images[calibration]
    assert not np.array_equal(inverted[:len(calib)], 255 - calib)


# --------------------------------------------------------------------------- each transform does what it says


def test_geometric_transforms(half):
    x = half.images
    np.testing.assert_array_equal(_build("stress-fmnist-upside-down").images[..., 0],
                                  np.stack([np.flipud(img) for img in x[..., 0]]))
    np.testing.assert_array_equal(_build("stress-fmnist-rot90").images[..., 0],
                                  np.stack([np.rot90(img) for img in x[..., 0]]))
    assert not np.array_equal(_build("stress-fmnist-rot90").images, x)


def test_blur_is_heavy(half):
    x, blurred = half.images, _build("stress-fmnist-blurred").images
    expected = gaussian_filter(x[:10, ..., 0].astype(float), sigma=(0, stress.BLUR_SIGMA, stress.BLUR_SIGMA),
                               mode="constant")
    np.testing.assert_array_equal(blurred[:10, ..., 0], np.clip(np.rint(expected), 0, 255).astype(np.uint8))

    def detail(a):  # mean absolute Laplacian: edges and texture
        return np.abs(np.stack([laplace(img) for img in a[..., 0].astype(float)])).mean()

    assert detail(blurred) < 0.15 * detail(x)  # measured: 0.07


def test_thin_digits_are_eroded_mnist():
    digits = load_dataset("mnist", "test").images
    thin = _build("stress-mnist-thin").images
    assert np.all(thin <= digits)  # erosion only removes ink
    # a 2×2 minimum filter: each pixel is the minimum of itself and its up, left and up-left neighbours
    padded = np.pad(digits[..., 0], ((0, 0), (1, 0), (1, 0)))
    window_min = np.minimum.reduce([padded[:, 1:, 1:], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, :-1, :-1]])
    np.testing.assert_array_equal(thin[..., 0], window_min)
    kept = (thin > 127).sum() / (digits > 127).sum()
    assert 0.3 < kept < 0.7  # visibly thinner strokes, still digits
    assert ((thin > 127).sum(axis=(1, 2, 3)) == 0).mean() < 0.01


def test_translations_are_exactly_one_pixel(half):
    # the translation itself, on a single white pixel
    dot = np.zeros((4, 5, 5, 1), np.uint8)
    dot[:, 2, 2] = 255
    moved = stress.translate(dot, np.array(stress.SHIFTS))
    for img, (dy, dx) in zip(moved, stress.SHIFTS):
        assert np.argwhere(img[..., 0] == 255).tolist() == [[2 + dy, 2 + dx]] and img.sum() == 255
    x, shifted = half.images, _build("stress-fmnist-shift1").images
    directions = []
    for i in range(len(x)):
        matches = [k for k, d in enumerate(stress.SHIFTS)
                   if np.array_equal(stress.translate(x[i:i + 1], np.array([d]))[0], shifted[i])]
        assert matches, f"image {i} is not a 1-pixel translation of its source"
        directions.append(matches[0])
    assert set(directions) == {0, 1, 2, 3}
    assert np.mean([np.array_equal(a, b) for a, b in zip(x, shifted)]) < 0.01  # they did move


def test_brightness_factors_stay_in_range(half):
    x, bright = half.images.astype(float), _build("stress-fmnist-brightness").images.astype(float)
    lit = x >= 100
    ratio = bright[lit] / x[lit]
    assert ratio.min() >= 0.9 - 0.01 and ratio.max() <= 1.1 + 0.01
    per_image = np.array([np.median(b[m] / a[m]) for a, b, m in zip(x, bright, lit) if m.any()])
    assert per_image.min() < 0.92 and per_image.max() > 1.08  # the whole range is used
    assert np.all(bright[x == 0] == 0)


def test_jpeg_sets_differ_but_decode_to_the_same_size(half):
    x = half.images.astype(int)
    diffs = {}
    for q in (75, 95):
        img = _build(f"stress-fmnist-jpeg{q}").images
        assert img.shape == half.images.shape
        changed = np.array([not np.array_equal(a, b) for a, b in zip(img, half.images)])
        assert changed.mean() > 0.99
        diffs[q] = np.abs(img.astype(int) - x).mean()
        np.testing.assert_array_equal(img[:5], stress.jpeg(half.images[:5], q))
    assert 0 < diffs[95] < diffs[75]


def test_generated_sets():
    uniform = _build("stress-noise-uniform").images
    assert abs(uniform.mean() - 127.5) < 1 and abs(uniform.std() - 73.9) < 1
    assert len(np.unique(uniform)) == 256
    gauss = _build("stress-noise-gaussian").images.astype(float)
    assert abs(gauss.mean() - 128) < 1 and 55 < gauss.std() < 64
    assert np.all(_build("stress-black").images == 0) and np.all(_build("stress-white").images == 255)
