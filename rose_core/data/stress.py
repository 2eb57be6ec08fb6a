"""The stress suite: datasets that probe a detector beyond the paper's OOD sets.

Every set is 28×28 grey uint8 (the upload-sized originals; the model pipeline
resizes them to 32×32 exactly as it resizes an uploaded image, with
:func:`rose_core.data.prepare_images`), has a ``test`` split only, and carries
``stress_group`` on its card:

==================================  =========  ==================================================
name                                group      what it is
==================================  =========  ==================================================
stress-noise-uniform                ood        every pixel uniform in 0–255, generated at 28×28
stress-noise-gaussian               ood        pixels N(128, 64²), rounded and clipped, 28×28
stress-black                        ood        all pixels 0
stress-white                        ood        all pixels 255
stress-fmnist-inverted              ood        255 − Fashion-MNIST
stress-fmnist-rot90                 ood        Fashion-MNIST rotated 90° counter-clockwise
stress-fmnist-upside-down           ood        Fashion-MNIST flipped top to bottom (np.flipud)
stress-fmnist-blurred               ood        Fashion-MNIST, Gaussian blur σ = 3 px
stress-mnist-thin                   ood        MNIST test digits eroded by a 2×2 minimum filter
stress-fmnist-shift1                benign     Fashion-MNIST moved by exactly 1 px up/down/left/right
stress-fmnist-brightness            benign     Fashion-MNIST × a factor uniform in [0.9, 1.1]
stress-fmnist-jpeg75                covariate  Fashion-MNIST re-encoded as JPEG, quality 75
stress-fmnist-jpeg95                covariate  Fashion-MNIST re-encoded as JPEG, quality 95
==================================  =========  ==================================================

*ood* sets should be flagged; *benign* sets should stay in-distribution (their
false-alarm rate is the measure); *covariate* sets are a real shift reported
without a target: JPEG re-encoding leaves block and ringing artefacts the
models never saw in training (measured in issue 11: the VAE's median NLL rises
from 2295 to 3697 nats at quality 75, and every detector, NLL included, flags
most re-encoded images), so a high flag rate there is not a detector bug.

Sources. The Fashion-MNIST sets are derived from the **evaluation half** of the
Fashion-MNIST test split only (:func:`rose_core.data.splits.evaluation_sample`),
never from the calibration half that sets thresholds, and never from training
images; image ``i`` of every such set is a transform of image ``i`` of that
half (5,000 images, labels kept). ``stress-mnist-thin`` uses the MNIST test
split (10,000 digits, labels kept); the generated sets have
:data:`N_GENERATED` images and no labels. Each set is a pure function of its
source and a seed derived from its name, and is cached like every dataset; if
the definition of the halves changes, delete ``$ROSE_DATA/stress-*.npz``.

:func:`stress_sets` lists the names by group, for a harness preset.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, grey_erosion

from rose_core.data.base import STRESS_GROUPS, DatasetCard, DatasetSpec
from rose_core.data.registry import is_available, load_dataset
from rose_core.data.splits import evaluation_sample
from rose_core.errors import DatasetUnavailable

PREFIX = "stress-"
IN_DISTRIBUTION = "fashion-mnist"
"""The in-distribution dataset the derived sets transform (its evaluation half)."""
DIGITS = "mnist"
"""Source of the thin-stroke digits (its test split)."""
SIZE = 28
"""Side of every stress image: the size of the originals, resized by the model pipeline like an upload."""
N_GENERATED = 2000
GAUSSIAN_MEAN, GAUSSIAN_STD = 128.0, 64.0
BLUR_SIGMA = 3.0
ERODE_SIZE = (2, 2)
BRIGHTNESS_RANGE = (0.9, 1.1)
SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1))
"""(dy, dx) of the four 1-pixel translations (up, down, left, right)."""


# --------------------------------------------------------------------------- transforms (uint8 (N, H, W, 1))


def uniform_noise(n: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Independent uniform integers 0–255 per pixel."""
    return rng.integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)


def gaussian_noise(n: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Pixels drawn from N(:data:`GAUSSIAN_MEAN`, :data:`GAUSSIAN_STD`²), rounded and clipped to 0–255."""
    values = rng.normal(GAUSSIAN_MEAN, GAUSSIAN_STD, size=(n, size, size, 1))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def constant(n: int, value: int, size: int = SIZE) -> np.ndarray:
    return np.full((n, size, size, 1), value, dtype=np.uint8)


def invert(images: np.ndarray) -> np.ndarray:
    return 255 - images


def rotate90(images: np.ndarray) -> np.ndarray:
    """Each image rotated 90° counter-clockwise (``np.rot90`` on the image axes)."""
    return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))


def upside_down(images: np.ndarray) -> np.ndarray:
    """Each image flipped top to bottom (``np.flipud`` of every image)."""
    return np.ascontiguousarray(images[:, ::-1])


def blur(images: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Gaussian blur of each image (σ in pixels, black beyond the border), rounded to uint8."""
    out = gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma, 0), mode="constant", cval=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def erode(images: np.ndarray, size: tuple[int, int] = ERODE_SIZE) -> np.ndarray:
    """Grey-level erosion (minimum filter) of each image: white strokes lose a pixel of width."""
    return grey_erosion(images, size=(1, *size, 1), mode="constant", cval=0)


def translate(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Move image ``i`` by ``shifts[i] = (dy, dx)`` whole pixels, filling the uncovered edge with black."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    for i, (dy, dx) in enumerate(np.asarray(shifts, dtype=int)):
        src = images[i, max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
        out[i, max(0, dy): max(0, dy) + src.shape[0], max(0, dx): max(0, dx) + src.shape[1]] = src
    return out


def scale_brightness(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Multiply image ``i`` by ``factors[i]``, rounded and clipped to 0–255."""
    out = images.astype(np.float64) * np.asarray(factors, dtype=np.float64)[:, None, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Encode each grey image as a baseline JPEG at ``quality`` with Pillow and decode it again."""
    out = np.empty_like(images)
    for i, img in enumerate(images[..., 0]):
        buffer = BytesIO()
        Image.fromarray(img).save(buffer, format="JPEG", quality=quality)
        out[i, ..., 0] = np.asarray(Image.open(BytesIO(buffer.getvalue())).convert("L"))
    return out


# --------------------------------------------------------------------------- sources and seeds


def _seed(name: str) -> int:
    """A fixed seed per set (independent of Python's hash randomisation)."""
    return zlib.crc32(name.encode())


def _fashion_mnist_evaluation_half() -> tuple[np.ndarray, np.ndarray | None]:
    half = evaluation_sample(IN_DISTRIBUTION)
    return half.images, half.labels


def _mnist_test() -> tuple[np.ndarray, np.ndarray | None]:
    digits = load_dataset(DIGITS, "test")
    return digits.images, digits.labels


@dataclass(frozen=True)
class _Stress:
    name: str
    group: str
    title: str
    description: str
    source: Callable[[], tuple[np.ndarray, np.ndarray | None]] | None
    """``() -> (images, labels)`` of the images transformed, or None for generated sets."""
    make: Callable[[np.ndarray | None, np.random.Generator], np.ndarray]
    """``(source images or None, rng) -> images``."""


_FMNIST_NOTE = (" Derived from the evaluation half of the Fashion-MNIST test split only (never the "
                "calibration half, never training images); labels kept.")
_SETS: tuple[_Stress, ...] = (
    _Stress("stress-noise-uniform", "ood", "Uniform noise (28×28, resized like an upload)",
            "Every pixel uniform in 0–255, generated at 28×28 grey and resized to the model's size by the same "
            "preprocessing as an uploaded image (the case the app once called in-distribution).",
            None, lambda _, rng: uniform_noise(N_GENERATED, rng)),
    _Stress("stress-noise-gaussian", "ood", "Gaussian noise (28×28)",
            f"Pixels N({GAUSSIAN_MEAN:g}, {GAUSSIAN_STD:g}²), rounded and clipped to 0–255, 28×28 grey.",
            None, lambda _, rng: gaussian_noise(N_GENERATED, rng)),
    _Stress("stress-black", "ood", "All-black images", "Every pixel 0, 28×28 grey.",
            None, lambda _, rng: constant(N_GENERATED, 0)),
    _Stress("stress-white", "ood", "All-white images", "Every pixel 255, 28×28 grey.",
            None, lambda _, rng: constant(N_GENERATED, 255)),
    _Stress("stress-fmnist-inverted", "ood", "Inverted Fashion-MNIST",
            "255 − each Fashion-MNIST image (dark garments on white)." + _FMNIST_NOTE,
            _fashion_mnist_evaluation_half, lambda x, rng: invert(x)),
    _Stress("stress-fmnist-rot90", "ood", "Fashion-MNIST rotated 90°",
            "Each Fashion-MNIST image rotated 90° counter-clockwise." + _FMNIST_NOTE,
            _fashion_mnist_evaluation_half, lambda x, rng: rotate90(x)),
    _Stress("stress-fmnist-upside-down", "ood", "Fashion-MNIST upside down",
            "Each Fashion-MNIST image flipped top to bottom (a hard, semantic case: same pixels, "
            "same statistics, other layout)." + _FMNIST_NOTE,
            _fashion_mnist_evaluation_half, lambda x, rng: upside_down(x)),
    _Stress("stress-fmnist-blurred", "ood", "Heavily blurred Fashion-MNIST",
            f"Each Fashion-MNIST image blurred with a Gaussian of σ = {BLUR_SIGMA:g} px (black beyond the "
            "border): shapes survive as soft blobs, edges and texture do not." + _FMNIST_NOTE,
            _fashion_mnist_evaluation_half, lambda x, rng: blur(x)),
    _Stress("stress-mnist-thin", "ood", "Thin-stroke MNIST digits",
            f"The MNIST test digits eroded by a {ERODE_SIZE[0]}×{ERODE_SIZE[1]} minimum filter: strokes one "
            "pixel thinner (about half the ink). Labels kept.",
            _mnist_test, lambda x, rng: erode(x)),
    _Stress("stress-fmnist-shift1", "benign", "Fashion-MNIST moved by 1 pixel",
            "Each Fashion-MNIST image translated by exactly one pixel up, down, left or right (direction "
            "drawn per image with a fixed seed), the uncovered edge black. Should stay in-distribution."
            + _FMNIST_NOTE,
            _fashion_mnist_evaluation_half,
            lambda x, rng: translate(x, np.asarray(SHIFTS)[rng.integers(0, len(SHIFTS), size=len(x))])),
    _Stress("stress-fmnist-brightness", "benign", "Fashion-MNIST, brightness 0.9–1.1",
            f"Each Fashion-MNIST image multiplied by a factor uniform in [{BRIGHTNESS_RANGE[0]}, "
            f"{BRIGHTNESS_RANGE[1]}] (per image, fixed seed), rounded and clipped. Should stay in-distribution."
            + _FMNIST_NOTE,
            _fashion_mnist_evaluation_half,
            lambda x, rng: scale_brightness(x, rng.uniform(*BRIGHTNESS_RANGE, size=len(x)))),
    *(_Stress(f"stress-fmnist-jpeg{q}", "covariate", f"Fashion-MNIST re-encoded as JPEG (quality {q})",
              f"Each Fashion-MNIST image saved as a JPEG at quality {q} with Pillow and decoded again. "
              "Re-encoding artefacts (8×8 blocks, ringing around edges) are a real shift for these models, "
              "which only saw lossless images: most detectors, NLL included, flag many of these images. "
              "Reported without a target." + _FMNIST_NOTE,
              _fashion_mnist_evaluation_half, lambda x, rng, q=q: jpeg(x, q))
      for q in (75, 95)),
)


# --------------------------------------------------------------------------- building and declaring


def build(name: str, split: str = "test") -> tuple[np.ndarray, np.ndarray | None]:
    """Build one stress set: ``(images uint8 (N, 28, 28, 1), labels or None)``."""
    entry = next((s for s in _SETS if s.name == name), None)
    if entry is None:
        raise KeyError(f"{name!r} is not a stress set; they are {', '.join(s.name for s in _SETS)}.")
    if split != "test":
        raise DatasetUnavailable(f"{name} only has a 'test' split (asked for {split!r}).")
    images, labels = entry.source() if entry.source is not None else (None, None)
    out = entry.make(images, np.random.default_rng(_seed(name)))
    return out, None if labels is None else np.asarray(labels, dtype=np.int64)


def stress_sets(group: str | None = None) -> list[str]:
    """Names of the stress sets of ``group`` (``"ood"``, ``"benign"`` or ``"covariate"``; all when None),
    in the order of the table above."""
    if group is not None and group not in STRESS_GROUPS:
        raise ValueError(f"Unknown stress group {group!r}; use one of {', '.join(STRESS_GROUPS)} (or None for all).")
    return [s.name for s in _SETS if group is None or s.group == group]


def _source_line(entry: _Stress) -> str:
    if entry.source is _fashion_mnist_evaluation_half:
        return ("derived from the Fashion-MNIST test split, evaluation half only "
                "(rose_core.data.splits.evaluation_sample); fixed seed")
    if entry.source is _mnist_test:
        return "derived from the MNIST test split"
    return "generated (numpy, fixed seed)"


def _licence(entry: _Stress) -> str:
    if entry.source is _fashion_mnist_evaluation_half:
        return "MIT (Fashion-MNIST, Zalando Research)"
    if entry.source is _mnist_test:
        return "CC BY-SA 3.0 (MNIST, Y. LeCun and C. Cortes)"
    return "none"


def _available(entry: _Stress) -> Callable[[], bool]:
    if entry.source is None:
        return lambda: True
    source = IN_DISTRIBUTION if entry.source is _fashion_mnist_evaluation_half else DIGITS

    return lambda: is_available(source)  # the source is cached or can be built here


def _spec(entry: _Stress) -> DatasetSpec:
    card = DatasetCard(
        name=entry.name, title=entry.title, real=False, source=_source_line(entry), licence=_licence(entry),
        description=f"28×28 grey, stress suite ({entry.group} group). " + entry.description,
        how_to_get="built from the real datasets: `make data` (Fashion-MNIST and MNIST) is enough",
        stress_group=entry.group,
    )
    return DatasetSpec(card, lambda split, name=entry.name: build(name, split), _available(entry))


DATASETS: tuple[DatasetSpec, ...] = tuple(_spec(s) for s in _SETS)
"""The stress sets, declared for :mod:`rose_core.data.catalogue`."""
