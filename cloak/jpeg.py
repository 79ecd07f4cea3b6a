"""A differentiable JPEG round trip (encode, decode) that behaves like libjpeg's baseline codec.

Platforms re-encode every uploaded photo, so each attack step passes the cloak through
a random JPEG quality (:class:`cloak.transforms.RobustTransform`). This codec follows
what libjpeg (Pillow, browsers, phones) does with a baseline 4:2:0 JPEG: JFIF YCbCr,
chroma averaged over 2x2 pixels, 8x8 DCT blocks quantised with the IJG tables scaled
by quality, chroma brought back by triangular ("fancy") upsampling. Only the rounding
of the quantised coefficients is softened, ``round(x) + (x - round(x))^3`` (Shin & Song,
2017), so gradients pass.

Why not kornia's ``jpeg_codec_differentiable``: it antialiases the chroma with a Gaussian
convolution before halving it, whose backward dominates its time on a CPU (10-13 ms for
a 200x192 face region, forward and backward, against 2 ms here), where libjpeg averages
2x2 pixels. Against Pillow's real codec this one is also the closer (astronaut crop,
mean difference 0.85-0.98 grey levels at qualities 30-95 against kornia's 0.90-1.49;
``tests/test_jpeg.py``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = ["jpeg_round_trip", "quantisation_tables"]

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance): libjpeg's defaults at quality 50.
_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)

# JFIF's full-range RGB -> YCbCr (rows Y, Cb, Cr; 128 is added to Cb and Cr) and its inverse.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCBCR_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136, -0.714136),
    (1.0, 1.772, 0.0),
)

#: libjpeg's 4:2:0 minimum coded unit: images are padded (edge pixels repeated) to a multiple of it.
_MCU = 16


def quantisation_tables(quality: float) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's ``(luma, chroma)`` ``[8, 8]`` quantisation tables at ``quality`` (1-100), in float64.

    libjpeg takes an integer quality (``quality`` is rounded) and scales the Annex K tables
    by ``5000 // q`` percent below 50 and ``200 - 2 q`` from 50 on, each entry rounded
    and kept in 1..255 (``jpeg_quality_scaling``, ``jpeg_add_quant_table``).
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    return tuple(t.clone() for t in _tables(round(quality)))  # the cached ones stay unchanged


@functools.lru_cache(maxsize=128)
def _tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(
        torch.floor((torch.tensor(t, dtype=torch.float64) * scale + 50.0) / 100.0).clamp(1, 255)
        for t in (_LUMA, _CHROMA)
    )


@functools.lru_cache(maxsize=8)
def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix ``D`` (``D @ block @ D.T`` is the 2-D DCT of a block)."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(dtype=dtype, device=device)


def _soft_round(x: torch.Tensor) -> torch.Tensor:
    """Rounds to the nearest integer in the forward pass, with a gradient that is not zero everywhere."""
    r = x.detach().round()
    return r + (x - r) ** 3


def _block_codec(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Quantises each 8x8 block's DCT with ``table`` and transforms it back; ``plane`` is ``[B, C, H, W]``, H, W % 8 == 0."""
    b, c, h, w = plane.shape
    d = _dct_matrix(plane.dtype, plane.device)
    q = table.to(dtype=plane.dtype, device=plane.device)
    blocks = plane.reshape(b, c, h // 8, 8, w // 8, 8).transpose(3, 4)
    coefficients = d @ blocks @ d.T
    coefficients = _soft_round(coefficients / q) * q
    blocks = d.T @ coefficients @ d
    return blocks.transpose(3, 4).reshape(b, c, h, w)


def jpeg_round_trip(image: torch.Tensor, quality: float) -> torch.Tensor:
    """Encodes ``image`` as a baseline 4:2:0 JPEG at ``quality`` and decodes it, differentiably.

    Args:
        image: RGB in ``[0, 1]`` (values outside are clipped, as an encoder's 8-bit input is).
        quality: libjpeg quality, 1 to 100 (rounded to an integer, as libjpeg takes it).

    Returns:
        The decoded image, in ``[0, 1]``, same shape, dtype and device. Not rounded to 8 bits.

    Shape:
        - image: :math:`(B, 3, H, W)`
        - Output: :math:`(B, 3, H, W)`
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"jpeg_round_trip expects RGB images [B, 3, H, W], got {list(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"jpeg_round_trip expects a floating-point image in [0, 1], got {image.dtype}")
    luma_table, chroma_table = quantisation_tables(quality)
    h, w = image.shape[-2:]
    to_ycbcr = image.new_tensor(_RGB_TO_YCBCR)
    # In JPEG's sample units (0-255), centred on 0 as the DCT takes them (Cb and Cr are centred already).
    ycbcr = torch.einsum("ij,bjhw->bihw", to_ycbcr, image.clamp(0, 1) * 255.0)
    ycbcr = torch.cat([ycbcr[:, :1] - 128.0, ycbcr[:, 1:]], dim=1)
    pad_h, pad_w = -h % _MCU, -w % _MCU
    if pad_h or pad_w:
        ycbcr = F.pad(ycbcr, (0, pad_w, 0, pad_h), mode="replicate")
    luma = _block_codec(ycbcr[:, :1], luma_table)
    chroma = _block_codec(F.avg_pool2d(ycbcr[:, 1:], 2), chroma_table)
    # Half-pixel bilinear doubling is libjpeg's "fancy" h2v2 upsampling (weights 3/4 and 1/4, edges repeated).
    chroma = F.interpolate(chroma, scale_factor=2.0, mode="bilinear", align_corners=False)
    decoded = torch.cat([luma + 128.0, chroma], dim=1)[..., :h, :w]
    rgb = torch.einsum("ij,bjhw->bihw", image.new_tensor(_YCBCR_TO_RGB), decoded)
    return (rgb / 255.0).clamp(0, 1)
