"""A cloak's budget: how far each pixel may move, and how much of each face's look it may change.

Two parts, both per photo, both built by the shared loop (:mod:`cloak.attacks.base`):

- :class:`CloakShape` turns the variable the attack optimises, ``u`` with
  ``|u| <= eps``, into the change of the region's pixels:
  ``delta = share * expand(blur(u))``, where ``share`` (``[0, 1]`` per pixel) is the
  visual-masking map (:mod:`cloak.attacks.masking`) times the region's feathered
  mask, ``blur`` an optional Gaussian that keeps the cloak in the low frequencies
  faces are recognised from (and JPEG keeps), and ``expand`` copies a one-channel
  (luma-only) cloak to R, G and B. Since the blur averages, ``|delta| <= eps * share``
  everywhere: the L-inf bound is a map, and projecting ``u`` onto ``[-eps, eps]``
  at every step keeps it.
- :class:`FaceBudget` is the perceptual budget: the region's mean DSSIM
  (``max_dssim``) and, on each face's box grown by
  :data:`~cloak.quality.FACE_BOX_GROWTH`, its mean SSIM (``min_face_ssim``) and the
  5th percentile of its local SSIM map (``min_face_ssim_p5``: texture on flat skin
  shows there long before the mean moves). A penalty keeps the optimisation near it; :meth:`FaceBudget.shrink`
  guarantees it at the end, on the 8-bit pixels the photo is saved with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cloak.quality import FACE_BOX_GROWTH, LOCAL_SSIM_PERCENTILE, LocalSSIM, dssim, grow_boxes, ssim_map
from cloak.shading import SHADING_PERCENTILE, blurred_lab, ciede2000, shading_box, shading_sigma
from cloak.transforms import smooth

#: Colour spaces a cloak can live in: all three channels; luma only (grey: the same change on
#: R, G, B); or auto: colour only as far as the photo is coloured there (:func:`chroma_map`).
COLORS = ("rgb", "luma", "auto")


@dataclass
class CloakShape:
    """How the optimised variable of one photo becomes the change of its region's pixels.

    Attributes:
        share: ``[1, 1, h, w]`` in ``[0, 1]``: each pixel's share of the L-inf bound
            (visual masking times the region's feathered mask).
        blur_sigma: Gaussian sigma of the cloak in region pixels; 0 for none.
        channels: 3 (RGB cloak) or 1 (luma cloak, the same change on R, G and B).
        chroma: optional ``[1, 1, h, w]`` in ``[0, 1]``: the share of an RGB cloak's colour
            (its difference from grey) each pixel keeps. A convex mix of the cloak and its
            grey, so the L-inf bound still holds.
    """

    share: torch.Tensor
    blur_sigma: float = 0.0
    channels: int = 3
    chroma: torch.Tensor | None = None

    def delta(self, u: torch.Tensor) -> torch.Tensor:
        """The ``[1, 3, h, w]`` pixel change of ``u`` (``[1, channels, h, w]``); differentiable."""
        if self.blur_sigma > 0:
            u = smooth(u, self.blur_sigma)
        if self.chroma is not None and u.shape[1] == 3:
            grey = u.mean(dim=1, keepdim=True)
            u = grey + self.chroma * (u - grey)
        return self.share * u.expand(-1, 3, -1, -1)

    def bound(self, eps: float) -> torch.Tensor:
        """``[1, 1, h, w]``: the most each pixel may move, ``eps * share``."""
        return eps * self.share

    def start(self, like: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """The variable's start: zeros, or uniform noise in half the ball when ``generator`` is given."""
        shape = (1, self.channels, *like.shape[-2:])
        if generator is None:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        noise = torch.rand(shape, generator=generator, dtype=torch.float64).to(like) * 2 - 1
        return noise * (eps / 2)


def quantise(clean: torch.Tensor, delta: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``clean + delta`` with ``delta`` rounded to whole 8-bit grey levels within ``bound``, in ``[0, 1]``.

    For a ``clean`` photo on the 8-bit grid (every decoded photo), the result is
    exactly what is saved, so budgets checked on it hold for the saved photo.
    """
    levels = torch.floor(bound * 255 + 1e-6)
    steps = torch.maximum(torch.minimum(torch.round(delta * 255), levels), -levels)
    return (clean + steps / 255).clamp(0, 1)


class FaceBudget:
    """The perceptual budget of one photo's cloak region, with its penalty and its final guarantee.

    Args:
        boxes: ``[F, 4]`` face boxes ``(x0, y0, x1, y1)`` in *region* pixels, or ``None``
            to measure the whole region as one face.
        size: ``(h, w)`` of the region.
        max_dssim: the region's mean DSSIM may not exceed this; ``None`` for no limit.
        min_face_ssim_p5: the 5th percentile of each (grown) face box's local SSIM map
            may not fall below this; ``None`` for no limit.
        dssim_weight: weight of the penalty for exceeding ``max_dssim``.
        ssim_p5_weight: weight of the penalties on face SSIM below ``min_face_ssim``
            and local SSIM below ``min_face_ssim_p5``.
        min_face_ssim: each (grown) face box's mean SSIM may not fall below this;
            ``None`` for no limit.
        max_shading: each face's shading figure (:mod:`cloak.shading`: the 95th
            percentile of CIEDE2000 after a blur of 3% of the face's width, over its box
            grown as :data:`~cloak.shading.SHADING_GROWTH`) may not exceed this; ``None``
            for no limit. Needs ``boxes``.
        shading_weight: weight of the penalty for shading beyond ``max_shading``.
        max_shading_peak: each face's shading map may not exceed this at any pixel of its
            region (the figure's percentile leaves the worst 5% free); ``None`` for no limit.
            Needs ``boxes``.
        shading_peak_weight: weight of the penalty for shading beyond ``max_shading_peak``.
    """

    def __init__(
        self,
        boxes: torch.Tensor | None,
        size: tuple[int, int],
        max_dssim: float | None,
        min_face_ssim_p5: float | None,
        dssim_weight: float = 50.0,
        ssim_p5_weight: float = 50.0,
        min_face_ssim: float | None = None,
        max_shading: float | None = None,
        shading_weight: float = 1.0,
        max_shading_peak: float | None = None,
        shading_peak_weight: float = 1.0,
    ) -> None:
        h, w = size
        whole = [(0, 0, w, h)]
        grown = None
        if boxes is None or len(boxes) == 0:
            self.boxes = whole
        else:
            inside = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < w) & (boxes[:, 1] < h)
            grown = grow_boxes(boxes[inside], FACE_BOX_GROWTH, size) if inside.any() else None
            self.boxes = whole if grown is None else [tuple(b) for b in grown.tolist()]
        # SSIM's 11x11 window needs 6 pixels a side: tiny boxes are measured with their surroundings.
        self.boxes = [b if min(b[2] - b[0], b[3] - b[1]) >= 6 else whole[0] for b in self.boxes]
        self.max_dssim = max_dssim
        self.min_p5 = min_face_ssim_p5
        self.min_ssim = min_face_ssim
        self.dssim_weight = float(dssim_weight)
        self.p5_weight = float(ssim_p5_weight)
        self.last_dssim = 0.0
        self.last_p5 = 1.0
        self.last_ssim = 1.0
        self.max_shading = max_shading
        self.shading_weight = float(shading_weight)
        self.max_shading_peak = max_shading_peak
        self.shading_peak_weight = float(shading_peak_weight)
        self.last_shading = 0.0
        self.last_peak = 0.0
        limited = max_shading is not None or max_shading_peak is not None
        self.shading = _shading_faces(boxes[inside], size) if limited and grown is not None else []
        self._reference: LocalSSIM | None = None
        self._clean_lab: list[torch.Tensor] | None = None

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        limits = (self.max_dssim, self.min_p5, self.min_ssim)
        return any(limit is not None for limit in limits) or bool(self.shading)

    def near(self) -> bool:
        """Whether the last measurement was close to (or beyond) a limit, so the penalty is worth computing."""
        close_dssim = self.max_dssim is not None and self.last_dssim > 0.8 * self.max_dssim
        close_p5 = self.min_p5 is not None and self.last_p5 < self.min_p5 + 0.5 * (1 - self.min_p5)
        close_ssim = self.min_ssim is not None and self.last_ssim < self.min_ssim + 0.2 * (1 - self.min_ssim)
        close_shading = bool(self.shading) and (
            (self.max_shading is not None and self.last_shading > 0.7 * self.max_shading)
            or (self.max_shading_peak is not None and self.last_peak > 0.7 * self.max_shading_peak)
        )
        return close_dssim or close_p5 or close_ssim or close_shading

    def _local(self, adv: torch.Tensor, clean: torch.Tensor) -> list[torch.Tensor]:
        """Per face box, the flattened local SSIM map."""
        return [ssim_map(adv[..., y0:y1, x0:x1], clean[..., y0:y1, x0:x1]).flatten() for x0, y0, x1, y1 in self.boxes]

    def penalty(self, adv: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """The differentiable penalty of ``adv`` (``[1, 3, h, w]``) for going beyond the budget.

        For ``max_dssim``: ``dssim_weight`` times the excess of the region's DSSIM.
        For ``min_face_ssim_p5``: ``ssim_p5_weight`` times the mean shortfall of the
        local SSIM below the limit over each face box's pixels, divided by the
        percentile's share (0.05), so it reads as the shortfall of the worst 5%.
        For ``min_face_ssim``: ``ssim_p5_weight`` times each face's shortfall.
        ``clean`` must be the same region at every call: its local moments are kept.
        """
        total = adv.new_zeros(())
        if self._reference is None:
            self._reference = LocalSSIM(clean)
        # One map over the region serves every limit: each face's values are read off it
        # (near a box's edge they see its surroundings, where within() pads the box alone;
        # shrink() holds the exact limits at the end).
        local_map = self._reference(adv)[0, 0]
        if self.max_dssim is not None and self.dssim_weight > 0:
            value = (1 - local_map.mean()) / 2
            self.last_dssim = float(value.detach())
            total = total + self.dssim_weight * (value - self.max_dssim).clamp_min(0)
        if (self.min_p5 is not None or self.min_ssim is not None) and self.p5_weight > 0:
            share = LOCAL_SSIM_PERCENTILE / 100.0
            lows, means = [], []
            for x0, y0, x1, y1 in self.boxes:
                local = local_map[y0:y1, x0:x1].flatten()
                if self.min_p5 is not None:
                    lows.append(float(torch.quantile(local.detach(), share)))
                    total = total + self.p5_weight * (self.min_p5 - local).clamp_min(0).mean() / share
                if self.min_ssim is not None:
                    mean = local.mean()
                    means.append(float(mean.detach()))
                    total = total + self.p5_weight * (self.min_ssim - mean).clamp_min(0)
            self.last_p5 = min(lows, default=1.0)
            self.last_ssim = min(means, default=1.0)
        if self.shading:
            # Both shading penalties read as the mean excess of the region's worst 5%.
            share = 1 - SHADING_PERCENTILE / 100.0
            maps = self._shading_maps(adv, clean)
            for de in maps:
                if self.max_shading is not None and self.shading_weight > 0:
                    total = total + self.shading_weight * (de - self.max_shading).clamp_min(0).mean() / share
                if self.max_shading_peak is not None and self.shading_peak_weight > 0:
                    total = total + self.shading_peak_weight * (de - self.max_shading_peak).clamp_min(0).mean() / share
            self.last_shading = max(_figure(de) for de in maps)
            self.last_peak = max(float(de.detach().max()) for de in maps)
        return total

    def _shading_maps(self, adv: torch.Tensor, clean: torch.Tensor) -> list[torch.Tensor]:
        """Per face, the ``[h, w]`` CIEDE2000 map of the shading figure over its region."""
        if self._clean_lab is None:
            with torch.no_grad():
                self._clean_lab = [
                    blurred_lab(clean[..., y0:y1, x0:x1], sigma) for (x0, y0, x1, y1), sigma in self.shading
                ]
        return [
            ciede2000(ref, blurred_lab(adv[..., y0:y1, x0:x1], sigma))[0]
            for ((x0, y0, x1, y1), sigma), ref in zip(self.shading, self._clean_lab)
        ]

    def within(self, adv: torch.Tensor, clean: torch.Tensor) -> bool:
        """Whether ``adv`` keeps every limit."""
        if self.max_dssim is not None and float(dssim(adv, clean)[0]) > self.max_dssim:
            return False
        if self.min_p5 is not None or self.min_ssim is not None:
            share = LOCAL_SSIM_PERCENTILE / 100.0
            for local in self._local(adv, clean):
                if self.min_p5 is not None and float(torch.quantile(local, share)) < self.min_p5:
                    return False
                if self.min_ssim is not None and float(local.mean()) < self.min_ssim:
                    return False
        if not self.shading:
            return True
        with torch.no_grad():
            maps = self._shading_maps(adv, clean)
        if self.max_shading is not None and max(_figure(de) for de in maps) > self.max_shading:
            return False
        return self.max_shading_peak is None or max(float(de.max()) for de in maps) <= self.max_shading_peak

    def shrink(self, clean: torch.Tensor, delta: torch.Tensor, bound: torch.Tensor, iters: int = 12) -> torch.Tensor:
        """The cloaked region, scaled down (bisection on the cloak's scale) until it keeps the budget.

        The result is :func:`quantise`-d: for a photo on the 8-bit grid the budget
        holds for the saved pixels, not only for the float ones.
        """
        full = quantise(clean, delta, bound)
        if not self.active or self.within(full, clean):
            return full
        lo, hi, best = 0.0, 1.0, clean.clone()
        for _ in range(iters):
            mid = (lo + hi) / 2
            candidate = quantise(clean, mid * delta, bound)
            if self.within(candidate, clean):
                lo, best = mid, candidate
            else:
                hi = mid
        return best


def _figure(shading_map: torch.Tensor) -> float:
    """The shading figure of one face's CIEDE2000 map: its :data:`~cloak.shading.SHADING_PERCENTILE`-th percentile."""
    return float(torch.quantile(shading_map.detach().flatten().double(), SHADING_PERCENTILE / 100.0))


def _shading_faces(boxes: torch.Tensor, size: tuple[int, int]) -> list[tuple[tuple[int, int, int, int], float]]:
    """Per face box (region pixels), the region its shading figure measures and the blur's sigma."""
    return [(shading_box(box, size), shading_sigma(float(box[2] - box[0]))) for box in boxes]


def require(condition: bool, message: str) -> None:
    """Raises ``ValueError(message)`` unless ``condition`` holds (an attack's argument checks)."""
    if not condition:
        raise ValueError(message)


def check_limits(
    max_dssim: float | None,
    min_face_ssim: float | None,
    min_face_ssim_p5: float | None,
    max_shading: float | None,
    max_shading_peak: float | None = None,
) -> None:
    """Raises a clear ``ValueError`` for a visibility limit out of its range."""
    require(max_dssim is None or 0 < max_dssim < 1, f"max_dssim must be in (0, 1) or null, got {max_dssim}")
    for name, floor in (("min_face_ssim", min_face_ssim), ("min_face_ssim_p5", min_face_ssim_p5)):
        require(floor is None or -1 < floor < 1, f"{name} must be in (-1, 1) or null, got {floor}")
    require(
        max_shading is None or max_shading > 0,
        f"max_shading must be positive (CIEDE2000) or null, got {max_shading}",
    )
    require(
        max_shading_peak is None or max_shading_peak > 0,
        f"max_shading_peak must be positive (CIEDE2000) or null, got {max_shading_peak}",
    )


def check_shape(perturbation_sigma: float, color: str, max_chroma: float, background_eps: float | None) -> None:
    """Raises a clear ``ValueError`` for an option of the cloak's shape out of its range."""
    require(perturbation_sigma >= 0, f"perturbation_sigma must be >= 0 (model-input pixels), got {perturbation_sigma}")
    require(color in COLORS, f"color must be one of {COLORS}, got {color!r}")
    require(0 <= max_chroma <= 1, f"max_chroma must be in [0, 1], got {max_chroma}")
    require(
        background_eps is None or background_eps > 0,
        f"background_eps must be positive (0-255) or null, got {background_eps}",
    )
