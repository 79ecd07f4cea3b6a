"""``report.json`` of a run, kept honest: each photo's entry is durable as soon as its copy is written.

Each entry is appended to a journal, ``report.journal.jsonl`` in the output folder, and
synced to disk right after the photo's copy is written (one short line per photo, so a
library of thousands costs no more per photo than the first). ``report.json`` is
rewritten from the journal when the run ends or is interrupted (Ctrl-C, SIGTERM), and
the journal removed. A run killed outright (SIGKILL, a power cut) leaves the journal;
the next run into the same folder folds it into ``report.json`` before anything else.

``report.json`` has one entry per photo, this run's over those of earlier runs, with a
``status``:

- ``cloaked``: its measurements (:class:`cloak.measurement.PhotoReport`);
- ``no_face``: no face found; ``copied`` says whether it was copied unchanged;
- ``failed``: unreadable or not written; ``error`` says why;
- ``copy_unrecorded``: a copy is in the output folder but no run recorded it (a run
  stopped between writing the copy and recording it, or a version of cloak that
  recorded per batch). It is listed, never dropped; its measurements are not redone
  (``overwrite=true`` redoes the photo and measures it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cloak.measurement import PhotoReport
from cloak.photos import write_bytes

log = logging.getLogger("cloak")

REPORT_NAME = "report.json"
JOURNAL_NAME = "report.journal.jsonl"
UNRECORDED = "copy_unrecorded"
UNRECORDED_NOTE = (
    "the copy exists, but the run that wrote it stopped before recording its measurements; "
    "they are not redone (overwrite=true cloaks and measures the photo again)"
)


def cloaked_entry(report: PhotoReport) -> dict:
    """The entry of a cloaked photo: its measurements."""
    return {"status": "cloaked", **report.to_dict()}


def no_face_entry(copied: bool) -> dict:
    """The entry of a photo without a face, copied unchanged or left out."""
    return {"status": "no_face", "copied": copied}


def failed_entry(error: str) -> dict:
    """The entry of a photo that could not be read or written."""
    return {"status": "failed", "error": error}


def unrecorded_entry() -> dict:
    """The entry of a copy found in the output folder with no record of it."""
    return {"status": UNRECORDED, "note": UNRECORDED_NOTE}


def read_journal(path: Path) -> dict[str, dict]:
    """The entries of a journal, in order (a later entry of a photo wins); ``{}`` without one.

    A line cut short by a kill in the middle of writing it is left out with a warning.
    """
    if not path.is_file():
        return {}
    entries: dict[str, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            entries[str(item["photo"])] = dict(item["entry"])
        except (ValueError, KeyError, TypeError):
            log.warning("Line %d of %s is unreadable (cut short by a kill?); left out", number, path)
    return entries


class RunReport:
    """The photos' entries of the output folder: earlier runs', then this run's as they come.

    Args:
        output: the output folder.
        settings: the run's settings, written at the top of ``report.json``.
    """

    def __init__(self, output: Path, settings: dict) -> None:
        self.path = output / REPORT_NAME
        self.journal = output / JOURNAL_NAME
        self.settings = settings
        self.photos: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.photos = dict(json.loads(self.path.read_text()).get("photos", {}))
            except (OSError, ValueError, AttributeError):
                log.warning("Could not read the earlier %s; it is replaced", self.path)
        if self.journal.is_file():
            log.info("Folding the record of an earlier run that was killed (%s) into %s", self.journal, self.path)
            self.photos.update(read_journal(self.journal))
            self.write()

    def has_copy(self, rel: str) -> bool:
        """Whether a copy of photo ``rel`` was recorded (cloaked, copied without a face, or listed as unrecorded)."""
        entry = self.photos.get(rel)
        return entry is not None and entry.get("status") != "failed"

    def add(self, rel: str, entry: dict) -> None:
        """Records photo ``rel``'s entry: appended to the journal and synced to disk before returning."""
        self.photos[rel] = entry
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal, "a", encoding="utf-8") as file:
            file.write(json.dumps({"photo": rel, "entry": entry}) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def write(self) -> None:
        """Rewrites ``report.json`` atomically with every entry, then removes the journal it now holds."""
        data = json.dumps({"settings": self.settings, "photos": self.photos}, indent=2).encode()
        write_bytes(data, self.path, overwrite=True)
        self.journal.unlink(missing_ok=True)
