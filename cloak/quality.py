"""Image-quality metrics between a photo and its cloaked version: SSIM, DSSIM and PSNR.

All metrics take float tensors in ``[0, 1]``, either one image ``[3, H, W]`` or a
batch ``[B, 3, H, W]``, and return one value per image (``[B]``, with ``B = 1``
for a single image). They are differentiable, so the attacks use :func:`dssim`
as a perceptual budget.

SSIM follows Wang et al. (2004) with the standard settings: an 11x11 Gaussian
window of sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``. It is computed on each RGB
channel separately and the per-pixel maps are averaged over channels and pixels
(as Fawkes, TensorFlow's ``tf.image.ssim`` and scikit-image with
``channel_axis`` do), not on luminance. Borders are handled by reflect padding
(kornia's ``padding="same"``), so every pixel counts; scikit-image instead drops
a 5-pixel border, so the two agree to about 1e-2 on typical images, exactly on
the interior map.
"""

from __future__ import annotations

import kornia
import torch

#: Side of the Gaussian SSIM window (sigma 1.5), the standard of Wang et al. (2004).
SSIM_WINDOW = 11


def _batched(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks a pair of images and returns them as ``[B, 3, H, W]`` batches."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim not in (3, 4):
            raise ValueError(f"{name} must have shape [3, H, W] or [B, 3, H, W], got {list(t.shape)}")
        if t.shape[-3] != 3:
            raise ValueError(f"{name} must have 3 (RGB) channels in dim -3, got shape {list(t.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    if a.ndim == 3:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if a.shape[0] == 0:
        raise ValueError("a and b are empty batches (B = 0)")
    return a, b


def ssim(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """Mean structural similarity per image, averaged over the RGB channels.

    Uses :func:`kornia.metrics.ssim` (11x11 Gaussian window, sigma 1.5, reflect
    padding) and averages its map over channels and pixels. Identical images
    score 1; the score decreases as the images differ. Differentiable.

    Args:
        a: first image(s), values in ``[0, max_val]``.
        b: second image(s), same shape as ``a``.
        max_val: the data range (1.0 for images in ``[0, 1]``).

    Returns:
        SSIM of each image pair, in ``[-1, 1]``.

    Raises:
        ValueError: if the shapes differ, are not ``[3, H, W]`` / ``[B, 3, H, W]``,
            or ``H`` or ``W`` is below 6 (the window's reflect padding needs more).

    Shape:
        - a: :math:`(B, 3, H, W)` or :math:`(3, H, W)`
        - b: same as ``a``
        - Output: :math:`(B,)`, with :math:`B = 1` for unbatched inputs
    """
    a, b = _batched(a, b)
    pad = SSIM_WINDOW // 2
    if min(a.shape[-2:]) <= pad:
        raise ValueError(
            f"SSIM needs images of at least {pad + 1}x{pad + 1} pixels (11x11 window), got {list(a.shape[-2:])}"
        )
    ssim_map = kornia.metrics.ssim(a, b, SSIM_WINDOW, max_val=float(max_val), eps=0.0, padding="same")
    return ssim_map.mean(dim=(1, 2, 3))


def dssim(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """Structural dissimilarity ``(1 - SSIM) / 2`` per image (0 for identical images).

    This is the perceptual budget of Fawkes (Shan et al., 2020). Differentiable.

    Args:
        a: first image(s), values in ``[0, max_val]``.
        b: second image(s), same shape as ``a``.
        max_val: the data range (1.0 for images in ``[0, 1]``).

    Returns:
        DSSIM of each image pair, in ``[0, 1]``.

    Raises:
        ValueError: as :func:`ssim`.

    Shape:
        - a: :math:`(B, 3, H, W)` or :math:`(3, H, W)`
        - b: same as ``a``
        - Output: :math:`(B,)`, with :math:`B = 1` for unbatched inputs
    """
    return (1.0 - ssim(a, b, max_val=max_val)) / 2.0


def psnr(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 * log10(max_val**2 / MSE)``.

    The mean squared error is taken over channels and pixels of each image.
    Identical images (MSE 0) give ``+inf`` (no error is raised); the value is
    differentiable wherever the images differ.

    Args:
        a: first image(s), values in ``[0, max_val]``.
        b: second image(s), same shape as ``a``.
        max_val: the data range (1.0 for images in ``[0, 1]``).

    Returns:
        PSNR of each image pair in dB; ``inf`` where the images are identical.

    Raises:
        ValueError: if the shapes differ or are not ``[3, H, W]`` / ``[B, 3, H, W]``.

    Shape:
        - a: :math:`(B, 3, H, W)` or :math:`(3, H, W)`
        - b: same as ``a``
        - Output: :math:`(B,)`, with :math:`B = 1` for unbatched inputs
    """
    a, b = _batched(a, b)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(float(max_val) ** 2 / mse)
