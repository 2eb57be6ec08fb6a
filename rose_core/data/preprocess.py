"""Preprocessing of Appendix B: resize to 32×32 and match a model's channels.

Non-square images are resized so the shorter side is ``size``, then centre
cropped. Grey images become RGB by repeating the channel; RGB becomes grey with
the ITU-R 601-2 luma transform (as PIL's ``convert("L")``).
"""

from __future__ import annotations

import numpy as np

from rose_core.errors import InvalidInput


def _check_uint8_nhwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:  # (N, H, W) grey
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InvalidInput(f"Expected images of shape (N, H, W, C) with C in (1, 3), got {images.shape}.")
    if images.dtype != np.uint8:
        raise InvalidInput(f"Expected uint8 images (0-255), got {images.dtype}.")
    return images


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Grey ↔ RGB conversion of uint8 ``(N, H, W, C)`` images."""
    images = _check_uint8_nhwc(images)
    c = images.shape[-1]
    if c == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    if channels == 1:
        w = np.array([299, 587, 114], dtype=np.uint32)
        grey = (images.astype(np.uint32) @ w + 500) // 1000
        return grey.astype(np.uint8)[..., None]
    raise InvalidInput(f"channels must be 1 or 3, got {channels}.")


def prepare_images(images: np.ndarray, size: int = 32, channels: int | None = None) -> np.ndarray:
    """Resize (shorter side, then centre crop) to ``size``×``size`` and convert channels.

    Returns uint8 ``(N, size, size, channels)``.
    """
    images = _check_uint8_nhwc(images)
    if channels is not None:
        images = convert_channels(images, channels)
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    import torch  # imported here: the registry is imported by the app's first page, which needs no torch
    import torchvision.transforms.v2.functional as TF

    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    t = TF.resize(t, [size], antialias=True)  # shorter side -> size
    t = TF.center_crop(t, [size, size])
    return t.permute(0, 2, 3, 1).contiguous().numpy()


def to_model_input(images: np.ndarray, size: int = 32, channels: int | None = None,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` → float tensor ``(N, C, size, size)`` in [0, 1]."""
    prepared = prepare_images(images, size, channels)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(prepared)).permute(0, 3, 1, 2).float().div_(255.0)
    return t.to(device)
