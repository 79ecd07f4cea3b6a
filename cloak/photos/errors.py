"""The errors of the photo file layer: each names the file and says what to do next."""

from __future__ import annotations

import os
from pathlib import Path


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
