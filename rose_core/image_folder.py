"""The one reader of a folder of images, for ``train --data``, ``fit --data`` and the app's "Your data" page.

A folder is read recursively (flat, or one subfolder per class: the layout does not matter), every
non-hidden regular file sorted by relative POSIX path (:func:`rose_core.batch_score.folder_inputs`).
Each file is decoded by :func:`rose_core.imageio.read_image` (the decoder of uploads) and prepared to the
model's size and channels (:func:`rose_core.data.prepare_images`); a file that cannot be decoded is
reported (``skipped <option> file <path>: <reason>`` on stderr) and skipped, never fatal.

* :func:`folder_split`: the fixed held-out split — every 5th file by sorted path — that ``fit --data``
  calibrates on and ``train --data`` measures test bits/dim on, so a model trained and fitted on one
  folder never calibrates on an image it trained on.
* :func:`infer_channels`: 1 when every sampled file is grey, else 3.
* :func:`folder_record`: the provenance a card records — the folder's absolute path, its file count,
  decoded and skipped counts (with the first 100 reasons) and the SHA-256 of the sorted file list
  (:func:`file_list_sha256`).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rose_core.batch_score import ImageInputs, folder_inputs
from rose_core.errors import InvalidInput

__all__ = ["CALIBRATION_EVERY", "list_folder", "folder_split", "file_list_sha256", "decode_files",
           "infer_channels", "folder_record", "read_folder"]

CALIBRATION_EVERY = 5
"""Every ``CALIBRATION_EVERY``-th file of a folder (by sorted relative path) is held out."""

MAX_REPORTED = 100
"""Skipped files listed by name in a card (the count covers all of them)."""


def list_folder(option: str, folder: str, extensions: Sequence[str] | None = None) -> ImageInputs:
    """The files under ``folder`` (recursive, hidden files skipped, sorted); one-line errors name ``option``."""
    try:
        return folder_inputs(folder, extensions)
    except InvalidInput as exc:
        raise InvalidInput(str(exc).replace("--input", option)) from None


def folder_split(n_files: int, every: int = CALIBRATION_EVERY) -> tuple[list[int], list[int]]:
    """Positions ``(kept, held_out)`` of ``n_files`` sorted files: every ``every``-th file (positions
    ``every-1``, ``2·every-1``, …) is held out, the others are kept."""
    held = [i for i in range(n_files) if i % every == every - 1]
    held_set = set(held)
    return [i for i in range(n_files) if i not in held_set], held


def file_list_sha256(keys) -> str:
    """SHA-256 of a sorted file list: the relative POSIX paths joined by newlines, UTF-8."""
    return hashlib.sha256("\n".join(sorted(keys)).encode("utf-8", "surrogateescape")).hexdigest()


def decode_files(inputs: ImageInputs, positions: Sequence[int], size: int, channels: int, option: str, *,
                 report: bool = True, progress=None) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode and prepare the files at ``positions``; a file that fails is skipped (and, with ``report``,
    named on stderr with the reason). ``progress(done, total)`` is called every 64 files.

    Returns uint8 ``(n, size, size, channels)`` and the ``(file, reason)`` of the skipped files."""
    from rose_core.data import prepare_images

    if channels not in (1, 3):
        raise InvalidInput(f"channels must be 1 or 3, got {channels}.")
    good, bad = [], []
    positions = list(positions)
    for j, i in enumerate(positions):
        if progress is not None and j % 64 == 0:
            progress(j, len(positions))
        try:
            good.append(prepare_images(inputs.read(i)[None], size, channels)[0])
            continue
        except InvalidInput as exc:
            bad.append((inputs.keys[i], getattr(exc, "reason", str(exc))))
        except Exception as exc:   # a file must never stop the run: report it and go on
            bad.append((inputs.keys[i], f"{type(exc).__name__}: {exc}"))
        if report:
            print(f"skipped {option} file {bad[-1][0]}: {bad[-1][1]}", file=sys.stderr)
    if progress is not None:
        progress(len(positions), len(positions))
    images = np.stack(good) if good else np.zeros((0, size, size, channels), dtype=np.uint8)
    return images, bad


def infer_channels(inputs: ImageInputs, sample: int = 64) -> int:
    """1 when the first ``sample`` decodable files are all grey (one channel, or three equal ones), else 3.
    Raises :class:`InvalidInput` when none of them can be decoded."""
    seen = 0
    for i in range(len(inputs)):
        try:
            arr = inputs.read(i)
        except Exception:   # a bad file says nothing about the others; decode_files reports it later
            continue
        seen += 1
        if arr.shape[-1] != 1 and not (np.array_equal(arr[..., 0], arr[..., 1])
                                       and np.array_equal(arr[..., 0], arr[..., 2])):
            return 3
        if seen >= sample:
            break
    if seen == 0:
        raise InvalidInput(f"None of the files of {inputs.description} could be decoded as an image.")
    return 1


def folder_record(folder: str, inputs: ImageInputs, used: int, bad: list[tuple[str, str]], **extra) -> dict:
    """What a card records about a folder it read (see the module docstring)."""
    return {"folder": str(Path(folder).resolve()), "files": len(inputs), "decoded": used, "skipped": len(bad),
            "skipped_files": [{"file": k, "reason": r} for k, r in bad[:MAX_REPORTED]],
            "file_list_sha256": file_list_sha256(inputs.keys), **extra}


def read_folder(folder: str, option: str, *, size: int = 32, channels: int | None = None,
                extensions: Sequence[str] | None = None, report: bool = True, progress=None) -> dict:
    """A whole folder, split for training: ``{"train": uint8 images, "test": uint8 images, "channels",
    "provenance"}``, where ``test`` are the held-out files (:func:`folder_split`) and ``provenance`` what a
    card records (:func:`folder_record` of the folder, the split rule, the image size and channels, and
    whether the channels were stated or inferred). Raises :class:`InvalidInput` when the folder has too few
    decodable files for the split."""
    inputs = list_folder(option, folder, extensions)
    how = "stated"
    if channels is None:
        channels, how = infer_channels(inputs), "inferred from the files"
    kept, held = folder_split(len(inputs))
    if not kept or len(held) < 2:
        raise InvalidInput(f"{option} {folder} holds {len(inputs)} files; the held-out split (every "
                           f"{CALIBRATION_EVERY}th file) needs at least {2 * CALIBRATION_EVERY} files.")
    total = len(inputs)

    def part(offset: int):
        if progress is None:
            return None
        return lambda j, n: progress(offset + j, total)

    train, bad_train = decode_files(inputs, kept, size, channels, option, report=report, progress=part(0))
    test, bad_test = decode_files(inputs, held, size, channels, option, report=report, progress=part(len(kept)))
    if len(train) < 1 or len(test) < 2:
        raise InvalidInput(f"{option} {folder}: only {len(train)} training and {len(test)} held-out files could "
                           "be decoded; at least 1 and 2 are needed.")
    bad = bad_train + bad_test
    split = (f"every {CALIBRATION_EVERY}th file by sorted relative path held out (positions {CALIBRATION_EVERY - 1}, "
             f"{2 * CALIBRATION_EVERY - 1}, … from 0); the other files are the training images")
    provenance = {"source": "folder", **folder_record(folder, inputs, len(train) + len(test), bad),
                  "image_shape": [channels, size, size], "channels": how, "split": split,
                  "train_images": len(train), "held_out_images": len(test)}
    return {"train": train, "test": test, "channels": channels, "provenance": provenance}
