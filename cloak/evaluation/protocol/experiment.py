"""The protection experiment: how much of a cloak's protection survives platforms and trackers.

Protocol (FaceCure, Radiya-Dixit et al., ICLR 2022; LowKey, Cherepanova et al., ICLR 2021):

1. **Data** (:func:`cloak.evaluation.protocol.dataset.select_photos`). ``n_users``
   identities with ``min_photos`` or more photos are the *users*; each shares
   ``shared_fraction`` of their photos (*shared*, cloaked before upload) and
   keeps the rest (*clean*, what the tracker later sees). Up to
   ``max_distractors`` other identities are *distractors*, all photos clean.
2. **Cloak.** The shared photos are cloaked with each setting's attack
   (:mod:`cloak.evaluation.protocol.sweep`), all users' photos batched together; every
   face the cloak's detector finds is cloaked (as ``python -m cloak`` does).
3. **Platform** (:mod:`cloak.imaging.platform`). An *upload transform* is
   applied to the shared photos the tracker scrapes; a *tracker-side* one
   (``purify``) to every photo the tracker sees, probes and distractors included.
4. **Trackers** (:mod:`cloak.evaluation.trackers.registry`) embed every photo
   with their own pipelines and are scored by
   :func:`cloak.evaluation.protocol.scoring.tracker_protection`.
5. **Baselines**, under the same transform and trackers: *no cloak* and
   random *noise* of the cloak's size (:mod:`cloak.evaluation.protocol.baselines`).
6. **Quality** of every cloaked and noised photo against its original.

:func:`run_experiment` runs an :class:`Experiment`: select the photos, compose
the settings, prepare (load the trackers, embed the clean photos once for all
settings, cached on disk with ``cache_dir``, and find the faces to cloak), then
per setting cloak and score each transform. The steps it shares with the adaptive
experiment are the functions of :mod:`cloak.evaluation.protocol.steps`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cloak.attacks import Attack
from cloak.builders import build_from_config
from cloak.cloaking.reuse import IdentityMemory
from cloak.detection import Face
from cloak.device import resolve_device
from cloak.evaluation.protocol.baselines import random_noise
from cloak.evaluation.protocol.cache import PhotoEmbedder
from cloak.evaluation.protocol.results import (
    CONDITIONS,
    METRIC_NAMES,
    ExperimentResults,
    QualityRow,
    Setting,
)
from cloak.evaluation.protocol.scoring import Embedded
from cloak.evaluation.protocol.steps import (
    Trackers,
    cloak_in_batches,
    describe_data,
    load_trackers,
    new_results,
    protection_rows,
    read_photos,
    select_data,
    setting_row,
)
from cloak.evaluation.protocol.sweep import SweepSetting, sweep_settings
from cloak.evaluation.trackers.registry import relation
from cloak.imaging.platform import apply_transform, parse_platform_transform
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble, as_ensemble
from cloak.photos import to_tensor
from cloak.quality import FaceQuality, dssim, face_quality, psnr, ssim

log = logging.getLogger(__name__)


def quality_row(
    setting: str,
    condition: str,
    originals: Sequence[np.ndarray],
    changed: Sequence[np.ndarray],
    faces: Sequence[Sequence[Face]] | None = None,
) -> QualityRow:
    """Image quality of the photos that ``changed`` against their originals: whole photo, and on each face.

    Unchanged photos (e.g. without a face) are left out; PSNRs are averaged over finite
    values. Face figures are measured on each face's box grown 10% (``faces[i]`` are the
    faces of photo ``i``; None for whole-photo figures only).
    """
    idx = [i for i, (a, b) in enumerate(zip(originals, changed)) if not np.array_equal(a, b)]
    if not idx:
        return QualityRow(setting, condition, 1.0, 0.0, float("inf"), 1.0, 0)
    values: dict[str, list[float]] = {"ssim": [], "dssim": [], "psnr": []}
    per_face: dict[str, list[float]] = {name: [] for name in FaceQuality._fields}
    for i in idx:
        a, b = to_tensor(originals[i]).unsqueeze(0), to_tensor(changed[i]).unsqueeze(0)
        for name, metric in (("ssim", ssim), ("dssim", dssim), ("psnr", psnr)):
            values[name].append(float(metric(a, b)[0]))
        if faces is not None and faces[i]:
            boxes = torch.as_tensor(np.stack([f.box for f in faces[i]]), dtype=torch.float64)
            for name, v in face_quality(a[0], b[0], boxes)._asdict().items():
                per_face[name] += v.tolist()
    q = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    f = {k: np.asarray(v, dtype=np.float64) for k, v in per_face.items()}
    n_faces = len(f["ssim"])
    return QualityRow(
        setting=setting,
        condition=condition,
        ssim=float(q["ssim"].mean()),
        dssim=float(q["dssim"].mean()),
        psnr=_finite_mean(q["psnr"]),
        ssim_min=float(q["ssim"].min()),
        n_photos=len(idx),
        face_ssim=float(f["ssim"].mean()) if n_faces else None,
        face_ssim_p5=float(f["ssim_p5"].mean()) if n_faces else None,
        face_psnr=_finite_mean(f["psnr"]) if n_faces else None,
        face_haarpsi=float(np.nanmean(f["perceptual"])) if np.isfinite(f["perceptual"]).any() else None,
        face_ssim_min=float(f["ssim"].min()) if n_faces else None,
        face_ssim_p5_min=float(f["ssim_p5"].min()) if n_faces else None,
        n_faces=n_faces,
        face_color_shift=float(f["color_shift"].mean()) if n_faces else None,
        face_shading=float(f["shading"].mean()) if n_faces else None,
        face_shading_max=float(f["shading"].max()) if n_faces else None,
        face_shading_peak_max=float(f["shading_peak"].max()) if n_faces else None,
    )


def _finite_mean(values: np.ndarray) -> float:
    """The mean of the finite values (``inf`` when none is: nothing changed)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("inf")


@dataclass
class CloakedSetting:
    """One setting's shared photos as uploaded under the cloak and the noise baseline.

    Attributes:
        setting: the setting's row of the results.
        cloaked: the cloaked shared photos.
        noised: the shared photos with noise of the cloak's size.
        noise_key: identifies ``noised`` (its size and region) for reuse across settings.
        cloak_models: names of the models the cloak was optimised against.
    """

    setting: Setting
    cloaked: list[np.ndarray]
    noised: list[np.ndarray]
    noise_key: tuple[float, str]
    cloak_models: list[str]


@dataclass
class Prepared:
    """What every setting is cloaked and scored against (:meth:`Experiment.prepare`).

    Attributes:
        trackers: the detector and the trackers.
        clean: view (``none`` and each tracker-side transform) -> tracker -> every photo embedded clean.
        originals: the shared photos (enlarged by ``data.upscale``).
        faces: the faces the cloak's detector finds in each shared photo.
    """

    trackers: Trackers
    clean: dict[str, dict[str, Embedded]]
    originals: list[np.ndarray]
    faces: list[list[Face]]


class Experiment:
    """One run of the protocol on ``cfg`` (a composed ``evaluate`` config); see the module docstring.

    Creating it selects the photos and checks the transforms (fast, before any
    model loads); :meth:`prepare` then loads the trackers, embeds the clean photos
    and finds the faces to cloak, and per setting :meth:`cloak` and :meth:`score`
    (for each of :attr:`transforms`) take what it returns. Measurements
    accumulate in :attr:`results`.

    Raises:
        FileNotFoundError, NotADirectoryError, DatasetError: on a missing or too small data folder.
        ValueError: on an unknown platform transform or a non-positive ``data.upscale``.
    """

    def __init__(self, cfg: DictConfig, data_root: Path) -> None:
        self.cfg = cfg
        self.photos, self.upscale = select_data(cfg, data_root)
        log.info("%s", describe_data(data_root, self.photos))
        self.transforms = {str(t): parse_platform_transform(str(t)) for t in cfg.platform.transforms}
        self.tracker_side = {str(t) for t in cfg.platform.get("tracker_side") or []} & set(self.transforms)
        self.metrics = [str(m) for m in cfg.metrics]
        self.device = resolve_device(cfg.device)
        self.results = new_results(
            cfg, data_root, self.photos, self.upscale, "protection", list(self.transforms), sorted(self.tracker_side)
        )
        self._models: dict[str, FaceEmbedder | Ensemble] = {}
        self._noise: dict[tuple[float, str], list[np.ndarray]] = {}
        self._shared: dict[tuple, dict[str, Embedded]] = {}

    def prepare(self, cache_dir: Path | None = None) -> Prepared:
        """Loads the trackers, embeds the clean photos and finds the faces to cloak.

        Args:
            cache_dir: a folder to keep the clean photos' embeddings in between
                runs (:class:`~cloak.evaluation.protocol.cache.EmbeddingCache`); None: memory only.
        """
        trackers = load_trackers(self.cfg, self.device, self.upscale, cache_dir)
        self.results.trackers, self.results.skipped_trackers = trackers.names, trackers.skipped
        log.info("Trackers: %s", ", ".join(trackers.names))
        clean = self._embed_clean_photos(trackers.embedder)
        originals = read_photos(self.photos.shared_paths, self.upscale)
        faces: list[list[Face]] = trackers.detector.detect_many(originals)
        log.info("Cloak detector: faces in %d of %d shared photos", sum(bool(f) for f in faces), len(originals))
        return Prepared(trackers, clean, originals, faces)

    def _embed_clean_photos(self, embedder: PhotoEmbedder) -> dict[str, dict[str, Embedded]]:
        """Every photo as it is, and once more per tracker-side transform (a *view*), embedded by every tracker."""
        paths = self.photos.all_paths
        clean: dict[str, dict[str, Embedded]] = {}
        for view in ["none", *sorted(self.tracker_side - {"none"})]:
            t0 = time.perf_counter()
            transform = None if view == "none" else self.transforms[view]
            clean[view] = embedder.paths(paths, transform, view, desc=f"clean [{view}]")
            misses = {t: int((~e.found).sum()) for t, e in clean[view].items()}
            log.info(
                "Embedded %d clean photos [%s] in %.0f s; no face found: %s",
                len(paths),
                view,
                time.perf_counter() - t0,
                misses,
            )
        return clean

    def _model(self, cfg: DictConfig) -> tuple[FaceEmbedder | Ensemble, str]:
        """The cloak's model of a setting (built once per distinct model config) and its config key."""
        key = OmegaConf.to_yaml(cfg.model)
        if key not in self._models:
            self._models[key] = build_from_config(cfg, need_detector=False, need_attack=False).model
        return self._models[key], key

    def cloak(self, prepared: Prepared, sweep_setting: SweepSetting) -> CloakedSetting:
        """Cloaks the shared photos with one setting, makes (or reuses) its noise baseline, scores their quality."""
        cfg, label = sweep_setting.cfg, sweep_setting.label
        originals, faces = prepared.originals, prepared.faces
        model, model_key = self._model(cfg)
        attack: Attack = build_from_config(cfg, need_model=False, need_detector=False).attack
        setting = setting_row(label, attack)
        log.info(
            "Setting %s: %s eps %g steps %d max_dssim %s %s",
            label,
            attack.name,
            setting.eps,
            attack.steps,
            attack.max_dssim,
            "robust" if setting.robust else "no transform",
        )
        t0 = time.perf_counter()
        batch = int(self.cfg.cloak_batch_size)
        memory = IdentityMemory() if cfg.get("reuse") else None
        cloaked, steps = cloak_in_batches(
            originals, faces, attack, model, self.device, batch, f"cloaking [{label}]", memory=memory
        )
        setting.seconds = time.perf_counter() - t0
        setting.n_cloaked = sum(bool(f) for f in faces)
        setting.mean_steps = float(np.mean([n for n, f in zip(steps, faces) if f] or [0]))
        log.info("Cloaked %d photos in %.0f s, %.1f steps each", setting.n_cloaked, setting.seconds, setting.mean_steps)
        members = {name: m for name, m, _ in as_ensemble(model).items()}
        noise_key = (setting.eps, model_key)
        if noise_key not in self._noise:
            kind, seed = str(self.cfg.baselines.noise), int(self.cfg.seed)
            self._noise[noise_key] = [
                random_noise(p, f, members, setting.eps, seed, kind) for p, f in zip(originals, faces)
            ]
        result = CloakedSetting(setting, cloaked, self._noise[noise_key], noise_key, list(members))
        self.results.settings.append(setting)
        self.results.cloak_models += [n for n in members if n not in self.results.cloak_models]
        for condition, images in (("cloak", result.cloaked), ("noise", result.noised)):
            q = quality_row(label, condition, originals, images, faces)
            self.results.quality.append(q)
            log.info(
                "  %s quality: faces SSIM %s (p5 local SSIM %s); photos SSIM %.4f (min %.4f), DSSIM %.4f, PSNR %.2f dB",
                condition,
                "-" if q.face_ssim is None else f"{q.face_ssim:.4f}",
                "-" if q.face_ssim_p5 is None else f"{q.face_ssim_p5:.4f}",
                q.ssim,
                q.ssim_min,
                q.dssim,
                q.psnr,
            )
        return result

    def _shared_embeddings(
        self, prepared: Prepared, condition: str, photos: CloakedSetting, transform: str
    ) -> dict[str, Embedded]:
        """Tracker -> the shared photos under ``condition`` after ``transform``; baselines are reused across settings."""
        if condition == "cloak":
            return self._embed(prepared, photos.cloaked, transform, f"cloak:{photos.setting.label} [{transform}]")
        key = (condition, transform, photos.noise_key if condition == "noise" else None)
        if key not in self._shared:
            if condition == "none" and (transform == "none" or transform in self.tracker_side):
                rows = self.photos.rows("shared")
                self._shared[key] = {t: e.take(rows) for t, e in prepared.clean[transform].items()}
            else:
                images = prepared.originals if condition == "none" else photos.noised
                self._shared[key] = self._embed(prepared, images, transform, f"{condition} [{transform}]")
        return self._shared[key]

    def _embed(self, prepared: Prepared, images: list[np.ndarray], transform: str, desc: str) -> dict[str, Embedded]:
        seen = images if transform == "none" else apply_transform(images, self.transforms[transform])
        return prepared.trackers.embedder(seen, desc=desc)

    def score(self, prepared: Prepared, photos: CloakedSetting, transform: str) -> None:
        """Scores every tracker on the cloak and both baselines of one setting after one transform."""
        label, trackers = photos.setting.label, prepared.trackers.names
        side = transform in self.tracker_side
        view = transform if side else "none"
        for condition in CONDITIONS:
            shared = self._shared_embeddings(prepared, condition, photos, transform)
            for tracker in trackers:
                self.results.protection += protection_rows(
                    self.photos,
                    shared[tracker],
                    prepared.clean[view][tracker],
                    self.metrics,
                    setting=label,
                    tracker=tracker,
                    relation=relation(tracker, photos.cloak_models),
                    transform=transform,
                    tracker_side=side,
                    condition=condition,
                )
        metric = self.metrics[0]
        line = "  ".join(
            f"{t}: " + "/".join(f"{self.results.value(label, t, transform, c, metric):.2f}" for c in CONDITIONS)
            for t in trackers
        )
        log.info("  [%s] %s protection (cloak/none/noise) %s", transform, METRIC_NAMES.get(metric, metric), line)


def run_experiment(
    cfg: DictConfig,
    data_root: Path,
    cache_dir: Path | None = None,
    on_progress: Callable[[ExperimentResults], None] | None = None,
    overrides: Sequence[str] = (),
) -> ExperimentResults:
    """Runs the protection experiment of ``cfg`` (see the module docstring) on the photos in ``data_root``.

    Args:
        cfg: a composed ``evaluate`` config.
        data_root: the identity folder.
        cache_dir: a folder to keep the clean photos' embeddings in between runs; None: memory only.
        on_progress: called with the results so far after each transform of each setting (to save partial results).
        overrides: the Hydra overrides ``cfg`` was composed with; each sweep entry's are composed after them.

    Returns:
        The measurements.

    Raises:
        FileNotFoundError, NotADirectoryError, DatasetError: on missing or too small data (before any model loads).
        SweepError: on a sweep entry that does not compose (before any model loads).
        ValueError: on an unknown transform or tracker.
    """
    started = time.perf_counter()
    experiment = Experiment(cfg, data_root)
    settings = sweep_settings(cfg, overrides)
    prepared = experiment.prepare(cache_dir)
    results = experiment.results
    for setting in settings:
        photos = experiment.cloak(prepared, setting)
        for transform in experiment.transforms:
            experiment.score(prepared, photos, transform)
            if on_progress is not None:
                results.seconds = time.perf_counter() - started
                on_progress(results)
    results.seconds = time.perf_counter() - started
    return results
