"""Decoding uploaded image files into uint8 arrays, with a clear message per bad file.

:func:`decode_image` turns the bytes of one file into a :class:`DecodedImage`:
a uint8 ``(H, W, C)`` array with ``C = 1`` (grey) or ``C = 3`` (colour), plus
``notes`` that say what was converted on the way. A file that cannot be used
raises :class:`InvalidImage` (a :class:`rose_core.errors.InvalidInput`) whose
message names the file and the reason. Nothing here depends on Streamlit.

Accepted formats: PNG, JPEG (and camera MPO), BMP, GIF, TIFF and WebP, of any
size from 8×8 up to :data:`MAX_PIXELS`, grey or colour. Every other format
Pillow could open (EPS, PSD, ICO, …) is refused on purpose: fewer decoders,
less attack surface.

Decisions, each reported in ``notes`` when it applies:

* **Empty file**, **truncated file**, **not an image**: rejected with a
  message saying which, and naming what the file is when its first bytes tell
  (a PDF, a gzip/ZIP/7-Zip archive, an SVG drawing, an HTML page, text),
  whatever its name says.
* **Decompression bombs**: an image with more than :data:`MAX_PIXELS` pixels
  (width × height read from the header, before any pixel is decoded) or a file
  larger than :data:`MAX_BYTES` is rejected. Pillow's own guard
  (``DecompressionBombError``/``Warning``, which fires in ``Image.open`` for
  headers above ~89 megapixels) is turned into the same message, which quotes
  only :data:`MAX_PIXELS`.
* **Floating-point images with NaN or ±Inf**: those pixels become black and a
  note counts them; an image with no finite pixel at all is rejected.
* **Animated GIF / WebP, multi-page TIFF**: the *first frame* is scored and a
  note says how many frames the file has (a detector scores images, not
  videos; rejecting would throw away a perfectly good first frame).
* **16-bit (and 32-bit) images** (PNG ``I;16``, TIFF ``I``/``F``): mapped
  *linearly* from the full 16-bit range to 8 bits (``round(v / 257)``), so a
  dark 16-bit image stays dark, as in an 8-bit export; no contrast stretching.
  Float images with values in [0, 1] are scaled by 255; other float ranges are
  min–max scaled (the only sensible choice without a known range), and the
  note says so.
* **CMYK** (and YCbCr, LAB): converted to RGB by Pillow.
* **Transparency** (RGBA, LA, palette images with a transparent colour): the
  image is composited on **black**, the background of the Fashion-MNIST and
  MNIST training images (a transparent background is "nothing there"). The
  note says how much of the image was transparent.
* **Tiny images**: shorter side below :data:`MIN_SIDE` (8 px) is rejected —
  upscaling a 1×1 or 4×4 image to the model's 32×32 would invent all of its
  content, and the score would say nothing about the file.
* **Orientation**: a JPEG/TIFF EXIF orientation tag is applied, so the image
  is scored as it is displayed.
* **Grey stored as colour** (palette, lossless WebP, an RGB file whose three
  channels are equal) comes back with one channel; the model's own channel
  conversion treats both alike.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from rose_core.errors import InvalidInput

__all__ = ["DecodedImage", "InvalidImage", "decode_image", "read_image", "FORMATS", "EXTENSIONS",
           "MAX_PIXELS", "MAX_BYTES", "MIN_SIDE"]

FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "BMP", "GIF", "TIFF", "WEBP")
"""Pillow format names that are decoded (MPO is the multi-picture JPEG of cameras)."""

EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp")
"""File-name extensions offered in upload dialogs."""

MAX_PIXELS = 40_000_000
"""Largest accepted width × height (40 megapixels: any camera photo, no decompression bomb)."""

MAX_BYTES = 64 * 1024 * 1024
"""Largest accepted file size in bytes."""

MIN_SIDE = 8
"""Smallest accepted width or height in pixels."""


class InvalidImage(InvalidInput):
    """A file that cannot be scored as an image; the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass
class DecodedImage:
    """A decoded image: ``array`` uint8 ``(H, W, C)`` with C 1 or 3, and what was done to it."""

    name: str
    array: np.ndarray
    format: str
    original_mode: str
    original_size: tuple[int, int]
    """(width, height) of the file."""
    frames: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.array.shape[-1])


def _open_formats() -> list[str]:
    Image.init()  # registers every plugin, so the names below resolve
    return [f for f in FORMATS if f in Image.OPEN]


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _magic_format(data: bytes) -> str | None:
    for sig, fmt in _MAGIC:
        if data.startswith(sig):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


_NOT_IMAGES = ((b"%PDF-", "a PDF document"), (b"\x1f\x8b", "a gzip-compressed file"),
               (b"PK\x03\x04", "a ZIP archive (or an Office document)"), (b"PK\x05\x06", "an empty ZIP archive"),
               (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"), (b"BZh", "a bzip2-compressed file"),
               (b"\xfd7zXZ\x00", "an xz-compressed file"), (b"Rar!", "a RAR archive"))
"""File signatures of common non-image files, named in the refusal (the file name may say .png)."""


def _describe_non_image(data: bytes) -> str | None:
    """What a non-image file is (PDF, archive, SVG, HTML, text), or None when it is not recognised."""
    for sig, what in _NOT_IMAGES:
        if data.startswith(sig):
            return what
    if not _looks_like_text(data):
        return None
    head = data[:1024].decode("utf-8", "replace").lstrip("\ufeff \t\r\n").lower()
    if "<svg" in head:
        return "an SVG drawing (vector graphics; export it as PNG to score it)"
    if head.startswith(("<!doctype html", "<html")) or "<html" in head[:200]:
        return "an HTML page"
    return "a text file"


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch >= 32 or ch in b"\t\r\n" for ch in head)
    return printable / len(head) > 0.95


def _to_uint8_high_depth(img: Image.Image, notes: list[str], name: str) -> Image.Image:
    """16-bit or 32-bit integer / float single-channel images → 8-bit ``L``."""
    mode = img.mode
    arr = np.asarray(img)
    if mode == "F":
        a = arr.astype(np.float64)
        finite = np.isfinite(a)
        if not finite.any():
            raise InvalidImage(name, "every pixel of this floating-point image is NaN or infinite, so there is "
                                     "nothing to score.")
        lo, hi = float(a[finite].min()), float(a[finite].max())
        if not finite.all():
            notes.append(f"{int((~finite).sum())} of {a.size} pixels are NaN or infinite: set to black.")
            a = np.where(finite, a, lo)
        if lo >= 0.0 and hi <= 1.0:
            out = np.round(a * 255.0)
            notes.append("32-bit float image with values in [0, 1]: scaled by 255 to 8 bits.")
        else:
            out = np.round((a - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(a)
            notes.append(f"32-bit float image with values in [{lo:.3g}, {hi:.3g}]: min–max scaled to 8 bits.")
        return Image.fromarray(out.astype(np.uint8), "L")
    a = arr.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 65535:
        out = np.round(a / 257.0)
        notes.append(f"{'16' if mode.startswith('I;16') else '32'}-bit greyscale image: mapped linearly "
                     "from 0–65535 to 0–255 (v / 257).")
    else:
        out = np.round((a - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(a)
        notes.append(f"32-bit integer image with values in [{lo}, {hi}]: min–max scaled to 8 bits.")
    return Image.fromarray(out.astype(np.uint8), "L")


def _composite_on_black(img: Image.Image, notes: list[str]) -> Image.Image:
    """RGBA / LA → RGB / L composited on black."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
    alpha = rgba[..., 3:4] / 255.0
    transparent = float((alpha < 1.0).mean())
    rgb = np.round(rgba[..., :3] * alpha).astype(np.uint8)
    if transparent > 0:
        notes.append(f"transparency ({transparent:.1%} of the pixels not fully opaque) composited on black, "
                     "the background of the training images.")
    return Image.fromarray(rgb, "RGB")


def _is_grey(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _frame_to_array(img: Image.Image, notes: list[str], name: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _to_uint8_high_depth(img, notes, name)
        mode = "L"
    if mode == "P":
        has_alpha = "transparency" in img.info or img.palette is not None and img.palette.mode == "RGBA"
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
        if mode == "RGB":
            rgb = np.asarray(img)
            return rgb[..., :1].copy() if _is_grey(rgb) else rgb.copy()
    if mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        if mode in ("La", "RGBa"):  # premultiplied alpha
            img = img.convert("RGBA" if mode == "RGBa" else "LA")
        was_grey = img.mode == "LA"
        rgb = np.asarray(_composite_on_black(img, notes))
        return rgb[..., :1].copy() if was_grey or _is_grey(rgb) else rgb.copy()
    if mode == "1":
        return np.asarray(img.convert("L"))[..., None].copy()
    if mode == "L":
        return np.asarray(img)[..., None].copy()
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB.")
    elif mode not in ("RGB",):
        notes.append(f"{mode} image converted to RGB.")
    rgb = np.asarray(img.convert("RGB"))
    return rgb[..., :1].copy() if _is_grey(rgb) else rgb.copy()


def decode_image(data: bytes, name: str = "image", *, max_pixels: int = MAX_PIXELS,
                 min_side: int = MIN_SIDE) -> DecodedImage:
    """Decode one image file's bytes; raise :class:`InvalidImage` with a clear reason.

    See the module docstring for every decision on unusual files.
    """
    if data is None or len(data) == 0:
        raise InvalidImage(name, "the file is empty (0 bytes).")
    if len(data) > MAX_BYTES:
        raise InvalidImage(name, f"the file is {len(data) / 2**20:.0f} MiB; at most {MAX_BYTES // 2**20} MiB "
                                 "are accepted.")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data), formats=_open_formats())
            except UnidentifiedImageError:
                probe = _identify_any(data)
                if probe is not None:
                    raise InvalidImage(name, f"{probe} images are not accepted; use PNG, JPEG, BMP, GIF, "
                                             "TIFF or WebP.") from None
                magic = _magic_format(data)
                if magic is not None:
                    raise InvalidImage(name, f"the file starts like a {magic} image but is truncated or damaged "
                                             "(its header cannot be read).") from None
                what = _describe_non_image(data)
                if what is not None:
                    raise InvalidImage(name, f"this is {what}, not an image.") from None
                raise InvalidImage(name, "not a recognised image (expected PNG, JPEG, BMP, GIF, TIFF or "
                                         "WebP); the file may be damaged or of another type.") from None
            fmt = img.format or "unknown"
            width, height = img.size
            if width * height > max_pixels:
                raise InvalidImage(name, f"{width}×{height} pixels is more than the {max_pixels / 1e6:.0f}-megapixel "
                                         "limit (possible decompression bomb); it was not decoded.")
            if min(width, height) < min_side:
                raise InvalidImage(name, f"the image is only {width}×{height} pixels; at least {min_side}×{min_side} "
                                         "is needed (upscaling to the model's 32×32 would invent its content).")
            frames = int(getattr(img, "n_frames", 1) or 1)
            original_mode = img.mode
            if frames > 1:
                img.seek(0)
                kind = {"GIF": "animated GIF", "WEBP": "animated WebP", "TIFF": "multi-page TIFF"}.get(
                    fmt, f"multi-frame {fmt}")
                notes.append(f"{kind} with {frames} frames: only the first frame is scored.")
                frame = ImageSequence.Iterator(img)[0]
                frame.load()
                img = frame.copy()
            else:
                img.load()
            try:
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block must not stop the image
                orientation = 1
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
                notes.append(f"EXIF orientation {orientation} applied (the image is scored as it is displayed).")
            array = _frame_to_array(img, notes, name)
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (89 / 179 megapixels) fired in Image.open before our check could; quote only our
        # limit, and the size from Pillow's message when it has one.
        m = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(m[1]) / 1e6:,.0f} megapixels" if m else "the image"
        raise InvalidImage(name, f"{size} is more than the {max_pixels / 1e6:.0f}-megapixel limit (possible "
                                 "decompression bomb); it was not decoded.") from None
    except (OSError, SyntaxError, EOFError, ValueError, IndexError, TypeError, KeyError) as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or isinstance(exc, EOFError) or "broken" in msg.lower():
            raise InvalidImage(name, f"the file is truncated or damaged ({msg or type(exc).__name__}).") from None
        raise InvalidImage(name, f"the image could not be decoded ({type(exc).__name__}: {msg}).") from None
    except MemoryError:
        raise InvalidImage(name, "decoding needs more memory than is available.") from None
    if array.ndim != 3 or array.dtype != np.uint8 or array.shape[-1] not in (1, 3):
        raise InvalidImage(name, f"decoded to an unexpected array {array.dtype} {array.shape}.")
    return DecodedImage(name=name, array=np.ascontiguousarray(array), format=fmt, original_mode=original_mode,
                        original_size=(int(width), int(height)), frames=frames, notes=notes)


def _identify_any(data: bytes) -> str | None:
    """The format name if Pillow knows the file at all (used only to word the refusal; nothing is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as probe:
                return probe.format
    except Exception:
        return None


def read_image(path: str | os.PathLike, **kwargs) -> DecodedImage:
    """Read and decode an image file from disk (see :func:`decode_image`)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise InvalidImage(p.name, f"the file is {size / 2**20:.0f} MiB; at most {MAX_BYTES // 2**20} MiB "
                                       "are accepted.")
        data = p.read_bytes()
    except OSError as exc:
        raise InvalidImage(str(p), f"the file cannot be read ({exc.strerror or exc}).") from None
    return decode_image(data, p.name, **kwargs)
