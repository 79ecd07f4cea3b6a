"""The metadata policy: what a photo carries that can identify or locate someone, and what is kept.

``metadata="strip"`` (the default) writes no EXIF (GPS included), XMP, comments
or PNG text; only the ICC profile and the resolution survive. ``metadata="keep"``
carries EXIF *including GPS*, XMP, the JPEG comment and PNG text over, with the
orientation reset to 1 because the pixels are written upright. Never carried, in
either mode: embedded thumbnails and previews (EXIF IFD1, JFIF thumbnails,
Photoshop/IPTC blocks), which would show the uncloaked face.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import ExifTags, Image, PngImagePlugin

logger = logging.getLogger(__name__)

MetadataPolicy = Literal["strip", "keep"]

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


def read_metadata(image: Image.Image, fmt: str, path: Path) -> PhotoMetadata:
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


def kept_metadata_params(meta: PhotoMetadata, fmt: str, path: Path) -> dict[str, Any]:
    """Pillow ``save`` keywords that carry the metadata over (``metadata="keep"``).

    Args:
        meta: the original's metadata.
        fmt: the format the copy is written in.
        path: the original, named in log messages.
    """
    params: dict[str, Any] = {}
    if fmt == "JPEG":
        for key, value in (("exif", meta.exif), ("xmp", meta.xmp), ("comment", meta.comment)):
            if value and len(value) > _MAX_JPEG_MARKER_PAYLOAD - 32:
                logger.warning("%s: its %s is too large for a JPEG; not kept", path, key)
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
    elif fmt in ("WEBP", "HEIF", "AVIF"):
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
        logger.info("%s: %s cannot store EXIF or XMP; not kept", path, fmt)
    return params


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
