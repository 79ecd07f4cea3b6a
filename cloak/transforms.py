"""Random, differentiable photo distortions for robust cloaks (expectation over transformation).

Each attack step passes the cloaked face region through a random draw of what
platforms do to photos (JPEG re-encoding, down-and-up resizing, blur) and jitters
the face alignment a little, so the cloak keeps working after them. Draws come
from a caller-owned ``torch.Generator``, so runs are reproducible.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from cloak.jpeg import jpeg_round_trip


@dataclass(frozen=True)
class Distortion:
    """One random draw of :class:`RobustTransform`; ``None`` means "not applied"."""

    jpeg_quality: float | None = None
    scale: float | None = None
    blur_sigma: float | None = None
    shift: tuple[float, float] = (0.0, 0.0)
    zoom: float = 1.0
    #: Alignment rotation about the crop's centre, degrees.
    rotation: float = 0.0


def resize_round_trip(image: torch.Tensor, scale: float) -> torch.Tensor:
    """Downscales by ``scale`` (antialiased) and upsamples back to the input size, differentiably.

    Shape:
        - image: :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    h, w = image.shape[-2:]
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    down = F.interpolate(image, size=small, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)


def gaussian_kernel_size(sigma: float) -> int:
    """The odd kernel size that covers +-3 sigma (at least 3)."""
    return 2 * max(1, round(3 * sigma)) + 1


#: Border modes of :func:`separable_gaussian` (``torch.nn.functional.pad``'s names).
BORDERS = ("reflect", "replicate")


@functools.lru_cache(maxsize=64)
def _gaussian_taps(size: int, sigma: float) -> tuple[float, ...]:
    return tuple(kornia.filters.get_gaussian_kernel1d(size, sigma, dtype=torch.float64).flatten().tolist())


def separable_gaussian(image: torch.Tensor, sigma: float, size: int, border: str = "reflect") -> torch.Tensor:
    """Gaussian filter of ``size`` taps (odd), one axis at a time, as sums of shifted slices.

    The values of :func:`kornia.filters.gaussian_blur2d` (to float rounding), computed
    without convolutions: on a CPU, forward and backward of the small images and batches
    an attack filters at every step (the cloak's smoothing, LowKey's smoothed views,
    the face budget's SSIM) run 2-8x faster this way than as depthwise convolutions.

    Args:
        image: the images to filter.
        sigma: the Gaussian's standard deviation, in pixels.
        size: taps per axis, odd.
        border: ``"reflect"`` (each side longer than ``size // 2`` pixels) or ``"replicate"`` (any size).

    Raises:
        ValueError: for a tensor that is not ``[B, C, H, W]``, an even or non-positive
            ``size``, an unknown ``border``, or an image too small to reflect.

    Shape:
        - image: :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`
    """
    if image.ndim != 4:
        raise ValueError(f"image must be [B, C, H, W], got {list(image.shape)}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd number of taps, got {size}")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    h, w = image.shape[-2:]
    pad = size // 2
    if border == "reflect" and min(h, w) <= pad:
        raise ValueError(
            f"a {size}-tap filter with reflected borders needs images over {pad} pixels a side, got {h}x{w}"
        )
    taps = _gaussian_taps(size, float(sigma))
    padded = F.pad(image, (pad, pad, pad, pad), mode=border)
    return _Correlate.apply(_Correlate.apply(padded, taps, -1), taps, -2)


def _correlate(x: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:
    """The "valid" correlation of ``x`` with ``taps`` along ``dim``: ``len(taps) - 1`` shorter there."""
    n = x.shape[dim] - len(taps) + 1
    out = x.narrow(dim, 0, n) * taps[0]
    for i in range(1, len(taps)):
        out.add_(x.narrow(dim, i, n), alpha=taps[i])
    return out


class _Correlate(torch.autograd.Function):
    """:func:`_correlate` with its adjoint as backward: the same sum of slices, over the
    zero-padded gradient with the taps reversed. Autograd's own backward of the slices
    fills a zero tensor of the input's size for every tap (3 of the 3.7 ms that the face
    budget's SSIM took, forward and backward, on a 200x190 region)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:  # type: ignore[override]
        ctx.taps, ctx.dim = taps, dim
        return _correlate(x, taps, dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        k = len(ctx.taps) - 1
        padding = (k, k, 0, 0) if ctx.dim == -1 else (0, 0, k, k)
        return _correlate(F.pad(grad, padding), ctx.taps[::-1], ctx.dim), None, None


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with a kernel of about 3 sigma each side, reflected borders.

    Shape:
        - image: :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`
    """
    return separable_gaussian(image, sigma, gaussian_kernel_size(sigma), "reflect")


def smooth(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (about 3 sigma each side) with replicated borders, for images of any size.

    Shape:
        - image: :math:`(B, C, H, W)`
        - Output: :math:`(B, C, H, W)`
    """
    return separable_gaussian(image, sigma, gaussian_kernel_size(sigma), "replicate")


class RobustTransform(nn.Module):
    """Samples and applies platform-like distortions.

    Each distortion is applied with its probability; parameters are drawn
    uniformly from their ranges. Alignment jitter moves the crop by up to
    ``max_shift`` of the face crop's size, rescales it by up to ``max_zoom`` and
    turns it by up to ``max_rotation`` degrees about its centre.

    Args:
        jpeg_prob: probability of a differentiable JPEG round trip.
        jpeg_quality: ``(low, high)`` JPEG quality range.
        resize_prob: probability of a down-and-up resize.
        resize_scale: ``(low, high)`` downscale factor range.
        blur_prob: probability of a Gaussian blur.
        blur_sigma: ``(low, high)`` blur sigma range, photo pixels.
        max_shift: alignment shift, fraction of the crop size.
        max_zoom: alignment zoom, relative.
        max_rotation: alignment rotation, degrees (0: none, and the draws of the
            other distortions are the same as without this argument).
    """

    def __init__(
        self,
        jpeg_prob: float = 0.5,
        jpeg_quality: tuple[float, float] = (50.0, 95.0),
        resize_prob: float = 0.5,
        resize_scale: tuple[float, float] = (0.4, 1.0),
        blur_prob: float = 0.2,
        blur_sigma: tuple[float, float] = (0.3, 1.2),
        max_shift: float = 0.05,
        max_zoom: float = 0.08,
        max_rotation: float = 0.0,
    ) -> None:
        super().__init__()
        for name, prob in [("jpeg_prob", jpeg_prob), ("resize_prob", resize_prob), ("blur_prob", blur_prob)]:
            if not 0 <= prob <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {prob}")
        for name, (lo, hi) in [
            ("jpeg_quality", jpeg_quality),
            ("resize_scale", resize_scale),
            ("blur_sigma", blur_sigma),
        ]:
            if lo > hi:
                raise ValueError(f"{name} range must be (low, high), got ({lo}, {hi})")
        if not (jpeg_quality[0] >= 1 and jpeg_quality[1] <= 100):
            raise ValueError(f"jpeg_quality must lie in [1, 100], got {tuple(jpeg_quality)}")
        if not (resize_scale[0] > 0 and resize_scale[1] <= 1):
            raise ValueError(f"resize_scale must lie in (0, 1], got {tuple(resize_scale)}")
        if not 0 <= max_rotation <= 45:
            raise ValueError(f"max_rotation must lie in [0, 45] degrees, got {max_rotation}")
        self.jpeg_prob, self.jpeg_quality = float(jpeg_prob), tuple(map(float, jpeg_quality))
        self.resize_prob, self.resize_scale = float(resize_prob), tuple(map(float, resize_scale))
        self.blur_prob, self.blur_sigma = float(blur_prob), tuple(map(float, blur_sigma))
        self.max_shift, self.max_zoom = float(max_shift), float(max_zoom)
        self.max_rotation = float(max_rotation)

    @property
    def is_identity(self) -> bool:
        """True when no draw can change anything."""
        return not (
            self.jpeg_prob or self.resize_prob or self.blur_prob or self.max_shift or self.max_zoom or self.max_rotation
        )

    def sample(self, generator: torch.Generator) -> Distortion:
        """One random draw, using only ``generator``."""
        # A tenth number only when rotation is on, so runs without it draw as they always did.
        u = torch.rand(10 if self.max_rotation else 9, generator=generator, dtype=torch.float64).tolist()

        def pick(prob: float, rng: tuple[float, float], a: float, b: float) -> float | None:
            return rng[0] + (rng[1] - rng[0]) * b if a < prob else None

        return Distortion(
            jpeg_quality=pick(self.jpeg_prob, self.jpeg_quality, u[0], u[1]),
            scale=pick(self.resize_prob, self.resize_scale, u[2], u[3]),
            blur_sigma=pick(self.blur_prob, self.blur_sigma, u[4], u[5]),
            shift=((2 * u[6] - 1) * self.max_shift, (2 * u[7] - 1) * self.max_shift),
            zoom=1.0 + (2 * u[8] - 1) * self.max_zoom,
            rotation=(2 * u[9] - 1) * self.max_rotation if self.max_rotation else 0.0,
        )

    def distort(self, image: torch.Tensor, draw: Distortion) -> torch.Tensor:
        """Applies a draw's photo distortions: resize, then blur, then JPEG (the platform's order).

        Shape:
            - image: :math:`(B, 3, H, W)` in ``[0, 1]``
            - Output: :math:`(B, 3, H, W)`
        """
        if draw.scale is not None and draw.scale < 1:
            image = resize_round_trip(image, draw.scale)
        if draw.blur_sigma is not None:
            image = gaussian_blur(image, draw.blur_sigma)
        if draw.jpeg_quality is not None:
            image = jpeg_round_trip(image, draw.jpeg_quality)
        return image

    @staticmethod
    def jitter(crop_to_image: torch.Tensor, draw: Distortion, size: tuple[int, int]) -> torch.Tensor:
        """Shifts, zooms and rotates crop matrices about the crop centre.

        Shape:
            - crop_to_image: :math:`(F, 2, 3)`
            - Output: :math:`(F, 2, 3)`
        """
        if draw.shift == (0.0, 0.0) and draw.zoom == 1.0 and draw.rotation == 0.0:
            return crop_to_image
        h, w = size
        cu, cv = (w - 1) / 2, (h - 1) / 2
        # crop' = zoom * R(angle) (crop - centre) + centre + shift, composed in crop coordinates.
        angle = math.radians(draw.rotation)
        a, b = draw.zoom * math.cos(angle), draw.zoom * math.sin(angle)
        adjust = crop_to_image.new_tensor(
            [
                [a, -b, (1 - a) * cu + b * cv + draw.shift[0] * w],
                [b, a, (1 - a) * cv - b * cu + draw.shift[1] * h],
                [0, 0, 1],
            ]
        )
        return crop_to_image @ adjust
