"""Non-differentiable "platform transforms": what happens to a photo between upload and tracker.

Social platforms re-encode uploads as JPEG and shrink them; a tracker that
scrapes them upsamples back to work on them, and an adaptive tracker may
"purify" photos (strong JPEG, blur) before training, as in FaceCure
(Radiya-Dixit et al., ICLR 2022). These are the real operations, done with
PIL, used to *evaluate* cloaks; their differentiable approximations for
*making* robust cloaks live in :mod:`cloak.transforms`.

Every transform takes a PIL image and returns a new RGB PIL image of the same
size (the input is converted to RGB first and never modified). For
``[H, W, 3]`` uint8 numpy arrays use :func:`apply_transform`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from PIL import Image, ImageFilter

#: A platform transform: RGB PIL image in, RGB PIL image of the same size out.
PlatformTransform = Callable[[Image.Image], Image.Image]

#: Filter used to shrink photos (platforms resize with antialiasing).
DOWN_FILTER = Image.Resampling.LANCZOS
#: Filter the tracker uses to upsample shrunk photos back to their original size.
UP_FILTER = Image.Resampling.BICUBIC


def _rgb(img: Image.Image) -> Image.Image:
    """The image itself when already RGB, else its RGB conversion (callers never modify it in place)."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"platform transforms take PIL images, got {type(img).__name__}; use Image.fromarray")
    return img if img.mode == "RGB" else img.convert("RGB")


def _small_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    """``(W, H)`` scaled by ``factor``, rounded, at least 1 pixel each."""
    if not 0 < factor <= 1:
        raise ValueError(f"downscale factor must be in (0, 1], got {factor}")
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


def _check_quality(codec: str, quality: int) -> None:
    if not 1 <= quality <= 100:
        raise ValueError(f"{codec} quality must be in [1, 100], got {quality}")


def _encode_decode(img: Image.Image, **save_options) -> Image.Image:
    """The photo encoded in memory with PIL's ``save(**save_options)`` and decoded again, as RGB."""
    buf = io.BytesIO()
    _rgb(img).save(buf, **save_options)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def identity(img: Image.Image) -> Image.Image:
    """No transform: the photo as uploaded (an RGB copy).

    Args:
        img: the photo.

    Returns:
        An RGB copy of ``img``.
    """
    return _rgb(img).copy()


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """A real JPEG encode and decode in memory with PIL, chroma subsampled 4:2:0 as platforms do.

    Args:
        img: the photo.
        quality: JPEG quality in ``[1, 100]`` (PIL's scale, libjpeg's tables).

    Returns:
        The decoded RGB photo, same size.

    Raises:
        ValueError: if ``quality`` is outside ``[1, 100]``.
    """
    _check_quality("JPEG", quality)
    return _encode_decode(img, format="JPEG", quality=int(quality), subsampling="4:2:0")


def webp(img: Image.Image, quality: int) -> Image.Image:
    """A real lossy WebP encode and decode in memory with PIL (libwebp; 4:2:0 chroma, as platforms serve it).

    Large platforms now serve many photos as WebP, whose codec (VP8 intra frames:
    4x4 transforms with prediction, then a deblocking filter) removes other detail
    than JPEG's 8x8 blocks.

    Args:
        img: the photo.
        quality: WebP quality in ``[1, 100]`` (libwebp's scale).

    Returns:
        The decoded RGB photo, same size.

    Raises:
        ValueError: if ``quality`` is outside ``[1, 100]``.
    """
    _check_quality("WebP", quality)
    # method 4 is libwebp's default speed/quality trade-off (cwebp's -m 4).
    return _encode_decode(img, format="WEBP", quality=int(quality), method=4)


def downscale(img: Image.Image, factor: float) -> Image.Image:
    """Shrinks by ``factor`` (Lanczos, antialiased), then upsamples back (bicubic) as the tracker does.

    Args:
        img: the photo.
        factor: scale of the shrunk copy, in ``(0, 1]``; each side is rounded
            and kept at least 1 pixel.

    Returns:
        The photo after the round trip, at the original size.

    Raises:
        ValueError: if ``factor`` is outside ``(0, 1]``.
    """
    img = _rgb(img)
    small = img.resize(_small_size(img.size, factor), DOWN_FILTER)
    return small.resize(img.size, UP_FILTER)


def gaussian_blur(img: Image.Image, radius: float) -> Image.Image:
    """PIL's Gaussian blur (``ImageFilter.GaussianBlur``; ``radius`` is about the standard deviation, in pixels).

    Args:
        img: the photo.
        radius: blur radius in pixels, ``>= 0``.

    Returns:
        The blurred photo, same size.

    Raises:
        ValueError: if ``radius`` is negative.
    """
    if radius < 0:
        raise ValueError(f"blur radius must be >= 0, got {radius}")
    return _rgb(img).filter(ImageFilter.GaussianBlur(radius))


def social(img: Image.Image, factor: float = 0.5, quality: int = 85) -> Image.Image:
    """A social platform's pipeline: shrink, re-encode as JPEG at the small size, tracker upsamples back.

    The default halves each side (a 2048-pixel upload served at 1024) and
    re-encodes at quality 85, typical of large platforms.

    Args:
        img: the photo.
        factor: scale of the served copy, in ``(0, 1]``.
        quality: JPEG quality of the served copy, in ``[1, 100]``.

    Returns:
        The photo as the tracker sees it, at the original size.

    Raises:
        ValueError: if ``factor`` or ``quality`` is out of range.
    """
    img = _rgb(img)
    small = img.resize(_small_size(img.size, factor), DOWN_FILTER)
    return jpeg(small, quality).resize(img.size, UP_FILTER)


def purify(img: Image.Image, quality: int = 50, radius: float = 1.0) -> Image.Image:
    """An adaptive tracker's preprocessing against cloaks: strong JPEG, then Gaussian blur.

    Args:
        img: the photo.
        quality: JPEG quality in ``[1, 100]``.
        radius: blur radius in pixels, ``>= 0``.

    Returns:
        The purified photo, same size.

    Raises:
        ValueError: if ``quality`` or ``radius`` is out of range.
    """
    return gaussian_blur(jpeg(img, quality), radius)


#: The named platform transforms an evaluation can ask for.
PLATFORM_TRANSFORMS: dict[str, PlatformTransform] = {
    "none": identity,
    "jpeg95": partial(jpeg, quality=95),
    "jpeg85": partial(jpeg, quality=85),
    "jpeg75": partial(jpeg, quality=75),
    "jpeg50": partial(jpeg, quality=50),
    "webp90": partial(webp, quality=90),
    "webp75": partial(webp, quality=75),
    "webp50": partial(webp, quality=50),
    "down0.75": partial(downscale, factor=0.75),
    "down0.5": partial(downscale, factor=0.5),
    "down0.25": partial(downscale, factor=0.25),
    "blur": partial(gaussian_blur, radius=1.0),
    "social": social,
    "purify": purify,
}


def _lookup(name: str) -> PlatformTransform:
    key = str(name).strip().lower()
    if key not in PLATFORM_TRANSFORMS:
        valid = ", ".join(PLATFORM_TRANSFORMS)
        raise ValueError(f"unknown platform transform {name!r}; valid names: {valid} (a+b applies a, then b)")
    return PLATFORM_TRANSFORMS[key]


def parse_platform_transform(name: str) -> PlatformTransform:
    """Looks up a platform transform by name (case and surrounding spaces ignored); ``"a+b"`` applies ``a`` then ``b``.

    Args:
        name: one of the keys of :data:`PLATFORM_TRANSFORMS`, or several joined
            by ``+`` (e.g. ``"jpeg75+down0.5"``).

    Returns:
        The transform.

    Raises:
        ValueError: if a name is unknown; the message lists the valid names.
    """
    parts = [_lookup(part) for part in str(name).split("+")]
    if len(parts) == 1:
        return parts[0]

    def composed(img: Image.Image) -> Image.Image:
        for part in parts:
            img = part(img)
        return img

    return composed


def apply_transform(photos: Sequence[np.ndarray], transform: PlatformTransform) -> list[np.ndarray]:
    """``transform`` on each ``[H, W, 3]`` uint8 RGB photo; returns new arrays."""
    return [np.asarray(transform(Image.fromarray(p)), dtype=np.uint8) for p in photos]
