"""Reading a photo: upright 8-bit RGB of any mode, plus what is needed to write it back.

Pixels come out upright (EXIF orientation applied with
:func:`PIL.ImageOps.exif_transpose`) and 8-bit RGB whatever the file's mode; see
:mod:`cloak.photos` for the decisions. Photos above ``max_pixels`` are refused
from their header, before decoding, as a guard against decompression bombs.

Phone formats: HEIC/HEIF is read through pillow-heif, whose opener is
registered with Pillow once, on the first read (:func:`enable_heif`); libheif
turns those pixels upright itself. AVIF is read by Pillow's own AVIF plugin
(Pillow 11.3 or newer; pillow-heif 1.x no longer reads AVIF).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps, features

from cloak.photos.errors import CloakIOError, PhotoTooLargeError, UnreadablePhotoError
from cloak.photos.listing import SUFFIX_FORMATS
from cloak.photos.metadata import PhotoMetadata, read_metadata
from cloak.photos.pixels import float_to_uint8, gray_to_rgb

logger = logging.getLogger(__name__)

MAX_PIXELS: int = 100_000_000
"""Default limit on ``width * height`` for :func:`load_photo` (100 megapixels)."""

# Formats we write, and what Pillow may report for them.
_FORMAT_ALIASES = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "WEBP": "WEBP",
    "TIFF": "TIFF",
    "BMP": "BMP",
    "DIB": "BMP",
    "HEIF": "HEIF",
    "AVIF": "AVIF",
}

_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

_ORIENTATION = ExifTags.Base.Orientation

_PIL_LIMIT_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class LoadedPhoto:
    """A decoded photo plus what is needed to write a faithful copy.

    Attributes:
        path: the file it came from.
        rgb: ``[H, W, 3]`` uint8, upright.
        format: ``"JPEG"``, ``"PNG"``, ``"WEBP"``, ``"TIFF"``, ``"BMP"``, ``"HEIF"``
            (HEIC) or ``"AVIF"``: the format the copy is written in.
        mode: the file's Pillow mode (``"RGB"``, ``"L"``, ``"I;16"``, ``"CMYK"``, ...).
        alpha: ``[H, W]`` uint8 alpha (upright) for RGBA, LA, PA and palette or
            colour-key transparency, else ``None``.
        icc_profile: the ICC profile the copy should carry (an sRGB one when a
            CMYK original was converted through its profile), or ``None``.
        metadata: EXIF, XMP, comments; written only with ``metadata="keep"``.
        orientation: the EXIF orientation (1-8) that was applied to ``rgb``.
        dpi: resolution, upright, or ``None``.
        progressive: whether a JPEG was progressive.
        webp_lossless: whether a WEBP was lossless (VP8L).
        tiff_compression: Pillow's name of a TIFF's compression, or ``None``.
        nclx_profile: a HEIF's colour description (primaries, transfer,
            matrix, range) as pillow-heif reports it, or ``None``.
        n_frames: frames or pages in the file; only the first is used.
    """

    path: Path
    rgb: np.ndarray
    format: str
    mode: str
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None
    metadata: PhotoMetadata = field(default_factory=PhotoMetadata)
    orientation: int = 1
    dpi: tuple[float, float] | None = None
    progressive: bool = False
    webp_lossless: bool = False
    tiff_compression: str | None = None
    nclx_profile: dict[str, Any] | None = None
    n_frames: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the upright photo."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    @property
    def is_grayscale(self) -> bool:
        """Whether the original is grayscale (the copy is then written as grayscale)."""
        return self.mode in _GRAYSCALE_MODES

    @property
    def has_alpha(self) -> bool:
        """Whether the original has transparency (re-attached where the format allows)."""
        return self.alpha is not None

    @property
    def high_bit_depth(self) -> bool:
        """Whether the original has more than 8 bits per sample (the copy has 8)."""
        return self.mode in _SIXTEEN_BIT_MODES or self.mode == "F"


def load_photo(path: str | os.PathLike[str], *, max_pixels: int | None = MAX_PIXELS) -> LoadedPhoto:
    """Reads a photo as upright 8-bit RGB, with what is needed to write it back.

    The size is checked against ``max_pixels`` from the file header, before any
    decoding. See the module docstring for how modes, bit depths and metadata
    are handled.

    Args:
        path: the photo.
        max_pixels: refuse photos with more than this many pixels; ``None``
            disables the check (for trusted files only: a small file can decode
            to gigabytes). Pillow's own limit is lifted when this one is higher.

    Returns:
        The decoded photo.

    Raises:
        PhotoTooLargeError: the photo has more than ``max_pixels`` pixels.
        UnreadablePhotoError: the file is missing, corrupt, truncated, not an
            image, or in a mode cloak cannot convert; the message names the file.
    """
    path = Path(path)
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
    return read_photo(path, path, max_pixels)


def read_photo(source: Path | IO[bytes], path: Path, max_pixels: int | None, *, quiet: bool = False) -> LoadedPhoto:
    """:func:`load_photo` for a file or an in-memory stream; ``path`` names it in errors."""
    enable_heif()
    try:
        with _pil_pixel_limit(max_pixels), Image.open(source) as image:
            _check_pixels(path, image.size, max_pixels)
            return _decode(image, source, path, quiet=quiet)
    except CloakIOError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own check fired first (its limit is above ``max_pixels``): report ours.
        assert max_pixels is not None  # Pillow's limit is lifted otherwise
        try:
            width, height = _header_size(source)
        except Exception:
            raise PhotoTooLargeError(
                f"{path}: {exc} It is over the limit of {max_pixels:,} pixels; if you "
                "trust this photo, raise the limit (max_pixels).",
                path,
                -1,
                max_pixels,
            ) from exc
        raise _too_large(path, width, height, max_pixels) from exc
    except Exception as exc:  # decoders raise many kinds of errors on bad data
        raise UnreadablePhotoError(
            f"{path}: cannot read this photo ({type(exc).__name__}: {exc}); "
            f"the file may be corrupt, truncated, or not an image{_missing_codec_hint(path)}",
            path,
        ) from exc


@contextmanager
def _pil_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Silences Pillow's bomb warning, and lifts its hard limit when ours is higher.

    Pillow refuses images above ``2 * Image.MAX_IMAGE_PIXELS`` when opening them.
    When ``max_pixels`` is above that (or ``None``), Pillow's module-wide limit is
    set to ``None`` for the duration, under a lock; :func:`load_photo` checks
    ``max_pixels`` itself before decoding.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pil_limit = Image.MAX_IMAGE_PIXELS
        if pil_limit is None or (max_pixels is not None and max_pixels <= 2 * pil_limit):
            yield
            return
        with _PIL_LIMIT_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _header_size(source: Path | IO[bytes]) -> tuple[int, int]:
    """The image size from the file header, with Pillow's limit lifted; no decoding."""
    with _pil_pixel_limit(None), Image.open(source) as image:
        return image.size


def _too_large(path: Path, width: int, height: int, max_pixels: int) -> PhotoTooLargeError:
    pixels = width * height
    return PhotoTooLargeError(
        f"{path}: {width}x{height} is {pixels:,} pixels ({pixels / 1e6:.1f} megapixels), over "
        f"the limit of {max_pixels:,} pixels ({max_pixels / 1e6:g} megapixels) that guards "
        "against decompression bombs. If you trust this photo, raise the limit (max_pixels).",
        path,
        pixels,
        max_pixels,
    )


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise _too_large(path, width, height, max_pixels)


def _decode(image: Image.Image, source: Path | IO[bytes], path: Path, *, quiet: bool = False) -> LoadedPhoto:
    """Decodes an opened image into a :class:`LoadedPhoto`; ``quiet`` skips the warnings."""
    image.load()
    mode = image.mode
    fmt = _format_of(image.format, path, quiet=quiet)
    n_frames = int(getattr(image, "n_frames", 1))
    if n_frames > 1 and image.format != "MPO" and not quiet:
        logger.warning("%s has %d frames; only the first is read and written", path, n_frames)
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    tiff_compression = image.info.get("compression") if fmt == "TIFF" else None
    nclx_profile = image.info.get("nclx_profile") if fmt == "HEIF" else None

    orientation = _apply_orientation(image, path)
    rgb, alpha, icc_profile = _to_rgb(image)
    metadata = read_metadata(image, fmt, path)

    dpi = _read_dpi(image.info.get("dpi"))
    if dpi is not None and orientation >= 5:  # rotated by 90 degrees: axes swap
        dpi = (dpi[1], dpi[0])
    webp_lossless = fmt == "WEBP" and _webp_is_lossless(_read_all(source))

    return LoadedPhoto(
        path=path,
        rgb=rgb,
        format=fmt,
        mode=mode,
        alpha=alpha,
        icc_profile=icc_profile,
        metadata=metadata,
        orientation=orientation,
        dpi=dpi,
        progressive=progressive,
        webp_lossless=webp_lossless,
        tiff_compression=tiff_compression if isinstance(tiff_compression, str) else None,
        nclx_profile=dict(nclx_profile) if isinstance(nclx_profile, dict) else None,
        n_frames=n_frames,
    )


def _format_of(pil_format: str | None, path: Path, *, quiet: bool = False) -> str:
    """The format to write: the content's, else the extension's, else PNG."""
    fmt = _FORMAT_ALIASES.get(pil_format or "")
    if fmt is not None:
        return fmt
    fallback = SUFFIX_FORMATS.get(path.suffix.lower(), "PNG")
    (logger.debug if quiet else logger.warning)(
        "%s holds %s data, which cloak does not write; its copy will be %s",
        path,
        pil_format,
        fallback,
    )
    return fallback


def _apply_orientation(image: Image.Image, path: Path) -> int:
    """Makes ``image`` upright in place per its EXIF orientation; returns the orientation."""
    already_applied = image.info.get("original_orientation")  # pillow-heif: libheif turned it upright
    if isinstance(already_applied, int) and 1 <= already_applied <= 8:
        return already_applied
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", path, exc)
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _to_rgb(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """``(rgb [H, W, 3] uint8, alpha [H, W] uint8 or None, icc_profile)`` of any mode."""
    mode = image.mode
    icc = image.info.get("icc_profile") or None
    transparency = image.info.get("transparency")

    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        alpha = None
        if isinstance(transparency, int):
            alpha = np.where(values == transparency, 0, 255).astype(np.uint8)
        wide = np.clip(values, 0, 65535).astype(np.uint32)  # mode I is signed 32-bit
        gray = ((wide + 128) // 257).astype(np.uint8)  # round(v * 255 / 65535)
        return gray_to_rgb(gray), alpha, icc
    if mode == "F":
        return gray_to_rgb(float_to_uint8(np.asarray(image))), None, icc
    if mode == "CMYK":
        converted, icc = _cmyk_to_rgb(image, icc)
        return np.asarray(converted), None, icc
    if mode == "LAB":
        lab = ImageCms.createProfile("LAB")
        converted = ImageCms.profileToProfile(image, lab, _srgb(), outputMode="RGB")
        assert converted is not None
        return np.asarray(converted), None, None
    if mode in ("La", "RGBa"):
        image = image.convert(mode[:-1] + "A")
        mode = image.mode
    if mode in _ALPHA_MODES or transparency is not None:
        rgba = np.asarray(image.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), icc
    return np.asarray(image.convert("RGB")), None, icc


@lru_cache(maxsize=1)
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _cmyk_to_rgb(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """CMYK to RGB through the embedded profile (the result is sRGB), else Pillow's formula."""
    if icc:
        try:
            converted = ImageCms.profileToProfile(
                image, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb(), outputMode="RGB"
            )
            assert converted is not None
            return converted, _srgb().tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
            logger.warning("cannot use the CMYK photo's ICC profile (%s); converting plainly", exc)
    return image.convert("RGB"), None


def _read_dpi(dpi: Any) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None


def _read_all(source: Path | IO[bytes]) -> bytes:
    if isinstance(source, Path):
        return source.read_bytes()
    source.seek(0)
    return source.read()


def riff_chunks(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """``(fourcc, payload_start, payload_end)`` of the RIFF chunks in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if pos + 8 + size > end:
            raise ValueError(f"RIFF chunk {fourcc!r} runs past the end of the data")
        yield fourcc, pos + 8, pos + 8 + size
        pos += 8 + size + (size & 1)


def _webp_is_lossless(data: bytes) -> bool:
    """Whether the (first) image in a WEBP file is VP8L-coded."""
    try:
        end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
        for fourcc, start, stop in riff_chunks(data, 12, end):
            if fourcc == b"ANMF":  # first animation frame: 16-byte header, then its chunks
                for inner, _, _ in riff_chunks(data, start + 16, stop):
                    if inner in (b"VP8 ", b"VP8L"):
                        return inner == b"VP8L"
            if fourcc in (b"VP8 ", b"VP8L"):
                return fourcc == b"VP8L"
    except ValueError:
        pass
    return False


@lru_cache(maxsize=1)
def enable_heif() -> bool:
    """Lets Pillow read and write HEIC/HEIF by registering pillow-heif's plugin, once.

    Returns:
        Whether pillow-heif is installed (when it is not, HEIC photos cannot be
        read and :func:`load_photo` says so).
    """
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        logger.debug("pillow-heif is not installed; HEIC/HEIF photos cannot be read")
        return False
    register_heif_opener()
    return True


def _missing_codec_hint(path: Path) -> str:
    """What to install when a phone format cannot be read here, else ``""``."""
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt == "HEIF" and not enable_heif():
        return "; reading HEIC/HEIF needs the pillow-heif package (pip install pillow-heif)"
    if fmt == "AVIF" and not features.check("avif"):
        return "; reading AVIF needs Pillow 11.3 or newer built with AVIF support (pip install -U pillow)"
    return ""
