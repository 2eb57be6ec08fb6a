"""Image perturbations used by the paper (Appendix C, Tables 1, 8, 9).

All functions take a batch ``(N, C, H, W)`` as a uint8 or float tensor
(floats in [0, 1]) and return the same dtype. Random ones take a ``seed`` and
are deterministic under it.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

BLUR_K = 28
"""The default K of ``svd``/``dct`` blurring (the bottom K singular values or frequencies dropped): the
paper's Table 1 setting."""


def _as_float(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.ndim != 4:
        raise ValueError(f"Expected a batch (N, C, H, W), got shape {tuple(x.shape)}.")
    if x.dtype == torch.uint8:
        return x.float() / 255.0, True
    if not x.is_floating_point():
        raise ValueError(f"Expected uint8 or float images, got {x.dtype}.")
    return x, False


def _back(x: torch.Tensor, was_uint8: bool) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return (x * 255.0).round().to(torch.uint8) if was_uint8 else x


def brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply intensities by ``factor`` and clip (torchvision ``adjust_brightness``)."""
    if factor < 0:
        raise ValueError("brightness factor must be non-negative")
    xf, u8 = _as_float(x)  # validates the shape and dtype for both paths
    return TF.adjust_brightness(x if u8 else xf, factor)


def svd_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Drop the ``k`` smallest singular values of each channel (SVD blur); ``k >= 0``."""
    if k < 0:
        raise ValueError(f"svd_blur: k must be >= 0 (number of singular values dropped), got {k}.")
    xf, u8 = _as_float(x)
    u, s, vh = torch.linalg.svd(xf.double(), full_matrices=False)
    if k > 0:
        s = s.clone()
        s[..., max(0, s.shape[-1] - k):] = 0
    return _back(((u * s.unsqueeze(-2)) @ vh).to(xf.dtype), u8)


def _dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    i = torch.arange(n, dtype=dtype)
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m  # orthonormal DCT-II


def dct_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep only the ``k``×``k`` lowest DCT frequencies of each channel; ``k >= 1``
    (``k`` >= the image size keeps everything)."""
    if k < 1:
        raise ValueError(f"dct_blur: k must be >= 1 (frequencies kept per axis), got {k}.")
    xf, u8 = _as_float(x)
    h, w = xf.shape[-2:]
    dh, dw = _dct_matrix(h), _dct_matrix(w)
    coef = dh @ xf.double() @ dw.T
    mask = torch.zeros(h, w, dtype=torch.float64)
    mask[:k, :k] = 1
    return _back((dh.T @ (coef * mask) @ dw).to(xf.dtype), u8)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 3, sigma: float = 0.8) -> torch.Tensor:
    """Gaussian blur, kernel 3 and σ 0.8 by default (the paper's 'GB')."""
    xf, u8 = _as_float(x)  # validates the shape and dtype for both paths
    return TF.gaussian_blur(x if u8 else xf, [kernel_size, kernel_size], [sigma, sigma])


def random_pixels(x: torch.Tensor, fraction: float, seed: int | None = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace a fraction ``fraction`` of pixels by uniform random values (the paper's 'Random').

    A pixel is replaced in all its channels at once, as in Ren et al. (2019).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be in [0, 1]")
    xf, u8 = _as_float(x)
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed)
    n, c, h, w = xf.shape
    mask = (torch.rand(n, 1, h, w, generator=generator) < fraction).to(xf.device)
    noise = torch.randint(0, 256, (n, c, h, w), generator=generator).to(xf.device, xf.dtype) / 255.0
    return _back(torch.where(mask, noise, xf), u8)


PERTURBATIONS = {
    "brightness": brightness,
    "svd": svd_blur,
    "dct": dct_blur,
    "gaussian": gaussian_blur,
    "random": random_pixels,
}


def apply(name: str, x: torch.Tensor, strength: float | int | None = None, seed: int = 0) -> torch.Tensor:
    """Apply a named perturbation: ``brightness`` (factor), ``svd``/``dct`` (K),
    ``gaussian`` (no parameter), ``random`` (fraction μ)."""
    if name == "brightness":
        return brightness(x, float(strength if strength is not None else 1.0))
    if name == "svd":
        return svd_blur(x, int(strength if strength is not None else BLUR_K))
    if name == "dct":
        return dct_blur(x, int(strength if strength is not None else BLUR_K))
    if name == "gaussian":
        return gaussian_blur(x)
    if name == "random":
        return random_pixels(x, float(strength if strength is not None else 0.3), seed=seed)
    raise ValueError(f"Unknown perturbation {name!r}; expected one of {sorted(PERTURBATIONS)}.")
