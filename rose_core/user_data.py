"""Your own images as a dataset: a folder (or a zip of one) imported once, registered like any dataset.

:func:`import_images` reads a folder with the one folder reader (:func:`rose_core.image_folder.read_folder`:
recursive, flat or class subfolders, the upload decoder, bad files skipped with their reason, resized to
32×32, channels stated or inferred), keeps four files in five as the ``train`` split and every 5th file by
sorted path as the ``test`` split, and stores both in ``<user data>/<name>.npz`` with a JSON card holding the
folder's provenance (path, file count, SHA-256 of the sorted file list, skipped files). A zip is first
extracted, safely (no absolute paths, no ``..``, bounded size), into ``<user data>/<name>-files/``.

The user data folder is ``$ROSE_USER_DATA``, else ``<data folder>/user`` (``$ROSE_DATA``, default ``./data``:
git-ignored). Names are ``user-<slug>``. :func:`register_user_datasets` registers every imported set with the
dataset registry (:func:`rose_core.data.registry.register`), so ``load_dataset("user-…")``, the default ROSE
fit, the harness and the app treat it like a built-in dataset: its ``test`` split is divided into the
calibration and evaluation halves of :mod:`rose_core.data.splits`. A model trained on it is a checkpoint
named ``user-<slug>`` in the checkpoints folder (:func:`user_checkpoint`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from rose_core.errors import InvalidInput

__all__ = ["PREFIX", "user_data_dir", "dataset_name", "import_images", "extract_zip", "user_datasets",
           "register_user_datasets", "user_checkpoint", "train_user_model", "MAX_ZIP_BYTES", "MAX_ZIP_FILES",
           "DEFAULT_EPOCHS", "DEFAULT_WIDTH"]

PREFIX = "user-"
DEFAULT_EPOCHS = 5
"""Epochs the Your data page proposes (README: how long 5,000 images take with it)."""
DEFAULT_WIDTH = 16
"""Base width ``n`` of the VAE the page proposes (the paper's FMNIST VAE has 32)."""
MAX_ZIP_BYTES = 2 * 1024 ** 3
"""Most bytes a zip may expand to."""
MAX_ZIP_FILES = 200_000
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def user_data_dir(data_root: str | os.PathLike | None = None) -> Path:
    """``$ROSE_USER_DATA``, else ``<data_root or $ROSE_DATA or ./data>/user``."""
    if os.environ.get("ROSE_USER_DATA"):
        return Path(os.environ["ROSE_USER_DATA"])
    return Path(data_root or os.environ.get("ROSE_DATA") or "data") / "user"


def dataset_name(name: str) -> str:
    """``user-<slug>`` from ``name`` (with or without the prefix): lower-case letters, digits and ``-``."""
    slug = name.strip().lower()
    slug = slug[len(PREFIX):] if slug.startswith(PREFIX) else slug
    if not _SLUG.match(slug):
        raise InvalidInput(f"Name {name!r}: use 1-40 lower-case letters, digits or '-', starting with a letter "
                           "or digit.")
    return PREFIX + slug


def user_checkpoint(checkpoints: str | os.PathLike, name: str) -> Path:
    """The checkpoint stem of the model trained on user dataset ``name``: ``<checkpoints>/user-<slug>``."""
    return Path(checkpoints) / dataset_name(name)


def extract_zip(archive, dest: str | os.PathLike) -> Path:
    """Extract the regular files of a zip (a path or a binary file object) into ``dest`` (emptied first).

    Entries with absolute paths or ``..`` are refused, as are archives over :data:`MAX_ZIP_FILES` files or
    :data:`MAX_ZIP_BYTES` bytes once expanded (counted while extracting, not trusted from the headers)."""
    dest = Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"The upload is not a readable zip archive ({exc}).") from None
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    written, count = 0, 0
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if not parts or info.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                raise InvalidInput(f"The zip holds an unsafe path {info.filename!r}; it was not extracted.")
            if parts[0] == "__MACOSX":
                continue
            count += 1
            if count > MAX_ZIP_FILES:
                raise InvalidInput(f"The zip holds more than {MAX_ZIP_FILES:,} files.")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > MAX_ZIP_BYTES:
                        raise InvalidInput(f"The zip expands to more than {MAX_ZIP_BYTES / 1024 ** 3:.0f} GiB.")
                    out.write(block)
    if count == 0:
        raise InvalidInput("The zip holds no files.")
    return dest


def import_images(source: str | os.PathLike, name: str, *, channels: int | None = None, zip_file=None,
                  data_root: str | os.PathLike | None = None, progress=None) -> dict:
    """Import a folder of images (or ``zip_file``, a path or file object, extracted first; ``source`` then
    names the upload) as user dataset ``name``; returns its card. ``progress(done, total)`` per 64 files.
    Replaces an earlier import of the same name (and the registry's caches of it)."""
    from rose_core.image_folder import read_folder

    name = dataset_name(name)
    folder_root = user_data_dir(data_root)
    folder_root.mkdir(parents=True, exist_ok=True)
    if zip_file is not None:
        folder = extract_zip(zip_file, folder_root / f"{name}-files")
        origin = f"zip {source}"
    else:
        folder, origin = Path(source), f"folder {source}"
    read = read_folder(str(folder), "the folder" if zip_file is None else "the zip", size=32, channels=channels,
                       report=False, progress=progress)
    card = {"name": name, "origin": origin, "channels": read["channels"], "train": len(read["train"]),
            "test": len(read["test"]), "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "provenance": read["provenance"]}
    stem = folder_root / name
    tmp = stem.with_name(stem.name + ".tmp.npz")
    np.savez_compressed(tmp, train=read["train"], test=read["test"])
    tmp.replace(stem.with_suffix(".npz"))
    stem.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    from rose_core.data.registry import cache_path

    for split in ("train", "test"):   # the registry's caches of an earlier import
        cache_path(name, split, data_root).unlink(missing_ok=True)
    register_user_datasets(data_root)
    return card


def user_datasets(data_root: str | os.PathLike | None = None) -> dict[str, dict]:
    """The imported datasets' cards by name (unreadable cards are left out)."""
    folder = user_data_dir(data_root)
    found = {}
    for p in sorted(folder.glob(f"{PREFIX}*.json")) if folder.is_dir() else []:
        try:
            card = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(card, dict) and card.get("name") == p.stem and p.with_suffix(".npz").exists():
            found[p.stem] = card
    return found


def register_user_datasets(data_root: str | os.PathLike | None = None) -> list[str]:
    """Register every imported dataset with the registry (again, when called again); returns their names."""
    from rose_core.data.base import DatasetCard
    from rose_core.data.registry import register

    folder = user_data_dir(data_root)
    names = []
    for name, card in user_datasets(data_root).items():
        path = folder / f"{name}.npz"
        prov = card.get("provenance", {})

        def build(split: str, path: Path = path):
            if not path.exists():
                raise InvalidInput(f"{path} is gone; import the folder again on the Your data page.")
            with np.load(path, allow_pickle=False) as z:
                return z[split], None

        register(DatasetCard(name=name, title=f"Your images: {name[len(PREFIX):]}", source=card.get("origin", ""),
                             licence="the user's own images", real=True, splits=("train", "test"),
                             description=(f"{prov.get('files', '?')} files of {prov.get('folder', '?')} "
                                          f"(file list SHA-256 {str(prov.get('file_list_sha256', ''))[:12]}…), "
                                          f"{prov.get('skipped', 0)} skipped; every 5th file by sorted path is "
                                          "the test split"),
                             how_to_get="import the folder on the Your data page", user=True),
                 build, available=path.exists)
        names.append(name)
    return names


def train_user_model(name: str, checkpoints: str | os.PathLike, *, epochs: int = DEFAULT_EPOCHS,
                     capacity: float = DEFAULT_WIDTH / 32,
                     batch_size: int = 64, resume: bool = True, on_progress=None, device: str = "cpu",
                     seed: int = 0, eval_images: int = 200, data_root: str | os.PathLike | None = None) -> dict:
    """Train (or resume) the paper's VAE at width ``32 × capacity`` on user dataset ``name`` into
    :func:`user_checkpoint`; returns the card (which records the folder's provenance under ``"data"``).
    ``on_progress``: see :mod:`rose_core.training` (an exception it raises stops training after the last
    saved epoch). The test bits/dim (IWAE, k = 20) is measured on ``eval_images`` held-out images."""
    from rose_core.training import TrainConfig, train

    name = dataset_name(name)
    cards = user_datasets(data_root)
    if name not in cards:
        raise InvalidInput(f"No imported dataset {name!r} in {user_data_dir(data_root)}; import the folder first.")
    register_user_datasets(data_root)
    card = cards[name]
    cfg = TrainConfig(kind="vae", preset="fmnist", dataset=name, out=str(user_checkpoint(checkpoints, name)),
                      epochs=epochs, batch_size=batch_size, capacity=capacity, channels=card["channels"],
                      resume=resume, progress=False, on_progress=on_progress, device=device, seed=seed,
                      eval_subset=eval_images, eval_batch_size=64 // card["channels"],
                      extra_card={"data": card["provenance"], "origin": card["origin"]})
    return train(cfg)
