"""The main job: cloak every face in every photo of a folder, safely, and report what was done.

Never writes into the input folder, never overwrites an existing copy unless
``overwrite=true`` (a re-run skips photos already done), writes atomically, and
goes on past unreadable photos, reporting them by name (exit status 1).

Each photo's entry in ``report.json`` is recorded with its copy (:mod:`cloak.run_report`),
Ctrl-C and SIGTERM end a run the same way (exit status 130, the report written;
:mod:`cloak.interrupts`), and a re-run lists every copy already in the output folder,
those no run recorded included (``copy_unrecorded``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from cloak.builders import Parts, build_from_config
from cloak.cloaking.groups import FaceSteps, cloak_photos
from cloak.cloaking.reuse import IdentityMemory
from cloak.imaging.preview import side_by_side
from cloak.interrupts import StopOnSigterm, Terminated
from cloak.measurement import measure
from cloak.photos import (
    CloakIOError,
    LoadedPhoto,
    check_save_options,
    copy_unchanged,
    destination_for,
    find_photos,
    load_photo,
    resolve_output_dir,
    save_photo,
    write_png,
)
from cloak.resources import StageTimer, bound_kernel_cache, release_free_memory
from cloak.run_report import (
    RunReport,
    cloaked_entry,
    failed_entry,
    no_face_entry,
    unrecorded_entry,
)
from cloak.run_summary import Outcome, summarise

log = logging.getLogger("cloak")

PREVIEW_DIR = "previews"


@dataclass
class Pending:
    """A loaded photo with faces, waiting for its batch to be cloaked."""

    path: Path
    dest: Path
    loaded: LoadedPhoto
    faces: list


def demo_input(folder: Path) -> Path:
    """Writes the public-domain astronaut photo (scikit-image) to ``folder/astronaut.png``."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


NO_FACE_POLICIES = ("copy", "skip")


def option_error(cfg: DictConfig) -> str | None:
    """What is wrong with the run's output options, checked before any photo is cloaked."""
    if cfg.no_face not in NO_FACE_POLICIES:
        return f"no_face must be one of {', '.join(NO_FACE_POLICIES)}, got {cfg.no_face!r}"
    try:
        check_save_options(int(cfg.jpeg_quality), cfg.jpeg_subsampling, metadata=str(cfg.metadata))
    except (TypeError, ValueError) as err:
        return str(err)
    return None


def run(cfg: DictConfig, timer: StageTimer | None = None) -> int:
    """Cloaks the photos named by ``cfg.input`` as configured; returns the exit status.

    Args:
        cfg: the composed ``configs/cloak.yaml``.
        timer: collects the wall and CPU seconds of each stage (decode, detect, cloak,
            measure, encode, preview, report) and counts photos, faces, optimisation steps
            (per batch) and face-steps (steps times faces); a new one when ``None``. Its
            summary is logged at debug level.
    """
    timer = timer if timer is not None else StageTimer()
    problem = option_error(cfg)
    if problem is not None:
        log.error("%s (see configs/cloak.yaml)", problem)
        return 2
    if cfg.input is None:
        with tempfile.TemporaryDirectory(prefix="cloak-demo-") as tmp:
            source = demo_input(Path(tmp) / "cloak-demo")
            output = Path(cfg.output_dir or "cloak-demo").resolve()
            log.info("No input given: cloaking the built-in demo photo (NASA's public-domain astronaut portrait)")
            return _run(cfg, source, output, preview=True, timer=timer)
    source = Path(str(cfg.input)).expanduser().resolve()
    if not source.exists():
        log.error("Input %s does not exist", source)
        return 2
    try:
        output = resolve_output_dir(source, cfg.output_dir)
    except CloakIOError as err:
        log.error("%s", err)
        return 2
    if cfg.get("runner") is not None and cfg.runner.name != "local":  # runner=ray: cloak.runners
        from cloak.runners import run_elsewhere

        return run_elsewhere(cfg, source, output, preview=bool(cfg.preview), timer=timer)
    return _run(cfg, source, output, preview=bool(cfg.preview), timer=timer)


@dataclass
class _Job:
    """What every step of a run reads: its config and built parts, where photos come from and go."""

    cfg: DictConfig
    parts: Parts
    source: Path
    output: Path
    root: Path
    preview: bool
    timer: StageTimer
    report: RunReport
    stopper: StopOnSigterm = field(default_factory=StopOnSigterm)
    outcome: Outcome = field(default_factory=Outcome)
    memory: IdentityMemory | None = None

    @property
    def save_kw(self) -> dict:
        """The options of every written copy."""
        cfg = self.cfg
        return dict(
            jpeg_quality=int(cfg.jpeg_quality), jpeg_subsampling=str(cfg.jpeg_subsampling), metadata=str(cfg.metadata)
        )

    def fail(self, rel: Path, err: Exception) -> None:
        """Records and logs a photo that could not be read or written."""
        self.outcome.failed[str(rel)] = str(err)
        self.report.add(str(rel), failed_entry(str(err)))


def _settings(cfg: DictConfig) -> dict:
    """The run's settings, at the top of ``report.json``."""
    settings = {k: cfg[k] for k in ("jpeg_quality", "jpeg_subsampling", "metadata", "seed")}
    settings.update(attack=cfg.attack._target_, strength=dict(cfg.strength), model=cfg.model._target_)
    return settings


def list_photos(source: Path) -> tuple[Path, list[Path]]:
    """The folder photo paths are relative to, and the photos of ``source`` (files cloak cannot read logged)."""
    listing = find_photos(source)
    for path in listing.skipped:
        log.info("Skipping %s: not a photo cloak reads", path)
    if not listing.photos:
        log.error("No photos found in %s", source)
    return (source if source.is_dir() else source.parent), listing.photos


def note_done(outcome: Outcome, report: RunReport, rel: str) -> None:
    """A photo whose copy exists: skipped, and listed as unrecorded when no run recorded it (never dropped)."""
    outcome.skipped_done.append(rel)
    if not report.has_copy(rel):
        outcome.unrecorded.append(rel)
        report.add(rel, unrecorded_entry())


def _run(cfg: DictConfig, source: Path, output: Path, preview: bool, timer: StageTimer) -> int:
    root, photos = list_photos(source)
    if not photos:
        return 2
    bound_kernel_cache()  # every photo's region has its own size: keep the kernel cache small
    with timer.stage("build"):
        parts = build_from_config(cfg)
    log.info(
        "Cloaking %d photo(s) from %s into %s (attack=%s, %d steps, eps=%s/255, device=%s)",
        len(photos),
        source,
        output,
        parts.attack.name,
        parts.attack.steps,
        cfg.strength.eps,
        parts.device,
    )
    job = _Job(cfg, parts, source, output, root, preview, timer, RunReport(output, _settings(cfg)))
    job.memory = IdentityMemory() if cfg.get("reuse") else None
    outcome = job.outcome
    bar = tqdm(photos, unit="photo", desc="cloaking", disable=None)
    try:
        with job.stopper:  # SIGTERM (a shutdown, a closed session, kill) stops the run as Ctrl-C does
            _cloak_all(job, bar)
    except KeyboardInterrupt as stop:
        bar.close()
        job.report.write()
        log.warning(
            "%s: %d photo(s) cloaked and written to %s; run the same command again to cloak the rest",
            "Stopped (SIGTERM)" if isinstance(stop, Terminated) else "Interrupted",
            len(outcome.cloaked),
            output,
        )
        return 130
    bar.close()
    with timer.stage("report"):
        job.report.write()
    summarise(outcome, output)
    log.debug("Time per stage: %s", timer.summary())
    return 1 if outcome.failed else 0


def _cloak_all(job: _Job, bar: tqdm) -> None:
    """Reads each photo and finds its faces; cloaks those with faces batch by batch."""
    pending: list[Pending] = []
    for path in bar:
        photo = _prepare(job, path)
        if photo is None:
            continue
        pending.append(photo)
        if len(pending) >= int(job.cfg.batch_size):
            _cloak_batch(pending, job, bar)
            pending = []
            release_free_memory()  # what the batch freed goes back: memory stays flat over a library
    if pending:
        _cloak_batch(pending, job, bar)


def _prepare(job: _Job, path: Path) -> Pending | None:
    """The photo with its faces, to cloak; ``None`` when already done, unreadable, or without a face (copied)."""
    cfg, outcome, timer = job.cfg, job.outcome, job.timer
    rel = path.relative_to(job.root)
    dest = destination_for(path, job.source, job.output)
    if dest.exists() and not cfg.overwrite:
        note_done(outcome, job.report, str(rel))
        return None
    try:
        with timer.stage("decode"):
            loaded = load_photo(path, max_pixels=int(cfg.max_pixels))
        with timer.stage("detect"):
            faces = job.parts.detector.detect(loaded.rgb)
    except (CloakIOError, OSError, ValueError) as err:
        job.fail(rel, err)
        log.error("Failed: %s", err)
        return None
    if not faces:
        outcome.no_face.append(str(rel))
        copy, kept, kw = cfg.no_face == "copy", True, job.save_kw
        with job.stopper.critical():  # the copy and its record together
            if copy:
                with timer.stage("copy"):
                    kept = _guard(job, rel, lambda: copy_unchanged(loaded, dest, overwrite=bool(cfg.overwrite), **kw))
            if kept:
                job.report.add(str(rel), no_face_entry(copy))
        return None
    return Pending(path, dest, loaded, faces)


def _guard(job: _Job, rel: Path, action) -> bool:
    """Runs a write; records and logs a failure instead of stopping the run."""
    try:
        action()
        return True
    except (CloakIOError, OSError, ValueError) as err:
        job.fail(rel, err)
        log.error("Failed to write %s: %s", rel, err)
        return False


def _cloak_batch(pending: list[Pending], job: _Job, bar: tqdm) -> None:
    """Cloaks a batch of photos; measures each, then writes its copy and its record together, then its preview."""
    parts, cfg, outcome, timer, save_kw = job.parts, job.cfg, job.outcome, job.timer, job.save_kw
    n_faces = sum(len(p.faces) for p in pending)
    bar.set_postfix_str(f"{n_faces} face(s) in {len(pending)} photo(s)")
    steps = tqdm(total=parts.attack.steps, unit="step", desc="  optimising", leave=False, disable=None)

    taken: list[int] = []
    per_face: list[list[FaceSteps]] = []
    with timer.stage("cloak"):
        cloaked = cloak_photos(
            [p.loaded.rgb for p in pending],
            [p.faces for p in pending],
            parts.attack,
            parts.model,
            parts.device,
            steps.update,
            steps_taken=taken,
            memory=job.memory,
            face_steps=per_face,
        )
    steps.close()
    timer.count("faces", n_faces)
    # The optimisation steps each face took (fewer than asked where a photo stopped early).
    timer.count("steps", max(taken, default=0))
    timer.count("face_steps", sum(f.steps for faces in per_face for f in faces))
    for p, image, face_steps in zip(pending, cloaked, per_face):
        rel = p.path.relative_to(job.root)
        # Measured first, so the copy and its record are written one right after the other.
        with timer.stage("measure"):
            report = measure(p.loaded.rgb, image, p.faces, parts.model, parts.device, parts.attack)
        for face, done in zip(report.faces, face_steps):
            face.steps, face.warm_start = done.steps, done.warm
        with job.stopper.critical():  # SIGTERM waits for both; a kill between them: copy_unrecorded
            with timer.stage("encode"):
                written = _guard(
                    job, rel, lambda: save_photo(image, p.loaded, p.dest, overwrite=bool(cfg.overwrite), **save_kw)
                )
            if not written:
                continue
            outcome.cloaked[str(rel)] = report
            job.report.add(str(rel), cloaked_entry(report))
        timer.count("photos")
        if job.preview:
            png = job.output / PREVIEW_DIR / rel.with_suffix(".png")
            label = f"face SSIM {report.face_ssim:.3f}, p5 {report.face_ssim_p5:.3f}" if report.face_ssim else None
            with timer.stage("preview"):
                _guard(
                    job,
                    rel,
                    lambda: write_png(
                        side_by_side(p.loaded.rgb, image, label=label), png, overwrite=bool(cfg.overwrite)
                    ),
                )
