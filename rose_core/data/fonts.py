"""Installed fonts and the glyphs they draw, for the rendered stand-in datasets.

Fonts are found by scanning :data:`FONT_DIRS` (recursively, in sorted path
order); a glyph is rendered white on black and cropped to its ink. Fonts that
lack a character (they draw their .notdef box) or repeat an earlier font's
design are skipped. Installing more fonts changes (and enriches) the rendered
sets; delete their cached ``.npz`` files to rebuild them. When too few fonts are
found, :func:`need_fonts` raises :class:`DatasetUnavailable` with the
``apt-get`` command that fixes it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rose_core.errors import DatasetUnavailable

FONT_DIRS: tuple[Path, ...] = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
"""Folders scanned (recursively, sorted) for ``.ttf``, ``.otf`` and ``.ttc`` fonts."""

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

MIN_LATIN_FONTS = 10
MIN_DIGIT_FONTS = 5
MIN_SCRIPTS = 10

LETTERS = "ABCDEFGHIJ"
DIGITS = "0123456789"
KANA = "おきすつなはまやれを"
"""The ten KMNIST classes, in KMNIST's label order."""

_RENDER_SIZE = 64  # font size (px) glyphs are rendered at before being scaled down
_MISSING = "\U0010FFFD"  # a private-use code point no font maps: renders the .notdef glyph

def _font_files(dirs: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        root = Path(d)
        if root.is_dir():
            files += [p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf", ".ttc") and p.is_file()]
    return sorted(set(files))


def font_dirs() -> tuple[str, ...]:
    return tuple(str(d) for d in FONT_DIRS)


@lru_cache(maxsize=None)
def render_glyphs(path: str, chars: str, size: int = _RENDER_SIZE) -> tuple[np.ndarray | None, ...]:
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
        glyphs = render_glyphs(str(path), chars)
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
    return tuple(_fonts_covering(LETTERS, dirs or font_dirs(), _not_latin_text_font))


@lru_cache(maxsize=None)
def digit_fonts(dirs: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Installed Latin text fonts that also draw the ten digits."""
    return tuple(p for p in latin_fonts(dirs or font_dirs()) if all(g is not None for g in render_glyphs(p, DIGITS)))


@lru_cache(maxsize=None)
def kana_fonts(dirs: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Installed fonts that draw all ten KMNIST hiragana (brush fonts and any other Japanese font)."""
    return tuple(_fonts_covering(KANA, dirs or font_dirs()))


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
    for path in _font_files(dirs or font_dirs()):
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
        glyphs = render_glyphs(fonts[script], chosen)
        kept = "".join(ch for ch, g in zip(chosen, glyphs) if g is not None and min(g.shape) >= 3)
        kept = kept[:CHARS_PER_SCRIPT]
        if len(kept) >= 10:
            alphabets.append((script, fonts[script], kept))
    return tuple(alphabets)


def need_fonts(found: int, needed: int, what: str, packages: str, extras: str = "") -> None:
    if found < needed:
        more = f" For more variety also: `apt-get install -y {extras}`." if extras else ""
        raise DatasetUnavailable(
            f"{what} needs at least {needed} suitable fonts and found {found} under "
            f"{', '.join(font_dirs())}. Fix: `apt-get install -y {packages}` (as root).{more}"
        )


# --------------------------------------------------------------------------- availability probes


# Availability probes look at file names only (a few ms); the builders check the glyphs.
_JAPANESE_FONT_NAMES = re.compile(
    r"kouzan|aoyagi|kiloji|setofont|/ipa(ex|mj)?[gm]|takao|vlgothic|notos(ans|erif)cjk|umefont|umeplus|"
    r"/mplus|migmix|sawarabi|hanazono|droidsansfallback", re.IGNORECASE)


def probe_latin() -> bool:
    names = [p.name.lower() for p in _font_files(font_dirs())]
    return sum(not _not_latin_text_font(n) for n in names) >= MIN_LATIN_FONTS


def probe_kana() -> bool:
    if any(_JAPANESE_FONT_NAMES.search(str(p)) for p in _font_files(font_dirs())):
        return True
    return len(kana_fonts(font_dirs())) >= 1  # an unfamiliar font name: render the kana (about 1 s)


def probe_scripts() -> bool:
    noto = [p for p in _font_files(font_dirs()) if re.fullmatch(r"NotoSans[A-Z][A-Za-z]+-Regular\.(ttf|otf)", p.name)]
    return len(noto) >= MIN_SCRIPTS

