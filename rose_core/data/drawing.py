"""Raster helpers shared by the rendered stand-ins: scale, paste, warp, downsample.

Images here are float ``(H, W)`` arrays in [0, 1] (white ink on black) until
:func:`to_uint8` turns them into pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def scale_to_box(glyph: np.ndarray, box: float) -> np.ndarray:
    """Resize a glyph (uint8) so its longer side is ``box`` px, keeping its aspect; float in [0, 1]."""
    h, w = glyph.shape
    s = box / max(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    img = Image.fromarray(glyph).resize((nw, nh), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Add ``patch`` into ``canvas`` at (top, left), clipping at the borders (maximum blend)."""
    h, w = patch.shape
    ch, cw = canvas.shape
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(ch, top + h), min(cw, left + w)
    if y1 <= y0 or x1 <= x0:
        return
    region = canvas[y0:y1, x0:x1]
    np.maximum(region, patch[y0 - top: y1 - top, x0 - left: x1 - left], out=region)


def centred(glyph: np.ndarray, size: int, box: float, dy: float = 0.0, dx: float = 0.0) -> np.ndarray:
    patch = scale_to_box(glyph, box)
    canvas = np.zeros((size, size), dtype=np.float32)
    h, w = patch.shape
    paste(canvas, patch, int(round((size - h) / 2 + dy)), int(round((size - w) / 2 + dx)))
    return canvas


def warp(img: np.ndarray, rng: np.random.Generator, *, rotate_deg: float, shear: float, scale: tuple[float, float],
          shift: float, elastic_alpha: float, elastic_sigma: float) -> np.ndarray:
    """Random affine map about the centre plus a smooth elastic displacement, one bilinear resampling."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    h, w = img.shape
    theta = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg))
    sh = rng.uniform(-shear, shear)
    sy, sx = rng.uniform(*scale, size=2)
    ty, tx = rng.uniform(-shift, shift, size=2)
    # forward map A (output = A @ input); sample the input at A^-1 @ output
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    a = rot @ np.array([[1.0, sh], [0.0, 1.0]]) @ np.diag([sy, sx])
    inv = np.linalg.inv(a)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    oy, ox = yy - cy - ty, xx - cx - tx
    src_y = inv[0, 0] * oy + inv[0, 1] * ox + cy
    src_x = inv[1, 0] * oy + inv[1, 1] * ox + cx
    if elastic_alpha > 0:
        src_y += gaussian_filter(rng.uniform(-1, 1, (h, w)), elastic_sigma, mode="constant") * elastic_alpha
        src_x += gaussian_filter(rng.uniform(-1, 1, (h, w)), elastic_sigma, mode="constant") * elastic_alpha
    return map_coordinates(img, [src_y, src_x], order=1, mode="constant", cval=0.0)


def half(img: np.ndarray) -> np.ndarray:
    """2×2 box downsampling (even sizes)."""
    h, w = img.shape
    return img.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
