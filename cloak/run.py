"""The main job: cloak every face in every photo of a folder, safely, and report what was done.

Never writes into the input folder, never overwrites an existing copy unless
``overwrite=true`` (a re-run skips photos already done), writes atomically, and
goes on past unreadable photos, reporting them by name (exit status 1).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from cloak.builders import Parts, build_from_config
from cloak.cloaking.groups import cloak_photos
from cloak.imaging.preview import side_by_side
from cloak.measurement import FaceReport, PhotoReport, measure
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
    write_bytes,
    write_png,
)
from cloak.resources import StageTimer, bound_kernel_cache, release_free_memory

log = logging.getLogger("cloak")

REPORT_NAME = "report.json"
PREVIEW_DIR = "previews"


@dataclass
class Pending:
    """A loaded photo with faces, waiting for its batch to be cloaked."""

    path: Path
    dest: Path
    loaded: LoadedPhoto
    faces: list


@dataclass
class Outcome:
    """What happened to each photo of a run."""

    cloaked: dict[str, PhotoReport] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    skipped_done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


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
    outcome: Outcome = field(default_factory=Outcome)

    @property
    def save_kw(self) -> dict:
        """The options of every written copy."""
        cfg = self.cfg
        return dict(
            jpeg_quality=int(cfg.jpeg_quality), jpeg_subsampling=str(cfg.jpeg_subsampling), metadata=str(cfg.metadata)
        )


def _run(cfg: DictConfig, source: Path, output: Path, preview: bool, timer: StageTimer) -> int:
    root = source if source.is_dir() else source.parent
    listing = find_photos(source)
    for path in listing.skipped:
        log.info("Skipping %s: not a photo cloak reads", path)
    if not listing.photos:
        log.error("No photos found in %s", source)
        return 2
    bound_kernel_cache()  # every photo's region has its own size: keep the kernel cache small
    with timer.stage("build"):
        parts = build_from_config(cfg)
    log.info(
        "Cloaking %d photo(s) from %s into %s (attack=%s, %d steps, eps=%s/255, device=%s)",
        len(listing.photos),
        source,
        output,
        parts.attack.name,
        parts.attack.steps,
        cfg.strength.eps,
        parts.device,
    )
    job = _Job(cfg, parts, source, output, root, preview, timer)
    outcome = job.outcome
    bar = tqdm(listing.photos, unit="photo", desc="cloaking", disable=None)
    try:
        _cloak_all(job, bar)
    except KeyboardInterrupt:
        bar.close()
        _write_report(output, outcome, cfg)
        log.warning(
            "Interrupted: %d photo(s) cloaked and written to %s; run the same command again to cloak the rest",
            len(outcome.cloaked),
            output,
        )
        return 130
    bar.close()
    with timer.stage("report"):
        _write_report(output, outcome, cfg)
    _summarise(outcome, output)
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
            # What is done stays done: the report follows every batch, so a killed run
            # leaves an accurate one, and the re-run skips the photos already written.
            with job.timer.stage("report"):
                _write_report(job.output, job.outcome, job.cfg)
            release_free_memory()  # what the batch freed goes back: memory stays flat over a library
    if pending:
        _cloak_batch(pending, job, bar)


def _prepare(job: _Job, path: Path) -> Pending | None:
    """The photo with its faces, to cloak; ``None`` when already done, unreadable, or without a face (copied)."""
    cfg, outcome, timer = job.cfg, job.outcome, job.timer
    rel = path.relative_to(job.root)
    dest = destination_for(path, job.source, job.output)
    if dest.exists() and not cfg.overwrite:
        outcome.skipped_done.append(str(rel))
        return None
    try:
        with timer.stage("decode"):
            loaded = load_photo(path, max_pixels=int(cfg.max_pixels))
        with timer.stage("detect"):
            faces = job.parts.detector.detect(loaded.rgb)
    except (CloakIOError, OSError, ValueError) as err:
        outcome.failed[str(rel)] = str(err)
        log.error("Failed: %s", err)
        return None
    if not faces:
        outcome.no_face.append(str(rel))
        if cfg.no_face == "copy":
            with timer.stage("copy"):
                _guard(outcome, rel, lambda: copy_unchanged(loaded, dest, overwrite=bool(cfg.overwrite), **job.save_kw))
        return None
    return Pending(path, dest, loaded, faces)


def _guard(outcome: Outcome, rel: Path, action) -> bool:
    """Runs a write; records and logs a failure instead of stopping the run."""
    try:
        action()
        return True
    except (CloakIOError, OSError, ValueError) as err:
        outcome.failed[str(rel)] = str(err)
        log.error("Failed to write %s: %s", rel, err)
        return False


def _cloak_batch(pending: list[Pending], job: _Job, bar: tqdm) -> None:
    """Cloaks a batch of photos, writes each copy (and its preview) and measures it."""
    parts, cfg, outcome, timer, save_kw = job.parts, job.cfg, job.outcome, job.timer, job.save_kw
    n_faces = sum(len(p.faces) for p in pending)
    bar.set_postfix_str(f"{n_faces} face(s) in {len(pending)} photo(s)")
    steps = tqdm(total=parts.attack.steps, unit="step", desc="  optimising", leave=False, disable=None)

    taken: list[int] = []
    with timer.stage("cloak"):
        cloaked = cloak_photos(
            [p.loaded.rgb for p in pending],
            [p.faces for p in pending],
            parts.attack,
            parts.model,
            parts.device,
            steps.update,
            steps_taken=taken,
        )
    steps.close()
    timer.count("faces", n_faces)
    # The optimisation steps each face took (fewer than asked where a photo stopped early).
    timer.count("steps", max(taken, default=0))
    timer.count("face_steps", sum(len(p.faces) * n for p, n in zip(pending, taken)))
    for p, image in zip(pending, cloaked):
        rel = p.path.relative_to(job.root)
        with timer.stage("encode"):
            written = _guard(
                outcome, rel, lambda: save_photo(image, p.loaded, p.dest, overwrite=bool(cfg.overwrite), **save_kw)
            )
        if not written:
            continue
        with timer.stage("measure"):
            outcome.cloaked[str(rel)] = measure(p.loaded.rgb, image, p.faces, parts.model, parts.device, parts.attack)
        timer.count("photos")
        if job.preview:
            png = job.output / PREVIEW_DIR / rel.with_suffix(".png")
            report = outcome.cloaked[str(rel)]
            label = f"face SSIM {report.face_ssim:.3f}, p5 {report.face_ssim_p5:.3f}" if report.face_ssim else None
            with timer.stage("preview"):
                _guard(
                    outcome,
                    rel,
                    lambda: write_png(
                        side_by_side(p.loaded.rgb, image, label=label), png, overwrite=bool(cfg.overwrite)
                    ),
                )


def _write_report(output: Path, outcome: Outcome, cfg: DictConfig) -> None:
    """``report.json``: this run's photos, merged over the reports of earlier runs into the same folder."""
    path = output / REPORT_NAME
    photos: dict = {}
    if path.is_file():
        try:
            photos = json.loads(path.read_text()).get("photos", {})
        except (OSError, ValueError):
            log.warning("Could not read the earlier %s; it is replaced", path)
    photos.update({rel: {"status": "cloaked", **rep.to_dict()} for rel, rep in outcome.cloaked.items()})
    photos.update({rel: {"status": "no_face", "copied": cfg.no_face == "copy"} for rel in outcome.no_face})
    photos.update({rel: {"status": "failed", "error": err} for rel, err in outcome.failed.items()})
    settings = {k: cfg[k] for k in ("jpeg_quality", "jpeg_subsampling", "metadata", "seed")}
    settings.update(attack=cfg.attack._target_, strength=dict(cfg.strength), model=cfg.model._target_)
    write_bytes(json.dumps({"settings": settings, "photos": photos}, indent=2).encode(), path, overwrite=True)


def _summarise(outcome: Outcome, output: Path) -> None:
    """Logs a per-photo table and a one-line verdict."""
    if outcome.cloaked:
        models = sorted({m for rep in outcome.cloaked.values() for f in rep.faces for m in f.distance})
        _log_table(outcome.cloaked, models)
        faces = [f for rep in outcome.cloaked.values() for f in rep.faces]
        _log_quality(outcome.cloaked, faces)
        _log_models(faces, models)
    if outcome.no_face:
        log.info("%d photo(s) had no face: %s", len(outcome.no_face), ", ".join(outcome.no_face))
    if outcome.skipped_done:
        log.info(
            "%d photo(s) already cloaked in %s were skipped (overwrite=true redoes them)",
            len(outcome.skipped_done),
            output,
        )
    for rel, err in outcome.failed.items():
        log.error("FAILED %s: %s", rel, err)
    log.info("Cloaked %d photo(s) -> %s (report: %s)", len(outcome.cloaked), output, output / REPORT_NAME)


def _log_table(cloaked: dict[str, PhotoReport], models: list[str]) -> None:
    """One row per cloaked photo: its faces' visibility figures and each model's distances."""
    # The faces first: that is where the cloak is and what people look at; the whole photo
    # (mostly untouched background) dilutes it.
    header = ["photo", "faces", "shading", "face SSIM / p5", "photo SSIM", "PSNR"] + [
        f"{m} dist / JPEG75 (thr)" for m in models
    ]
    rows = []
    for rel, rep in cloaked.items():
        face = f"{rep.face_ssim:.3f} / {rep.face_ssim_p5:.3f}" if rep.face_ssim is not None else "-"
        shade = f"{rep.face_shading:.2f}" if rep.face_shading is not None else "-"
        row = [rel, str(len(rep.faces)), shade, face, f"{rep.ssim:.3f}", f"{rep.psnr:.1f}"]
        for m in models:
            d = min(f.distance[m] for f in rep.faces)
            j = min(f.distance_jpeg75[m] for f in rep.faces)
            thr = rep.faces[0].threshold[m]
            row.append(f"{d:.2f} / {j:.2f}" + (f" ({thr:.2f})" if thr is not None else ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        log.info("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    log.info(
        "dist: how far each model sees the photo's least-moved face from the original, as written and after "
        "JPEG q75; beyond (thr), the model's same-person threshold, it takes them for two people"
    )


def _log_quality(cloaked: dict[str, PhotoReport], faces: list[FaceReport]) -> None:
    """The faces' shading, SSIM and colour shift over the run, and the whole photos' SSIM."""
    shaded = [f.shading for f in faces if f.shading is not None]
    if shaded:
        # SSIM barely sees smooth changes of light and tone; this is the number that does.
        log.info(
            "Face shading (CIEDE2000 after a blur; about 1 starts to show side by side): mean %.2f, largest %.2f",
            np.mean(shaded),
            max(shaded),
        )
    measured = [f for f in faces if f.ssim is not None]
    if measured:
        log.info(
            "Face regions (box + 10%%): mean SSIM %.3f, mean 5th-percentile local SSIM %.3f (lowest %.3f); "
            "whole photos: mean SSIM %.3f",
            np.mean([f.ssim for f in measured]),
            np.mean([f.ssim_p5 for f in measured]),
            min(f.ssim_p5 for f in measured),
            np.mean([rep.ssim for rep in cloaked.values()]),
        )
    tinted = [f.color_shift for f in faces if f.color_shift is not None]
    if tinted:
        # SSIM is blind to tints (green irises, magenta cheeks); this is the number that sees them.
        log.info(
            "Face colour shift (CIELAB a*b*, blurred; about 1 starts to show): mean %.2f, largest %.2f",
            np.mean(tinted),
            max(tinted),
        )


def _log_models(faces: list[FaceReport], models: list[str]) -> None:
    """Per model, the share of faces beyond its same-person threshold after JPEG, and what that does not show."""
    for m in models:
        thr = faces[0].threshold[m]
        if thr is not None:
            beyond = np.mean([f.distance_jpeg75[m] > thr for f in faces])
            log.info(
                "%s: %.0f%% of %d cloaked face(s) stay beyond its same-person threshold (%.2f) after JPEG q75",
                m,
                100 * beyond,
                len(faces),
                thr,
            )
    if faces:
        # Beyond the threshold is what one photo can show; whether a tracker that learns
        # from many photos still recognises the person is what experiments/ measures.
        log.info(
            "Past the threshold is necessary, not sufficient: a tracker trained on several of your "
            "photos, or running another model, may still recognise you. How often it does: README, 'Limits'."
        )
