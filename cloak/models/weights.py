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
