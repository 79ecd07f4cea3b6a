"""Locating, downloading and verifying model weight files."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class WeightsUnavailableError(FileNotFoundError):
    """A model's weights are neither on disk nor downloadable right now."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> None:
    """Raises ``ValueError`` when ``path`` does not hash to ``expected`` (skipped when ``None``)."""
    if expected is None:
        log.warning("No SHA-256 pinned for %s (it hashes to %s); it is used unverified", path, sha256_of(path))
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ValueError(
            f"{path} has SHA-256 {actual}, expected {expected}: the file is corrupt or not the "
            "expected weights. Delete it and download it again, or point to the right file."
        )


def require_pinned_file(path: Path, expected_sha256: str, what: str, how: str) -> Path:
    """``path`` if it exists and hashes to ``expected_sha256``.

    Args:
        path: the file.
        expected_sha256: its pinned SHA-256.
        what: the file in words, for the messages ("SFace weights").
        how: a sentence on how to get the right file.

    Raises:
        WeightsUnavailableError: the file is missing, or has another hash (corrupt, or
            another model); the message names the file and says ``how``.
    """
    if not path.is_file():
        raise WeightsUnavailableError(f"{what} not found at {path}. {how}")
    digest = sha256_of(path)
    if digest != expected_sha256:
        raise WeightsUnavailableError(
            f"{what} at {path} has SHA-256 {digest}, expected {expected_sha256}: the file is corrupt "
            f"or another model. {how}"
        )
    return path
