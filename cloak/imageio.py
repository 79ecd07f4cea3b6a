"""The photo file layer: find users' photos, load them faithfully, write cloaked copies safely.

``python -m cloak photos/`` writes cloaked copies to ``photos_cloaked/`` with the
same relative paths, names and formats. This module is everything that touches
the files; the cloaking and the command line live elsewhere. A typical run::

    out_dir = resolve_output_dir(input_dir, output_dir)
    listing = find_photos(input_dir, output_dir=out_dir)
    for photo in listing.photos:
        loaded = load_photo(photo)                    # CloakIOError: skip and report
        dest = destination_for(photo, input_dir, out_dir)
        cloaked = cloak(to_tensor(loaded.rgb))        # [3, H, W] float in [0, 1]
        save_photo(to_uint8(cloaked), loaded, dest)   # or copy_unchanged(loaded, dest)

Decisions, in one place:

* **Pixels.** :func:`load_photo` returns upright (EXIF orientation applied with
  :func:`PIL.ImageOps.exif_transpose`) 8-bit RGB, whatever the file's mode.
  16-bit data (``I;16*``, ``I``) is scaled by 255/65535 with rounding, never
  clipped at 255; float data (``F``) in ``[0, 1]`` is scaled by 255, otherwise it
  is read on Pillow's 0-255 scale. CMYK is converted to sRGB through the file's
  own ICC profile when it has one (the copy then carries an sRGB profile),
  otherwise with Pillow's plain formula.
* **Formats.** A copy is written in the format of the original's *content*
  (JPEG, PNG, WEBP, TIFF or BMP; an MPO is written as a plain JPEG holding its
  first picture). JPEG is re-encoded at quality 95 without chroma subsampling
  (4:4:4) by default, keeping progressive encoding; PNG, BMP and lossless WEBP
  are lossless; lossy WEBP uses quality 95; TIFF keeps a lossless compression
  (LZW, Deflate, PackBits, none) and turns a lossy one into LZW.
* **Bit depth and mode.** Copies are 8 bits per channel: a 16-bit or float
  original is written at 8 bits. Grayscale originals (``1``, ``L``, ``LA``,
  ``I;16*``, ``I``, ``F``) are written as grayscale (``L``/``LA``), so the colour
  part of the cloak is lost for them; everything else, palette images included
  (re-quantising would destroy the cloak), is written as RGB. Alpha is
  re-attached for every format that can store it (all but JPEG).
* **Multi-frame files.** Only the first frame of an animated WEBP or PNG or a
  multi-page TIFF is read and written (a warning is logged).
* **Metadata.** ``metadata="strip"`` (the default) writes no EXIF (GPS
  included), XMP, comments or PNG text; it keeps only what rendering needs:
  the ICC profile and the resolution (dpi). ``metadata="keep"`` means keep:
  EXIF *including GPS*, XMP, the JPEG comment and PNG text chunks are carried
  over, with the EXIF orientation reset to 1 because the pixels are written
  upright. Never carried, in either mode: embedded thumbnails and previews
  (EXIF IFD1, JFIF thumbnails, Photoshop/IPTC blocks), which would show the
  uncloaked face.
* **Photos without a face.** :func:`copy_unchanged` copies them with the same
  metadata policy: stripped by default (losslessly for JPEG, PNG and WEBP, by
  removing the metadata blocks), byte for byte with ``metadata="keep"``.
* **Output folder.** :func:`resolve_output_dir` defaults to ``<input>_cloaked``
  beside the input folder (for a single photo: beside the photo's folder) and
  refuses an output that is, contains or lies inside the input.
* **Writing.** Every write goes to a hidden temporary file in the destination
  folder, is flushed and fsynced, then moved into place (``os.replace``, or a
  hard link that cannot clobber a file when not overwriting); an error or
  interruption leaves neither a half-written photo nor a temporary file. An
  existing destination is never replaced unless ``overwrite=True``, and the
  original photo is never replaced at all. Missing folders are created.
* **Limits.** Photos above :data:`MAX_PIXELS` (100 megapixels by default) are
  refused before decoding, as a guard against decompression bombs.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from PIL import ExifTags, Image, ImageCms, ImageOps, PngImagePlugin

logger = logging.getLogger(__name__)

MAX_PIXELS: int = 100_000_000
"""Default limit on ``width * height`` for :func:`load_photo` (100 megapixels)."""

PHOTO_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
"""File extensions (lower case) that :func:`find_photos` treats as photos."""

OUTPUT_SUFFIX: str = "_cloaked"
"""Appended to the input folder's name for the default output folder."""

MetadataPolicy = Literal["strip", "keep"]

# Formats we write, what Pillow may report for them, and what each can store.
_FORMAT_ALIASES = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "WEBP": "WEBP",
    "TIFF": "TIFF",
    "BMP": "BMP",
    "DIB": "BMP",
}
_EXTENSION_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_WRITABLE_MODES = {
    "JPEG": {"L", "RGB"},
    "PNG": {"L", "LA", "RGB", "RGBA"},
    "WEBP": {"RGB", "RGBA"},
    "TIFF": {"L", "LA", "RGB", "RGBA"},
    "BMP": {"L", "RGB", "RGBA"},
}
_LOSSLESS_TIFF_COMPRESSIONS = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits"}

_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2, 0: 0, 1: 1, 2: 2}

_ORIENTATION = ExifTags.Base.Orientation
# Tags never carried over: they hold or point to previews of the uncloaked photo
# (Photoshop resources and layers, IPTC, thumbnail pointers), or are written
# separately (ICC profile, XMP).
_EXIF_DROP_TAGS = frozenset({0x83BB, 0x8649, 0x935C, 0x0201, 0x0202, 0x8773, 0x02BC})
# TIFF image-structure tags: IFD0 of a TIFF file mixes these with its metadata.
# fmt: off
_TIFF_STRUCTURE_TAGS = frozenset(
    {
        0x00FE, 0x00FF, 0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x0107, 0x0108, 0x0109,
        0x010A, 0x0111, 0x0115, 0x0116, 0x0117, 0x0118, 0x0119, 0x011A, 0x011B, 0x011C,
        0x0122, 0x0123, 0x0124, 0x0125, 0x0128, 0x012D, 0x013D, 0x013E, 0x013F, 0x0140,
        0x0142, 0x0143, 0x0144, 0x0145, 0x014A, 0x014C, 0x0152, 0x0153, 0x0154, 0x0155,
        0x0156, 0x015B, 0x0200, 0x0201, 0x0202, 0x0203, 0x0205, 0x0206, 0x0207, 0x0208,
        0x0209, 0x0211, 0x0212, 0x0213, 0x0214,
    }
)
# fmt: on
_MAX_JPEG_MARKER_PAYLOAD = 65533

_PIL_LIMIT_LOCK = threading.Lock()


# --------------------------------------------------------------------------- errors


class CloakIOError(ValueError):
    """A photo or folder that cloak cannot read from or write to, with a message for the user.

    Attributes:
        path: the file or folder concerned, when there is one.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class UnreadablePhotoError(CloakIOError):
    """The file is corrupt, truncated, not an image, or in a form cloak cannot read."""


class PhotoTooLargeError(CloakIOError):
    """The photo has more pixels than the limit (a guard against decompression bombs).

    Attributes:
        pixels: ``width * height`` of the photo.
        max_pixels: the limit it exceeded.
    """

    def __init__(self, message: str, path: str | os.PathLike[str], pixels: int, max_pixels: int) -> None:
        super().__init__(message, path)
        self.pixels = pixels
        self.max_pixels = max_pixels


class OutputLocationError(CloakIOError):
    """The output location would mix cloaked copies with, or write over, the originals."""


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class PhotoListing:
    """What :func:`find_photos` found.

    Attributes:
        photos: photo files, sorted.
        skipped: visible files that are not photos (or not regular files), and
            symlinked or unreadable folders, sorted; for reporting to the user.
    """

    photos: list[Path]
    skipped: list[Path]


def is_photo_path(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has one of :data:`PHOTO_EXTENSIONS` (any letter case)."""
    return Path(path).suffix.lower() in PHOTO_EXTENSIONS


def find_photos(
    input_path: str | os.PathLike[str], *, output_dir: str | os.PathLike[str] | None = None
) -> PhotoListing:
    """Lists the photos under a folder, recursively, by file extension.

    Hidden files and folders (names starting with ``.``) are ignored and not
    reported; so is ``output_dir`` when it lies inside the input folder.
    Symlinked folders are not followed (they are reported in ``skipped``);
    symlinked files are listed like any file. Paths are ``input_path`` joined
    with the path below it, so ``photo.relative_to(input_path)`` works (see
    :func:`destination_for`).

    Args:
        input_path: a folder, or a single file (then it is the only candidate).
        output_dir: a folder to leave out of the search.

    Returns:
        The photos and the skipped paths, each sorted.

    Raises:
        CloakIOError: ``input_path`` does not exist.
    """
    root = Path(input_path)
    if root.is_file():
        if is_photo_path(root):
            return PhotoListing(photos=[root], skipped=[])
        return PhotoListing(photos=[], skipped=[root])
    if not root.is_dir():
        raise CloakIOError(f"{root} does not exist (or is neither a folder nor a file)", root)

    excluded = Path(output_dir).resolve() if output_dir is not None else None
    photos: list[Path] = []
    skipped: list[Path] = []

    def on_error(exc: OSError) -> None:
        logger.warning("cannot list %s: %s", exc.filename, exc.strerror)
        if exc.filename is not None:
            skipped.append(Path(os.fsdecode(exc.filename)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        here = Path(dirpath)
        descend = []
        for name in dirnames:
            folder = here / name
            if name.startswith("."):
                continue
            if excluded is not None and folder.resolve() == excluded:
                logger.debug("not searching the output folder %s", folder)
                continue
            if folder.is_symlink():
                logger.info("not following the symlinked folder %s", folder)
                skipped.append(folder)
                continue
            descend.append(name)
        dirnames[:] = descend
        for name in filenames:
            if name.startswith("."):
                continue
            file = here / name
            if is_photo_path(file) and file.is_file():
                photos.append(file)
            else:
                skipped.append(file)
    photos.sort()
    skipped.sort()
    logger.debug("found %d photos under %s, skipped %d paths", len(photos), root, len(skipped))
    return PhotoListing(photos=photos, skipped=skipped)


def resolve_output_dir(input_path: str | os.PathLike[str], output_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the cloaked copies go, checked so that they cannot mix with the originals.

    The default is ``<folder>_cloaked`` beside the input folder: ``photos/`` gives
    ``photos_cloaked/``. For a single-file input the folder is the file's own,
    so ``photos/me.jpg`` also goes to ``photos_cloaked/me.jpg``. The folder is
    not created here (:func:`save_photo` creates folders as needed).

    Args:
        input_path: the input folder, or a single photo.
        output_dir: the folder the user asked for, if any.

    Returns:
        The absolute output folder.

    Raises:
        CloakIOError: the input does not exist.
        OutputLocationError: the output is the input, is inside the input folder,
            contains the input, or is an existing file.
    """
    source = Path(input_path).expanduser()
    if not source.exists():
        raise CloakIOError(f"input {source} does not exist", source)
    source = source.resolve()
    folder = source if source.is_dir() else source.parent
    if output_dir is None:
        if folder.parent == folder:
            raise OutputLocationError(
                f"cannot put the default output folder beside {folder}; choose an output folder",
                folder,
            )
        target = folder.parent / f"{folder.name}{OUTPUT_SUFFIX}"
    else:
        target = Path(output_dir).expanduser().resolve()

    if target.exists() and not target.is_dir():
        raise OutputLocationError(f"output {target} exists and is not a folder", target)
    if target == source:
        raise OutputLocationError(
            f"output folder {target} is the input folder; cloaked copies would replace "
            "the originals. Choose another output folder.",
            target,
        )
    if source.is_dir() and target.is_relative_to(source):
        raise OutputLocationError(
            f"output folder {target} is inside the input folder {source}; cloaked copies "
            "would mix with the originals (and be read as input next time). "
            "Choose an output folder outside it.",
            target,
        )
    if source.is_relative_to(target):
        raise OutputLocationError(
            f"the input {source} is inside the output folder {target}; cloaked copies "
            "could land on the originals. Choose an output folder outside the input.",
            target,
        )
    return target


def destination_for(
    photo: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
) -> Path:
    """The cloaked copy's path: the photo's path below the input, moved under ``output_dir``.

    Args:
        photo: a path from :func:`find_photos` called with the same ``input_path``.
        input_path: the input folder, or the single photo.
        output_dir: from :func:`resolve_output_dir`.
    """
    source, photo = Path(input_path), Path(photo)
    if source.is_file():
        return Path(output_dir) / photo.name
    return Path(output_dir) / photo.relative_to(source)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class PhotoMetadata:
    """The privacy-relevant metadata of a photo, written back only with ``metadata="keep"``.

    Attributes:
        exif: EXIF block (``b"Exif\\0\\0"`` + TIFF structure) with the orientation
            reset to 1 and no thumbnail, or ``None``.
        xmp: XMP packet (orientation removed), or ``None``. For PNG it travels in
            ``png_text`` instead.
        comment: JPEG comment, or ``None``.
        png_text: PNG text chunks as ``(key, value)`` pairs (values may be
            :class:`PIL.PngImagePlugin.iTXt`).
    """

    exif: bytes | None = None
    xmp: bytes | None = None
    comment: bytes | None = None
    png_text: tuple[tuple[str, str], ...] = ()

    @property
    def has_gps(self) -> bool:
        """Whether the EXIF holds a non-empty GPS block."""
        if not self.exif:
            return False
        exif = Image.Exif()
        exif.load(self.exif)
        return bool(exif.get_ifd(ExifTags.IFD.GPSInfo))


@dataclass(frozen=True, eq=False)
class LoadedPhoto:
    """A decoded photo plus what is needed to write a faithful copy.

    Attributes:
        path: the file it came from.
        rgb: ``[H, W, 3]`` uint8, upright.
        format: ``"JPEG"``, ``"PNG"``, ``"WEBP"``, ``"TIFF"`` or ``"BMP"``: the format
            the copy is written in.
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
    return _read_photo(path, path, max_pixels)


def _read_photo(source: Path | IO[bytes], path: Path, max_pixels: int | None, *, quiet: bool = False) -> LoadedPhoto:
    """:func:`load_photo` for a file or an in-memory stream; ``path`` names it in errors."""
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
            "the file may be corrupt, truncated, or not an image",
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

    orientation = _apply_orientation(image, path)
    rgb, alpha, icc_profile = _to_rgb(image)
    metadata = _read_metadata(image, fmt, path)

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
        n_frames=n_frames,
    )


def _format_of(pil_format: str | None, path: Path, *, quiet: bool = False) -> str:
    """The format to write: the content's, else the extension's, else PNG."""
    fmt = _FORMAT_ALIASES.get(pil_format or "")
    if fmt is not None:
        return fmt
    fallback = _EXTENSION_FORMATS.get(path.suffix.lower(), "PNG")
    (logger.debug if quiet else logger.warning)(
        "%s holds %s data, which cloak does not write; its copy will be %s",
        path,
        pil_format,
        fallback,
    )
    return fallback


def _apply_orientation(image: Image.Image, path: Path) -> int:
    """Makes ``image`` upright in place per its EXIF orientation; returns the orientation."""
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
        return _gray_to_rgb(gray), alpha, icc
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(image))), None, icc
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


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float samples to uint8: data within ``[0, 1]`` is scaled by 255, other data is 0-255."""
    values = values.astype(np.float32)
    finite = values[np.isfinite(values)]
    top = 1.0 if finite.size == 0 or finite.max() <= 1.0 else 255.0
    values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, top) * np.float32(255.0 / top)
    return np.floor(values + 0.5).astype(np.uint8)


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


def _read_metadata(image: Image.Image, fmt: str, path: Path) -> PhotoMetadata:
    """EXIF (orientation reset, no thumbnail), XMP, comment and PNG text of an upright image."""
    exif: bytes | None = None
    try:
        exif = _clean_exif(image.getexif(), tiff=fmt == "TIFF")
    except Exception as exc:
        logger.warning("%s: cannot read its EXIF (%s); it will not be kept", path, exc)

    png_text: tuple[tuple[str, str], ...] = ()
    xmp: bytes | None = None
    if fmt == "PNG":
        # exif_transpose updated the XMP in ``info``, not in ``text``; EXIF goes in eXIf.
        text = getattr(image, "text", {}) or {}
        png_text = tuple(
            (key, image.info.get(key, value)) for key, value in text.items() if not key.startswith("Raw profile type")
        )
    else:
        raw_xmp = image.info.get("xmp")
        if isinstance(raw_xmp, str):
            raw_xmp = raw_xmp.encode("utf-8")
        xmp = raw_xmp or None

    comment = image.info.get("comment") if fmt == "JPEG" else None
    if isinstance(comment, str):
        comment = comment.encode("utf-8")
    return PhotoMetadata(exif=exif, xmp=xmp, comment=comment or None, png_text=png_text)


def _clean_exif(source: Image.Exif, *, tiff: bool) -> bytes | None:
    """A copy of ``source`` without previews or TIFF structure, orientation 1, as bytes."""
    exif = Image.Exif()
    for tag, value in source.items():
        if tag in _EXIF_DROP_TAGS or (tiff and tag in _TIFF_STRUCTURE_TAGS):
            continue
        if tag in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo):
            value = source.get_ifd(tag)
            if not value:
                continue
            interop = value.get(ExifTags.IFD.Interop)
            if tag == ExifTags.IFD.Exif and interop is not None and not isinstance(interop, dict):
                value = dict(value)
                value[ExifTags.IFD.Interop] = source.get_ifd(ExifTags.IFD.Interop)
        exif[tag] = value
    if not len(exif) or set(exif) == {_ORIENTATION}:
        return None
    exif[_ORIENTATION] = 1
    return exif.tobytes()


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


def _riff_chunks(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
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
        for fourcc, start, stop in _riff_chunks(data, 12, end):
            if fourcc == b"ANMF":  # first animation frame: 16-byte header, then its chunks
                for inner, _, _ in _riff_chunks(data, start + 16, stop):
                    if inner in (b"VP8 ", b"VP8L"):
                        return inner == b"VP8L"
            if fourcc in (b"VP8 ", b"VP8L"):
                return fourcc == b"VP8L"
    except ValueError:
        pass
    return False


# --------------------------------------------------------------------------- tensors


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 to ``[3, H, W]`` float32 in ``[0, 1]`` (value / 255).

    Raises:
        ValueError: ``rgb`` is not a ``[H, W, 3]`` uint8 array.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a [H, W, 3] uint8 array, got {_describe(rgb)}")
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` (or ``[1, 3, H, W]``) float in ``[0, 1]`` to ``[H, W, 3]`` uint8.

    Values are clipped to ``[0, 1]`` (NaN becomes 0), scaled by 255 and rounded
    to the nearest integer, halves up; so ``to_uint8(to_tensor(a))`` equals ``a``.
    Works on any device and dtype; gradients are not tracked.

    Raises:
        ValueError: ``image`` has the wrong shape.
    """
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
    values = torch.nan_to_num(image.detach().to("cpu", torch.float32), nan=0.0).clamp(0.0, 1.0)
    return torch.floor(values * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _describe(value: object) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


# --------------------------------------------------------------------------- saving


def save_photo(
    rgb: np.ndarray | torch.Tensor,
    loaded: LoadedPhoto,
    dest: str | os.PathLike[str],
    *,
    jpeg_quality: int = 95,
    jpeg_subsampling: str | int = "4:4:4",
    webp_quality: int = 95,
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
        metadata: ``"strip"`` writes no EXIF/GPS, XMP, comments or text, only
            the ICC profile and dpi; ``"keep"`` also writes EXIF (GPS included)
            with orientation 1, XMP, comments and PNG text. BMP stores none.
        overwrite: replace an existing ``dest``.

    Returns:
        ``dest``.

    Raises:
        FileExistsError: ``dest`` exists and ``overwrite`` is false.
        OutputLocationError: ``dest`` is the original photo.
        ValueError: bad pixels or options.
        OSError: the file cannot be written (nothing is left behind).
    """
    pixels = _as_uint8_hwc(rgb)
    _check_save_options(jpeg_quality, jpeg_subsampling, webp_quality, metadata)
    dest = Path(dest)
    _refuse_original(loaded, dest)
    image = _output_image(pixels, loaded)
    params = _encoder_params(loaded, image.mode, metadata, jpeg_quality, jpeg_subsampling, webp_quality)

    def write(file: IO[bytes]) -> None:
        image.save(file, format=loaded.format, **params)

    _atomic_write(dest, write, overwrite=overwrite)
    logger.debug("wrote %s (%s %s, metadata=%s)", dest, loaded.format, image.mode, metadata)
    return dest


def copy_unchanged(
    loaded: LoadedPhoto,
    dest: str | os.PathLike[str],
    *,
    metadata: MetadataPolicy = "strip",
    overwrite: bool = False,
    jpeg_quality: int = 95,
    jpeg_subsampling: str | int = "4:4:4",
    webp_quality: int = 95,
) -> Path:
    """Writes a photo that needs no cloak (no face found) to ``dest``, atomically.

    The user's metadata choice still applies, so by default the copy is
    stripped like the cloaked ones:

    * ``metadata="strip"`` (default): JPEG, PNG and WEBP files are copied with
      their metadata blocks removed and their image data untouched, so there is
      no re-encoding loss (a JPEG keeps a minimal EXIF holding only its
      orientation, so it still displays upright; trailing data such as an MPO's
      second picture or a motion photo's video is dropped). BMP stores no
      metadata and is copied as is. Other cases (TIFF, a PNG or WEBP with an
      orientation) are re-encoded upright with :func:`save_photo`. Every
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
    _check_save_options(jpeg_quality, jpeg_subsampling, webp_quality, metadata)
    dest = Path(dest)
    _refuse_original(loaded, dest)
    try:
        original = loaded.path.read_bytes()
    except OSError as exc:
        raise UnreadablePhotoError(f"{loaded.path}: cannot read it again ({exc})", loaded.path) from exc

    data = original if metadata == "keep" else _stripped_bytes(original, loaded)
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
    _atomic_write(dest, lambda file: file.write(data), overwrite=overwrite)
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
        raise ValueError(f"expected a [H, W(, 3 or 4)] uint8 array, got {_describe(pixels)}")
    image = Image.fromarray(np.ascontiguousarray(pixels))
    dest = Path(dest)
    _atomic_write(dest, lambda file: image.save(file, format="PNG"), overwrite=overwrite)
    return dest


def write_bytes(data: bytes, dest: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Writes ``data`` to ``dest`` atomically (e.g. a report), like the photos.

    Raises:
        FileExistsError: ``dest`` exists and ``overwrite`` is false.
    """
    dest = Path(dest)
    _atomic_write(dest, lambda file: file.write(data), overwrite=overwrite)
    return dest


def _check_save_options(jpeg_quality: int, jpeg_subsampling: str | int, webp_quality: int, metadata: str) -> None:
    if metadata not in ("strip", "keep"):
        raise ValueError(f'metadata must be "strip" or "keep", got {metadata!r}')
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if not 1 <= webp_quality <= 100:
        raise ValueError(f"webp_quality must be in 1..100, got {webp_quality}")
    if jpeg_subsampling not in _SUBSAMPLING:
        raise ValueError(f'jpeg_subsampling must be "4:4:4", "4:2:2" or "4:2:0", got {jpeg_subsampling!r}')


def _as_uint8_hwc(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(rgb, torch.Tensor):
        return to_uint8(rgb)
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a [H, W, 3] uint8 array or a [3, H, W] tensor, got {_describe(rgb)}")
    return np.ascontiguousarray(rgb)


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
    if icc and fmt != "BMP":
        params.update(icc_profile=icc)
    if loaded.dpi and fmt != "WEBP":
        params.update(dpi=loaded.dpi)
    if metadata == "keep":
        params.update(_kept_metadata(loaded))
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


def _kept_metadata(loaded: LoadedPhoto) -> dict[str, Any]:
    """Pillow ``save`` keywords that carry the metadata over (``metadata="keep"``)."""
    meta, fmt = loaded.metadata, loaded.format
    params: dict[str, Any] = {}
    if fmt == "JPEG":
        for key, value in (("exif", meta.exif), ("xmp", meta.xmp), ("comment", meta.comment)):
            if value and len(value) > _MAX_JPEG_MARKER_PAYLOAD - 32:
                logger.warning("%s: its %s is too large for a JPEG; not kept", loaded.path, key)
            elif value:
                params[key] = value
    elif fmt == "PNG":
        if meta.exif:
            params["exif"] = meta.exif
        if meta.png_text:
            info = PngImagePlugin.PngInfo()
            for key, value in meta.png_text:
                if isinstance(value, PngImagePlugin.iTXt):
                    info.add_itxt(key, value, value.lang or "", value.tkey or "")
                elif _latin1(value):
                    info.add_text(key, value)
                else:
                    info.add_itxt(key, value)
            params["pnginfo"] = info
    elif fmt == "WEBP":
        if meta.exif:
            params["exif"] = meta.exif
        if meta.xmp:
            params["xmp"] = meta.xmp
    elif fmt == "TIFF":
        if meta.exif or meta.xmp:
            exif = Image.Exif()
            if meta.exif:
                exif.load(meta.exif)
            if meta.xmp:
                exif[0x02BC] = meta.xmp
            params["exif"] = exif
    elif meta.exif or meta.xmp:
        logger.info("%s: %s cannot store EXIF or XMP; not kept", loaded.path, fmt)
    return params


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _atomic_write(dest: Path, write: Callable[[IO[bytes]], object], *, overwrite: bool) -> None:
    """Writes ``dest`` via a hidden temporary file in its folder: fsync, then rename.

    Without ``overwrite`` the final step is a hard link, which fails if ``dest``
    appeared in the meantime (with a plain existence check where links are not
    supported). The temporary file is removed on any error.

    Raises:
        FileExistsError: ``dest`` exists and ``overwrite`` is false.
    """
    if not overwrite and os.path.lexists(dest):
        raise _exists(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(temp, flags, 0o666)  # the umask applies, as for any new file
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temp, dest)
        else:
            _link_no_clobber(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)


def _link_no_clobber(temp: Path, dest: Path) -> None:
    try:
        os.link(temp, dest)
    except FileExistsError:
        raise _exists(dest) from None
    except OSError:  # no hard links here (some network or FAT file systems)
        if os.path.lexists(dest):
            raise _exists(dest) from None
        os.replace(temp, dest)
        return
    temp.unlink()


def _exists(dest: Path) -> FileExistsError:
    return FileExistsError(f"{dest} already exists; pass overwrite=True to replace it")


def _fsync_dir(folder: Path) -> None:
    """Makes a rename in ``folder`` durable, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- lossless stripping


def _stripped_bytes(data: bytes, loaded: LoadedPhoto) -> bytes | None:
    """The file without metadata and with its image data untouched, or ``None`` to re-encode."""
    fmt = loaded.format
    try:
        if fmt == "BMP":
            stripped = data
        elif fmt == "JPEG":
            stripped = _strip_jpeg(data, loaded.orientation)
        elif fmt == "PNG" and loaded.orientation == 1:
            stripped = _strip_png(data)
        elif fmt == "WEBP" and loaded.orientation == 1:
            stripped = _strip_webp(data)
        else:
            return None
    except ValueError as exc:
        logger.warning("%s: cannot strip its metadata in place (%s); re-encoding", loaded.path, exc)
        return None
    if not _decodes_like(stripped, loaded):
        logger.warning("%s: the stripped copy does not decode identically; re-encoding", loaded.path)
        return None
    return stripped


def _decodes_like(data: bytes, loaded: LoadedPhoto) -> bool:
    try:
        width, height = loaded.size
        again = _read_photo(io.BytesIO(data), loaded.path, width * height, quiet=True)
    except CloakIOError:
        return False
    if again.format != loaded.format or not np.array_equal(again.rgb, loaded.rgb):
        return False
    if (again.alpha is None) != (loaded.alpha is None):
        return False
    return again.alpha is None or np.array_equal(again.alpha, loaded.alpha)


def _strip_jpeg(data: bytes, orientation: int) -> bytes:
    """A JPEG's segments without EXIF, XMP, IPTC, comments, thumbnails or trailing data.

    Kept: the JFIF header (without thumbnail), the ICC profile, the Adobe
    colour-transform segment and everything the decoder needs, byte for byte.
    A minimal EXIF holding only ``orientation`` is added when it is not 1.
    """
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG stream")
    parts: list[bytes] = []
    pos, end = 2, len(data)
    while True:
        if pos >= end or data[pos] != 0xFF:
            raise ValueError(f"expected a marker at byte {pos}")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            raise ValueError("truncated JPEG")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            if not any(part[:2] == b"\xff\xda" for part in parts):
                raise ValueError("no image data")
            parts.append(b"\xff\xd9")
            break
        if marker == 0xD8:
            raise ValueError("unexpected start-of-image marker")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            parts.append(bytes((0xFF, marker)))
            continue
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > end:
            raise ValueError(f"bad segment length at byte {pos}")
        segment = bytes((0xFF, marker)) + data[pos : pos + length]
        payload = data[pos + 2 : pos + length]
        pos += length
        if marker == 0xDA:  # start of scan: copy the entropy-coded data that follows
            scan_end = _entropy_end(data, pos)
            parts.append(segment + data[pos:scan_end])
            pos = scan_end
            continue
        kept = _kept_jpeg_segment(marker, payload)
        if kept is not None:
            parts.append(kept)

    out = [b"\xff\xd8"]
    if parts and parts[0][:2] == b"\xff\xe0":  # JFIF comes first
        out.append(parts.pop(0))
    if orientation != 1:
        exif = Image.Exif()
        exif[_ORIENTATION] = orientation
        block = exif.tobytes()
        out.append(b"\xff\xe1" + (len(block) + 2).to_bytes(2, "big") + block)
    return b"".join(out + parts)


def _entropy_end(data: bytes, pos: int) -> int:
    """Index of the first real marker after entropy-coded data starting at ``pos``."""
    while True:
        index = data.find(b"\xff", pos)
        if index < 0 or index + 1 >= len(data):
            raise ValueError("truncated JPEG scan")
        following = data[index + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed byte or restart
            pos = index + 2
            continue
        return index


def _kept_jpeg_segment(marker: int, payload: bytes) -> bytes | None:
    """The segment to write for ``marker``/``payload`` when stripping, or ``None`` to drop it."""
    if marker == 0xFE:  # comment
        return None
    if not 0xE0 <= marker <= 0xEF:  # not an APPn: decoding data
        return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload
    if marker == 0xE0 and payload.startswith(b"JFIF\x00") and len(payload) >= 14:
        header = payload[:12] + b"\x00\x00"  # version, units, density; no thumbnail
        return b"\xff\xe0" + (len(header) + 2).to_bytes(2, "big") + header
    if (marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00")) or (marker == 0xEE and payload.startswith(b"Adobe")):
        return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload
    return None  # EXIF, XMP (APP1), MPF (APP2), IPTC/Photoshop (APP13), others


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# fmt: off
_PNG_KEPT_CHUNKS = frozenset(
    {
        b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP",
        b"sBIT", b"bKGD", b"pHYs", b"hIST", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCV",
        b"cLLI", b"mDCv", b"cLLi",
    }
)
# fmt: on


def _strip_png(data: bytes) -> bytes:
    """A PNG's chunks without text, EXIF, time or unknown ancillary chunks."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG stream")
    parts = [_PNG_SIGNATURE]
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise ValueError("truncated PNG")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        chunk_end = pos + 12 + length
        if chunk_end > len(data):
            raise ValueError(f"truncated PNG chunk {kind!r}")
        if kind in _PNG_KEPT_CHUNKS:
            parts.append(data[pos:chunk_end])
        elif kind[:1].isupper():  # an unknown critical chunk cannot be dropped
            raise ValueError(f"unknown critical PNG chunk {kind!r}")
        pos = chunk_end
        if kind == b"IEND":
            return b"".join(parts)


_WEBP_KEPT_CHUNKS = frozenset({b"VP8X", b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})


def _strip_webp(data: bytes) -> bytes:
    """A WEBP's chunks without EXIF, XMP or unknown chunks (the VP8X flags updated)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WEBP stream")
    end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    chunks = []
    for fourcc, start, stop in _riff_chunks(data, 12, end):
        if fourcc not in _WEBP_KEPT_CHUNKS:
            continue
        payload = data[start:stop]
        if fourcc == b"VP8X":
            payload = bytes((payload[0] & ~0x0C,)) + payload[1:]  # clear the EXIF, XMP flags
        chunk = fourcc + len(payload).to_bytes(4, "little") + payload
        chunks.append(chunk + (b"\x00" if len(payload) & 1 else b""))
    if not chunks:
        raise ValueError("no WEBP image data")
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + len(body).to_bytes(4, "little") + body
