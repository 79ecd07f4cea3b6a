"""Lossless metadata stripping: a JPEG, PNG or WEBP file's metadata blocks removed, image data untouched.

Used for photos copied without a cloak (no face found), so that the default
``metadata="strip"`` holds for them too without a re-encoding loss.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import ExifTags, Image

from cloak.photos.decoding import LoadedPhoto, read_photo, riff_chunks
from cloak.photos.errors import CloakIOError

logger = logging.getLogger(__name__)

_ORIENTATION = ExifTags.Base.Orientation


def stripped_bytes(data: bytes, loaded: LoadedPhoto) -> bytes | None:
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
        again = read_photo(io.BytesIO(data), loaded.path, width * height, quiet=True)
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
    for fourcc, start, stop in riff_chunks(data, 12, end):
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
