"""The steps the protection and adaptive experiments share, as functions that return what they make.

Both experiments (:mod:`cloak.evaluation.protocol.experiment`,
:mod:`cloak.evaluation.adaptive.experiment`) select the photos and enlarge them by
``data.upscale`` (:func:`select_data`, :func:`read_photos`), start their results the
same way (:func:`new_results`), load the detector and trackers with the same embedding
cache (:func:`load_trackers`), describe a cloak setting (:func:`setting_row`), cloak
photos ``cloak_batch_size`` at a time (:func:`cloak_in_batches`) and score a tracker
into :class:`~cloak.evaluation.protocol.results.ProtectionRow` s (:func:`protection_rows`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from cloak.attacks import Attack
from cloak.cloaking.groups import cloak_photos
from cloak.cloaking.reuse import IdentityMemory
from cloak.detection import Face, FaceDetector
from cloak.evaluation.protocol.cache import EmbeddingCache, PhotoEmbedder
from cloak.evaluation.protocol.dataset import ExperimentPhotos, enlarge, select_photos
from cloak.evaluation.protocol.results import ExperimentResults, ProtectionRow, Setting
from cloak.evaluation.protocol.scoring import Embedded, tracker_protection
from cloak.evaluation.trackers.pipelines import Pipeline
from cloak.evaluation.trackers.registry import build_pipelines
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble
from cloak.photos import load_photo

log = logging.getLogger(__name__)


def select_data(cfg: DictConfig, data_root: Path) -> tuple[ExperimentPhotos, float]:
    """The photos of the run (``cfg.data``, ``cfg.seed``) and the factor every photo is enlarged by.

    Raises:
        FileNotFoundError, NotADirectoryError, DatasetError: on a missing or too small data folder.
        ValueError: on a ``data.upscale`` that is not positive.
    """
    data = cfg.data
    photos = select_photos(
        data_root,
        n_users=int(data.n_users),
        min_photos=int(data.min_photos),
        shared_fraction=float(data.shared_fraction),
        seed=int(cfg.seed),
        max_photos_per_user=data.get("max_photos_per_user"),
        max_distractors=data.get("max_distractors"),
    )
    upscale = float(data.get("upscale") or 1.0)
    if upscale <= 0:
        raise ValueError(f"data.upscale must be positive, got {upscale}")
    return photos, upscale


def describe_data(data_root: Path, photos: ExperimentPhotos) -> str:
    """One line for the log: the users and how many photos of each kind."""
    p = photos
    return (
        f"Data {data_root}: {len(p.split.users)} users ({', '.join(p.split.users)}), {len(p.shared_paths)} shared "
        f"and {len(p.probe_paths)} clean photos; {len(set(p.distractor_labels))} distractor identities, "
        f"{len(p.distractor_paths)} photos"
    )


def new_results(
    cfg: DictConfig,
    data_root: Path,
    photos: ExperimentPhotos,
    upscale: float,
    default_name: str,
    transforms: Sequence[str],
    tracker_side: Sequence[str],
) -> ExperimentResults:
    """Empty results of a run: its data, transforms, metrics and whole config; nothing measured yet."""
    data = cfg.data
    return ExperimentResults(
        experiment=str(cfg.get("experiment_name", default_name)),
        data={**photos.summary(data_root, data.shared_fraction, data.min_photos, cfg.seed), "upscale": upscale},
        cloak_models=[],
        trackers=[],
        skipped_trackers={},
        transforms=list(transforms),
        tracker_side_transforms=list(tracker_side),
        metrics=[str(m) for m in cfg.metrics],
        noise=str(cfg.baselines.noise),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


@dataclass
class Trackers:
    """The face detector and the trackers of a run.

    Attributes:
        detector: the cloak's detector (``cfg.detector``), also behind the model trackers.
        pipelines: the trackers' pipelines.
        embedder: runs every pipeline (photos read from disk enlarged by ``data.upscale``).
        skipped: trackers left out (no weights or libraries) -> why.
    """

    detector: FaceDetector
    pipelines: list[Pipeline]
    embedder: PhotoEmbedder
    skipped: dict[str, str]

    @property
    def names(self) -> list[str]:
        """The trackers' names."""
        return self.embedder.trackers


def load_trackers(cfg: DictConfig, device: torch.device, upscale: float, cache_dir: Path | None = None) -> Trackers:
    """Builds the detector and the trackers of ``cfg.trackers`` (skipping those without weights or libraries).

    Args:
        cfg: the run's config (``detector``, ``trackers``, ``tracker_options``).
        device: where the trackers run.
        upscale: the factor photos read from disk are enlarged by.
        cache_dir: a folder to keep the clean photos' embeddings in between
            runs (:class:`~cloak.evaluation.protocol.cache.EmbeddingCache`); None: memory only.
    """
    detector: FaceDetector = instantiate(cfg.detector)
    options = OmegaConf.to_container(cfg.get("tracker_options") or {}, resolve=True)
    pipelines, skipped = build_pipelines(list(cfg.trackers), detector, device, options)
    cache = None
    if cache_dir is not None:
        detector_cfg = OmegaConf.to_container(cfg.detector, resolve=True)
        fingerprint = (detector_cfg, options, device.type)
        cache = EmbeddingCache(cache_dir, repr(fingerprint if upscale == 1 else (*fingerprint, upscale)))
    return Trackers(detector, pipelines, PhotoEmbedder(pipelines, cache, upscale=upscale), skipped)


def read_photos(paths: Sequence[Path], upscale: float) -> list[np.ndarray]:
    """The photos at ``paths`` (upright, RGB), enlarged by ``upscale``."""
    return [enlarge(load_photo(p).rgb, upscale) for p in paths]


def setting_row(label: str, attack: Attack) -> Setting:
    """The results' row of a cloak setting (what it is; nothing measured yet)."""
    return Setting(
        label=label,
        attack=attack.name,
        eps=round(attack.eps * 255.0, 6),
        steps=attack.steps,
        max_dssim=attack.max_dssim,
        robust=attack.transform is not None,
    )


def cloak_in_batches(
    photos: Sequence[np.ndarray],
    faces: Sequence[Sequence[Face]],
    attack: Attack,
    model: FaceEmbedder | Ensemble,
    device: torch.device,
    batch_size: int,
    desc: str,
    on_batch: Callable[[int, list[np.ndarray]], None] | None = None,
    memory: IdentityMemory | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """``photos`` cloaked ``batch_size`` at a time (photos without faces unchanged), and each one's steps.

    Args:
        photos, faces: the photos and the faces to cloak in each.
        attack, model, device: the cloak (:func:`cloak.cloaking.groups.cloak_photos`).
        batch_size: photos per batch.
        desc: the progress bar's label.
        on_batch: called after each batch with its first photo's index and its cloaked photos.
        memory: people seen so far and their cloaks (:mod:`cloak.cloaking.reuse`); None: none reused.
    """
    out: list[np.ndarray] = []
    steps: list[int] = []
    n_batches = -(-len(photos) // batch_size)
    with tqdm(total=n_batches * attack.steps, desc=desc, unit="step", leave=False, disable=None) as bar:
        for start in range(0, len(photos), batch_size):
            chunk = slice(start, start + batch_size)
            taken: list[int] = []
            fresh = cloak_photos(
                photos[chunk],
                faces[chunk],
                attack,
                model,
                device,
                progress=bar.update,
                steps_taken=taken,
                memory=memory,
            )
            out += fresh
            steps += taken
            if on_batch is not None:
                on_batch(start, fresh)
    return out, steps


def protection_rows(
    photos: ExperimentPhotos,
    shared: Embedded,
    clean: Embedded,
    metrics: Sequence[str],
    *,
    setting: str,
    tracker: str,
    relation: str,
    transform: str,
    tracker_side: bool,
    condition: str,
) -> list[ProtectionRow]:
    """Scores one tracker on one condition of one setting, a row per metric.

    Args:
        photos: the run's photos.
        shared: the users' shared photos as the tracker embedded them under ``condition``.
        clean: every photo of the run (:attr:`~ExperimentPhotos.all_paths`) as the tracker
            embedded them clean; the distractors and probes are taken from it.
        metrics: the metrics to score.
        setting, tracker, relation, transform, tracker_side, condition: the rows' labels.
    """
    p = photos
    scores = tracker_protection(
        shared,
        p.shared_labels,
        clean.take(p.rows("distractors")),
        p.distractor_labels,
        clean.take(p.rows("probes")),
        p.probe_labels,
        metrics,
    )
    n_shared_no_face = int((~shared.found).sum())
    return [
        ProtectionRow(
            *(setting, tracker, relation, transform, tracker_side, condition, metric),
            *(s.protection, s.per_user, s.n_probes, s.n_probes_no_face, n_shared_no_face),
        )
        for metric, s in scores.items()
    ]
