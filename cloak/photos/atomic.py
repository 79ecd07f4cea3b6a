"""Atomic writes: a copy appears whole or not at all, and never replaces a file by accident.

Every write goes to a hidden temporary file in the destination folder, is
flushed and fsynced, then moved into place (``os.replace``, or a hard link that
cannot clobber a file when not overwriting); an error or interruption leaves
neither a half-written file nor a temporary one. Missing folders are created.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_bytes(data: bytes, dest: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Writes ``data`` to ``dest`` atomically (e.g. a report), like the photos.

    Raises:
        FileExistsError: ``dest`` exists and ``overwrite`` is false.
    """
    dest = Path(dest)
    atomic_write(dest, lambda file: file.write(data), overwrite=overwrite)
    return dest


def atomic_write(dest: Path, write: Callable[[IO[bytes]], object], *, overwrite: bool) -> None:
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
