"""File names from the browser, made safe for downloads and zip entries.

Uploaded file names are never used as paths on disk: the server stores every
photo under a random id. A name only labels the photo on the page and names its
download, after :func:`safe_name` has cut it down to a plain base name.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

from PIL import Image

#: Longest name kept (characters), so zip entries and downloads stay portable.
MAX_NAME_LENGTH = 120

_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]+')


def safe_name(name: str | None, fallback: str = "photo") -> str:
    """A plain file name (no folders, no leading dots, no control or reserved characters).

    ``"../../x.jpg"`` gives ``"x.jpg"``; ``"C:\\\\Users\\\\me\\\\a.png"`` gives ``"a.png"``;
    an empty or all-dots name gives ``fallback``.
    """
    text = unicodedata.normalize("NFC", name or "")
    base = re.split(r"[/\\]", text)[-1]
    base = _UNSAFE.sub("_", base).strip().lstrip(".").strip()
    if not base or set(base) <= {".", "_", " "}:
        return fallback
    if len(base) > MAX_NAME_LENGTH:
        stem, suffix = _split(base)
        base = stem[: MAX_NAME_LENGTH - len(suffix)] + suffix
    return base


def cloaked_name(name: str, image_format: str) -> str:
    """The download name of a cloaked copy: ``me.jpg`` -> ``me-cloaked.jpg``.

    The extension is the original's when it fits the format the copy is written
    in, else the format's usual one (a PNG uploaded as ``x.jpg`` downloads as
    ``x-cloaked.png``).
    """
    stem, suffix = _split(safe_name(name))
    return f"{stem}-cloaked{extension_for(image_format, suffix)}"


def extension_for(image_format: str, suffix: str = "") -> str:
    """``suffix`` when Pillow maps it to ``image_format``, else the format's first registered extension."""
    registered = Image.registered_extensions()
    if suffix and registered.get(suffix.lower()) == image_format:
        return suffix
    for ext, fmt in registered.items():
        if fmt == image_format:
            return ext
    return suffix or ".img"


def unique_names(names: list[str]) -> list[str]:
    """The names with repeats numbered (``a.jpg``, ``a (2).jpg``), case-insensitively, for a zip."""
    seen: set[str] = set()
    out = []
    for name in names:
        stem, suffix = _split(name)
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{stem} ({n}){suffix}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def _split(name: str) -> tuple[str, str]:
    suffix = PurePosixPath(name).suffix
    if not suffix or len(suffix) > 8 or suffix == name:
        return name, ""
    return name[: -len(suffix)], suffix
