"""Argument checks the CLI runs before it loads a model (``train``, ``fit``, ``score``, ``data``).

``image_folder`` only lists a folder (it opens no file). Every check raises :class:`rose_core.errors.InvalidInput` with one line that names the option,
the value and what would be accepted, so ``python -m rose_core`` can print it and exit 2 within
a second, not after a model loaded or a first batch was scored. Nothing here loads a model or a
dataset.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from rose_core.errors import InvalidInput

__all__ = ["at_least", "in_range", "finite", "writable_folder", "writable_stem", "known_dataset",
           "checkpoint_exists", "device_spec", "image_folder"]


def at_least(option: str, value, minimum, *, optional: bool = False) -> None:
    """``value >= minimum`` (``None`` passes when ``optional``)."""
    if value is None and optional:
        return
    if value is None or not (value >= minimum) or (isinstance(value, float) and not math.isfinite(value)):
        raise InvalidInput(f"{option} must be >= {minimum}, got {value}.")


def in_range(option: str, value, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
             optional: bool = False) -> None:
    """``lo <= value <= hi``, with open ends where asked (``None`` passes when ``optional``)."""
    if value is None and optional:
        return
    ok = value is not None and math.isfinite(value) and (value > lo if lo_open else value >= lo) \
        and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise InvalidInput(f"{option} must be in {interval}, got {value}.")


def finite(option: str, value, *, optional: bool = False) -> None:
    """A finite number (not NaN or infinite)."""
    if value is None and optional:
        return
    if value is None or not math.isfinite(value):
        raise InvalidInput(f"{option} must be a finite number, got {value}.")


def writable_folder(option: str, folder: str | os.PathLike) -> None:
    """``folder`` exists (it is created) and a file can be written in it — probed with a real file, so
    that read-only mounts, full quotas and paths through a regular file are caught, also for root."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rose-write-test-"):
            pass
    except OSError as exc:
        raise InvalidInput(f"{option}: cannot write in {folder} ({exc.strerror or exc}). "
                           "Choose a writable location.") from None


def writable_stem(option: str, stem: str | os.PathLike, suffixes: tuple[str, ...] = (".json", ".safetensors")
                  ) -> None:
    """An output given as a stem (``checkpoints/vae`` → ``.json`` + ``.safetensors``): its folder is
    writable and none of its files is a folder."""
    from rose_core.checkpoint import card_path

    base = card_path(stem)
    base = base.with_name(base.name[: -len(".json")])
    if base.is_dir():
        raise InvalidInput(f"{option} {stem} is a folder; give a file path without extension, e.g. {base}/model.")
    for suffix in suffixes:
        target = base.with_name(base.name + suffix)
        if target.is_dir():
            raise InvalidInput(f"{option}: {target} is a folder; choose another {option}.")
    writable_folder(option, base.parent)


def known_dataset(option: str, name: str | None, split: str | None = None) -> None:
    """A registry dataset name (and, when given, one of its splits)."""
    if name is None:
        return
    from rose_core.data import dataset_names, get_card

    names = dataset_names()
    if name not in names:
        raise InvalidInput(f"{option} {name!r} is not a known dataset; known: {', '.join(names)} "
                           "(python -m rose_core datasets lists them).")
    if split is not None and split not in get_card(name).splits:
        raise InvalidInput(f"Dataset {name!r} has no split {split!r}; it has {', '.join(get_card(name).splits)}.")


def checkpoint_exists(option: str, path: str | os.PathLike) -> None:
    """The checkpoint's card and weights files exist (their contents are checked when it is loaded)."""
    from rose_core.checkpoint import card_path, weights_path

    for f in (card_path(path), weights_path(path)):
        if not f.is_file():
            raise InvalidInput(f"{option} {path}: {f} does not exist (give the checkpoint path without extension, "
                               "e.g. checkpoints/vae-fmnist).")


def device_spec(option: str, spec: str) -> None:
    """``auto`` or a device torch understands (``cpu``, ``cuda``, ``cuda:1``)."""
    if spec == "auto":
        return
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise InvalidInput(f"{option} {spec!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"{option} {spec}: CUDA is not available here; use --device cpu or auto.")


def image_folder(option: str, folder: str | os.PathLike | None, *, optional: bool = False) -> None:
    """An existing folder holding at least one non-hidden file (searched recursively, as
    :func:`rose_core.batch_score.folder_inputs` lists it); no file is opened."""
    if folder is None and optional:
        return
    root = Path(str(folder))
    if not root.exists():
        raise InvalidInput(f"{option} {folder} does not exist; give a folder of images (searched recursively).")
    if not root.is_dir():
        raise InvalidInput(f"{option} {folder} is not a folder; give a folder of images (searched recursively).")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(not f.startswith(".") and os.path.isfile(os.path.join(dirpath, f)) for f in filenames):
            return
    raise InvalidInput(f"{option} {folder} holds no image files (searched recursively; hidden files are skipped).")
