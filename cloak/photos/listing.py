"""Which files are photos, where their cloaked copies go: listing a folder and the output paths."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cloak.photos.errors import CloakIOError, OutputLocationError

logger = logging.getLogger(__name__)

SUFFIX_FORMATS: dict[str, str] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".heic": "HEIF",
    ".heif": "HEIF",
    ".avif": "AVIF",
}
"""The one list of photo file suffixes (lower case), each with the format its copy is
written in when the file's content does not say (see :mod:`cloak.photos.decoding`)."""

PHOTO_EXTENSIONS: frozenset[str] = frozenset(SUFFIX_FORMATS)
"""File extensions (lower case) that :func:`find_photos` treats as photos."""

OUTPUT_SUFFIX: str = "_cloaked"
"""Appended to the input folder's name for the default output folder."""


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
