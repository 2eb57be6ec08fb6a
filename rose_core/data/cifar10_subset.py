"""``cifar10-subset``: 6,102 real CIFAR-10 images committed to the project (5,085 train / 1,017 test).

The images live in :data:`SUBSET_FILE` (``rose_core/data/files/cifar10-partial.npz``, 17 MB, in
git and in the package data), so a plain clone has them with no download and no ``make data``
step. They are the first 1,017 images of each official CIFAR-10 python batch
(``data_batch_1`` … ``data_batch_5``, then ``test_batch``), in file order, recovered from a public
copy whose batch files were cut off after 3 MiB; ``files/README.md`` says how they were checked.

The builder refuses a file that is not exactly the committed one: its SHA-256 must be
:data:`SUBSET_SHA256`, and the arrays must have the shapes, dtypes and label range below; any
failure raises :class:`~rose_core.errors.DatasetUnavailable` saying what is wrong and how to
restore the file. The full CIFAR-10 (50,000 + 10,000) stays the online ``cifar10``
(torchvision, :mod:`rose_core.data.real`).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from rose_core.data.base import DatasetCard, DatasetSpec
from rose_core.errors import DatasetUnavailable

SUBSET_FILE = Path(__file__).parent / "files" / "cifar10-partial.npz"
"""The committed file (keys ``x_train``, ``y_train``, ``x_test``, ``y_test``; uint8, images HWC)."""

SUBSET_SHA256 = "c03dc2f7055be1aed0392f8af07401c9adca2f9f52b6275a1883ef7da4b5077d"
"""SHA-256 of :data:`SUBSET_FILE` as committed."""

N_IMAGES = {"train": 5085, "test": 1017}
"""Images per split: 1,017 from each of the five training batches; the first 1,017 test images."""

_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
_RESTORE = ("Restore the committed file with `git checkout -- rose_core/data/files/cifar10-partial.npz` "
            "(or reinstall the package); the full CIFAR-10 is the online dataset `cifar10`.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_arrays(split: str, images: np.ndarray, labels: np.ndarray) -> None:
    n = N_IMAGES[split]
    problems = []
    if images.dtype != np.uint8 or images.shape != (n, 32, 32, 3):
        problems.append(f"images are {images.dtype} {images.shape}, expected uint8 {(n, 32, 32, 3)}")
    if labels.dtype != np.uint8 or labels.shape != (n,):
        problems.append(f"labels are {labels.dtype} {labels.shape}, expected uint8 {(n,)}")
    elif labels.size and (labels.min() < 0 or labels.max() > 9):
        problems.append(f"labels span {labels.min()}..{labels.max()}, expected 0..9")
    if problems:
        raise DatasetUnavailable(f"cifar10-subset: {SUBSET_FILE} ({split}): {'; '.join(problems)}. {_RESTORE}")


def _build(split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _KEYS:  # pragma: no cover - the registry only passes the card's splits
        raise DatasetUnavailable(f"cifar10-subset has no split {split!r}.")
    if not SUBSET_FILE.is_file():
        raise DatasetUnavailable(f"cifar10-subset: the file {SUBSET_FILE} is missing. {_RESTORE}")
    sha = file_sha256(SUBSET_FILE)
    if sha != SUBSET_SHA256:
        raise DatasetUnavailable(
            f"cifar10-subset: {SUBSET_FILE} is corrupt or not the committed file "
            f"(SHA-256 {sha}, expected {SUBSET_SHA256}). {_RESTORE}"
        )
    x_key, y_key = _KEYS[split]
    try:
        with np.load(SUBSET_FILE, allow_pickle=False) as z:
            images, labels = z[x_key], z[y_key]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # pragma: no cover - hash passed
        raise DatasetUnavailable(f"cifar10-subset: {SUBSET_FILE} cannot be read ({exc}). {_RESTORE}") from exc
    _check_arrays(split, images, labels)
    return images, labels.astype(np.int64)


DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        DatasetCard(
            name="cifar10-subset", title="CIFAR-10 subset (5,085 train / 1,017 test, real)", real=True,
            splits=("train", "test"), distribution="cifar10",
            source="file rose_core/data/files/cifar10-partial.npz, committed to the project: the first 1,017 "
                   "images of each official CIFAR-10 python batch (data_batch_1–5, test_batch), recovered from "
                   "a public copy whose batch files were cut off after 3 MiB",
            licence="CIFAR-10 (A. Krizhevsky, 2009): no formal licence; free to use, citing Krizhevsky (2009), "
                    "Learning Multiple Layers of Features from Tiny Images",
            description="A subset of the real CIFAR-10: 5,085 training images (about 500 per class) and the first "
                        "1,017 test images (about 100 per class), 32×32 RGB, labels 0 airplane … 9 truck. Checked: "
                        "the 20 CIFAR-10 test images in the foolbox==3.3.4 wheel (`cifar10-samples`) are "
                        "pixel-identical to its first 20 test images, with the same labels; the loader checks the "
                        "file's SHA-256, shapes, dtypes and labels. A model trained on it is trained on "
                        "\"CIFAR-10, 5,085-image subset\", not the full 50,000. The CIFAR-10 OOD set of the "
                        "Fashion-MNIST models (300 of its test images per bundle row, beside the 20 "
                        "`cifar10-samples`).",
            how_to_get="in the project (a plain clone has it); if missing or changed: "
                       "git checkout -- rose_core/data/files/cifar10-partial.npz",
        ),
        _build,
        available=lambda: SUBSET_FILE.is_file(),
    ),
)
"""The committed CIFAR-10 subset."""
