"""The end of a run: a per-photo table and the run's figures, logged for the person who ran it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloak.measurement import FaceReport, PhotoReport
from cloak.run_report import REPORT_NAME, UNRECORDED

log = logging.getLogger("cloak")


@dataclass
class Outcome:
    """What happened to each photo of a run."""

    cloaked: dict[str, PhotoReport] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    skipped_done: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def summarise(outcome: Outcome, output: Path) -> None:
    """Logs a per-photo table and a one-line verdict."""
    if outcome.cloaked:
        models = sorted({m for rep in outcome.cloaked.values() for f in rep.faces for m in f.distance})
        _log_table(outcome.cloaked, models)
        faces = [f for rep in outcome.cloaked.values() for f in rep.faces]
        _log_quality(outcome.cloaked, faces)
        _log_steps(faces)
        _log_models(faces, models)
    if outcome.no_face:
        log.info("%d photo(s) had no face: %s", len(outcome.no_face), ", ".join(outcome.no_face))
    if outcome.skipped_done:
        log.info(
            "%d photo(s) already cloaked in %s were skipped (overwrite=true redoes them)",
            len(outcome.skipped_done),
            output,
        )
    if outcome.unrecorded:
        log.warning(
            "%d copy(ies) in %s had no record of their measurements (a run was stopped between writing and "
            "recording them); report.json lists them as %s: %s",
            len(outcome.unrecorded),
            output,
            UNRECORDED,
            ", ".join(outcome.unrecorded),
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
    peaks = [f.shading_peak for f in faces if f.shading_peak is not None]
    if shaded:
        # SSIM barely sees smooth changes of light and tone; this is the number that does.
        log.info(
            "Face shading (CIEDE2000 after a blur; about 1 starts to show side by side): mean %.2f, largest %.2f; "
            "at the worst pixel: largest %.2f",
            np.mean(shaded),
            max(shaded),
            max(peaks, default=float("nan")),
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


def _log_steps(faces: list[FaceReport]) -> None:
    """The optimisation steps per face, and how many faces started from their person's earlier cloak."""
    counted = [f for f in faces if f.steps is not None]
    if counted:
        warm = [f for f in counted if f.warm_start]
        log.info(
            "Steps per face: mean %.1f; %d of %d face(s) started from the same person's earlier cloak%s",
            np.mean([f.steps for f in counted]),
            len(warm),
            len(counted),
            f" ({np.mean([f.steps for f in warm]):.1f} steps each)" if warm else "",
        )
