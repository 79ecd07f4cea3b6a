"""Writing a cloaked copy: same format, mode, alpha and colour profile, the chosen metadata.

JPEG is re-encoded at :data:`JPEG_QUALITY` without chroma subsampling (4:4:4) by
default, keeping progressive encoding; PNG, BMP and lossless WEBP are lossless;
lossy WEBP uses :data:`WEBP_QUALITY`; TIFF keeps a lossless compression (LZW,
Deflate, PackBits, none) and turns a lossy one into LZW. Phone photos stay in
their format: HEIC/HEIF is written with pillow-heif (HEVC) at :data:`HEIF_QUALITY`
and AVIF with Pillow's AVIF plugin at :data:`AVIF_QUALITY`, both with
:data:`PHONE_SUBSAMPLING` chroma. Every write is atomic (:mod:`cloak.photos.atomic`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from cloak.photos.atomic import atomic_write
from cloak.photos.decoding import LoadedPhoto, enable_heif
from cloak.photos.errors import OutputLocationError, UnreadablePhotoError
from cloak.photos.metadata import MetadataPolicy, kept_metadata_params
from cloak.photos.pixels import as_uint8_hwc, describe
from cloak.photos.stripping import stripped_bytes

logger = logging.getLogger(__name__)

JPEG_QUALITY: int = 95
"""Default JPEG quality of the copies: high, so re-encoding loses little of the cloak."""

WEBP_QUALITY: int = 95
"""Default quality of lossy WEBP copies (lossless originals stay lossless)."""

HEIF_QUALITY: int = 95
"""Quality of HEIC/HEIF copies (pillow-heif's 0-100 scale): high, as for JPEG. On the
512x512 astronaut at 4:4:4 it gives 48.9 dB PSNR (JPEG 95: 41.2 dB)."""

AVIF_QUALITY: int = 95
"""Quality of AVIF copies (Pillow's 0-100 scale; 100 is near lossless). On the
512x512 astronaut at 4:4:4 it gives 43.2 dB PSNR (JPEG 95: 41.2 dB)."""

PHONE_SUBSAMPLING: str = "4:4:4"
"""Chroma subsampling of HEIC/HEIF and AVIF copies: none, as for JPEG, because
subsampling would wipe the cloak's colour detail (phones write 4:2:0)."""

# What each format can store.
_WRITABLE_MODES = {
    "JPEG": {"L", "RGB"},
    "PNG": {"L", "LA", "RGB", "RGBA"},
    "WEBP": {"RGB", "RGBA"},
    "TIFF": {"L", "LA", "RGB", "RGBA"},
    "BMP": {"L", "RGB", "RGBA"},
    "HEIF": {"L", "RGB", "RGBA"},
    "AVIF": {"RGB", "RGBA"},
}
_DPI_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "BMP"})
_LOSSLESS_TIFF_COMPRESSIONS = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits"}

_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2, 0: 0, 1: 1, 2: 2}


def save_photo(
    rgb: np.ndarray | torch.Tensor,
    loaded: LoadedPhoto,
    dest: str | os.PathLike[str],
    *,
    jpeg_quality: int = JPEG_QUALITY,
    jpeg_subsampling: str | int = "4:4:4",
    webp_quality: int = WEBP_QUALITY,
    metadata: MetadataPolicy = "strip",
    overwrite: bool = False,
) -> Path:
    """Writes (cloaked) pixels as a faithful copy of ``loaded``, atomically.

    The copy has the original's format; grayscale originals are written as
    grayscale and alpha is re-attached where the format can store it (see the
    module docstring). Missing parent folders are created.

    Args:
        rgb: ``[H, W, 3]`` uint8 array, or a ``[3, H, W]`` float tensor in
            ``[0, 1]`` (converted with :func:`to_uint8`). With an alpha channel
            to re-attach, it must be the size of ``loaded.rgb``.
        loaded: the photo the pixels came from.
        dest: the file to write.
        jpeg_quality: JPEG quality, 1-100.
        jpeg_subsampling: JPEG chroma subsampling, ``"4:4:4"`` (none, the
            default: the cloak lives in fine colour detail), ``"4:2:2"`` or
            ``"4:2:0"`` (or Pillow's 0, 1, 2).
        webp_quality: quality of a lossy WEBP, 1-100 (lossless originals stay lossless).
            HEIC/HEIF and AVIF use :data:`HEIF_QUALITY` and :data:`AVIF_QUALITY`.
        metadata: ``"strip"`` writes no EXIF/GPS, XMP, comments or text, only
            the ICC profile (for HEIF also its nclx colour description) and dpi;
            ``"keep"`` also writes EXIF (GPS included) with orientation 1, XMP,
            comments and PNG text. BMP stores none.
        overwrite: replace an existing ``dest``.

    Returns:
        ``dest``.

    Raises:
        FileExistsError: ``dest`` exists and ``overwrite`` is false.
        OutputLocationError: ``dest`` is the original photo.
        ValueError: bad pixels or options.
        OSError: the file cannot be written (nothing is left behind).
    """
    pixels = as_uint8_hwc(rgb)
    check_save_options(jpeg_quality, jpeg_subsampling, webp_quality, metadata)
    dest = Path(dest)
    _refuse_original(loaded, dest)
    image = _output_image(pixels, loaded)
    if loaded.format == "HEIF" and not enable_heif():
        raise ValueError(f"{dest}: writing HEIC/HEIF needs the pillow-heif package (pip install pillow-heif)")
    params = _encoder_params(loaded, image.mode, metadata, jpeg_quality, jpeg_subsampling, webp_quality)

    def write(file: IO[bytes]) -> None:
        image.save(file, format=loaded.format, **params)

    atomic_write(dest, write, overwrite=overwrite)
    logger.debug("wrote %s (%s %s, metadata=%s)", dest, loaded.format, image.mode, metadata)
    return dest


def copy_unchanged(
    loaded: LoadedPhoto,
    dest: str | os.PathLike[str],
    *,
    metadata: MetadataPolicy = "strip",
    overwrite: bool = False,
    jpeg_quality: int = JPEG_QUALITY,
    jpeg_subsampling: str | int = "4:4:4",
    webp_quality: int = WEBP_QUALITY,
) -> Path:
    """Writes a photo that needs no cloak (no face found) to ``dest``, atomically.

    The user's metadata choice still applies, so by default the copy is
    stripped like the cloaked ones:

    * ``metadata="strip"`` (default): JPEG, PNG and WEBP files are copied with
      their metadata blocks removed and their image data untouched, so there is
      no re-encoding loss (a JPEG keeps a minimal EXIF holding only its
      orientation, so it still displays upright; trailing data such as an MPO's
      second picture or a motion photo's video is dropped). BMP stores no
      metadata and is copied as is. Other cases (TIFF, HEIC/HEIF, AVIF, a PNG
      or WEBP with an orientation) are re-encoded upright with :func:`save_photo`. Every
      stripped copy is decoded again and compared with ``loaded``; on any
      difference the photo is re-encoded instead.
    * ``metadata="keep"``: the file is copied byte for byte.

    Args:
        loaded: the photo, from :func:`load_photo`.
        dest: the file to write.
        metadata: ``"strip"`` or ``"keep"``, as above.
        overwrite: replace an existing ``dest``.
        jpeg_quality: used only when the photo has to be re-encoded.
        jpeg_subsampling: used only when the photo has to be re-encoded.
        webp_quality: used only when the photo has to be re-encoded.

    Returns:
        ``dest``.

    Raises:
        FileExistsError: ``dest`` exists and ``overwrite`` is false.
        OutputLocationError: ``dest`` is the original photo.
        UnreadablePhotoError: the original cannot be read any more.
        OSError: the file cannot be written (nothing is left behind).
    """
    check_save_options(jpeg_quality, jpeg_subsampling, webp_quality, metadata)
    dest = Path(dest)
    _refuse_original(loaded, dest)
    try:
        original = loaded.path.read_bytes()
    except OSError as exc:
        raise UnreadablePhotoError(f"{loaded.path}: cannot read it again ({exc})", loaded.path) from exc

    data = original if metadata == "keep" else stripped_bytes(original, loaded)
    if data is None:
        return save_photo(
            loaded.rgb,
            loaded,
            dest,
            jpeg_quality=jpeg_quality,
            jpeg_subsampling=jpeg_subsampling,
            webp_quality=webp_quality,
            metadata=metadata,
            overwrite=overwrite,
        )
    atomic_write(dest, lambda file: file.write(data), overwrite=overwrite)
    logger.debug("copied %s to %s unchanged (metadata=%s)", loaded.path, dest, metadata)
    return dest


def write_png(pixels: np.ndarray, dest: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Writes an array as a plain PNG (no metadata), atomically, e.g. a preview.

    Args:
        pixels: ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` uint8.
        dest: the file to write; missing folders are created.
        overwrite: replace an existing ``dest``.

    Returns:
        ``dest``.

    Raises:
        FileExistsError: ``dest`` exists and ``overwrite`` is false.
        ValueError: ``pixels`` is not such an array.
    """
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4)))
    ):
        raise ValueError(f"expected a [H, W(, 3 or 4)] uint8 array, got {describe(pixels)}")
    image = Image.fromarray(np.ascontiguousarray(pixels))
    dest = Path(dest)
    atomic_write(dest, lambda file: image.save(file, format="PNG"), overwrite=overwrite)
    return dest


def check_save_options(
    jpeg_quality: int = JPEG_QUALITY,
    jpeg_subsampling: str | int = "4:4:4",
    webp_quality: int = WEBP_QUALITY,
    metadata: str = "strip",
) -> None:
    """Raises ValueError with a clear message on a bad encoding or metadata option."""
    if metadata not in ("strip", "keep"):
        raise ValueError(f'metadata must be "strip" or "keep", got {metadata!r}')
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if not 1 <= webp_quality <= 100:
        raise ValueError(f"webp_quality must be in 1..100, got {webp_quality}")
    if jpeg_subsampling not in _SUBSAMPLING:
        raise ValueError(f'jpeg_subsampling must be "4:4:4", "4:2:2" or "4:2:0", got {jpeg_subsampling!r}')


def _refuse_original(loaded: LoadedPhoto, dest: Path) -> None:
    try:
        same = dest.exists() and os.path.samefile(dest, loaded.path)
    except OSError:
        same = False
    if same:
        raise OutputLocationError(f"{dest} is the original photo; refusing to write over it", dest)


def _output_image(pixels: np.ndarray, loaded: LoadedPhoto) -> Image.Image:
    """The Pillow image to encode: grayscale or RGB, with the alpha re-attached if storable."""
    writable = _WRITABLE_MODES[loaded.format]
    alpha = loaded.alpha
    if alpha is not None and not ({"LA", "RGBA"} & writable):
        alpha = None  # JPEG: nothing to re-attach to
    if alpha is not None and alpha.shape != pixels.shape[:2]:
        raise ValueError(
            f"pixels are {pixels.shape[1]}x{pixels.shape[0]} but the alpha channel of "
            f"{loaded.path} is {alpha.shape[1]}x{alpha.shape[0]}"
        )
    mode = ("L" if loaded.is_grayscale else "RGB") + ("A" if alpha is not None else "")
    if mode not in writable:
        mode = "RGBA" if alpha is not None else "RGB"
    image = Image.fromarray(pixels)
    if mode.startswith("L"):
        image = image.convert("L")
    if alpha is not None:
        image.putalpha(Image.fromarray(alpha))
    return image


def _encoder_params(
    loaded: LoadedPhoto,
    mode: str,
    metadata: MetadataPolicy,
    jpeg_quality: int,
    jpeg_subsampling: str | int,
    webp_quality: int,
) -> dict[str, Any]:
    """Pillow ``save`` keywords for the copy of ``loaded`` in ``mode``."""
    fmt = loaded.format
    params: dict[str, Any] = {}
    icc = loaded.icc_profile if _icc_fits(loaded.icc_profile, mode) else None
    if fmt == "JPEG":
        params.update(
            quality=jpeg_quality,
            subsampling=_SUBSAMPLING[jpeg_subsampling],
            optimize=True,
            progressive=loaded.progressive,
        )
    elif fmt == "WEBP":
        params.update(lossless=loaded.webp_lossless)
        if not loaded.webp_lossless:
            params.update(quality=webp_quality)
    elif fmt == "TIFF":
        compression = loaded.tiff_compression
        if compression not in _LOSSLESS_TIFF_COMPRESSIONS:
            compression = "tiff_lzw"
        params.update(compression=compression)
    elif fmt in ("HEIF", "AVIF"):
        params.update(quality=HEIF_QUALITY if fmt == "HEIF" else AVIF_QUALITY, subsampling=PHONE_SUBSAMPLING)
        if fmt == "HEIF" and loaded.nclx_profile:
            params.update(nclx_profile=dict(loaded.nclx_profile))
    if icc and fmt != "BMP":
        params.update(icc_profile=icc)
    if loaded.dpi and fmt in _DPI_FORMATS:
        params.update(dpi=loaded.dpi)
    if metadata == "keep":
        params.update(kept_metadata_params(loaded.metadata, loaded.format, loaded.path))
    return params


def _icc_fits(icc: bytes | None, mode: str) -> bool:
    """Whether an ICC profile's colour space suits the mode written (RGB vs. gray)."""
    if not icc or len(icc) < 20:
        return False
    space = icc[16:20]
    fits = space == (b"GRAY" if mode.startswith("L") else b"RGB ")
    if not fits:
        logger.debug("dropping a %r ICC profile that does not suit mode %s", space, mode)
    return fits
