"""Visual masking: where in a photo a cloak can hide, as a per-pixel share of its L-inf budget.

The eye (and SSIM, which models it) misses a change where the picture already
varies: in hair, eyebrows, edges and textured backgrounds, a few grey levels of
noise disappear, while on flat skin the same noise shows as wrinkles and
blotches. :func:`masking_map` turns that into a map in ``[floor, 1]`` that scales
the cloak's L-inf bound pixel by pixel (``eps * map``), from

- texture and edges: the local standard deviation of luminance in a Gaussian
  window (an edge inside the window counts as texture); at ``contrast`` and above
  a pixel gets the full budget, on a flat patch only ``floor`` of it;
- luminance (JND): the eye's threshold for a change rises in dark and very bright
  areas (Chou and Li, 1995: about 3 grey levels at mid grey, up to 20 in black),
  raising the budget there by that factor to the power ``luminance``.

Colour follows the same idea (:func:`chroma_map`): a hue shift hides in coloured
skin, while any colour at all stands out on a grey or black-and-white face (the
cloak shows there as pink and green blotches). The map gives the share of the
cloak's colour (its difference from grey) that a pixel may keep, by how coloured
the photo already is around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cloak.transforms import smooth

#: Rec. 601 luma weights of R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: The lowest visibility threshold of Chou and Li's luminance JND, at mid grey (0-255 units).
JND_MIN = 3.0


def luma(image: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of RGB images.

    Args:
        image: RGB images.

    Returns:
        The luma of each pixel, in the images' units.

    Raises:
        ValueError: if ``image`` is not ``[B, 3, H, W]``.

    Shape:
        - image: :math:`(B, 3, H, W)`
        - Output: :math:`(B, 1, H, W)`
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a [B, 3, H, W] RGB tensor, got {getattr(image, 'shape', type(image))}")
    weights = torch.tensor(LUMA_WEIGHTS, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * weights).sum(dim=1, keepdim=True)


#: Colourfulness (RMS of R, G, B about their mean, in [0, 1] units, Gaussian-averaged) at
#: and above which a pixel may keep all of the cloak's colour; about a third of typical skin's.
CHROMA_FULL = 0.06


def chroma_map(image: torch.Tensor, full: float = CHROMA_FULL, sigma: float = 4.0) -> torch.Tensor:
    """Per pixel, the share of the cloak's colour (its difference from grey) the photo hides there, in ``[0, 1]``.

    0 on grey pixels (the cloak stays grey: the same change on R, G and B), 1 where
    the photo's local colourfulness reaches ``full``.

    Args:
        image: the clean photo (or region), values in ``[0, 1]``.
        full: colourfulness at which the whole colour budget is allowed.
        sigma: Gaussian window of the local average, in pixels.

    Shape:
        - image: :math:`(B, 3, H, W)`
        - Output: :math:`(B, 1, H, W)`
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"chroma_map expects [B, 3, H, W] RGB images, got {list(image.shape)}")
    if full <= 0:
        raise ValueError(f"full must be > 0, got {full}")
    spread = (image - image.mean(dim=1, keepdim=True)).pow(2).mean(dim=1, keepdim=True)
    colourfulness = smooth(spread, sigma).clamp_min(0).sqrt()
    return (colourfulness / full).clamp(0.0, 1.0)


def luminance_jnd(background: torch.Tensor) -> torch.Tensor:
    """Chou and Li's (1995) visibility threshold of a change against a background luminance.

    Args:
        background: local mean luminance, in ``[0, 1]``.

    Returns:
        The just-noticeable difference in 0-255 grey levels: 3 at mid grey,
        rising to 20 in black and to 6 in white.

    Shape:
        - background: any
        - Output: same as ``background``
    """
    level = background.clamp(0, 1) * 255.0
    dark = 17.0 * (1.0 - torch.sqrt(level / 127.0)) + JND_MIN
    bright = 3.0 / 128.0 * (level - 127.0) + JND_MIN
    return torch.where(level <= 127.0, dark, bright)


def masking_map(
    image: torch.Tensor,
    floor: float = 0.25,
    contrast: float = 0.04,
    sigma: float = 1.5,
    luminance: float = 0.5,
) -> torch.Tensor:
    """Per pixel, the share of the cloak's L-inf budget the photo can hide there, in ``[floor, 1]``.

    Args:
        image: the clean photo (or region), RGB in ``[0, 1]``.
        floor: the share on a flat, mid-grey patch (the least any pixel gets), in ``(0, 1]``.
        contrast: local luminance standard deviation (``[0, 1]`` units) at and above
            which a pixel gets its full budget; 0.04 is about 10 grey levels.
        sigma: Gaussian window of the local statistics, in pixels (1.5: SSIM's window).
        luminance: exponent of the luminance-JND factor (0: no luminance masking).

    Returns:
        The map, on the image's device and dtype.

    Raises:
        ValueError: if ``image`` is not ``[B, 3, H, W]`` or a parameter is out of range.

    Shape:
        - image: :math:`(B, 3, H, W)`
        - Output: :math:`(B, 1, H, W)`
    """
    check_masking(floor, contrast, sigma, luminance)
    y = luma(image)
    mean = smooth(y, sigma)
    local_std = (smooth(y * y, sigma) - mean * mean).clamp_min(0).sqrt()
    texture = (local_std / contrast).clamp(0, 1)
    share = floor + (1 - floor) * texture
    if luminance > 0:
        share = share * (luminance_jnd(mean) / JND_MIN) ** luminance
    return share.clamp(floor, 1.0)


def check_masking(floor: float, contrast: float, sigma: float, luminance: float) -> None:
    """Raises ValueError, naming the setting, if a parameter of :func:`masking_map` is out of range."""
    if not 0 < floor <= 1:
        raise ValueError(f"masking floor must be in (0, 1], got {floor}")
    if contrast <= 0:
        raise ValueError(f"masking contrast must be positive (e.g. 0.04, about 10 grey levels), got {contrast}")
    if sigma <= 0:
        raise ValueError(f"masking sigma must be positive (pixels), got {sigma}")
    if luminance < 0:
        raise ValueError(f"masking luminance must be >= 0 (0 turns luminance masking off), got {luminance}")


@dataclass
class VisualMasking:
    """The settings of :func:`masking_map`, as the attacks' ``masking`` option holds them.

    Attributes:
        floor: the budget's share on flat mid-grey skin.
        contrast: local luminance standard deviation that earns the full budget.
        sigma: Gaussian window of the local statistics, in photo pixels.
        luminance: exponent of the luminance-JND factor (0 = off).
    """

    floor: float = 0.25
    contrast: float = 0.04
    sigma: float = 1.5
    luminance: float = 0.5

    def __post_init__(self) -> None:
        check_masking(self.floor, self.contrast, self.sigma, self.luminance)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """:func:`masking_map` of ``image`` with these settings (``[B, 3, H, W]`` -> ``[B, 1, H, W]``)."""
        return masking_map(image, self.floor, self.contrast, self.sigma, self.luminance)
