"""Generated images the paper uses as OOD sets: uniform noise and constant images."""

from __future__ import annotations

import numpy as np


def make_noise(n: int, seed: int = 0, size: int = 32, channels: int = 1) -> np.ndarray:
    """Independent uniform integers 0–255 per pixel and channel: uint8 ``(n, size, size, channels)``."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def make_constant(n: int, seed: int = 0, size: int = 32, channels: int = 1) -> np.ndarray:
    """One uniform random value 0–255 per image (and channel), constant over the image."""
    values = np.random.default_rng(seed).integers(0, 256, size=(n, 1, 1, channels), dtype=np.uint8)
    return np.ascontiguousarray(np.broadcast_to(values, (n, size, size, channels)))
