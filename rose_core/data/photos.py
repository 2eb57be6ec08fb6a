"""Photo stand-ins: crops of bundled photos (LSUN), font digits on photos (SVHN), LFW faces (CelebA).

Everything comes from files scikit-image and scikit-learn ship (no downloads);
a missing package raises :class:`DatasetUnavailable` with the ``pip install``
that fixes it. The cards that register these sets are in
:mod:`rose_core.data.standins`.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from rose_core.data.drawing import paste, scale_to_box, to_uint8
from rose_core.data.fonts import (DIGITS, LATIN_FONT_EXTRAS, LATIN_FONT_PACKAGES, MIN_DIGIT_FONTS, digit_fonts,
                                  font_dirs, need_fonts, render_glyphs)
from rose_core.errors import DatasetUnavailable


def _require_module(module: str, pip_name: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DatasetUnavailable(f"{what} needs the Python package {pip_name}. Fix: `pip install {pip_name}`.")


@lru_cache(maxsize=1)
def _photos() -> tuple[tuple[str, np.ndarray], ...]:
    """The colour photos that ship inside scikit-image and scikit-learn (no downloads)."""
    _require_module("skimage", "scikit-image", "The photo stand-ins")
    _require_module("sklearn", "scikit-learn", "The photo stand-ins")
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    photos = [
        ("skimage astronaut", skd.astronaut()),
        ("skimage chelsea", skd.chelsea()),
        ("skimage coffee", skd.coffee()),
        ("skimage rocket", skd.rocket()),
        ("skimage motorcycle", skd.stereo_motorcycle()[0]),
    ]
    sample = load_sample_images()
    photos += [(f"sklearn {Path(f).name}", img) for f, img in zip(sample.filenames, sample.images)]
    return tuple((name, np.ascontiguousarray(img[..., :3], dtype=np.uint8)) for name, img in photos)


@lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """Grey wall-like textures bundled with scikit-image (brick, gravel, grass)."""
    import skimage.data as skd

    return (skd.brick(), skd.gravel(), skd.grass())


def _random_crop(img: np.ndarray, rng: np.random.Generator, lo: int, hi: int, out: int = 32) -> np.ndarray:
    """A random square crop with side in [lo, hi] px (log-uniform), resized to ``out``×``out``."""
    h, w = img.shape[:2]
    hi = min(hi, h, w)
    lo = min(lo, hi)
    side = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    patch = Image.fromarray(img[y: y + side, x: x + side])
    return np.asarray(patch.resize((out, out), Image.Resampling.LANCZOS, reducing_gap=2.0))


def make_photo_crops(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """LSUN-like 32×32 RGB scenes: random square crops (48 px to the photo's full height,
    log-uniform) of the bundled photos, randomly mirrored. Labels = photo index."""
    photos = _photos()
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, len(photos), size=n)
    for i in range(n):
        crop = _random_crop(photos[labels[i]][1], rng, 48, 10_000)
        images[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return images, labels.astype(np.int64)


def _luma(rgb: np.ndarray) -> float:
    return float(np.dot(np.asarray(rgb, dtype=np.float64).reshape(-1, 3).mean(axis=0), [0.299, 0.587, 0.114]))


def _colour_with_luma(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A random colour (values in [0, 1]) whose luma lies in [lo, hi]."""
    target = rng.uniform(lo, hi)
    c = rng.uniform(0.0, 1.0, 3)
    for _ in range(4):  # scale towards the target luma, clipping as needed
        current = _luma(c)
        c = np.clip(c * (target / current) if current > 1e-3 else c + target, 0.0, 1.0)
    return c


def make_digits_on_photos(n: int, seed: int = 0, dirs: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SVHN-like 32×32 RGB house numbers: font digits composited on photo patches.

    Background: a random crop (40–200 px) of a bundled photo, or of a brick/gravel/grass
    texture with a random tint; sometimes a plain plate behind the digits. The label
    digit is centred (±2 px), 14–24 px tall, in a colour that contrasts with what is
    behind it; neighbouring digits may appear to its left and right, cut by the frame.
    Light blur and noise follow. Labels are the centre digit (0–9).
    """
    from scipy.ndimage import gaussian_filter

    fonts = digit_fonts(dirs or font_dirs())
    need_fonts(len(fonts), MIN_DIGIT_FONTS, "digits-on-photos", LATIN_FONT_PACKAGES, LATIN_FONT_EXTRAS)
    photos, textures = _photos(), _textures()
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    for i in range(n):
        k = int(rng.integers(0, len(photos) + len(textures)))
        if k < len(photos):
            bg = _random_crop(photos[k][1], rng, 40, 200).astype(np.float32) / 255.0
        else:
            grey = _random_crop(textures[k - len(photos)], rng, 40, 200).astype(np.float32) / 255.0
            bg = grey[..., None] * rng.uniform(0.4, 1.0, 3).astype(np.float32)
        # digits: label in the middle, optional neighbours
        glyphs = render_glyphs(fonts[int(rng.integers(0, len(fonts)))], DIGITS)
        height = rng.uniform(14, 24)
        gap = int(rng.integers(1, 4))
        left = [int(rng.integers(0, 10))] if rng.random() < 0.6 else []
        right = [int(rng.integers(0, 10))] if rng.random() < 0.6 else []
        digits = left + [int(labels[i])] + right
        patches = [scale_to_box(glyphs[d], height * max(glyphs[d].shape) / glyphs[d].shape[0]) for d in digits]
        strip_h = max(p.shape[0] for p in patches)
        centre = patches[len(left)]
        top = int(round(16 - strip_h / 2 + rng.uniform(-2, 2)))
        x_centre = int(round(16 - centre.shape[1] / 2 + rng.uniform(-2, 2)))
        mask = np.zeros((32, 32), dtype=np.float32)
        x = x_centre - sum(p.shape[1] + gap for p in patches[: len(left)])
        for p in patches:
            paste(mask, p, top + strip_h - p.shape[0], x)  # bottom-aligned, like printed digits
            x += p.shape[1] + gap
        # plate behind the digits, then a contrasting digit colour
        if rng.random() < 0.35:
            plate = _colour_with_luma(rng, 0.0, 1.0).astype(np.float32)
            y0, y1 = max(0, top - 3), min(32, top + strip_h + 3)
            bg[y0:y1] = plate
        region = bg[mask > 0.5] if (mask > 0.5).any() else bg
        lum = _luma(region)
        fg = _colour_with_luma(rng, 0.0, max(0.0, lum - 0.35)) if lum > 0.5 else _colour_with_luma(rng, min(1.0, lum + 0.35), 1.0)
        img = bg * (1.0 - mask[..., None]) + fg.astype(np.float32) * mask[..., None]
        sigma = rng.uniform(0.0, 0.8)
        if sigma > 0.2:
            img = gaussian_filter(img, sigma=(sigma, sigma, 0))
        img = img + rng.normal(0.0, rng.uniform(0.0, 0.02), img.shape)
        images[i] = to_uint8(img)
    return images, labels.astype(np.int64)


def load_lfw_faces(size: int = 32) -> np.ndarray:
    """The 100 real LFW face crops of ``skimage.data.lfw_subset()`` (the first 100 of its
    200 entries; the rest are non-faces), resized from 25×25 to ``size``×``size`` grey."""
    _require_module("skimage", "scikit-image", "faces-lfw")
    import skimage.data as skd

    faces = np.asarray(skd.lfw_subset()[:100], dtype=np.float64)
    out = np.zeros((len(faces), size, size, 1), dtype=np.uint8)
    for i, face in enumerate(faces):
        img = Image.fromarray(to_uint8(face))
        out[i, :, :, 0] = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))
    return out
