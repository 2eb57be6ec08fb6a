"""Decoding of uploaded image files: every format, and a clear message for every bad file.

All files are generated in memory."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rose_core.errors import InvalidInput
from rose_core.imageio import MAX_PIXELS, InvalidImage, decode_image, read_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 40, h: int = 30) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    return np.round(x).astype(np.uint8)


def colour(w: int = 40, h: int = 30) -> np.ndarray:
    g = gradient(w, h)
    return np.stack([g, g[:, ::-1], np.full_like(g, 128)], -1)


# --- good files ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF", "WEBP"])
def test_lossless_grey_round_trip(fmt):
    g = gradient()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(Image.fromarray(g, "L"), fmt, **kw), f"g.{fmt.lower()}")
    assert out.array.dtype == np.uint8 and out.array.shape == (30, 40, 1)
    np.testing.assert_array_equal(out.array[..., 0], g)
    assert out.format in (fmt, "WEBP")


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_colour_round_trip(fmt):
    c = colour()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(Image.fromarray(c, "RGB"), fmt, **kw), "c")
    assert out.array.shape == (30, 40, 3)
    np.testing.assert_array_equal(out.array, c)
    assert out.notes == []


def test_jpeg_colour_and_grey():
    c = colour(64, 48)
    out = decode_image(encode(Image.fromarray(c, "RGB"), "JPEG", quality=95), "c.jpg")
    assert out.array.shape == (48, 64, 3) and out.format == "JPEG"
    assert np.abs(out.array.astype(int) - c).mean() < 4
    grey = decode_image(encode(Image.fromarray(gradient(64, 48), "L"), "JPEG"), "g.jpg")
    assert grey.array.shape == (48, 64, 1)


def test_large_non_square_image_is_accepted():
    big = np.random.default_rng(0).integers(0, 256, (1500, 2500, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(big), "PNG"), "big.png")
    assert out.array.shape == (1500, 2500, 3) and out.original_size == (2500, 1500)


def test_exif_orientation_is_applied():
    c = colour(40, 20)
    img = Image.fromarray(c, "RGB")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), "rot.jpg")
    assert out.array.shape == (40, 20, 3)
    assert any("EXIF orientation" in n for n in out.notes)


# --- conversions with a note --------------------------------------------------------------

def test_16bit_png_is_mapped_linearly_to_8bit():
    v = (np.arange(40 * 30, dtype=np.int64).reshape(30, 40) * 50).astype(np.uint16)  # up to 59950
    img = Image.fromarray(v)  # uint16 -> mode I;16
    out = decode_image(encode(img, "PNG"), "deep.png")
    assert out.original_mode.startswith("I")
    np.testing.assert_array_equal(out.array[..., 0], np.round(v / 257.0).astype(np.uint8))
    assert any("16" in n and "linearly" in n for n in out.notes)


def test_16bit_dark_image_stays_dark():
    v = np.full((16, 16), 1000, dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(v), "PNG"), "dark.png")
    assert out.array.max() == 4  # 1000 / 257, no stretching


def test_32bit_float_tiff():
    a = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    out = decode_image(encode(Image.fromarray(a, "F"), "TIFF"), "f.tif")
    assert out.array[0, 0, 0] == 0 and out.array[-1, -1, 0] == 255
    assert any("float" in n for n in out.notes)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(cmyk, "JPEG", quality=95), "cmyk.jpg")
    assert out.array.shape == (20, 20, 3)
    r, g, b = out.array[10, 10].astype(int)
    assert r > 200 and g < 60 and b < 60
    assert any("CMYK" in n for n in out.notes)


def test_rgba_is_composited_on_black():
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :10, 3] = 255   # left half opaque red
    rgba[:, 10:, 3] = 0     # right half fully transparent
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), "a.png")
    assert out.array.shape == (20, 20, 3)
    assert (out.array[:, :10, 0] == 200).all() and (out.array[:, 10:] == 0).all()
    assert any("transparency" in n and "black" in n for n in out.notes)


def test_la_and_palette_with_transparency():
    la = np.stack([np.full((12, 12), 180, np.uint8), np.full((12, 12), 128, np.uint8)], -1)
    out = decode_image(encode(Image.fromarray(la, "LA"), "PNG"), "la.png")
    assert out.array.shape == (12, 12, 1)
    assert abs(int(out.array[0, 0, 0]) - 90) <= 1  # 180 * 128/255
    p = Image.new("P", (12, 12), 0)
    p.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    p.paste(1, (0, 0, 6, 12))
    out = decode_image(encode(p, "GIF", transparency=0), "p.gif")
    assert out.array.shape == (12, 12, 1)
    assert (out.array[:, :6] == 255).all() and (out.array[:, 6:] == 0).all()


def test_animated_gif_uses_first_frame_with_note():
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8), "L") for v in (10, 120, 240)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = decode_image(buf.getvalue(), "anim.gif")
    assert out.frames == 3
    assert abs(int(out.array.mean()) - 10) <= 1
    assert any("animated GIF" in n and "3 frames" in n and "first frame" in n for n in out.notes)


def test_multipage_tiff_uses_first_page():
    pages = [Image.fromarray(np.full((16, 16), v, np.uint8), "L") for v in (30, 200)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    out = decode_image(buf.getvalue(), "pages.tif")
    assert out.frames == 2 and int(out.array.mean()) == 30
    assert any("multi-page TIFF" in n for n in out.notes)


def test_one_bit_image():
    b = Image.fromarray((gradient() > 128).astype(np.uint8) * 255, "L").convert("1")
    out = decode_image(encode(b, "PNG"), "bits.png")
    assert set(np.unique(out.array)) <= {0, 255} and out.array.shape == (30, 40, 1)


# --- rejections ---------------------------------------------------------------------------

def rejected(data: bytes, name: str = "bad.png") -> str:
    with pytest.raises(InvalidImage) as info:
        decode_image(data, name)
    assert isinstance(info.value, InvalidInput)
    msg = str(info.value)
    assert msg.startswith(f"{name}: ")
    return msg


def test_empty_file():
    assert "empty" in rejected(b"")


def test_truncated_png_and_jpeg():
    png = encode(Image.fromarray(colour(64, 64)), "PNG")
    assert "truncated" in rejected(png[: len(png) // 2], "half.png")
    jpg = encode(Image.fromarray(colour(64, 64)), "JPEG")
    assert "truncated" in rejected(jpg[: len(jpg) // 2], "half.jpg")


def test_header_only():
    png = encode(Image.fromarray(colour(64, 64)), "PNG")
    msg = rejected(png[:40], "header.png")
    assert "truncated" in msg or "not a recognised image" in msg


def test_text_file():
    assert "text file" in rejected(b"col1,col2\n1,2\n3,4\n", "table.csv")
    assert "text file" in rejected("héllo wörld, not an image".encode(), "notes.txt")


def test_random_bytes():
    data = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    assert "not a recognised image" in rejected(data, "noise.bin")


def test_other_formats_are_refused():
    ico = encode(Image.fromarray(colour(32, 32)), "ICO")
    msg = rejected(ico, "icon.ico")
    assert "ICO images are not accepted" in msg


def test_decompression_bomb_is_rejected_before_decoding():
    # A 1-bit 20000×20000 PNG (400 megapixels) compresses to a few tens of kB.
    bomb = encode(Image.new("1", (20000, 20000), 0), "PNG", optimize=True)
    assert len(bomb) < 200_000
    msg = rejected(bomb, "bomb.png")
    assert "megapixel limit" in msg and "decompression bomb" in msg
    # Pillow's own guard fired first here (400 MP > its 179 MP); only our limit is quoted.
    assert "400 megapixels" in msg and f"{MAX_PIXELS // 1_000_000}-megapixel" in msg and "178956970" not in msg
    # the limit is configurable
    small = encode(Image.fromarray(colour(100, 100)), "PNG")
    with pytest.raises(InvalidImage, match="decompression bomb"):
        decode_image(small, "x.png", max_pixels=5000)
    assert MAX_PIXELS >= 12_000_000  # any camera photo passes


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (100, 3)])
def test_too_small(size):
    data = encode(Image.new("RGB", size, (255, 0, 0)), "PNG")
    msg = rejected(data, "tiny.png")
    assert f"{size[0]}×{size[1]}" in msg and "at least 8×8" in msg


def test_read_image_from_disk(tmp_path):
    p = tmp_path / "x.bmp"
    p.write_bytes(encode(Image.fromarray(colour()), "BMP"))
    assert read_image(p).array.shape == (30, 40, 3)
    with pytest.raises(InvalidImage, match="cannot be read"):
        read_image(tmp_path / "missing.png")
