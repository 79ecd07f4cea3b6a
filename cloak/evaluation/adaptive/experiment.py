"""The adaptive-tracker experiment: protection against trackers that fight back, and detectability.

The protocol's data and scoring (:mod:`cloak.evaluation.protocol.experiment`): users
share cloaked photos, a tracker trains on them with the distractors' photos and
is tested on the users' clean photos, scored by
:func:`~cloak.evaluation.protocol.scoring.tracker_protection` (1-NN, logistic
regression, rank-1), with the no-cloak baseline. What changes is the tracker:

1. **Oblivious**: the trackers of ``trackers`` as they are.
2. **Adaptive** (:mod:`cloak.evaluation.adaptive.finetune`): the tracker has the public
   ``cloak`` tool too. It cloaks photos of an *adaptation set* (``adaptive.identities``
   public identities, neither users nor distractors, up to
   ``adaptive.photos_per_identity`` photos each) with the experiment's own
   cloak config (the tool's default settings unless overridden), then trains
   (a) an embedding correction on top of each tracker's frozen embeddings and
   (b) the last blocks of dlib's ResNet (``adaptive.finetune``). The adapted
   trackers (``dlib_resnet+correction``, ``dlib_resnet+finetune``) embed every
   photo and are scored as any tracker.
3. **Purifying** (:mod:`cloak.evaluation.adaptive.purification`): the oblivious tracker
   filters every photo it sees, each purifier at the strongest level of its
   ladder whose clean accuracy (leave-one-out 1-NN on the clean photos of the
   distractors and the adaptation set, first tracker) stays within
   ``purification.tolerance`` of the unfiltered accuracy.
4. **Detectability** (:mod:`cloak.evaluation.adaptive.detectability`): detectors trained
   on the adaptation set's clean and cloaked photos, tested on the users' shared
   photos clean and cloaked, after each of ``detectability.transforms``.

:func:`run_adaptive_experiment` runs the steps of an :class:`AdaptiveExperiment` in order.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from cloak.attacks import Attack
from cloak.builders import build_from_config
from cloak.cloaking.groups import cloak_photos
from cloak.detection import Face, FaceDetector
from cloak.device import resolve_device
from cloak.evaluation.adaptive.detectability import CNNDetector, Detector, ResidualDetector, detection_score
from cloak.evaluation.adaptive.finetune import (
    aligned_faces,
    correct,
    finetune_dlib,
    mean_pair_cosine,
    train_correction,
)
from cloak.evaluation.adaptive.purification import calibrate, clean_accuracy, purifier
from cloak.evaluation.adaptive.results import CORRECTION, FINETUNE, AdaptiveResults, adapted_name
from cloak.evaluation.protocol.cache import EmbeddingCache, PhotoEmbedder, photo_key
from cloak.evaluation.protocol.dataset import DatasetError, UserSplit, select_photos
from cloak.evaluation.protocol.experiment import quality_row
from cloak.evaluation.protocol.results import METRIC_NAMES, ExperimentResults, ProtectionRow, Setting
from cloak.evaluation.protocol.scoring import Embedded, tracker_protection
from cloak.evaluation.protocol.sweep import SweepError, SweepSetting, sweep_settings
from cloak.evaluation.trackers.pipelines import ModelPipeline
from cloak.evaluation.trackers.registry import build_pipelines, relation
from cloak.imaging.platform import PlatformTransform, apply_transform, parse_platform_transform
from cloak.models.dlib_resnet import DlibResNet
from cloak.models.ensemble import as_ensemble
from cloak.photos import load_photo, write_bytes

log = logging.getLogger(__name__)

#: The detectors of ``detectability.detectors``.
DETECTORS = ("residual_logreg", "cnn")


def adaptation_photos(
    split: UserSplit,
    distractor_labels: Sequence[str],
    n_identities: int,
    photos_per_identity: int,
    seed: int,
) -> tuple[list[Path], np.ndarray]:
    """The adaptive tracker's own photos: identities that are neither users nor distractors.

    Identities with at least two photos are drawn with ``seed + 2``; each keeps
    its first ``photos_per_identity`` photos (sorted by name).

    Returns:
        ``(paths, labels)``.

    Raises:
        DatasetError: if fewer than two such identities exist (the message says what to lower).
    """
    if photos_per_identity < 2:
        raise DatasetError(f"adaptive.photos_per_identity must be >= 2, got {photos_per_identity}")
    taken = set(distractor_labels)
    free = sorted(name for name, photos in split.others.items() if name not in taken and len(photos) >= 2)
    if len(free) < 2:
        raise DatasetError(
            f"only {len(free)} identities with >= 2 photos are left for the tracker's adaptation set after the "
            f"users and {len(taken)} distractor identities; lower data.max_distractors or use a larger data.root"
        )
    rng = np.random.default_rng(seed + 2)
    n = min(int(n_identities), len(free))
    if n < int(n_identities):
        log.warning("Adaptation set: only %d of the %d identities asked for are free", n, n_identities)
    names = sorted(free[i] for i in rng.choice(len(free), size=n, replace=False))
    paths = [p for name in names for p in split.others[name][:photos_per_identity]]
    labels = np.array([name for name in names for _ in split.others[name][:photos_per_identity]], dtype=str)
    return paths, labels


def _concat(a: Embedded, b: Embedded) -> Embedded:
    """The rows of ``a``, then those of ``b``."""
    return Embedded(np.concatenate([a.emb, b.emb]), np.concatenate([a.found, b.found]))


class CloakCache:
    """Cloaked photos on disk (PNG), keyed by the photo (path, size, time) and the cloak's whole config.

    Cloaks are seeded per photo (the same photo gets the same cloak alone or in a
    batch), so a cached copy is what cloaking again would give.

    Args:
        folder: the cache folder (a ``cloaked-<tag>`` sub-folder is used).
        fingerprint: everything besides the photo that changes the cloak.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = Path(folder) / f"cloaked-{hashlib.sha1(fingerprint.encode()).hexdigest()[:12]}"

    def _file(self, path: Path) -> Path:
        return self.folder / f"{hashlib.sha1(photo_key(path).encode()).hexdigest()[:20]}.png"

    def load(self, path: Path) -> np.ndarray | None:
        """The cloaked copy of the photo at ``path``, or None."""
        file = self._file(path)
        if not file.is_file():
            return None
        with Image.open(file) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)

    def save(self, path: Path, cloaked: np.ndarray) -> None:
        """Keeps ``cloaked``, the cloaked copy of the photo at ``path`` (lossless PNG, written atomically)."""
        buf = io.BytesIO()
        Image.fromarray(cloaked).save(buf, format="PNG")
        write_bytes(buf.getvalue(), self._file(path), overwrite=True)


class AdaptiveExperiment:
    """One run of the adaptive-tracker experiment on ``cfg`` (see the module docstring).

    Creating it selects the photos (fast, before any model loads); then call,
    in order, :meth:`load`, :meth:`cloak`, :meth:`embed`, :meth:`score_oblivious`,
    :meth:`adapt_correction`, :meth:`adapt_finetune`, :meth:`purify` and
    :meth:`detect`. Measurements accumulate in :attr:`results`.

    Raises:
        FileNotFoundError, NotADirectoryError, DatasetError: on a missing or too small data folder.
    """

    def __init__(self, cfg: DictConfig, data_root: Path) -> None:
        self.cfg = cfg
        data, adaptive = cfg.data, cfg.adaptive
        self.photos = select_photos(
            data_root,
            n_users=int(data.n_users),
            min_photos=int(data.min_photos),
            shared_fraction=float(data.shared_fraction),
            seed=int(cfg.seed),
            max_photos_per_user=data.get("max_photos_per_user"),
            max_distractors=data.get("max_distractors"),
        )
        p = self.photos
        self.adapt_paths, self.adapt_labels = adaptation_photos(
            p.split, p.distractor_labels, int(adaptive.identities), int(adaptive.photos_per_identity), int(cfg.seed)
        )
        for name in cfg.purification.purifiers:
            purifier(str(name))
        unknown = [d for d in cfg.detectability.detectors if d not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; valid: {', '.join(DETECTORS)}")
        self.detect_transforms = {str(t): parse_platform_transform(str(t)) for t in cfg.detectability.transforms}
        log.info(
            "Data %s: %d users (%s), %d shared and %d clean photos; %d distractor identities, %d photos; "
            "adaptation set %d identities, %d photos",
            data_root,
            len(p.split.users),
            ", ".join(p.split.users),
            len(p.shared_paths),
            len(p.probe_paths),
            len(set(p.distractor_labels)),
            len(p.distractor_paths),
            len(set(self.adapt_labels)),
            len(self.adapt_paths),
        )
        self.metrics = [str(m) for m in cfg.metrics]
        self.device = resolve_device(cfg.device)
        protection = ExperimentResults(
            experiment=str(cfg.get("experiment_name", "adaptive")),
            data=p.summary(data_root, data.shared_fraction, data.min_photos, cfg.seed),
            cloak_models=[],
            trackers=[],
            skipped_trackers={},
            transforms=["none"],
            tracker_side_transforms=[],
            metrics=self.metrics,
            noise=str(cfg.baselines.noise),
            config=OmegaConf.to_container(cfg, resolve=True),
        )
        self.results = AdaptiveResults(
            protection,
            adaptation={
                "identities": sorted(set(self.adapt_labels.tolist())),
                "n_identities": len(set(self.adapt_labels)),
                "n_photos": len(self.adapt_paths),
            },
        )

    # ------------------------------------------------------------------ loading

    def load(self, setting: SweepSetting, cache_dir: Path | None = None) -> None:
        """Builds the detector, the trackers and the cloak (model and attack) of ``setting``."""
        cfg = self.cfg
        self.setting = setting
        self.detector: FaceDetector = instantiate(cfg.detector)
        options = OmegaConf.to_container(cfg.get("tracker_options") or {}, resolve=True)
        self.pipelines, skipped = build_pipelines(list(cfg.trackers), self.detector, self.device, options)
        cache = None
        if cache_dir is not None:
            detector_cfg = OmegaConf.to_container(cfg.detector, resolve=True)
            cache = EmbeddingCache(cache_dir, repr((detector_cfg, options, self.device.type)))
        self.embedder = PhotoEmbedder(self.pipelines, cache)
        self.trackers = self.embedder.trackers
        self.results.protection.trackers, self.results.protection.skipped_trackers = list(self.trackers), skipped
        self.cloak_cache = None
        if cache_dir is not None:
            cloak_cfg = {
                k: OmegaConf.to_container(setting.cfg[k], resolve=True) for k in ("model", "attack", "detector")
            }
            self.cloak_cache = CloakCache(cache_dir, repr((cloak_cfg, self.device.type)))
        parts = build_from_config(setting.cfg, need_detector=False)
        self.cloak_model, self.attack = parts.model, parts.attack
        assert self.attack is not None and self.cloak_model is not None
        members = [name for name, _, _ in as_ensemble(self.cloak_model).items()]
        self.results.protection.cloak_models = members
        log.info("Trackers: %s; cloak %s against %s", ", ".join(self.trackers), setting.label, ", ".join(members))

    # ------------------------------------------------------------------ cloaking

    def cloak(self) -> None:
        """Cloaks the users' shared photos and the adaptation set with the same tool and settings.

        With a cache folder, cloaked photos are kept there as PNG (keyed by the
        photo and the cloak's config) and reused by later runs.
        """
        attack: Attack = self.attack
        p = self.photos
        paths = [*p.shared_paths, *self.adapt_paths]
        self.shared_originals = [load_photo(path).rgb for path in p.shared_paths]
        self.adapt_originals = [load_photo(path).rgb for path in self.adapt_paths]
        photos = self.shared_originals + self.adapt_originals
        faces: list[list[Face]] = self.detector.detect_many(photos)
        t0 = time.perf_counter()
        cached = [self.cloak_cache.load(path) if self.cloak_cache else None for path in paths]
        todo = [i for i, c in enumerate(cached) if c is None or c.shape != photos[i].shape]
        if len(todo) < len(paths):
            log.info("Cloak cache: %d of %d photos already cloaked", len(paths) - len(todo), len(paths))
        batch = int(self.cfg.cloak_batch_size)
        n_batches = -(-len(todo) // batch)
        desc = f"cloaking [{self.setting.label}]"
        with tqdm(total=n_batches * attack.steps, desc=desc, unit="step", leave=False, disable=None) as bar:
            for k, start in enumerate(range(0, len(todo), batch)):
                rows = todo[start : start + batch]
                fresh = cloak_photos(
                    [photos[i] for i in rows],
                    [faces[i] for i in rows],
                    attack,
                    self.cloak_model,
                    self.device,
                    progress=bar.update,
                )
                for i, image in zip(rows, fresh):
                    cached[i] = image
                    if self.cloak_cache is not None:
                        self.cloak_cache.save(paths[i], image)
                log.info("Cloaked batch %d of %d (%.0f s so far)", k + 1, n_batches, time.perf_counter() - t0)
        cloaked = [np.asarray(c) for c in cached]
        seconds = time.perf_counter() - t0
        n = len(self.shared_originals)
        self.shared_faces, self.adapt_faces = faces[:n], faces[n:]
        self.shared_cloaked, self.adapt_cloaked = cloaked[:n], cloaked[n:]
        n_cloaked = sum(bool(f) for f in faces)
        setting = Setting(
            label=self.setting.label,
            attack=attack.name,
            eps=round(attack.eps * 255.0, 6),
            steps=attack.steps,
            max_dssim=attack.max_dssim,
            robust=attack.transform is not None,
            seconds=seconds * n / max(1, len(photos)),
            n_cloaked=sum(bool(f) for f in self.shared_faces),
        )
        self.results.protection.settings.append(setting)
        q = quality_row(setting.label, "cloak", self.shared_originals, self.shared_cloaked, self.shared_faces)
        self.results.protection.quality.append(q)
        self.results.adaptation.update(
            n_cloaked=sum(bool(f) for f in self.adapt_faces), seconds_cloaking_all=seconds, n_photos_cloaked=n_cloaked
        )
        log.info(
            "Cloaked %d photos (%d users', %d of the adaptation set) in %.0f s; users' faces SSIM %s, photos SSIM %.4f",
            n_cloaked,
            setting.n_cloaked,
            self.results.adaptation["n_cloaked"],
            seconds,
            "-" if q.face_ssim is None else f"{q.face_ssim:.4f}",
            q.ssim,
        )

    # ------------------------------------------------------------------ embedding and scoring

    def embed(self) -> None:
        """Every base tracker embeds the protocol's clean photos, the cloaked shared ones and the adaptation set."""
        p = self.photos
        t0 = time.perf_counter()
        self.clean = self.embedder.paths(p.all_paths, None, "none", desc="clean")
        self.cloaked = self.embedder(self.shared_cloaked, desc="cloaked")
        self.adapt_clean = self.embedder.paths(self.adapt_paths, None, "none", desc="adaptation set, clean")
        self.adapt_cloaked_emb = self.embedder(self.adapt_cloaked, desc="adaptation set, cloaked")
        log.info("Embedded the photos in %.0f s", time.perf_counter() - t0)

    def _score(
        self,
        tracker: str,
        base: str,
        transform: str,
        clean: Embedded,
        cloaked: Embedded,
    ) -> None:
        """Scores one tracker (``clean``: every protocol photo; ``cloaked``: the shared photos cloaked)."""
        p = self.photos
        distractors, probes = clean.take(p.rows("distractors")), clean.take(p.rows("probes"))
        rel = relation(base, self.results.protection.cloak_models)
        side = transform != "none"
        line = []
        for condition, shared in (("cloak", cloaked), ("none", clean.take(p.rows("shared")))):
            scores = tracker_protection(
                shared, p.shared_labels, distractors, p.distractor_labels, probes, p.probe_labels, self.metrics
            )
            n_shared_no_face = int((~shared.found).sum())
            self.results.protection.protection += [
                ProtectionRow(
                    *(self.setting.label, tracker, rel, transform, side, condition, metric),
                    *(s.protection, s.per_user, s.n_probes, s.n_probes_no_face, n_shared_no_face),
                )
                for metric, s in scores.items()
            ]
            line.append(
                f"{'cloak' if condition == 'cloak' else 'no cloak'} "
                + "/".join(f"{scores[m].protection:.2f}" for m in self.metrics)
            )
        if side and transform not in self.results.protection.transforms:
            self.results.protection.transforms.append(transform)
            self.results.protection.tracker_side_transforms.append(transform)
        names = "/".join(METRIC_NAMES.get(m, m) for m in self.metrics)
        log.info("  %s [%s] protection %s: %s", tracker, transform, names, ", ".join(line))

    def score_oblivious(self) -> None:
        """The trackers as they are."""
        for t in self.trackers:
            self._score(t, t, "none", self.clean[t], self.cloaked[t])

    # ------------------------------------------------------------------ adaptation

    def adapt_correction(self) -> None:
        """Trains an embedding correction per tracker on the adaptation set and scores the corrected trackers."""
        opts = self.cfg.adaptive.get("correction")
        if not opts:
            return
        shared_rows = self.photos.rows("shared")
        for t in self.trackers:
            a, b = self.adapt_cloaked_emb[t], self.adapt_clean[t]
            both = a.found & b.found
            if both.sum() < 2:
                log.warning("Correction for %s skipped: fewer than 2 adaptation pairs with a face", t)
                continue
            model, fit = train_correction(
                a.emb[both],
                b.emb[both],
                hidden=int(opts.hidden),
                epochs=int(opts.epochs),
                lr=float(opts.lr),
                weight_decay=float(opts.weight_decay),
                validation=float(opts.get("validation", 0.2)),
                seed=int(self.cfg.seed),
                tracker=t,
            )
            clean, cloaked = correct(model, self.clean[t]), correct(model, self.cloaked[t])
            fit.users_cos_before = mean_pair_cosine(self.cloaked[t], self.clean[t].take(shared_rows))
            fit.users_cos_after = mean_pair_cosine(cloaked, clean.take(shared_rows))
            self.results.correction[t] = fit
            self._score(adapted_name(t, CORRECTION), t, "none", clean, cloaked)

    def adapt_finetune(self) -> None:
        """Fine-tunes the last blocks of the tracker's dlib ResNet on the adaptation set and scores it."""
        opts = self.cfg.adaptive.get("finetune")
        if not opts:
            return
        name = str(opts.tracker)
        pipeline = next((p for p in self.pipelines if isinstance(p, ModelPipeline) and name in p.models), None)
        if pipeline is None or not isinstance(pipeline.models[name], DlibResNet):
            log.warning(
                "Fine-tuning skipped: adaptive.finetune.tracker=%s is not a dlib_resnet model tracker of trackers=%s",
                name,
                list(self.trackers),
            )
            return
        model = pipeline.models[name]
        clean_lm = pipeline.landmarks(self.adapt_originals)
        cloaked_lm = pipeline.landmarks(self.adapt_cloaked)
        both = [c is not None and k is not None for c, k in zip(clean_lm, cloaked_lm)]
        keep = [i for i, ok in enumerate(both) if ok]
        clean_faces, _ = aligned_faces(
            [self.adapt_originals[i] for i in keep], [clean_lm[i] for i in keep], model, self.device
        )
        cloaked_faces, _ = aligned_faces(
            [self.adapt_cloaked[i] for i in keep], [cloaked_lm[i] for i in keep], model, self.device
        )
        tuned, fit = finetune_dlib(
            model,
            clean_faces,
            cloaked_faces,
            self.adapt_labels[keep],
            blocks=int(opts.blocks),
            epochs=int(opts.epochs),
            lr=float(opts.lr),
            batch_size=int(opts.batch_size),
            anchor_weight=float(opts.anchor_weight),
            seed=int(self.cfg.seed),
            tracker=name,
        )
        tuned_name = adapted_name(name, FINETUNE)
        embedder = PhotoEmbedder([ModelPipeline(self.detector, {tuned_name: tuned}, self.device)])
        clean = embedder.paths(self.photos.all_paths, None, "none", desc="clean")[tuned_name]
        cloaked = embedder(self.shared_cloaked, desc="cloaked")[tuned_name]
        shared_rows = self.photos.rows("shared")
        fit.users_cos_before = mean_pair_cosine(self.cloaked[name], self.clean[name].take(shared_rows))
        fit.users_cos_after = mean_pair_cosine(cloaked, clean.take(shared_rows))
        self.results.finetune = fit
        self._score(tuned_name, name, "none", clean, cloaked)

    # ------------------------------------------------------------------ purification

    def purify(self) -> None:
        """Calibrates each purifier on the public identities' clean photos, then scores the purifying trackers.

        The calibration photos are the clean photos of the distractors and of the
        adaptation set whose identity has another photo (never the users'): the
        tracker's own labelled data. Their embeddings at the chosen level are
        reused for scoring.
        """
        opts = self.cfg.purification
        if not opts.purifiers:
            return
        p, first = self.photos, self.trackers[0]
        n_distractors = len(p.distractor_paths)
        calib_paths = [*p.distractor_paths, *self.adapt_paths]
        calib_labels = np.concatenate([p.distractor_labels, self.adapt_labels]).astype(str)
        names, counts = np.unique(calib_labels, return_counts=True)
        keep = np.flatnonzero(np.isin(calib_labels, names[counts >= 2]))
        unfiltered = _concat(self.clean[first].take(p.rows("distractors")), self.adapt_clean[first])
        baseline = clean_accuracy(unfiltered.take(keep), calib_labels[keep])
        log.info(
            "Clean accuracy of %s (leave-one-out 1-NN, %d photos of %d public identities): %.3f",
            first,
            len(keep),
            len(set(calib_labels[keep])),
            baseline,
        )
        self.results.adaptation.update(clean_accuracy=baseline, calibration_photos=len(keep))
        measured: dict[str, dict[str, Embedded]] = {}

        def accuracy_at(transform: PlatformTransform, label: str) -> float:
            measured[label] = self.embedder.paths(calib_paths, transform, label, desc=f"calibrating [{label}]")
            return clean_accuracy(measured[label][first].take(keep), calib_labels[keep])

        users_paths = [*p.shared_paths, *p.probe_paths]
        for name in opts.purifiers:
            purif = purifier(str(name))
            cal = calibrate(purif, accuracy_at, baseline, float(opts.tolerance), opts.get("max_levels"))
            self.results.purification.append(cal)
            transform, label = purif.transform(cal.chosen), cal.chosen_label
            users = self.embedder.paths(users_paths, transform, label, desc=f"users [{label}]")
            cloaked = self.embedder(apply_transform(self.shared_cloaked, transform), desc=f"cloaked [{label}]")
            for t in self.trackers:
                clean = _concat(users[t], measured[label][t].take(np.arange(n_distractors)))
                self._score(t, t, label, clean, cloaked[t])

    # ------------------------------------------------------------------ detectability

    def _detector(self, name: str) -> Detector:
        if name == "residual_logreg":
            return ResidualDetector(C=float(self.cfg.detectability.logreg_C))
        opts = self.cfg.detectability.cnn
        return CNNDetector(
            window=int(opts.window),
            epochs=int(opts.epochs),
            lr=float(opts.lr),
            batch_size=int(opts.batch_size),
            seed=int(self.cfg.seed),
            device=self.device,
        )

    def detect(self) -> None:
        """Trains each detector on the adaptation set (clean vs cloaked) and scores it on the users' photos."""
        opts = self.cfg.detectability
        if not opts.detectors or not self.detect_transforms:
            return

        def pairs(originals: list[np.ndarray], cloaked: list[np.ndarray], faces: list[list[Face]]):
            rows = [i for i, f in enumerate(faces) if f]
            photos = [originals[i] for i in rows] + [cloaked[i] for i in rows]
            boxes = [faces[i][0].box for i in rows] * 2
            return photos, boxes, [False] * len(rows) + [True] * len(rows)

        train = pairs(self.adapt_originals, self.adapt_cloaked, self.adapt_faces)
        test = pairs(self.shared_originals, self.shared_cloaked, self.shared_faces)
        for label, transform in self.detect_transforms.items():
            train_photos = train[0] if label == "none" else apply_transform(train[0], transform)
            test_photos = test[0] if label == "none" else apply_transform(test[0], transform)
            for name in opts.detectors:
                t0 = time.perf_counter()
                detector = self._detector(str(name)).fit(train_photos, train[1], train[2])
                score = detection_score(
                    str(name), label, detector.scores(test_photos, test[1]), test[2], n_train=len(train_photos)
                )
                self.results.detection.append(score)
                log.info(
                    "Detector %s [%s]: AUC %.3f, precision %.2f, recall %.2f (%.0f s)",
                    name,
                    label,
                    score.auc,
                    score.precision,
                    score.recall,
                    time.perf_counter() - t0,
                )


def run_adaptive_experiment(
    cfg: DictConfig,
    data_root: Path,
    cache_dir: Path | None = None,
    on_progress: Callable[[AdaptiveResults], None] | None = None,
    overrides: Sequence[str] = (),
) -> AdaptiveResults:
    """Runs the adaptive-tracker experiment of ``cfg`` (see the module docstring) on the photos in ``data_root``.

    Args:
        cfg: a composed ``evaluate`` config with ``experiment=adaptive``.
        data_root: the identity folder.
        cache_dir: a folder to keep the clean photos' embeddings in between runs; None: memory only.
        on_progress: called with the results so far after each step (to save partial results).
        overrides: the Hydra overrides ``cfg`` was composed with.

    Returns:
        The measurements.

    Raises:
        FileNotFoundError, NotADirectoryError, DatasetError: on missing or too small data (before any model loads).
        SweepError: when ``sweep`` has more than one entry (this experiment runs one cloak setting).
    """
    started = time.perf_counter()
    experiment = AdaptiveExperiment(cfg, data_root)
    settings = sweep_settings(cfg, overrides)
    if len(settings) != 1:
        raise SweepError(
            f"the adaptive experiment runs one cloak setting, got a sweep of {len(settings)}; "
            "set sweep=[] and choose the cloak with strength=..., attack=..."
        )
    results = experiment.results
    results.command = " ".join(["uv run python -m experiments.run", *overrides])
    steps = (
        ("cloak", experiment.cloak),
        ("embed", experiment.embed),
        ("oblivious", experiment.score_oblivious),
        ("correction", experiment.adapt_correction),
        ("finetune", experiment.adapt_finetune),
        ("purification", experiment.purify),
        ("detectability", experiment.detect),
    )
    experiment.load(settings[0], cache_dir)
    for name, step in steps:
        t0 = time.perf_counter()
        step()
        results.adaptation[f"seconds_{name}"] = time.perf_counter() - t0
        results.seconds = results.protection.seconds = time.perf_counter() - started
        if on_progress is not None:
            on_progress(results)
    return results
