"""Input Complexity (Serrà et al., ICLR 2020).

    S(x) = NLL_bits(x) − L(x)

with NLL_bits the model's negative log-likelihood of the 8-bit image in bits
(the *total* over all C·H·W dimensions: nats / ln 2) and L(x) the length in
bits of the losslessly compressed 8-bit image (8 × bytes of the whole file).
Higher S = more OOD. Both terms are in bits (the public baseline code mixed
nats and bits, which weights the two terms wrongly; we don't).

Compressors (Pillow):

* ``"png"``: PNG at ``compress_level=9``;
* ``"jpeg2000"`` (alias ``"jp2"``): lossless JPEG 2000 (reversible 5/3 wavelet,
  no quality layers), which needs Pillow built with OpenJPEG.

The file length includes the format's fixed header bytes; they add the same
constant to every image of a given size and compressor, so rankings and AUROC
are unaffected. The NLL is IWAE-k for the VAE (k = 20 as the authors ran it)
and exact for Glow, as in :class:`~rose_core.scorers.nll.NLLScorer`.

``extras``: ``nll`` (nats), ``nll_bits``, ``complexity_bits`` (L), ``bits_per_dim``.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from rose_core.models.base import GenerativeModel
from rose_core.scorers.base import Scorer, ScoreResult, check_batch
from rose_core.scorers.nll import LN2, check_model, model_nll

COMPRESSORS = {"png": "png", "jpeg2000": "jpeg2000", "jp2": "jpeg2000", "jpeg-2000": "jpeg2000"}


def jpeg2000_available() -> bool:
    try:
        from PIL import features
        return bool(features.check("jpg_2000"))
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


def _normalise(compressor: str) -> str:
    key = str(compressor).lower()
    if key not in COMPRESSORS:
        raise ValueError(f"Unknown compressor {compressor!r}; expected 'png' or 'jpeg2000'.")
    name = COMPRESSORS[key]
    if name == "jpeg2000" and not jpeg2000_available():
        raise RuntimeError("This Pillow build has no JPEG 2000 support (OpenJPEG is missing; "
                           "PIL.features.check('jpg_2000') is False). Install a Pillow wheel with OpenJPEG "
                           "(the PyPI wheels include it) or use compressor='png'.")
    return name


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """Model inputs (N, C, H, W) in [0, 1] → uint8 (N, H, W, C), ``round(255 x)``."""
    x = check_batch(x)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"Compression needs 1 (grey) or 3 (RGB) channels, got {x.shape[1]}.")
    return (x.detach().cpu().double() * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def encode_image(image: np.ndarray, compressor: str = "png") -> bytes:
    """Losslessly compress one uint8 (H, W, C) image; returns the file bytes."""
    from PIL import Image

    name = _normalise(compressor)
    image = np.ascontiguousarray(image, dtype=np.uint8)
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)  # mode "L" or "RGB"
    buf = io.BytesIO()
    if name == "png":
        pil.save(buf, format="PNG", compress_level=9)
    else:
        # Lossless: reversible wavelet and no quality layers (no rate allocation).
        pil.save(buf, format="JPEG2000", irreversible=False)
    return buf.getvalue()


def compressed_bits(x: torch.Tensor, compressor: str = "png") -> np.ndarray:
    """Length in bits of each losslessly compressed 8-bit image of the batch ``x``."""
    name = _normalise(compressor)
    images = to_uint8_images(x)
    return np.array([8.0 * len(encode_image(im, name)) for im in images], dtype=np.float64)


class InputComplexityScorer(Scorer):
    """S(x) = NLL_bits(x) − L(x), both in bits (totals, not per dimension)."""

    def __init__(self, model: GenerativeModel, compressor: str = "png", k: int = 20, seed: int = 0,
                 batch_size: int = 256) -> None:
        check_model(model, method="Input Complexity")
        self.compressor = _normalise(compressor)
        if k < 1:
            raise ValueError(f"k (importance samples) must be >= 1, got {k}.")
        self.model = model
        self.k, self.seed, self.batch_size = int(k), int(seed), int(batch_size)
        self.name = "input-complexity-" + ("png" if self.compressor == "png" else "jp2")

    def _score_batch(self, x: torch.Tensor) -> ScoreResult:
        nll = model_nll(self.model, x, k=self.k, seed=self.seed).numpy()
        nll_bits = nll / LN2
        length = compressed_bits(x, self.compressor)
        return ScoreResult(nll_bits - length, {"nll": nll, "nll_bits": nll_bits, "complexity_bits": length,
                                               "bits_per_dim": nll_bits / self.model.num_dims()})
