"""Array conversions: photos as uint8 arrays, as float tensors for the cloak, and back."""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 to ``[3, H, W]`` float32 in ``[0, 1]`` (value / 255).

    Raises:
        ValueError: ``rgb`` is not a ``[H, W, 3]`` uint8 array.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a [H, W, 3] uint8 array, got {describe(rgb)}")
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` (or ``[1, 3, H, W]``) float in ``[0, 1]`` to ``[H, W, 3]`` uint8.

    Values are clipped to ``[0, 1]`` (NaN becomes 0), scaled by 255 and rounded
    to the nearest integer, halves up; so ``to_uint8(to_tensor(a))`` equals ``a``.
    Works on any device and dtype; gradients are not tracked.

    Raises:
        ValueError: ``image`` has the wrong shape.
    """
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
    values = torch.nan_to_num(image.detach().to("cpu", torch.float32), nan=0.0).clamp(0.0, 1.0)
    return torch.floor(values * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def describe(value: object) -> str:
    """A short description of an array or tensor (type, shape, dtype) for error messages."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """``[H, W]`` gray to ``[H, W, 3]`` with the value in every channel."""
    return np.repeat(gray[..., None], 3, axis=2)


def float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float samples to uint8: data within ``[0, 1]`` is scaled by 255, other data is 0-255."""
    values = values.astype(np.float32)
    finite = values[np.isfinite(values)]
    top = 1.0 if finite.size == 0 or finite.max() <= 1.0 else 255.0
    values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, top) * np.float32(255.0 / top)
    return np.floor(values + 0.5).astype(np.uint8)


def as_uint8_hwc(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pixels to save as a contiguous ``[H, W, 3]`` uint8 array (a tensor via :func:`to_uint8`).

    Raises:
        ValueError: ``rgb`` is neither such an array nor a ``[3, H, W]`` tensor.
    """
    if isinstance(rgb, torch.Tensor):
        return to_uint8(rgb)
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a [H, W, 3] uint8 array or a [3, H, W] tensor, got {describe(rgb)}")
    return np.ascontiguousarray(rgb)
