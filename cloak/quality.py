"""Image-quality metrics between a photo and its cloaked version: SSIM, DSSIM, PSNR, HaarPSI.

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

A mean over a whole photo hides what people see: a cloak is confined to the
faces, and on smooth skin it shows as texture long before the mean SSIM of the
photo moves. :func:`face_quality` therefore measures each face's own box
(grown by :data:`FACE_BOX_GROWTH`): its SSIM, the 5th percentile of its local
SSIM map (:func:`ssim_percentile`; texture on flat skin shows there first),
its PSNR and HaarPSI (:func:`haarpsi`, a perceptual metric from ``piq`` that
needs no downloaded weights and works on crops down to 16x16 pixels).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import piq
import torch

from cloak.shading import SHADING_PERCENTILE, color_shift, shading_percentiles
from cloak.transforms import separable_gaussian

#: Side and sigma of the Gaussian SSIM window, the standard of Wang et al. (2004).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: A face box grows by this fraction of its size (half on each side) before it is measured.
FACE_BOX_GROWTH = 0.1
#: The percentile of the local SSIM map reported per face (the worst-looking 5% of its pixels).
LOCAL_SSIM_PERCENTILE = 5.0
#: HaarPSI (with its 2x subsampling) needs crops of at least this many pixels a side.
HAARPSI_MIN_SIZE = 16


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

    The map of :func:`kornia.metrics.ssim` (11x11 Gaussian window, sigma 1.5, reflect
    padding; see :func:`ssim_map`), averaged over channels and pixels. Identical images
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
    return ssim_map(a, b, max_val=max_val).mean(dim=(1, 2, 3))


def ssim_map(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """The local SSIM map, averaged over the RGB channels: one value per pixel.

    Each pixel's value is the SSIM of the 11x11 Gaussian windows around it (the
    map whose mean :func:`ssim` returns). Differentiable.

    Args:
        a: first image(s), values in ``[0, max_val]``.
        b: second image(s), same shape as ``a``.
        max_val: the data range (1.0 for images in ``[0, 1]``).

    Returns:
        The local SSIM of each pixel, in ``[-1, 1]``.

    Raises:
        ValueError: as :func:`ssim`.

    Shape:
        - a: :math:`(B, 3, H, W)` or :math:`(3, H, W)`
        - b: same as ``a``
        - Output: :math:`(B, 1, H, W)`, with :math:`B = 1` for unbatched inputs
    """
    a, b = _batched(a, b)
    _check_ssim_size(a)
    # kornia.metrics.ssim's map (to float rounding) with the five moments filtered in one
    # separable pass: 3x faster, and the face budget's final check calls it a dozen times a face.
    mu_a, mu_b, aa, bb, ab = _ssim_window(torch.cat([a, b, a * a, b * b, a * b], 1)).split(a.shape[1], 1)
    return _ssim_from_moments(mu_a, mu_b, aa, bb - mu_b * mu_b, ab, max_val)


def _check_ssim_size(image: torch.Tensor) -> None:
    pad = SSIM_WINDOW // 2
    if min(image.shape[-2:]) <= pad:
        raise ValueError(
            f"SSIM needs images of at least {pad + 1}x{pad + 1} pixels (11x11 window), got {list(image.shape[-2:])}"
        )


def _ssim_window(x: torch.Tensor) -> torch.Tensor:
    """Each channel of ``x`` smoothed by the SSIM window, reflect-padded (kornia's ``padding="same"``)."""
    return separable_gaussian(x, SSIM_SIGMA, SSIM_WINDOW, "reflect")


def _ssim_from_moments(
    mu_a: torch.Tensor,
    mu_b: torch.Tensor,
    sq_a: torch.Tensor,
    var_b: torch.Tensor,
    ab: torch.Tensor,
    max_val: float,
) -> torch.Tensor:
    """The ``[B, 1, H, W]`` local SSIM (averaged over channels) from the windowed moments of two images.

    ``mu_a``, ``mu_b``, ``sq_a``, ``ab``: windowed means of ``a``, ``b``, ``a * a`` and ``a * b``;
    ``var_b``: ``b``'s windowed variance (:class:`LocalSSIM` keeps its reference's).
    """
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mu_ab = mu_a * mu_b
    num = (2 * mu_ab + c1) * (2 * (ab - mu_ab) + c2)
    den = (mu_a * mu_a + mu_b**2 + c1) * (sq_a - mu_a * mu_a + var_b + c2)
    return (num / den).mean(dim=1, keepdim=True)


class LocalSSIM:
    """The local SSIM map of images against one fixed reference, for an optimisation loop.

    Gives the same map as :func:`ssim_map` (to float rounding), faster with its
    gradient: the reference's local moments are filtered once, here, and each call
    filters the image's three moments (:func:`~cloak.transforms.separable_gaussian`),
    where :func:`ssim_map` filters five.

    Args:
        reference: ``[1, 3, H, W]`` or ``[3, H, W]`` in ``[0, max_val]``; H and W above 5.
        max_val: the data range.

    Shape:
        - reference: :math:`(1, 3, H, W)` or :math:`(3, H, W)`
        - Input: :math:`(B, 3, H, W)`
        - Output: :math:`(B, 1, H, W)`, as :func:`ssim_map`
    """

    def __init__(self, reference: torch.Tensor, max_val: float = 1.0) -> None:
        ref, _ = _batched(reference, reference)
        if ref.shape[0] != 1:
            raise ValueError(f"reference must be one image, got a batch of {ref.shape[0]}")
        _check_ssim_size(ref)
        self.max_val = float(max_val)
        self.reference = ref
        with torch.no_grad():
            self.mu_ref, ref_sq = _ssim_window(torch.cat([ref, ref * ref], 1)).split(3, 1)
            self.var_ref = ref_sq - self.mu_ref**2

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1:] != self.reference.shape[1:]:
            raise ValueError(
                f"image must have shape [B, {', '.join(map(str, self.reference.shape[1:]))}], got {list(image.shape)}"
            )
        mu, sq, cross = _ssim_window(torch.cat([image, image * image, image * self.reference], 1)).split(3, 1)
        return _ssim_from_moments(mu, self.mu_ref, sq, self.var_ref, cross, self.max_val)


def ssim_percentile(
    a: torch.Tensor, b: torch.Tensor, q: float = LOCAL_SSIM_PERCENTILE, max_val: float = 1.0
) -> torch.Tensor:
    """The ``q``-th percentile of the local SSIM map per image (linear interpolation).

    Where the mean SSIM averages a cloak's visible texture on flat skin away
    against the rest of the face, a low percentile shows it. Differentiable
    (the gradient reaches the pixels at the percentile only).

    Args:
        a: first image(s), values in ``[0, max_val]``.
        b: second image(s), same shape as ``a``.
        q: the percentile, in ``[0, 100]``.
        max_val: the data range (1.0 for images in ``[0, 1]``).

    Returns:
        The percentile of each image pair's local SSIM map, in ``[-1, 1]``.

    Raises:
        ValueError: if ``q`` is outside ``[0, 100]``, or as :func:`ssim`.

    Shape:
        - a: :math:`(B, 3, H, W)` or :math:`(3, H, W)`
        - b: same as ``a``
        - Output: :math:`(B,)`, with :math:`B = 1` for unbatched inputs
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q is a percentile and must be in [0, 100], got {q}")
    local = ssim_map(a, b, max_val=max_val).flatten(1)
    return torch.quantile(local, q / 100.0, dim=1)


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


def haarpsi(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """HaarPSI (Reisenhofer et al., 2018) per image, from ``piq``: 1 for identical images.

    A perceptual similarity built on Haar wavelet responses, which tracks human
    judgements better than SSIM and needs no downloaded weights. Values are
    clamped to ``[0, max_val]`` first, as ``piq`` requires.

    Args:
        a: first image(s), values in ``[0, max_val]``.
        b: second image(s), same shape as ``a``.
        max_val: the data range (1.0 for images in ``[0, 1]``).

    Returns:
        HaarPSI of each image pair, in ``[0, 1]``.

    Raises:
        ValueError: if the shapes differ or are not ``[3, H, W]`` / ``[B, 3, H, W]``,
            or ``H`` or ``W`` is below :data:`HAARPSI_MIN_SIZE`.

    Shape:
        - a: :math:`(B, 3, H, W)` or :math:`(3, H, W)`
        - b: same as ``a``
        - Output: :math:`(B,)`, with :math:`B = 1` for unbatched inputs
    """
    a, b = _batched(a, b)
    if min(a.shape[-2:]) < HAARPSI_MIN_SIZE:
        raise ValueError(
            f"HaarPSI needs images of at least {HAARPSI_MIN_SIZE}x{HAARPSI_MIN_SIZE} pixels, got {list(a.shape[-2:])}"
        )
    top = float(max_val)
    return piq.haarpsi(a.clamp(0, top), b.clamp(0, top), reduction="none", data_range=top)


class FaceQuality(NamedTuple):
    """Image quality of each face of a photo, measured on its (grown) box; each field is ``[F]``.

    Attributes:
        ssim: mean SSIM over the box.
        ssim_p5: 5th percentile of the box's local SSIM map (:data:`LOCAL_SSIM_PERCENTILE`).
        psnr: PSNR over the box, in dB (``inf`` where nothing changed).
        perceptual: HaarPSI over the box (1 for identical; ``nan`` for boxes under
            :data:`HAARPSI_MIN_SIZE` pixels a side).
        color_shift: :func:`color_shift` over the box (0 for no change of colour).
        shading: :func:`cloak.shading.shading` of the face (its own, larger region; 0 for
            no change, about 1 where a change of shading starts to show).
        shading_peak: :func:`cloak.shading.shading_peak`: the same map at its worst pixel.
    """

    ssim: torch.Tensor
    ssim_p5: torch.Tensor
    psnr: torch.Tensor
    perceptual: torch.Tensor
    color_shift: torch.Tensor
    shading: torch.Tensor
    shading_peak: torch.Tensor


def grow_boxes(boxes: torch.Tensor, growth: float, size: tuple[int, int]) -> torch.Tensor:
    """Integer pixel boxes: each float box grown by ``growth`` of its size, clipped to the image.

    Args:
        boxes: ``(x0, y0, x1, y1)`` per face, in pixels.
        growth: fraction of the box's width (height) added, half on the left and
            half on the right (top, bottom); 0 keeps the box.
        size: ``(H, W)`` of the image.

    Returns:
        ``(x0, y0, x1, y1)`` integer bounds per face (``x1``, ``y1`` exclusive).

    Raises:
        ValueError: if ``boxes`` is not ``[F, 4]``, ``growth`` is negative, or a box
            has no pixel inside the image.

    Shape:
        - boxes: :math:`(F, 4)`
        - Output: :math:`(F, 4)`, ``torch.long``
    """
    if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be an [F, 4] tensor of (x0, y0, x1, y1), got {getattr(boxes, 'shape', boxes)}")
    if growth < 0:
        raise ValueError(f"growth must be >= 0, got {growth}")
    h, w = size
    boxes = boxes.double()
    grow = (boxes[:, 2:] - boxes[:, :2]) * growth / 2
    lo = (boxes[:, :2] - grow).floor()
    hi = (boxes[:, 2:] + grow).ceil()
    x0, y0 = lo[:, 0].clamp(0, w), lo[:, 1].clamp(0, h)
    x1, y1 = hi[:, 0].clamp(0, w), hi[:, 1].clamp(0, h)
    out = torch.stack([x0, y0, x1, y1], dim=1).long()
    empty = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
    if empty.any():
        raise ValueError(f"face boxes {boxes[empty].tolist()} have no pixel inside the {w}x{h} image")
    return out


def face_quality(
    original: torch.Tensor,
    cloaked: torch.Tensor,
    boxes: torch.Tensor,
    growth: float = FACE_BOX_GROWTH,
    max_val: float = 1.0,
) -> FaceQuality:
    """SSIM, 5th-percentile local SSIM, PSNR, HaarPSI, colour shift and shading of each face of a photo.

    Each metric is computed on the crop of the face's box grown by ``growth``
    (so a box covering the whole image gives the whole-image metrics). Runs on
    the inputs' device and dtype.

    Args:
        original: the photo, values in ``[0, max_val]``.
        cloaked: the cloaked photo, same shape.
        boxes: ``(x0, y0, x1, y1)`` of each face in pixels (e.g. the detector's boxes).
        growth: fraction of a box's size it grows by, half on each side (:data:`FACE_BOX_GROWTH`).
        max_val: the data range (1.0 for images in ``[0, 1]``).

    Returns:
        A :class:`FaceQuality` with one value per face in each field.

    Raises:
        ValueError: if the photos are not two ``[3, H, W]`` tensors of one shape, the
            boxes are not ``[F, 4]`` or lie outside the photo, or a grown box is
            under 6x6 pixels (SSIM's window needs more).

    Shape:
        - original: :math:`(3, H, W)`
        - cloaked: :math:`(3, H, W)`
        - boxes: :math:`(F, 4)`
        - Output: each field :math:`(F,)`
    """
    a, b = _batched(original, cloaked)
    if a.shape[0] != 1:
        raise ValueError(f"face_quality measures one photo: original must be [3, H, W], got {list(original.shape)}")
    pixel_boxes = grow_boxes(boxes, growth, tuple(a.shape[-2:]))
    fields: dict[str, list[torch.Tensor]] = {name: [] for name in FaceQuality._fields}
    for x0, y0, x1, y1 in pixel_boxes.tolist():
        ca, cb = a[..., y0:y1, x0:x1], b[..., y0:y1, x0:x1]
        local = ssim_map(ca, cb, max_val=max_val).flatten(1)
        fields["ssim"].append(local.mean(1))
        fields["ssim_p5"].append(torch.quantile(local, LOCAL_SSIM_PERCENTILE / 100.0, dim=1))
        fields["psnr"].append(psnr(ca, cb, max_val=max_val))
        if min(y1 - y0, x1 - x0) >= HAARPSI_MIN_SIZE:
            fields["perceptual"].append(haarpsi(ca, cb, max_val=max_val).to(a.dtype))
        else:
            fields["perceptual"].append(torch.full((1,), math.nan, dtype=a.dtype, device=a.device))
        fields["color_shift"].append(color_shift(ca, cb, max_val=max_val))
    if len(boxes):
        # The figure (95th percentile) and the peak of one map per face.
        figure, peak = shading_percentiles(a[0] / max_val, b[0] / max_val, boxes, (SHADING_PERCENTILE, 100.0))
        fields["shading"].append(figure.to(a.dtype))
        fields["shading_peak"].append(peak.to(a.dtype))
    empty = a.new_zeros(0)
    return FaceQuality(**{name: torch.cat(v) if v else empty for name, v in fields.items()})
