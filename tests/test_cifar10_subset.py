"""``cifar10-subset``: the 6,102 real CIFAR-10 images committed to the project.

The real-data check: its first 20 test images are pixel-identical to the 20 CIFAR-10 test
images in the foolbox==3.3.4 wheel (``cifar10-samples``), with the same labels.
"""

import shutil

import numpy as np
import pytest

from rose_core.data import available_datasets, get_card, is_available, load_dataset, ood_candidates, same_distribution
from rose_core.data import cifar10_subset
from rose_core.errors import DatasetUnavailable

NAME = "cifar10-subset"
FIRST_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]  # official test_batch order


@pytest.fixture(scope="module")
def subset():
    return {split: load_dataset(NAME, split, cache=False) for split in ("train", "test")}


def test_counts_shapes_dtypes_and_labels(subset):
    train, test = subset["train"], subset["test"]
    assert train.images.shape == (5085, 32, 32, 3) and test.images.shape == (1017, 32, 32, 3)
    assert train.images.dtype == np.uint8 and test.images.dtype == np.uint8
    assert train.labels.shape == (5085,) and test.labels.shape == (1017,)
    assert train.labels.dtype == np.int64 and test.labels.dtype == np.int64
    for ds in (train, test):
        assert ds.labels.min() == 0 and ds.labels.max() == 9
    test_counts, train_counts = np.bincount(test.labels, minlength=10), np.bincount(train.labels, minlength=10)
    assert test_counts.sum() == 1017 and np.all((test_counts >= 80) & (test_counts <= 120)), test_counts
    assert np.all((train_counts >= 450) & (train_counts <= 560)), train_counts
    assert test.labels[:20].tolist() == FIRST_TEST_LABELS
    # natural colour photos, not blank or constant images; train and test are different images
    assert 100 < test.images.mean() < 140 and test.images.std() > 50
    assert not np.array_equal(train.images[:1017], test.images)


def test_first_twenty_test_images_are_the_foolbox_cifar10_samples(subset):
    try:
        samples = load_dataset("cifar10-samples")
    except DatasetUnavailable as exc:  # no foolbox wheel in $ROSE_DATA and PyPI unreachable
        pytest.skip(f"cifar10-samples unavailable here: {exc}")
    assert samples.images.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(subset["test"].images[:20], samples.images)
    np.testing.assert_array_equal(subset["test"].labels[:20], samples.labels)
    assert not np.array_equal(subset["test"].images[20:40], samples.images)  # the check can fail


def test_card_and_default_sets():
    card = get_card(NAME)
    assert card.real and card.stands_in_for is None and card.splits == ("train", "test")
    assert "subset" in card.description and "5,085" in card.title and "1,017" in card.title
    assert "foolbox" in card.description and "Krizhevsky" in card.licence
    assert is_available(NAME, "train") and is_available(NAME, "test")
    # an OOD set for the Fashion-MNIST models, never for a CIFAR-10 model (one distribution)
    assert NAME in available_datasets() and NAME in ood_candidates("fashion-mnist")
    for ind in ("cifar10", "cifar10-subset", "cifar10-samples"):
        assert same_distribution(NAME, ind)
        cands = ood_candidates(ind)
        assert NAME not in cands and "cifar10-samples" not in cands and "mnist" in cands
    assert not same_distribution(NAME, "fashion-mnist") and not same_distribution(NAME, "no-such-set")
    assert get_card(NAME).short_name == "cifar10" and get_card("fashion-mnist").short_name == "fmnist"
    assert "cifar10" in get_card("cifar10").name and get_card("cifar10").source.startswith("torchvision")


def test_committed_file_matches_recorded_hash():
    assert cifar10_subset.SUBSET_FILE.is_file()
    assert cifar10_subset.file_sha256(cifar10_subset.SUBSET_FILE) == cifar10_subset.SUBSET_SHA256
    readme = (cifar10_subset.SUBSET_FILE.parent / "README.md").read_text()
    assert cifar10_subset.SUBSET_SHA256 in readme


def test_loads_and_caches_through_the_registry(tmp_path, subset):
    ds = load_dataset(NAME, "test", root=tmp_path, n=50, seed=1)
    assert len(ds) == 50 and (tmp_path / f"{NAME}-test.npz").exists()
    again = load_dataset(NAME, "test", root=tmp_path)
    np.testing.assert_array_equal(again.images, subset["test"].images)


def test_missing_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10_subset, "SUBSET_FILE", tmp_path / "cifar10-partial.npz")
    assert not is_available(NAME, "test", root=tmp_path)
    with pytest.raises(DatasetUnavailable, match="is missing.*git checkout -- rose_core/data/files/cifar10-partial"):
        load_dataset(NAME, "test", root=tmp_path)
    assert not (tmp_path / f"{NAME}-test.npz").exists()


def test_corrupt_copy_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "cifar10-partial.npz"
    shutil.copy(cifar10_subset.SUBSET_FILE, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the compressed images
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(cifar10_subset, "SUBSET_FILE", copy)
    with pytest.raises(DatasetUnavailable, match="corrupt or not the committed file.*SHA-256"):
        load_dataset(NAME, "train", cache=False)
    copy.write_bytes(bytes(data[: len(data) // 3]))  # truncated
    with pytest.raises(DatasetUnavailable, match="corrupt"):
        load_dataset(NAME, "test", cache=False)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(y_test=np.full(1017, 10, np.uint8)), r"labels span 10\.\.10, expected 0\.\.9"),
    (lambda a: a.update(x_test=a["x_test"][:1000]), r"images are uint8 \(1000, 32, 32, 3\)"),
    (lambda a: a.update(x_test=a["x_test"].astype(np.float32)), r"images are float32"),
    (lambda a: a.update(y_test=a["y_test"].astype(np.int64)), r"labels are int64"),
])
def test_arrays_are_checked_even_when_the_hash_matches(tmp_path, monkeypatch, change, message):
    with np.load(cifar10_subset.SUBSET_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    bad = tmp_path / "cifar10-partial.npz"
    np.savez_compressed(bad, **arrays)
    monkeypatch.setattr(cifar10_subset, "SUBSET_FILE", bad)
    monkeypatch.setattr(cifar10_subset, "SUBSET_SHA256", cifar10_subset.file_sha256(bad))
    with pytest.raises(DatasetUnavailable, match=message):
        load_dataset(NAME, "test", cache=False)
