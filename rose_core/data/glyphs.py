"""Glyph stand-ins: letters (NotMNIST), hiragana (KMNIST), characters of many scripts (Omniglot).

Each ``make_*`` function is a pure function of ``n``, ``seed`` and the installed
fonts (see :mod:`rose_core.data.fonts`) and returns uint8 ``(n, 28, 28, 1)``
images, white strokes on a black background (the MNIST convention), with int64
labels. The cards that register them are in :mod:`rose_core.data.standins`.
"""

from __future__ import annotations

import numpy as np

from rose_core.data.drawing import centred, half, paste, scale_to_box, to_uint8, warp
from rose_core.data.fonts import (KANA, KANA_FONT_EXTRAS, KANA_FONT_PACKAGES, LATIN_FONT_EXTRAS,
                                  LATIN_FONT_PACKAGES, LETTERS, MIN_LATIN_FONTS, MIN_SCRIPTS,
                                  SCRIPT_FONT_PACKAGES, font_dirs, kana_fonts, latin_fonts, need_fonts,
                                  render_glyphs, script_alphabets)


def make_letters(n: int, seed: int = 0, dirs: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NotMNIST-like letters: A–J (labels 0–9) from random installed Latin fonts.

    Each image draws a font uniformly, scales the glyph so its longer side is
    20–28 px (aspect kept), and places it at a random offset inside the 28×28 frame.
    Returns uint8 ``(n, 28, 28, 1)`` (white glyph on black) and int64 labels.
    """
    fonts = latin_fonts(dirs or font_dirs())
    need_fonts(len(fonts), MIN_LATIN_FONTS, "letters-fonts", LATIN_FONT_PACKAGES, LATIN_FONT_EXTRAS)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    font_idx = rng.integers(0, len(fonts), size=n)
    for i in range(n):
        glyph = render_glyphs(fonts[font_idx[i]], LETTERS)[labels[i]]
        patch = scale_to_box(glyph, rng.uniform(20, 28))
        h, w = patch.shape
        canvas = np.zeros((28, 28), dtype=np.float32)
        paste(canvas, patch, int(rng.integers(0, 28 - h + 1)), int(rng.integers(0, 28 - w + 1)))
        images[i, :, :, 0] = to_uint8(canvas)
    return images, labels.astype(np.int64)


def make_kana(n: int, seed: int = 0, dirs: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """KMNIST-like hiragana (お き す つ な は ま や れ を, labels 0–9) from brush fonts.

    Rendered at 56×56: glyph fitted to 46–54 px, random stroke thickening or
    thinning, a random affine map (±8° rotation, ±0.15 shear, 0.9–1.05 scale,
    ±3 px shift) and an elastic distortion, then 2×2 box-downsampled to 28×28.
    Returns uint8 ``(n, 28, 28, 1)`` (white strokes on black) and int64 labels.
    """
    from scipy.ndimage import grey_dilation, grey_erosion

    fonts = kana_fonts(dirs or font_dirs())
    need_fonts(len(fonts), 1, "kana-fonts", KANA_FONT_PACKAGES, KANA_FONT_EXTRAS)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    font_idx = rng.integers(0, len(fonts), size=n)
    for i in range(n):
        glyph = render_glyphs(fonts[font_idx[i]], KANA, 96)[labels[i]]
        img = centred(glyph, 56, rng.uniform(46, 54))
        stroke = rng.integers(0, 4)
        if stroke == 1:
            img = grey_dilation(img, size=(3, 3))
        elif stroke == 2:
            img = grey_dilation(img, size=(5, 5))
        elif stroke == 3 and img.mean() > 0.12:  # thin only glyphs with enough ink
            img = grey_erosion(img, size=(3, 3))
        img = warp(img, rng, rotate_deg=8, shear=0.15, scale=(0.9, 1.05), shift=3,
                    elastic_alpha=rng.uniform(2, 8), elastic_sigma=5)
        images[i, :, :, 0] = to_uint8(half(img))
    return images, labels.astype(np.int64)


def make_script_glyphs(n: int, seed: int = 0, dirs: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Omniglot-like characters of many writing systems, drawn as pen strokes.

    Classes are the characters of :func:`script_alphabets` (label = index in that
    list, in script order). Each image picks a script, then a character, renders
    it at 56×56 (longer side 30–44 px), applies a small affine and elastic
    distortion (a different "drawer"), reduces it to its skeleton and redraws
    that with a round pen 3–6 px wide, then 2×2 box-downsamples to 28×28.
    Omniglot's originals are black strokes on white; like the rest of the
    project (and ``real.py``'s Omniglot loader) these are white strokes on black.
    Returns uint8 ``(n, 28, 28, 1)`` and int64 labels.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.morphology import skeletonize

    alphabets = script_alphabets(dirs or font_dirs())
    need_fonts(len(alphabets), MIN_SCRIPTS, "glyphs-scripts (scripts)", SCRIPT_FONT_PACKAGES)
    offsets = np.cumsum([0] + [len(chars) for _, _, chars in alphabets])
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        s = int(rng.integers(0, len(alphabets)))
        _, font, chars = alphabets[s]
        c = int(rng.integers(0, len(chars)))
        labels[i] = offsets[s] + c
        glyph = render_glyphs(font, chars)[c]
        img = centred(glyph, 56, rng.uniform(30, 44), *rng.uniform(-3, 3, size=2))
        img = warp(img, rng, rotate_deg=10, shear=0.15, scale=(0.9, 1.1), shift=2,
                    elastic_alpha=rng.uniform(2, 6), elastic_sigma=6)
        skeleton = skeletonize(img > 0.5)
        if not skeleton.any():
            skeleton = img > 0.5
        pen = distance_transform_edt(~skeleton) <= rng.uniform(1.5, 3.0)
        images[i, :, :, 0] = to_uint8(half(pen.astype(np.float32)))
    return images, labels
