"""The page's cloaking queue: one worker thread cloaks the uploaded photos one at a time.

Photos go through the same steps as ``python -m cloak``: :func:`~cloak.photos.load_photo`,
the run's detector, :func:`~cloak.cloaking.groups.cloak_photos`, :func:`~cloak.measurement.measure`
and :func:`~cloak.photos.save_photo` (or :func:`~cloak.photos.copy_unchanged` for a
photo without a face, when the user asks for it). Every file lives in the worker's
private temporary folder, under the photo's random id, never under a name from
the browser; results nobody asked for in ``idle_timeout_s`` are deleted, and
all of them when the worker stops.
"""

from __future__ import annotations

import logging
import queue
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import numpy as np
from PIL import Image

from cloak.builders import Parts
from cloak.cloaking.groups import cloak_photos
from cloak.imaging.preview import amplified_difference
from cloak.measurement import measure
from cloak.photos import CloakIOError, LoadedPhoto, copy_unchanged, load_photo, save_photo, write_png
from cloak.web.names import cloaked_name, extension_for, safe_name
from cloak.web.strengths import StrengthPreset
from cloak.web.verdicts import face_summary

log = logging.getLogger(__name__)

#: Photo states, in the order a photo goes through them; the last three are final.
QUEUED, DETECTING, CLOAKING, SAVING, DONE, NO_FACE, FAILED = (
    "queued",
    "detecting",
    "cloaking",
    "saving",
    "done",
    "no_face",
    "failed",
)
FINAL_STATES = frozenset({DONE, NO_FACE, FAILED})

#: Seconds between sweeps for idle results while the queue is empty.
SWEEP_EVERY_S = 30.0

#: Gain of the "cloak x10" view, as in :func:`cloak.imaging.preview.side_by_side`.
AMPLIFY = 10.0


@dataclass(frozen=True)
class WorkerSettings:
    """How photos are read and written (the ``serve`` config's photo options)."""

    max_pixels: int = 100_000_000
    metadata: str = "strip"
    jpeg_quality: int = 95
    jpeg_subsampling: str = "4:4:4"
    preview_max_side: int = 1600
    idle_timeout_s: float = 3600.0


@dataclass
class Job:
    """One uploaded photo and what became of it.

    Attributes:
        id: random, unguessable (:func:`secrets.token_urlsafe`): knowing it is what
            gives access to the photo.
        name: the browser's file name, made safe (:func:`cloak.web.names.safe_name`).
        strength: the preset it is cloaked with.
        keep_no_face: return the photo unchanged (metadata stripped) when it has no face.
        folder: its private folder; ``upload`` and all results live there.
        upload: the uploaded bytes, as received.
        status: one of ``queued``, ``detecting``, ``cloaking``, ``saving``, ``done``,
            ``no_face``, ``failed``.
        step, steps: optimisation progress while cloaking.
        message: what went wrong (``failed``) or a note for the user.
        result: the file to download (cloaked copy, or the unchanged copy of a photo
            without a face when asked for), once there is one.
        download_name: the name the download gets.
        previews: ``before``, ``after``, ``amplified`` PNGs for the page.
        report: the photo's report for the page (faces in words and numbers, SSIM, PSNR).
        touched: last time (``time.monotonic``) anyone asked for it.
    """

    id: str
    name: str
    strength: str
    keep_no_face: bool
    folder: Path
    upload: Path
    status: str = QUEUED
    step: int = 0
    steps: int = 0
    message: str = ""
    result: Path | None = None
    download_name: str = ""
    image_format: str = ""
    size: tuple[int, int] | None = None
    had_metadata: bool = False
    had_gps: bool = False
    previews: dict[str, Path] = field(default_factory=dict)
    report: dict | None = None
    order: int = 0
    started: float | None = None
    finished: float | None = None
    touched: float = field(default_factory=time.monotonic)

    @property
    def final(self) -> bool:
        """Whether the worker is done with it."""
        return self.status in FINAL_STATES


class _Stopped(Exception):
    """Raised inside the attack's progress callback to abandon a photo when the worker stops."""


class CloakWorker:
    """A queue of uploaded photos and the one thread that cloaks them.

    Args:
        parts: the run's model, detector and device (built once; ``parts.attack`` is unused).
        presets: one attack per strength preset (:func:`cloak.web.strengths.build_presets`).
        settings: photo options.
        clock: the time source (``time.monotonic``; tests pass another to age results).
    """

    def __init__(
        self,
        parts: Parts,
        presets: dict[str, StrengthPreset],
        settings: WorkerSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if parts.model is None or parts.detector is None:
            raise ValueError("the web worker needs a model and a detector: build them with build_from_config")
        self.parts = parts
        self.presets = presets
        self.settings = settings
        self.clock = clock
        self.root = Path(tempfile.mkdtemp(prefix="cloak-web-"))  # mode 0700: this user only
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cloak-worker", daemon=True)
        self._order = count(1)
        self.cloaked_count = 0

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Starts the worker thread."""
        self._thread.start()
        log.debug("cloak worker started; results in %s", self.root)

    def stop(self, timeout: float = 30.0) -> None:
        """Abandons the photo in progress, stops the thread and deletes every result."""
        self._stop.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("The photo being cloaked did not stop within %.0f s; its result is discarded", timeout)
        with self._lock:
            self._jobs.clear()
        shutil.rmtree(self.root, ignore_errors=True)
        log.debug("cloak worker stopped; %s deleted", self.root)

    # ---- jobs ---------------------------------------------------------------------
    def new_job(self, name: str, strength: str, keep_no_face: bool, suffix: str = "") -> Job:
        """A job with its private folder, not yet queued; the caller writes ``job.upload`` then :meth:`submit`."""
        if strength not in self.presets:
            raise ValueError(f"unknown strength {strength!r}; choose one of {', '.join(self.presets)}")
        job_id = secrets.token_urlsafe(18)
        folder = self.root / job_id
        folder.mkdir(mode=0o700)
        safe_suffix = suffix.lower() if suffix[1:].isalnum() and len(suffix) <= 6 else ""
        return Job(
            id=job_id,
            name=name,
            strength=strength,
            keep_no_face=keep_no_face,
            folder=folder,
            upload=folder / f"upload{safe_suffix}",
            touched=self.clock(),
        )

    def submit(self, job: Job) -> None:
        """Queues a job whose upload is written."""
        with self._lock:
            job.order = next(self._order)
            self._jobs[job.id] = job
        self._queue.put(job.id)

    def discard(self, job: Job) -> None:
        """Deletes a job that was never submitted (its upload was refused)."""
        shutil.rmtree(job.folder, ignore_errors=True)

    def get(self, job_id: str) -> Job | None:
        """The job with this id (and marks it as used), or ``None``."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.touched = self.clock()
            return job

    def queue_position(self, job: Job) -> int:
        """How many photos will be cloaked before this queued one (0 when it is next)."""
        with self._lock:
            ahead = [j for j in self._jobs.values() if not j.final and j.order < job.order]
            return len(ahead)

    def sweep(self) -> int:
        """Deletes finished results idle for longer than ``idle_timeout_s``; returns how many."""
        now = self.clock()
        with self._lock:
            stale = [j for j in self._jobs.values() if j.final and now - j.touched > self.settings.idle_timeout_s]
            for job in stale:
                del self._jobs[job.id]
        for job in stale:
            shutil.rmtree(job.folder, ignore_errors=True)
        if stale:
            log.info("Deleted %d idle result(s)", len(stale))
        return len(stale)

    def wait(self, job_id: str, timeout: float = 60.0) -> Job:
        """Blocks until the job is final (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None:
                raise KeyError(job_id)
            if job.final:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"photo {job.name} still {job.status} after {timeout} s")
            time.sleep(0.05)

    # ---- the thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self._queue.get(timeout=SWEEP_EVERY_S)
            except queue.Empty:
                self.sweep()
                continue
            if job_id is None:
                break
            with self._lock:
                job = self._jobs.get(job_id)
            if job is not None and job.status == QUEUED:
                self._process(job)
            self.sweep()

    def _process(self, job: Job) -> None:
        job.started = self.clock()
        try:
            final = self._cloak(job)
        except _Stopped:
            return
        except (CloakIOError, OSError, ValueError) as err:
            job.message = str(err).replace(str(job.upload), job.name)
            final = FAILED
            log.warning("Photo %s failed: %s", job.name, job.message)
        except Exception as err:  # the server must keep working whatever one photo does
            log.exception("Photo %s failed unexpectedly", job.name)
            job.message = f"cloak failed on this photo ({type(err).__name__}: {err}); please report it"
            final = FAILED
        finally:
            job.upload.unlink(missing_ok=True)
        job.finished = job.touched = self.clock()
        job.status = final  # last: a poller that sees a final status sees everything else too

    def _cloak(self, job: Job) -> str:
        """Loads, cloaks, measures and saves one photo; returns its final status."""
        settings, parts = self.settings, self.parts
        job.status = DETECTING
        loaded = load_photo(job.upload, max_pixels=settings.max_pixels)
        job.size = loaded.size
        job.image_format = loaded.format
        meta = loaded.metadata
        job.had_metadata = bool(meta.exif or meta.xmp or meta.comment or meta.png_text)
        job.had_gps = meta.has_gps
        faces = parts.detector.detect(loaded.rgb)
        save_kw = dict(
            jpeg_quality=settings.jpeg_quality, jpeg_subsampling=settings.jpeg_subsampling, metadata=settings.metadata
        )
        dest = job.folder / f"result{extension_for(loaded.format, job.upload.suffix)}"
        job.download_name = cloaked_name(job.name, loaded.format)
        if not faces:
            self._write_preview(job, "before", loaded.rgb)
            if job.keep_no_face:
                job.result = copy_unchanged(loaded, dest, **save_kw)
                job.download_name = _unchanged_name(job.name, loaded)
            job.report = {"faces": []}
            return NO_FACE

        preset = self.presets[job.strength]
        job.steps, job.step = preset.attack.steps, 0
        job.status = CLOAKING

        def progress(n: int) -> None:
            if self._stop.is_set():
                raise _Stopped
            job.step += n

        model = preset.model if preset.model is not None else parts.model
        [cloaked] = cloak_photos([loaded.rgb], [faces], preset.attack, model, parts.device, progress)
        if self._stop.is_set():  # stopping: write nothing more into the folder being deleted
            raise _Stopped
        job.status = SAVING
        report = measure(loaded.rgb, cloaked, faces, model, parts.device, preset.attack)
        job.result = save_photo(cloaked, loaded, dest, **save_kw)
        self._write_previews(job, loaded, cloaked)
        job.report = {
            "ssim": round(report.ssim, 4),
            "psnr": round(report.psnr, 2),
            "faces": [face_summary(f, job.strength) for f in report.faces],
        }
        self.cloaked_count += 1
        return DONE

    def _write_previews(self, job: Job, loaded: LoadedPhoto, cloaked: np.ndarray) -> None:
        self._write_preview(job, "before", loaded.rgb)
        self._write_preview(job, "after", cloaked)
        self._write_preview(job, "amplified", amplified_difference(loaded.rgb, cloaked, AMPLIFY))

    def _write_preview(self, job: Job, kind: str, pixels: np.ndarray) -> None:
        """A PNG of the photo at most ``preview_max_side`` pixels wide or high, for the page."""
        image = Image.fromarray(pixels)
        side = self.settings.preview_max_side
        if max(image.size) > side:
            scale = side / max(image.size)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
            )
        path = job.folder / f"{kind}.png"
        write_png(np.asarray(image), path, overwrite=True)
        job.previews[kind] = path


def _unchanged_name(name: str, loaded: LoadedPhoto) -> str:
    """The download name of a photo returned unchanged (no face): its own name, in its format."""
    stem = Path(safe_name(name)).stem
    return f"{stem}{extension_for(loaded.format, Path(name).suffix)}"
