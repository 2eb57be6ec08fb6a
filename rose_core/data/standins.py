"""Offline stand-ins for the OOD test sets that cannot be downloaded here.

KMNIST, NotMNIST, Omniglot, SVHN, CelebA and LSUN have no offline source (see
the project notes, ``rose-notes.md`` section 2). This module declares (:data:`DATASETS`)
clearly named substitutes built from what a Debian machine and the Python packages ship:

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

Where the code lives (one job per module): :mod:`~rose_core.data.fonts` (font
discovery and glyph rendering), :mod:`~rose_core.data.drawing` (raster helpers),
:mod:`~rose_core.data.glyphs` (letters, kana, scripts),
:mod:`~rose_core.data.photos` (photo crops, digits on photos, LFW faces),
:mod:`~rose_core.data.foolbox_samples` (CIFAR-10 samples) and
:mod:`~rose_core.data.synthetic` (noise, constant). This module holds the set
sizes (:data:`N_TEST`), seeds and cards, and re-exports the public functions
under their old names.
"""

from __future__ import annotations

import importlib.util
import zlib

from rose_core.data.base import DatasetCard, DatasetSpec
from rose_core.data.fonts import (CHARS_PER_SCRIPT, DIGITS, KANA, KANA_FONT_EXTRAS,
                                  KANA_FONT_PACKAGES, LATIN_FONT_EXTRAS, LATIN_FONT_PACKAGES, LETTERS,
                                  MIN_DIGIT_FONTS, MIN_LATIN_FONTS, MIN_SCRIPTS, SCRIPT_FONT_PACKAGES,
                                  digit_fonts, kana_fonts, latin_fonts, probe_kana, probe_latin, probe_scripts,
                                  script_alphabets)
from rose_core.data.foolbox_samples import FOOLBOX_WHEEL, _foolbox_wheel, foolbox_dir, read_foolbox_samples
from rose_core.data.glyphs import make_kana, make_letters, make_script_glyphs
from rose_core.data.photos import load_lfw_faces, make_digits_on_photos, make_photo_crops
from rose_core.data.synthetic import make_constant, make_noise
from rose_core.errors import DatasetUnavailable

__all__ = [  # the public names this module had before the split, re-exported unchanged
    "CHARS_PER_SCRIPT", "DATASETS", "DIGITS", "FOOLBOX_WHEEL", "KANA", "KANA_FONT_EXTRAS", "KANA_FONT_PACKAGES",
    "LATIN_FONT_EXTRAS", "LATIN_FONT_PACKAGES", "LETTERS", "MIN_DIGIT_FONTS", "MIN_LATIN_FONTS", "MIN_SCRIPTS",
    "N_TEST", "SCRIPT_FONT_PACKAGES", "digit_fonts", "foolbox_dir", "kana_fonts", "latin_fonts", "load_lfw_faces",
    "make_constant", "make_digits_on_photos", "make_kana", "make_letters", "make_noise", "make_photo_crops",
    "make_script_glyphs", "read_foolbox_samples", "script_alphabets",
]
# Configuration knobs live where they are read: fonts.FONT_DIRS (font folders) and
# foolbox_samples.foolbox_dir (wheel folder); patch those, not the names re-exported here.

N_TEST: dict[str, int] = {
    "letters-fonts": 5000,
    "kana-fonts": 5000,
    "glyphs-scripts": 5000,
    "digits-on-photos": 5000,
    "photo-crops": 5000,
    "noise": 2000,
    "constant": 2000,
}
"""Size of the generated ``test`` splits (``faces-lfw`` and ``cifar10-samples`` are fixed).
Read when a set is built, so changing an entry changes the next build."""


def _seed(name: str, split: str) -> int:
    """A fixed seed per dataset and split (independent of Python's hash randomisation)."""
    return zlib.crc32(f"{name}/{split}".encode())


def _check_split(name: str, split: str) -> None:
    if split != "test":
        raise DatasetUnavailable(f"{name} only has a 'test' split (asked for {split!r}).")


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

DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
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
        available=probe_latin,
    ),
    DatasetSpec(
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
        available=probe_kana,
    ),
    DatasetSpec(
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
        available=lambda: probe_scripts() and _has_module("skimage", "scipy"),
    ),
    DatasetSpec(
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
        available=lambda: _has_module("skimage", "sklearn", "scipy") and probe_latin(),
    ),
    DatasetSpec(
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
    ),
    DatasetSpec(
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
    ),
    DatasetSpec(
        DatasetCard(
            name="cifar10-samples", title="CIFAR-10 samples (20 real test images)", real=True, stands_in_for="CIFAR-10",
            distribution="cifar10",
            source="PyPI wheel foolbox==3.3.4, files foolbox/data/cifar10_<index>_<label>.png",
            licence="CIFAR-10 (A. Krizhevsky); foolbox: MIT",
            description="Only 20 images: the first 20 real CIFAR-10 test images, 32×32 RGB, with their labels. "
                        "Too few for stable metrics; the full CIFAR-10 needs the internet.",
            how_to_get=f"pip download foolbox==3.3.4 --no-deps -d $ROSE_DATA/raw/foolbox (file {FOOLBOX_WHEEL})",
        ),
        _build_cifar10_samples,
        available=lambda: _foolbox_wheel() is not None or _has_module("pip"),
    ),
    DatasetSpec(
        DatasetCard(
            name="noise", title="Uniform noise", real=False, source="generated (numpy, fixed seed)", licence="none",
            description="32×32 grey, every pixel uniform in 0–255, independently.",
        ),
        _builder("noise", lambda n, seed: (make_noise(n, seed), None)),
    ),
    DatasetSpec(
        DatasetCard(
            name="constant", title="Constant images", real=False, source="generated (numpy, fixed seed)", licence="none",
            description="32×32 grey, each image one uniform random value in 0–255.",
        ),
        _builder("constant", lambda n, seed: (make_constant(n, seed), None)),
    ),
)
"""The stand-ins and generated sets, in the order of the table above."""
