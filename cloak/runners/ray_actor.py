"""What each Ray actor runs: the local runner's steps on a batch of photo paths, one row per photo back.

Nothing here imports Ray: Ray Data builds :class:`CloakActor` once per actor and calls it
with batches of ``{"path": [...]}``; each call reads, detects, cloaks and writes its photos
exactly as the local runner does (:func:`cloak.run._prepare` and :func:`cloak.run._cloak_batch`:
same names, formats, metadata policy, previews and measurements), and returns per photo its
path relative to the input, its status and its report (pickled).

A batch is retried whole when its actor dies. Copies it wrote before dying stay written: the
retry cloaks those photos again in memory (a photo's cloak is seeded by its pixels, so it is
the same cloak), writes that copy to a scratch folder instead of over the first, and reports
it as the first attempt would have.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from cloak.builders import build_from_config
from cloak.cloaking.reuse import IdentityMemory
from cloak.photos import destination_for
from cloak.resources import StageTimer, bound_kernel_cache, release_free_memory
from cloak.run import _cloak_batch, _Job, _prepare
from cloak.run_report import RunReport
from cloak.run_summary import Outcome

log = logging.getLogger("cloak")

#: Tests only: a file path; the first actor to finish writing a batch creates it and dies before
#: returning (so the batch's copies are on disk and Ray retries it). Never set in normal runs.
DIE_ONCE_ENV = "CLOAK_RAY_TEST_DIE_ONCE"


class CloakActor:
    """Builds the models, detector and attack once; each call cloaks one batch of photos.

    Args:
        cfg: the run's config, resolved to plain containers.
        source, output: the input (folder or photo) and the output folder, absolute.
        preview: also write the side-by-side previews.
        threads: torch's CPU threads in this actor (the CPUs it holds).
    """

    def __init__(self, cfg: dict, source: str, output: str, preview: bool, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        config: DictConfig = OmegaConf.create(cfg)
        bound_kernel_cache()
        source_path = Path(source)
        root = source_path if source_path.is_dir() else source_path.parent
        parts = build_from_config(config)
        # The driver records every photo's entry in the output's journal; the actor's own goes nowhere.
        self._records = tempfile.TemporaryDirectory(prefix="cloak-ray-records-")
        report = RunReport(Path(self._records.name), {})
        self.job = _Job(config, parts, source_path, Path(output), root, preview, StageTimer(), report)
        # With reuse, each actor remembers the people of the batches it cloaks.
        self.job.memory = IdentityMemory() if config.get("reuse") else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cloaks the batch's photos and writes their copies; returns ``rel``, ``status`` and ``payload`` columns."""
        outcome = cloak_paths(self.job, [Path(str(p)) for p in batch["path"]])
        _die_once_for_tests()
        release_free_memory()
        return outcome_columns(outcome, self.job.report.photos)


def cloak_paths(job: _Job, paths: list[Path]) -> Outcome:
    """The local runner's steps on ``paths``, one batch; what happened to each photo.

    A copy already in the output was written by an earlier try of this batch (the driver
    leaves out photos done before the run): that photo is cloaked again into a scratch folder,
    so its report is made without writing over its copy.
    """
    job.outcome = Outcome()
    fresh, again = [], []
    with tempfile.TemporaryDirectory(prefix="cloak-ray-") as scratch:
        redo = replace(job, output=Path(scratch), preview=False)
        for path in paths:
            done = destination_for(path, job.source, job.output).exists() and not job.cfg.overwrite
            photo = _prepare(redo if done else job, path)
            if photo is not None:
                (again if done else fresh).append(photo)
        bar = tqdm(disable=True)
        if fresh:
            _cloak_batch(fresh, job, bar)
        if again:
            _cloak_batch(again, redo, bar)
        shutil.rmtree(scratch, ignore_errors=True)
    return job.outcome


def outcome_columns(outcome: Outcome, entries: dict[str, dict] | None = None) -> dict[str, np.ndarray]:
    """One row per photo: ``rel``, ``status`` and ``payload`` (pickled report or error).

    ``status``: cloaked, no_face_copied / no_face (copied unchanged or left out, as ``entries``,
    the photos' report entries, say), failed.
    """
    rows = [(rel, "cloaked", pickle.dumps(rep)) for rel, rep in outcome.cloaked.items()]
    copied = {rel for rel, entry in (entries or {}).items() if entry.get("copied")}
    rows += [(rel, "no_face_copied" if rel in copied else "no_face", b"") for rel in outcome.no_face]
    rows += [(rel, "failed", err.encode()) for rel, err in outcome.failed.items()]
    columns = list(zip(*rows)) if rows else [(), (), ()]
    return {
        "rel": np.array(columns[0], dtype=object),
        "status": np.array(columns[1], dtype=object),
        "payload": np.array(columns[2], dtype=object),
    }


def _die_once_for_tests() -> None:
    """Kills this actor's process once per marker file named by :data:`DIE_ONCE_ENV` (tests of retries)."""
    marker = os.environ.get(DIE_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    log.warning("%s: this actor (pid %d) dies now, its batch written", DIE_ONCE_ENV, os.getpid())
    os._exit(1)
