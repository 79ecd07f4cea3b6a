"""The adaptive-tracker experiment: protection against trackers that fight back, and detectability.

The protocol's data and scoring (:mod:`cloak.evaluation.protocol.experiment`): users
share cloaked photos, a tracker trains on them with the distractors' photos and
is tested on the users' clean photos, scored by
:func:`~cloak.evaluation.protocol.scoring.tracker_protection` (1-NN, logistic
regression, rank-1), with the no-cloak baseline. What changes is the tracker:

1. **Oblivious**: the trackers of ``trackers`` as they are.
2. **Adaptive** (:mod:`~cloak.evaluation.adaptive.correction`,
   :mod:`~cloak.evaluation.adaptive.finetune`): the tracker has the public ``cloak`` tool too. It cloaks photos of an *adaptation set* (``adaptive.identities``
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

Every photo is enlarged by ``data.upscale`` first, as in the protocol; the steps both
experiments share are the functions of :mod:`cloak.evaluation.protocol.steps`.
:func:`run_adaptive_experiment` runs the steps of an :class:`AdaptiveExperiment`, each
taking what the steps before it returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from cloak.builders import build_from_config
from cloak.detection import Face
from cloak.device import resolve_device
from cloak.evaluation.adaptive.adaptation import CloakCache, adaptation_photos, cloak_cached
from cloak.evaluation.adaptive.correction import correct, mean_pair_cosine, train_correction
from cloak.evaluation.adaptive.detectability import DETECTORS, detection_scores, labelled_pairs
from cloak.evaluation.adaptive.finetune import aligned_twins, finetune_dlib
from cloak.evaluation.adaptive.purification import calibrate, clean_accuracy, purifier
from cloak.evaluation.adaptive.results import CORRECTION, FINETUNE, AdaptiveResults, adapted_name
from cloak.evaluation.adaptive.stages import Cloaked, Embeddings, Tools
from cloak.evaluation.protocol.cache import PhotoEmbedder
from cloak.evaluation.protocol.experiment import quality_row
from cloak.evaluation.protocol.results import METRIC_NAMES
from cloak.evaluation.protocol.scoring import Embedded
from cloak.evaluation.protocol.steps import (
    describe_data,
    load_trackers,
    new_results,
    protection_rows,
    read_photos,
    select_data,
    setting_row,
)
from cloak.evaluation.protocol.sweep import SweepError, SweepSetting, sweep_settings
from cloak.evaluation.trackers.pipelines import ModelPipeline
from cloak.evaluation.trackers.registry import relation
from cloak.imaging.platform import PlatformTransform, apply_transform, parse_platform_transform
from cloak.models.dlib_resnet import DlibResNet
from cloak.models.ensemble import as_ensemble

log = logging.getLogger(__name__)


def _concat(a: Embedded, b: Embedded) -> Embedded:
    """The rows of ``a``, then those of ``b``."""
    return Embedded(np.concatenate([a.emb, b.emb]), np.concatenate([a.found, b.found]))


class AdaptiveExperiment:
    """One run of the adaptive-tracker experiment on ``cfg`` (see the module docstring).

    Creating it selects the photos (fast, before any model loads); then
    :meth:`load` builds the tools, :meth:`cloak` cloaks with them, :meth:`embed`
    embeds the photos, and :meth:`score_oblivious`, :meth:`adapt_correction`,
    :meth:`adapt_finetune`, :meth:`purify` and :meth:`detect` measure, each taking
    what it needs of these. Measurements accumulate in :attr:`results`.

    Raises:
        FileNotFoundError, NotADirectoryError, DatasetError: on a missing or too small data folder.
        ValueError: on an unknown purifier or detector, or a non-positive ``data.upscale``.
    """

    def __init__(self, cfg: DictConfig, data_root: Path) -> None:
        self.cfg = cfg
        adaptive = cfg.adaptive
        self.photos, self.upscale = select_data(cfg, data_root)
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
            "%s; adaptation set %d identities, %d photos",
            describe_data(data_root, p),
            len(set(self.adapt_labels)),
            len(self.adapt_paths),
        )
        self.metrics = [str(m) for m in cfg.metrics]
        self.device = resolve_device(cfg.device)
        self.results = AdaptiveResults(
            new_results(cfg, data_root, p, self.upscale, "adaptive", ["none"], []),
            adaptation={
                "identities": sorted(set(self.adapt_labels.tolist())),
                "n_identities": len(set(self.adapt_labels)),
                "n_photos": len(self.adapt_paths),
            },
        )

    # ------------------------------------------------------------------ loading

    def load(self, setting: SweepSetting, cache_dir: Path | None = None) -> Tools:
        """Builds the detector, the trackers and the cloak (model and attack) of ``setting``."""
        trackers = load_trackers(self.cfg, self.device, self.upscale, cache_dir)
        self.results.protection.trackers, self.results.protection.skipped_trackers = trackers.names, trackers.skipped
        cloak_cache = CloakCache.of(cache_dir, setting.cfg, self.device, self.upscale) if cache_dir else None
        parts = build_from_config(setting.cfg, need_detector=False)
        assert parts.attack is not None and parts.model is not None
        members = [name for name, _, _ in as_ensemble(parts.model).items()]
        self.results.protection.cloak_models = members
        log.info("Trackers: %s; cloak %s against %s", ", ".join(trackers.names), setting.label, ", ".join(members))
        return Tools(setting, trackers, parts.model, parts.attack, cloak_cache)

    # ------------------------------------------------------------------ cloaking

    def cloak(self, tools: Tools) -> Cloaked:
        """Cloaks the users' shared photos and the adaptation set with the same tool and settings.

        With a cache folder, cloaked photos are kept there as PNG (keyed by the
        photo and the cloak's config) and reused by later runs.
        """
        attack, cache = tools.attack, tools.cloak_cache
        paths = [*self.photos.shared_paths, *self.adapt_paths]
        photos = read_photos(paths, self.upscale)
        faces: list[list[Face]] = tools.trackers.detector.detect_many(photos)
        t0 = time.perf_counter()
        batch, desc = int(self.cfg.cloak_batch_size), f"cloaking [{tools.setting.label}]"
        cloaked = cloak_cached(paths, photos, faces, cache, attack, tools.model, self.device, batch, desc)
        seconds = time.perf_counter() - t0
        n = len(self.photos.shared_paths)
        out = Cloaked(photos[:n], faces[:n], cloaked[:n], photos[n:], faces[n:], cloaked[n:])
        setting = setting_row(tools.setting.label, attack)
        setting.seconds = seconds * n / max(1, len(photos))
        setting.n_cloaked = sum(bool(f) for f in out.shared_faces)
        self.results.protection.settings.append(setting)
        q = quality_row(setting.label, "cloak", out.shared_originals, out.shared_cloaked, out.shared_faces)
        self.results.protection.quality.append(q)
        n_cloaked = sum(bool(f) for f in faces)
        self.results.adaptation.update(
            n_cloaked=sum(bool(f) for f in out.adapt_faces), seconds_cloaking_all=seconds, n_photos_cloaked=n_cloaked
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
        return out

    # ------------------------------------------------------------------ embedding and scoring

    def embed(self, tools: Tools, photos: Cloaked) -> Embeddings:
        """Every base tracker embeds the protocol's clean photos, the cloaked shared ones and the adaptation set."""
        embedder = tools.trackers.embedder
        t0 = time.perf_counter()
        out = Embeddings(
            clean=embedder.paths(self.photos.all_paths, None, "none", desc="clean"),
            cloaked=embedder(photos.shared_cloaked, desc="cloaked"),
            adapt_clean=embedder.paths(self.adapt_paths, None, "none", desc="adaptation set, clean"),
            adapt_cloaked=embedder(photos.adapt_cloaked, desc="adaptation set, cloaked"),
        )
        log.info("Embedded the photos in %.0f s", time.perf_counter() - t0)
        return out

    def _score(self, label: str, tracker: str, base: str, transform: str, clean: Embedded, cloaked: Embedded) -> None:
        """Scores one tracker (``clean``: every protocol photo; ``cloaked``: the shared photos cloaked)."""
        rel = relation(base, self.results.protection.cloak_models)
        side = transform != "none"
        line = []
        for condition, shared in (("cloak", cloaked), ("none", clean.take(self.photos.rows("shared")))):
            rows = protection_rows(
                self.photos,
                shared,
                clean,
                self.metrics,
                setting=label,
                tracker=tracker,
                relation=rel,
                transform=transform,
                tracker_side=side,
                condition=condition,
            )
            self.results.protection.protection += rows
            by_metric = {r.metric: r.protection for r in rows}
            line.append(
                f"{'cloak' if condition == 'cloak' else 'no cloak'} "
                + "/".join(f"{by_metric[m]:.2f}" for m in self.metrics)
            )
        if side and transform not in self.results.protection.transforms:
            self.results.protection.transforms.append(transform)
            self.results.protection.tracker_side_transforms.append(transform)
        names = "/".join(METRIC_NAMES.get(m, m) for m in self.metrics)
        log.info("  %s [%s] protection %s: %s", tracker, transform, names, ", ".join(line))

    def score_oblivious(self, tools: Tools, emb: Embeddings) -> None:
        """The trackers as they are."""
        for t in tools.trackers.names:
            self._score(tools.setting.label, t, t, "none", emb.clean[t], emb.cloaked[t])

    # ------------------------------------------------------------------ adaptation

    def adapt_correction(self, tools: Tools, emb: Embeddings) -> None:
        """Trains an embedding correction per tracker on the adaptation set and scores the corrected trackers."""
        opts = self.cfg.adaptive.get("correction")
        if not opts:
            return
        shared_rows = self.photos.rows("shared")
        for t in tools.trackers.names:
            a, b = emb.adapt_cloaked[t], emb.adapt_clean[t]
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
            clean, cloaked = correct(model, emb.clean[t]), correct(model, emb.cloaked[t])
            fit.users_cos_before = mean_pair_cosine(emb.cloaked[t], emb.clean[t].take(shared_rows))
            fit.users_cos_after = mean_pair_cosine(cloaked, clean.take(shared_rows))
            self.results.correction[t] = fit
            self._score(tools.setting.label, adapted_name(t, CORRECTION), t, "none", clean, cloaked)

    def adapt_finetune(self, tools: Tools, photos: Cloaked, emb: Embeddings) -> None:
        """Fine-tunes the last blocks of the tracker's dlib ResNet on the adaptation set and scores it."""
        opts = self.cfg.adaptive.get("finetune")
        if not opts:
            return
        name = str(opts.tracker)
        pipelines = tools.trackers.pipelines
        pipeline = next((p for p in pipelines if isinstance(p, ModelPipeline) and name in p.models), None)
        if pipeline is None or not isinstance(pipeline.models[name], DlibResNet):
            log.warning(
                "Fine-tuning skipped: adaptive.finetune.tracker=%s is not a dlib_resnet model tracker of trackers=%s",
                name,
                tools.trackers.names,
            )
            return
        model = pipeline.models[name]
        clean_faces, cloaked_faces, keep = aligned_twins(
            pipeline, model, photos.adapt_originals, photos.adapt_cloaked, self.device
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
        tuned_pipeline = ModelPipeline(tools.trackers.detector, {tuned_name: tuned}, self.device)
        embedder = PhotoEmbedder([tuned_pipeline], upscale=self.upscale)
        clean = embedder.paths(self.photos.all_paths, None, "none", desc="clean")[tuned_name]
        cloaked = embedder(photos.shared_cloaked, desc="cloaked")[tuned_name]
        shared_rows = self.photos.rows("shared")
        fit.users_cos_before = mean_pair_cosine(emb.cloaked[name], emb.clean[name].take(shared_rows))
        fit.users_cos_after = mean_pair_cosine(cloaked, clean.take(shared_rows))
        self.results.finetune = fit
        self._score(tools.setting.label, tuned_name, name, "none", clean, cloaked)

    # ------------------------------------------------------------------ purification

    def purify(self, tools: Tools, photos: Cloaked, emb: Embeddings) -> None:
        """Calibrates each purifier on the public identities' clean photos, then scores the purifying trackers.

        The calibration photos are the clean photos of the distractors and of the
        adaptation set whose identity has another photo (never the users'): the
        tracker's own labelled data. Their embeddings at the chosen level are
        reused for scoring.
        """
        opts = self.cfg.purification
        if not opts.purifiers:
            return
        p, trackers, embedder = self.photos, tools.trackers.names, tools.trackers.embedder
        first = trackers[0]
        n_distractors = len(p.distractor_paths)
        calib_paths = [*p.distractor_paths, *self.adapt_paths]
        calib_labels = np.concatenate([p.distractor_labels, self.adapt_labels]).astype(str)
        names, counts = np.unique(calib_labels, return_counts=True)
        keep = np.flatnonzero(np.isin(calib_labels, names[counts >= 2]))
        unfiltered = _concat(emb.clean[first].take(p.rows("distractors")), emb.adapt_clean[first])
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
            measured[label] = embedder.paths(calib_paths, transform, label, desc=f"calibrating [{label}]")
            return clean_accuracy(measured[label][first].take(keep), calib_labels[keep])

        users_paths = [*p.shared_paths, *p.probe_paths]
        for name in opts.purifiers:
            purif = purifier(str(name))
            cal = calibrate(purif, accuracy_at, baseline, float(opts.tolerance), opts.get("max_levels"))
            self.results.purification.append(cal)
            transform, label = purif.transform(cal.chosen), cal.chosen_label
            users = embedder.paths(users_paths, transform, label, desc=f"users [{label}]")
            cloaked = embedder(apply_transform(photos.shared_cloaked, transform), desc=f"cloaked [{label}]")
            for t in trackers:
                clean = _concat(users[t], measured[label][t].take(np.arange(n_distractors)))
                self._score(tools.setting.label, t, t, label, clean, cloaked[t])

    # ------------------------------------------------------------------ detectability

    def detect(self, photos: Cloaked) -> None:
        """Trains each detector on the adaptation set (clean vs cloaked) and scores it on the users' photos."""
        opts = self.cfg.detectability
        if not opts.detectors or not self.detect_transforms:
            return
        train = labelled_pairs(photos.adapt_originals, photos.adapt_cloaked, photos.adapt_faces)
        test = labelled_pairs(photos.shared_originals, photos.shared_cloaked, photos.shared_faces)
        self.results.detection += detection_scores(
            opts, self.detect_transforms, train, test, seed=int(self.cfg.seed), device=self.device
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

    def timed(name: str, step: Callable[[], object]):
        """Runs one step, records its seconds and reports progress; returns what the step returns."""
        t0 = time.perf_counter()
        out = step()
        results.adaptation[f"seconds_{name}"] = time.perf_counter() - t0
        results.seconds = results.protection.seconds = time.perf_counter() - started
        if on_progress is not None:
            on_progress(results)
        return out

    tools = experiment.load(settings[0], cache_dir)
    photos: Cloaked = timed("cloak", lambda: experiment.cloak(tools))
    emb: Embeddings = timed("embed", lambda: experiment.embed(tools, photos))
    timed("oblivious", lambda: experiment.score_oblivious(tools, emb))
    timed("correction", lambda: experiment.adapt_correction(tools, emb))
    timed("finetune", lambda: experiment.adapt_finetune(tools, photos, emb))
    timed("purification", lambda: experiment.purify(tools, photos, emb))
    timed("detectability", lambda: experiment.detect(photos))
    return results
