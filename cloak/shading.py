"""What people see of a cloak that SSIM misses: the shading figure and the colour shift.

SSIM barely responds to smooth, low-frequency change, yet that is what makes a cloaked
face look like someone else: hollowed cheeks, darker brows, a contoured nose, another
skin tone. The shading figure sees it. Both faces are blurred by a Gaussian of
:data:`SHADING_SIGMA` of the face's width (texture removed, shading kept), converted to
CIELAB, and compared pixel by pixel with CIEDE2000 (:func:`ciede2000`); the figure is
the :data:`SHADING_PERCENTILE`-th percentile of that map over the face's region
(:func:`shading_box`: the detector's box grown :data:`SHADING_GROWTH`, the forehead
and the cheeks' sides included).

About 1 is where a change starts to show side by side, 2.3 a just-noticeable
difference; for scale, a JPEG q75 re-encode scores about 0.6 and a uniform +2/255
brightening about 0.8. Everything here is differentiable, so the attack holds a cloak
to a limit on it (:class:`~cloak.attacks.budget.FaceBudget`).
"""

from __future__ import annotations

import math

import kornia
import torch

from cloak.transforms import separable_gaussian, smooth

#: Gaussian sigma of the blur before comparing, as a fraction of the face box's width.
SHADING_SIGMA = 0.03
#: The percentile of the CIEDE2000 map that is the figure (the most-changed 5% of the face).
SHADING_PERCENTILE = 95.0
#: Growth of the face box measured, as fractions of its width (left, right) and height (top, bottom).
SHADING_GROWTH = (0.2, 0.2, 0.3, 0.1)

_POW25_7 = 25.0**7


#: Gaussian sigma (pixels) of the blur before :func:`color_shift`: the eye sees a colour
#: change as a patch, not pixel by pixel.
COLOR_SHIFT_SIGMA = 2.0


def color_shift(
    a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0, sigma: float = COLOR_SHIFT_SIGMA
) -> torch.Tensor:
    """Mean change of colour (not of lightness) per image: CIE76 distance in the a*b* plane of CIELAB.

    Both images are Gaussian-blurred first (``sigma`` pixels), so the measure sees
    the tinted patches a smooth cloak can leave (green irises, magenta cheeks), which
    SSIM, computed per RGB channel, and HaarPSI barely register. About 1 is at the
    edge of what people notice side by side; 0 for two images of the same colours.

    Args:
        a: first image(s), values in ``[0, max_val]``.
        b: second image(s), same shape as ``a``.
        max_val: the data range.
        sigma: the blur, in pixels.

    Returns:
        The mean a*b* distance of each image pair (CIELAB units).

    Raises:
        ValueError: if the shapes differ or are not ``[3, H, W]`` / ``[B, 3, H, W]``.

    Shape:
        - a: :math:`(B, 3, H, W)` or :math:`(3, H, W)`
        - b: same as ``a``
        - Output: :math:`(B,)`, with :math:`B = 1` for unbatched inputs
    """
    a, b = _pair(a, b)
    lab = [kornia.color.rgb_to_lab(smooth(x / max_val, sigma).clamp(0, 1)) for x in (a, b)]
    return (lab[0][:, 1:] - lab[1][:, 1:]).norm(dim=1).mean(dim=(1, 2))


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two RGB images of one shape as ``[B, 3, H, W]`` batches, or a clear error."""
    if a.shape != b.shape or a.ndim not in (3, 4) or a.shape[-3] != 3:
        raise ValueError(f"a and b must both be [3, H, W] or [B, 3, H, W], got {list(a.shape)} and {list(b.shape)}")
    return (a.unsqueeze(0), b.unsqueeze(0)) if a.ndim == 3 else (a, b)


def _check_lab(a: torch.Tensor, b: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("lab_a and lab_b must be torch.Tensors")
    if a.shape != b.shape or a.ndim < 3 or a.shape[-3] != 3:
        raise ValueError(f"lab_a and lab_b must both be [..., 3, H, W], got {list(a.shape)} and {list(b.shape)}")


def ciede2000(lab_a: torch.Tensor, lab_b: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """CIEDE2000 colour difference per pixel (Sharma, Wu and Dalal, 2005), differentiable.

    The hue difference is taken as ``sqrt(da'^2 + db^2 - dC'^2)``, signed by the turn
    from ``a`` to ``b``, which equals ``2 sqrt(C1' C2') sin(dh'/2)`` and has a gradient
    where both colours are grey (where the hue angle has none). The mean hue (which only
    weights the terms) is computed without a gradient.

    Args:
        lab_a: CIELAB colours (L* in [0, 100]).
        lab_b: the same shape.
        eps: keeps square roots differentiable at 0.

    Returns:
        ``[..., H, W]`` the difference of each pixel (0 where the colours are equal).

    Shape:
        - lab_a: :math:`(*, 3, H, W)`
        - lab_b: same as ``lab_a``
        - Output: :math:`(*, H, W)`
    """
    _check_lab(lab_a, lab_b)
    l1, a1, b1 = lab_a.unbind(-3)
    l2, a2, b2 = lab_b.unbind(-3)
    root = math.sqrt(eps)

    def chroma(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # 0 for grey, with a gradient there
        return ((a * a + b * b + eps).sqrt() - root).clamp_min(0)

    g = 0.5 * (1 - _chroma_weight((chroma(a1, b1) + chroma(a2, b2)) / 2))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = chroma(a1p, b1), chroma(a2p, b2)
    dl = l2 - l1
    dc = c2p - c1p
    # |v2 - v1|^2 - dC'^2 = 2 (C1' C2' - v1 . v2): no cancellation of two large squares.
    hue_sq = 2 * (c1p * c2p - a1p * a2p - b1 * b2)
    turn = torch.where(a1p * b2 - a2p * b1 >= 0, 1.0, -1.0).to(dl).detach()
    dh = turn * (hue_sq.clamp_min(0) + eps).sqrt()
    with torch.no_grad():
        h_mean = _mean_hue(a1p, b1, a2p, b2)
    l_mean = (l1 + l2) / 2
    cp_mean = (c1p + c2p) / 2
    t = (
        1
        - 0.17 * torch.cos(h_mean - math.radians(30))
        + 0.24 * torch.cos(2 * h_mean)
        + 0.32 * torch.cos(3 * h_mean + math.radians(6))
        - 0.20 * torch.cos(4 * h_mean - math.radians(63))
    )
    theta = math.radians(30) * torch.exp(-(((torch.rad2deg(h_mean) - 275) / 25) ** 2))
    r_c = 2 * _chroma_weight(cp_mean)
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / (20 + (l_mean - 50) ** 2).sqrt()
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -torch.sin(2 * theta) * r_c
    tl, tc, th = dl / s_l, dc / s_c, dh / s_h
    return (tl * tl + tc * tc + th * th + r_t * tc * th).clamp_min(0).add(eps).sqrt()


def _chroma_weight(c: torch.Tensor) -> torch.Tensor:
    """``sqrt(c^7 / (c^7 + 25^7))`` for chroma ``c >= 0``, written so its gradient is 0 (not NaN) at grey.

    The plain form takes a square root of 0 at ``c = 0``, whose infinite slope times the
    zero slope of ``c^7`` is NaN: one grey pixel would wipe out a whole step's gradient.
    """
    return c.pow(3.5) / (c.pow(7) + _POW25_7).sqrt()


def _mean_hue(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000's mean hue angle h-bar' in radians (the sum where either colour is grey)."""
    h1 = torch.atan2(b1, a1).remainder(2 * math.pi)
    h2 = torch.atan2(b2, a2).remainder(2 * math.pi)
    grey = (a1 == 0) & (b1 == 0) | (a2 == 0) & (b2 == 0)
    total = h1 + h2
    far = (h1 - h2).abs() > math.pi
    mean = torch.where(far, torch.where(total < 2 * math.pi, total + 2 * math.pi, total - 2 * math.pi), total) / 2
    return torch.where(grey, total, mean)


def shading_box(box: torch.Tensor | tuple[float, ...], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The integer region the shading figure measures: ``box`` grown by :data:`SHADING_GROWTH`, clipped.

    Args:
        box: ``(x0, y0, x1, y1)`` of the face, in pixels.
        size: ``(H, W)`` of the image.

    Raises:
        ValueError: if the grown box has no pixel inside the image.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    left, right, top, bottom = SHADING_GROWTH
    gx0, gx1 = math.floor(x0 - left * w), math.ceil(x1 + right * w)
    gy0, gy1 = math.floor(y0 - top * h), math.ceil(y1 + bottom * h)
    gx0, gy0 = max(0, gx0), max(0, gy0)
    gx1, gy1 = min(size[1], gx1), min(size[0], gy1)
    if gx1 <= gx0 or gy1 <= gy0:
        raise ValueError(f"face box {[x0, y0, x1, y1]} has no pixel inside the {size[1]}x{size[0]} image")
    return gx0, gy0, gx1, gy1


def shading_sigma(face_width: float) -> float:
    """The blur (pixels) for a face ``face_width`` pixels wide: :data:`SHADING_SIGMA` of it, at least 0.5."""
    return max(0.5, SHADING_SIGMA * float(face_width))


def blurred_lab(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image`` (``[B, 3, H, W]`` RGB in ``[0, 1]``) blurred by ``sigma`` pixels (nearest border), in CIELAB.

    The blur reaches 4 sigma each side, as scikit-image's ``gaussian``.
    """
    size = 2 * max(1, math.ceil(4 * sigma)) + 1
    return kornia.color.rgb_to_lab(separable_gaussian(image, sigma, size, "replicate").clamp(0, 1))


def shading_map(original: torch.Tensor, cloaked: torch.Tensor, face_width: float) -> torch.Tensor:
    """``[B, H, W]``: CIEDE2000 between the two images after the blur of a face ``face_width`` pixels wide.

    Args:
        original: ``[B, 3, H, W]`` or ``[3, H, W]`` RGB in ``[0, 1]`` (the region measured).
        cloaked: the same shape.
        face_width: the width of the face's box, in pixels (sets the blur).

    Shape:
        - original: :math:`(B, 3, H, W)` or :math:`(3, H, W)`
        - cloaked: same as ``original``
        - Output: :math:`(B, H, W)`, with :math:`B = 1` for unbatched inputs
    """
    original, cloaked = _pair(original, cloaked)
    sigma = shading_sigma(face_width)
    return ciede2000(blurred_lab(original, sigma), blurred_lab(cloaked, sigma))


def shading(original: torch.Tensor, cloaked: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The shading figure of each face of a photo: the 95th percentile of :func:`shading_map` over its region.

    Args:
        original: ``[3, H, W]`` RGB in ``[0, 1]``.
        cloaked: the same shape.
        boxes: ``[F, 4]`` face boxes ``(x0, y0, x1, y1)`` in pixels (the detector's).

    Returns:
        ``[F]`` CIEDE2000 units: 0 for no change, about 1 where a change starts to show.

    Shape:
        - original: :math:`(3, H, W)`
        - cloaked: :math:`(3, H, W)`
        - boxes: :math:`(F, 4)`
        - Output: :math:`(F,)`
    """
    return shading_percentiles(original, cloaked, boxes, (SHADING_PERCENTILE,))[0]


def shading_peak(original: torch.Tensor, cloaked: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each face's :func:`shading_map` at its worst pixel: a change confined to a few percent of
    the region (eye sockets, the side of the nose) that the figure's 95th percentile leaves out.

    Shape:
        - original: :math:`(3, H, W)`
        - cloaked: :math:`(3, H, W)`
        - boxes: :math:`(F, 4)`
        - Output: :math:`(F,)`
    """
    return shading_percentiles(original, cloaked, boxes, (100.0,))[0]


def shading_percentiles(
    original: torch.Tensor, cloaked: torch.Tensor, boxes: torch.Tensor, percentiles: tuple[float, ...]
) -> torch.Tensor:
    """Percentiles (0-100) of each face's :func:`shading_map` over its region, each map computed once.

    :func:`shading` is the 95th, :func:`shading_peak` the 100th.

    Shape:
        - original: :math:`(3, H, W)`
        - cloaked: :math:`(3, H, W)`
        - boxes: :math:`(F, 4)`
        - Output: :math:`(P, F)` for ``P`` percentiles
    """
    if original.ndim != 3:
        raise ValueError(f"shading measures one photo: original must be [3, H, W], got {list(original.shape)}")
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    size = (original.shape[-2], original.shape[-1])
    q = torch.tensor(percentiles, dtype=original.dtype, device=original.device) / 100.0
    values = []
    for box in boxes:
        x0, y0, x1, y1 = shading_box(box, size)
        region = shading_map(original[:, y0:y1, x0:x1], cloaked[:, y0:y1, x0:x1], float(box[2] - box[0]))
        values.append(torch.quantile(region.flatten(), q.to(region.dtype)))
    return torch.stack(values, dim=1) if values else original.new_zeros(len(percentiles), 0)
