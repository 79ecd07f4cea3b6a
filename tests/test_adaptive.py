"""Trackers that fight back: embedding correction, fine-tuning, purification, detection, and an lfw-dev smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cloak.config import load_config
from cloak.evaluation.adaptive.adaptation import adaptation_photos
from cloak.evaluation.adaptive.correction import EmbeddingCorrection, correct, mean_pair_cosine, train_correction
from cloak.evaluation.adaptive.detectability import CNNDetector, ResidualDetector, detection_score, face_window
from cloak.evaluation.adaptive.finetune import dlib_head, dlib_trunk, finetune_dlib
from cloak.evaluation.adaptive.purification import PURIFIERS, calibrate, clean_accuracy, median, purifier
from cloak.evaluation.adaptive.report import load_adaptive_results
from cloak.evaluation.protocol.dataset import DatasetError, select_photos
from cloak.evaluation.protocol.scoring import Embedded
from cloak.imaging.platform import apply_transform
from cloak.models.dlib_resnet import DlibResNet


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# Embedding correction
# ---------------------------------------------------------------------------


def test_correction_recovers_a_known_shift_on_new_embeddings():
    rng = np.random.default_rng(0)
    clean = _unit(rng.normal(size=(400, 16))).astype(np.float32)
    shift = _unit(rng.normal(size=(1, 16)))[0] * 0.8
    cloaked = _unit(clean + shift).astype(np.float32)
    model, fit = train_correction(cloaked[:300], clean[:300], hidden=64, epochs=400, lr=3e-3, seed=0)
    assert fit.n_pairs == 300 and fit.loss_after < 0.1 * fit.loss_before
    test_clean, test_cloaked = clean[300:], cloaked[300:]
    found = np.ones(100, bool)
    before = mean_pair_cosine(Embedded(test_cloaked, found), Embedded(test_clean, found))
    after = mean_pair_cosine(correct(model, Embedded(test_cloaked, found)), Embedded(test_clean, found))
    kept = mean_pair_cosine(correct(model, Embedded(test_clean, found)), Embedded(test_clean, found))
    assert before < 0.8 and after > 0.97 and kept > 0.97, (before, after, kept)


def test_an_untrained_correction_is_the_identity_and_keeps_rows_without_a_face_empty():
    rng = np.random.default_rng(1)
    emb = _unit(rng.normal(size=(5, 8))).astype(np.float32)
    emb[2] = 0
    found = np.array([True, True, False, True, True])
    out = correct(EmbeddingCorrection(8, hidden=16).eval(), Embedded(emb, found))
    assert np.allclose(out.emb[found], emb[found], atol=1e-6) and not out.emb[2].any()
    assert out.found.tolist() == found.tolist()
    with pytest.raises(ValueError, match="matching"):
        train_correction(emb[:3], emb[:2])


# ---------------------------------------------------------------------------
# Fine-tuning dlib's ResNet
# ---------------------------------------------------------------------------


def test_trunk_and_head_split_dlib_resnet_exactly():
    torch.manual_seed(0)
    model = DlibResNet().eval()
    faces = torch.rand(2, 3, 150, 150)
    for blocks in (1, 2, 4):
        split = dlib_head(model, dlib_trunk(model, faces, blocks), blocks)
        assert torch.allclose(split, model(faces), atol=1e-5)
    with pytest.raises(ValueError, match="blocks"):
        dlib_trunk(model, faces, 0)


def test_finetuning_trains_only_the_last_blocks_of_a_copy():
    torch.manual_seed(0)
    model = DlibResNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean = torch.rand(4, 3, 150, 150)
    cloaked = (clean + 0.05 * torch.randn_like(clean)).clamp(0, 1)
    tuned, fit = finetune_dlib(model, clean, cloaked, ["a", "a", "b", "b"], blocks=1, epochs=2, lr=1e-3, batch_size=2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])}
    last = f"blocks.{len(model.blocks) - 1}."
    assert changed and all(k.startswith((last, "fc.")) for k in changed), changed
    assert len(fit.losses) == 2 and fit.n_identities == 2 and fit.n_faces == 8
    assert not any(p.requires_grad for p in tuned.parameters())
    with pytest.raises(ValueError, match="two identities"):
        finetune_dlib(model, clean, cloaked, ["a"] * 4, epochs=1)


# ---------------------------------------------------------------------------
# Purification
# ---------------------------------------------------------------------------


def _noisy_photo(seed: int = 0, size=(40, 52)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).resize(size[::-1]))
    return np.clip(smooth.astype(int) + rng.choice([-10, 10], smooth.shape), 0, 255).astype(np.uint8)


def _high_pass_energy(photo: np.ndarray) -> float:
    x = photo.astype(np.float64)
    return float(np.abs(2 * x[:, 1:-1] - x[:, :-2] - x[:, 2:]).mean())


@pytest.mark.parametrize("name", list(PURIFIERS))
def test_purifiers_keep_shape_dtype_range_and_remove_more_noise_as_they_climb(name):
    photo = _noisy_photo()
    p = purifier(name)
    energies = []
    for level in range(len(p.levels)):
        [out] = apply_transform([photo], p.transform(level))
        assert out.shape == photo.shape and out.dtype == np.uint8
        assert abs(float(out.mean()) - float(photo.mean())) < 8  # a filter, not a brightness change
        energies.append(_high_pass_energy(out))
    assert energies[0] < _high_pass_energy(photo)
    assert energies[-1] < energies[0], energies
    assert p.level_label(0) != p.level_label(len(p.levels) - 1)


def test_purifiers_take_any_pil_mode_and_reject_bad_settings():
    grey = Image.fromarray(_noisy_photo()[..., 0])
    assert median(grey, 3).mode == "RGB" and median(grey, 3).size == grey.size
    with pytest.raises(ValueError, match="odd"):
        median(grey, 4)
    with pytest.raises(ValueError, match="valid"):
        purifier("sharpen")


def test_calibration_picks_the_strongest_level_within_tolerance():
    accuracies = {"median3": 0.90, "median5": 0.885, "median7": 0.85, "median9": 0.95}
    seen = []

    def accuracy_at(transform, label):
        seen.append(label)
        return accuracies[label]

    cal = calibrate(PURIFIERS["median"], accuracy_at, baseline=0.90, tolerance=0.02)
    assert cal.chosen_label == "median5" and cal.within_tolerance
    assert seen == ["median3", "median5", "median7"]  # the climb stops at the first level that costs too much
    low = calibrate(PURIFIERS["median"], lambda t, label: 0.5, baseline=0.90, tolerance=0.02)
    assert low.chosen_label == "median3" and not low.within_tolerance and low.levels == ["median3"]
    short = calibrate(PURIFIERS["median"], lambda t, label: 0.9, baseline=0.90, max_levels=2)
    assert short.levels == ["median3", "median5"] and short.chosen == 1


def test_clean_accuracy_is_leave_one_out_nearest_neighbour():
    centres = np.eye(4)[:3]
    emb = np.repeat(centres, 3, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(9, 4))
    labels = np.repeat(["a", "b", "c"], 3)
    found = np.ones(9, bool)
    assert clean_accuracy(Embedded(emb, found), labels) == 1.0
    found[0] = False  # no face: an error
    assert clean_accuracy(Embedded(emb, found), labels) == pytest.approx(8 / 9)
    alone = np.concatenate([emb, np.eye(4)[3:]])  # a tenth photo, of an identity with no other photo
    assert clean_accuracy(Embedded(alone, np.ones(10, bool)), [*labels, "d"]) == pytest.approx(9 / 10)


# ---------------------------------------------------------------------------
# Detectability
# ---------------------------------------------------------------------------


def _smooth_photos(n: int, seed: int, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        np.asarray(Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC))
        for _ in range(n)
    ]


def _perturb(photo: np.ndarray, box, seed: int, eps: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x1, y1, x2, y2 = box
    out = photo.astype(int)
    out[y1:y2, x1:x2] += rng.choice([-eps, eps], (y2 - y1, x2 - x1, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


BOX = (12, 12, 36, 36)


def _detectors():
    return [ResidualDetector(), CNNDetector(window=32, epochs=15, lr=3e-3, batch_size=16, width=8)]


@pytest.mark.parametrize("index", [0, 1], ids=["residual_logreg", "cnn"])
def test_detector_separates_a_known_perturbation(index):
    detector = _detectors()[index]
    train_clean, test_clean = _smooth_photos(30, 0), _smooth_photos(30, 1)
    train_pert = [_perturb(p, BOX, 100 + i) for i, p in enumerate(_smooth_photos(30, 2))]
    test_pert = [_perturb(p, BOX, 200 + i) for i, p in enumerate(_smooth_photos(30, 3))]
    detector.fit(train_clean + train_pert, [BOX] * 60, [False] * 30 + [True] * 30)
    score = detection_score(
        detector.name, "none", detector.scores(test_clean + test_pert, [BOX] * 60), [0] * 30 + [1] * 30
    )
    assert score.auc > 0.95 and score.precision > 0.9 and score.recall > 0.9, score


@pytest.mark.parametrize("index", [0, 1], ids=["residual_logreg", "cnn"])
def test_detector_is_at_chance_on_one_distribution(index):
    detector = _detectors()[index]
    train, test = _smooth_photos(60, 4), _smooth_photos(60, 5)
    labels = [False] * 30 + [True] * 30
    detector.fit(train, [BOX] * 60, labels)
    score = detection_score(detector.name, "none", detector.scores(test, [BOX] * 60), labels)
    assert 0.25 < score.auc < 0.75, score.auc


def test_detection_score_known_answers():
    perfect = detection_score("d", "none", np.array([0.1, 0.2, 0.8, 0.9]), [0, 0, 1, 1], n_train=10)
    assert (perfect.auc, perfect.precision, perfect.recall, perfect.accuracy) == (1.0, 1.0, 1.0, 1.0)
    assert perfect.n_cloaked == 2 and perfect.n_clean == 2 and perfect.fpr[-1] == 1.0
    inverted = detection_score("d", "none", np.array([0.9, 0.8, 0.2, 0.1]), [0, 0, 1, 1])
    assert inverted.auc == 0.0
    with pytest.raises(ValueError, match="both"):
        detection_score("d", "none", np.array([0.1, 0.2]), [1, 1])


def test_face_window_is_native_resolution_and_padded_at_edges():
    photo = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    w = face_window(photo, (10, 5, 20, 15), size=8)
    assert w.shape == (8, 8, 3) and np.array_equal(w, photo[6:14, 11:19])
    assert face_window(photo, (0, 0, 2, 2), size=8).shape == (8, 8, 3)


# ---------------------------------------------------------------------------
# The adaptation set
# ---------------------------------------------------------------------------


def test_adaptation_set_is_disjoint_from_users_and_distractors(tmp_path):
    for i, n in enumerate([12, 12, 3, 3, 2, 2, 1]):
        folder = tmp_path / f"id{i}"
        folder.mkdir()
        for j in range(n):
            Image.new("RGB", (8, 8)).save(folder / f"id{i}_{j:04d}.jpg")
    photos = select_photos(tmp_path, n_users=2, min_photos=10, shared_fraction=0.7, seed=0, max_distractors=2)
    paths, labels = adaptation_photos(photos.split, photos.distractor_labels, 5, 2, seed=0)
    names = set(labels)
    assert names and not names & set(photos.split.users) and not names & set(photos.distractor_labels)
    assert all(list(labels).count(n) == 2 for n in names)  # two photos each; the singleton is never drawn
    assert [p.parent.name for p in paths] == list(labels)
    with pytest.raises(DatasetError, match="max_distractors"):
        adaptation_photos(photos.split, [*photos.distractor_labels, *names], 5, 2, seed=0)


def test_the_adaptive_experiment_enlarges_every_photo_by_data_upscale(tmp_path, monkeypatch, tiny_embedder):
    """``data.upscale`` reaches every photo the adaptive experiment cloaks and its trackers see, as in the protocol."""
    from types import SimpleNamespace

    import cloak.evaluation.adaptive.experiment as adaptive
    import cloak.evaluation.protocol.steps as steps
    from cloak.attacks import PGD
    from cloak.evaluation.protocol.sweep import sweep_settings

    rng = np.random.default_rng(0)
    for name, n in [("Ann", 6), ("Bob", 6), *((f"Id{i}", 2) for i in range(5))]:
        (tmp_path / name).mkdir()
        for j in range(n):
            Image.fromarray(rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)).save(tmp_path / name / f"{name}_{j}.png")
    overrides = ["experiment=adaptive", f"data.root={tmp_path}", "data.n_users=2", "data.min_photos=6"]
    overrides += ["data.max_photos_per_user=6", "data.max_distractors=2", "adaptive.identities=2", "device=cpu"]
    overrides += ["adaptive.photos_per_identity=2", "data.upscale=2.5"]
    cfg = load_config(overrides, config_name="evaluate")
    seen: list[tuple[int, ...]] = []

    class _Detector:
        def detect_many(self, photos):
            seen.extend(p.shape for p in photos)
            return [[] for _ in photos]

    class _Pipeline:
        trackers = ["fake"]

        def embed(self, photos, progress=None):
            seen.extend(p.shape for p in photos)
            return {"fake": Embedded(np.ones((len(photos), 4), np.float32), np.ones(len(photos), bool))}

    monkeypatch.setattr(steps, "instantiate", lambda _: _Detector())
    monkeypatch.setattr(steps, "build_pipelines", lambda *_: ([_Pipeline()], {}))
    cloak = SimpleNamespace(model=tiny_embedder(), attack=PGD(eps=8, steps=1))
    monkeypatch.setattr(adaptive, "build_from_config", lambda *_, **__: cloak)
    experiment = adaptive.AdaptiveExperiment(cfg, tmp_path)
    tools = experiment.load(sweep_settings(cfg, overrides)[0])
    photos = experiment.cloak(tools)
    experiment.embed(tools, photos)
    read = len(experiment.photos.all_paths) + len(experiment.adapt_paths)  # embedded from disk
    cloaked = len(photos.shared_cloaked) + len(photos.adapt_cloaked)  # detected, then embedded cloaked
    assert len(seen) == read + 2 * cloaked and set(seen) == {(25, 20, 3)}  # 10 x 8 photos, enlarged 2.5x
    assert {p.shape for p in photos.shared_cloaked + photos.adapt_cloaked} == {(25, 20, 3)}
    assert experiment.results.protection.data["upscale"] == 2.5


# ---------------------------------------------------------------------------
# On lfw-dev
# ---------------------------------------------------------------------------


@pytest.mark.slow  # minutes on 2 cores: cloaks, fine-tunes and trains detectors end to end
def test_adaptive_experiment_smoke(lfw_dev, tmp_path):
    """End to end: 2 users, 2 distractor identities, 3 adaptation identities, 2 attack steps, 1 epoch."""
    from experiments.run import run

    overrides = [
        "experiment=adaptive",
        f"data.root={lfw_dev}",
        "data.n_users=2",
        "data.max_photos_per_user=6",
        "data.max_distractors=2",
        "adaptive.identities=3",
        "adaptive.photos_per_identity=2",
        "strength.steps=2",
        "adaptive.finetune.epochs=1",
        "adaptive.correction.epochs=20",
        "purification.max_levels=1",
        "purification.purifiers=[median,downscale]",
        "detectability.cnn.epochs=1",
        "detectability.transforms=[none]",
        "device=cpu",
        f"output_dir={tmp_path}",
    ]
    res = run(load_config(overrides, config_name="evaluate"), overrides)
    for name in ("adaptive.json", "adaptive.csv", "adaptive.md", "adaptive.png"):
        assert (tmp_path / name).is_file(), name
    back = load_adaptive_results(tmp_path / "adaptive.json")
    assert back.to_dict() == json.loads(json.dumps(res.to_dict()))
    p = res.protection
    label = p.settings[0].label
    variants = {(r.tracker, r.transform) for r in p.protection}
    assert variants == {
        ("dlib_resnet", "none"),
        ("dlib_resnet+correction", "none"),
        ("dlib_resnet+finetune", "none"),
        ("dlib_resnet", "median3"),
        ("dlib_resnet", "down0.75"),
    }
    assert len(p.protection) == len(variants) * 2 * 3  # conditions x metrics
    assert all(0 <= r.protection <= 1 and r.n_probes == p.data["n_probes"] for r in p.protection)
    assert res.correction["dlib_resnet"].n_pairs == res.adaptation["n_cloaked"] == 6
    assert res.finetune is not None and len(res.finetune.losses) == 1
    assert [c.purifier for c in res.purification] == ["median", "downscale"]
    assert [(d.detector, d.transform) for d in res.detection] == [("residual_logreg", "none"), ("cnn", "none")]
    assert all(d.n_cloaked == d.n_clean == p.data["n_shared"] for d in res.detection)
    for tracker, transform in variants:
        assert p.value(label, tracker, transform, "none", "knn1") is not None  # every variant has its baseline
    md = (tmp_path / "adaptive.md").read_text()
    assert "dlib_resnet+finetune" in md and "median3" in md and "residual_logreg" in md
