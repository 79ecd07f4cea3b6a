"""The TensorFlow.js graph interpreter on tiny graphs, and MobileFace (a TensorFlow.js graph) on faces."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import altered_copy

from cloak.evaluation.trackers.verification import embed_photos, roc_auc
from cloak.models.graph_interpreter import GraphError, UnsupportedOpError, same_padding
from cloak.models.mobileface import MOBILEFACE_FILES, MobileFace, default_model_dir, load_mobileface
from cloak.models.sface import ARCFACE_TEMPLATE
from cloak.models.tfjs_graph import load_tfjs_graph, read_tfjs_weights
from cloak.models.weights import WeightsUnavailableError, sha256_of

# float32 sums of a few dozen products of values below ~10: a few ulps of the result.
EXACT = {"atol": 1e-5, "rtol": 1e-5}


# --- tiny TensorFlow.js graph models written on the fly ---


def _attr(value) -> dict:
    if isinstance(value, bool):
        return {"b": value}
    if isinstance(value, int):
        return {"i": str(value)}
    if isinstance(value, float):
        return {"f": value}
    if isinstance(value, str):
        return {"s": base64.b64encode(value.encode()).decode()}
    if value and isinstance(value[0], str):
        return {"list": {"s": [base64.b64encode(v.encode()).decode() for v in value]}}
    return {"list": {"i": [str(v) for v in value]}}


def write_tfjs(folder: Path, ops: list[tuple], consts: dict[str, np.ndarray], shape: list[int], quantize=None) -> Path:
    """A graph model with input ``x`` of ``shape``: ``ops`` are ``(name, op, inputs, attrs)``, the last is the output.

    ``quantize``: weight name -> the manifest's ``quantization`` entry; its value is then stored
    as ``(value - min) / scale`` in that dtype (or as float16).
    """
    nodes = [
        {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": str(d)} for d in shape]}}}}
    ]
    manifest, blobs = [], []
    for name, value in consts.items():
        dtype = "int32" if value.dtype.kind == "i" else "float32"
        nodes.append({"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_" + dtype.upper()}}})
        entry = {"name": name, "shape": list(value.shape), "dtype": dtype}
        q = (quantize or {}).get(name)
        if q is None:
            blobs.append(value.astype("<i4" if dtype == "int32" else "<f4").tobytes())
        elif q["dtype"] == "float16":
            blobs.append(value.astype("<f2").tobytes())
        else:
            stored = np.rint((value - q["min"]) / q["scale"]).astype("u1" if q["dtype"] == "uint8" else "<u2")
            blobs.append(stored.tobytes())
        if q is not None:
            entry["quantization"] = q
        manifest.append(entry)
    for name, op, inputs, attrs in ops:
        nodes.append({"name": name, "op": op, "input": list(inputs), "attr": {k: _attr(v) for k, v in attrs.items()}})
    (folder / "w.bin").write_bytes(b"".join(blobs))
    doc = {
        "format": "graph-model",
        "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": ["w.bin"], "weights": manifest}],
        "signature": {"outputs": {f"{ops[-1][0]}:0": {"name": f"{ops[-1][0]}:0"}}},
    }
    path = folder / "model.json"
    path.write_text(json.dumps(doc))
    return path


def conv_reference(x: np.ndarray, w: np.ndarray, stride: int, pads: tuple[int, int, int, int]) -> np.ndarray:
    """TensorFlow's NHWC convolution with an HWIO filter, written out in float64 loops."""
    top, bottom, left, right = pads
    x = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw, _, cout = w.shape
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, w)
    return out


def run(path: Path, x: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return load_tfjs_graph(path, **kwargs)(torch.from_numpy(x)).numpy()


def test_same_padding_puts_the_odd_pixel_after():
    assert same_padding(4, 3, 2) == (0, 1)  # out 2: (2 - 1) * 2 + 3 - 4 = 1
    assert same_padding(5, 3, 2) == (1, 1)
    assert same_padding(112, 3, 1) == (1, 1)
    assert same_padding(7, 1, 2) == (0, 0)
    assert same_padding(6, 3, 1, dilation=2) == (2, 2)


def test_conv_same_stride_2_by_hand(tmp_path):
    # 4x4 ramp, 3x3 ones, stride 2, SAME: padding (0, 1) on each axis, so window (0, 0) is the
    # top-left 3x3 block, not a block centred on pixel (0, 0) as symmetric padding would give.
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    w = np.ones((3, 3, 1, 1), np.float32)
    attrs = {"strides": [1, 2, 2, 1], "padding": "SAME", "data_format": "NHWC"}
    path = write_tfjs(tmp_path, [("y", "Conv2D", ["x", "w"], attrs)], {"w": w}, [-1, 4, 4, 1])
    assert run(path, x)[0, :, :, 0].tolist() == [[45, 39], [66, 50]]


@pytest.mark.parametrize(
    ("size", "stride", "padding"), [(7, 2, "SAME"), (8, 2, "SAME"), (6, 1, "SAME"), (7, 2, "VALID")]
)
def test_conv_matches_the_reference_with_channels(tmp_path, size, stride, padding):
    rng = np.random.default_rng(size + stride)
    x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    attrs = {"strides": [1, stride, stride, 1], "padding": padding}
    path = write_tfjs(tmp_path, [("y", "Conv2D", ["x", "w"], attrs)], {"w": w}, [-1, size, size, 3])
    pads = (*same_padding(size, 3, stride), *same_padding(size, 3, stride)) if padding == "SAME" else (0, 0, 0, 0)
    np.testing.assert_allclose(run(path, x), conv_reference(x, w, stride, pads), **EXACT)


def test_depthwise_with_multiplier_orders_channels_c_times_m_plus_m(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)  # [H, W, C, multiplier]
    attrs = {"strides": [1, 2, 2, 1], "padding": "SAME"}
    path = write_tfjs(tmp_path, [("y", "DepthwiseConv2dNative", ["x", "w"], attrs)], {"w": w}, [-1, 6, 6, 3])
    pads = (*same_padding(6, 3, 2), *same_padding(6, 3, 2))
    want = np.concatenate(
        [conv_reference(x[..., c : c + 1], w[:, :, c : c + 1, m : m + 1], 2, pads) for c in range(3) for m in range(2)],
        axis=-1,
    )
    np.testing.assert_allclose(run(path, x), want, **EXACT)


def test_fused_conv_and_matmul_apply_bias_then_activation(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 4, 2)).astype(np.float32)
    consts = {
        "w": rng.standard_normal((1, 1, 2, 3)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float32),
        "shape": np.array([-1, 48], np.int32),
        "k": rng.standard_normal((48, 5)).astype(np.float32),
        "c": rng.standard_normal(5).astype(np.float32),
        "alpha": np.full(5, 0.25, np.float32),
    }
    ops = [
        (
            "conv",
            "_FusedConv2D",
            ["x", "w", "b"],
            {"padding": "VALID", "fused_ops": ["BiasAdd", "Relu"], "num_args": 2},
        ),
        ("flat", "Reshape", ["conv", "shape"], {}),
        ("y", "_FusedMatMul", ["flat", "k", "c", "alpha"], {"fused_ops": ["BiasAdd", "Prelu"], "num_args": 2}),
    ]
    path = write_tfjs(tmp_path, ops, consts, [-1, 4, 4, 2])
    conv = np.maximum(conv_reference(x, consts["w"], 1, (0, 0, 0, 0)) + consts["b"], 0)
    dense = conv.reshape(2, 48) @ consts["k"] + consts["c"]  # NHWC flattening order, as TensorFlow's
    np.testing.assert_allclose(run(path, x), np.where(dense > 0, dense, 0.25 * dense), **EXACT)


def test_prelu_pattern_and_pad_rewrites_keep_values_and_gradients(tmp_path):
    rng = np.random.default_rng(3)
    consts = {
        "zero": np.array(0.0, np.float32),
        "gamma": rng.uniform(0.1, 0.5, 3).astype(np.float32),
        "pads": np.array([[0, 0], [1, 1], [2, 0], [0, 0]], np.int32),
        "w": rng.standard_normal((3, 3, 3, 1)).astype(np.float32),
    }
    ops = [
        ("max", "Maximum", ["zero", "x"], {}),
        ("min", "Minimum", ["zero", "x"], {}),
        ("mul", "Mul", ["gamma", "min"], {}),
        ("act", "AddV2", ["max", "mul"], {}),
        ("pad", "Pad", ["act", "pads"], {}),
        ("y", "DepthwiseConv2dNative", ["pad", "w"], {"padding": "VALID", "strides": [1, 1, 1, 1]}),
    ]
    path = write_tfjs(tmp_path, ops, consts, [-1, 5, 5, 3])
    fast, plain = load_tfjs_graph(path), load_tfjs_graph(path, optimise=False)
    assert fast.op_types == ["DepthwiseConv2dNative", "Prelu"] and "Pad" in plain.op_types
    x = torch.from_numpy(rng.standard_normal((2, 5, 5, 3)).astype(np.float32)).requires_grad_(True)
    y_fast, y_plain = fast(x), plain(x)
    torch.testing.assert_close(y_fast, y_plain, **EXACT)
    g_fast, g_plain = (torch.autograd.grad((y * y).sum(), x)[0] for y in (y_fast, y_plain))
    torch.testing.assert_close(g_fast, g_plain, **EXACT)


def test_elementwise_reshape_concat_mean_squeeze(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.uniform(0.5, 2.0, (2, 3, 3, 2)).astype(np.float32)
    consts = {
        "a": np.float32([1.5, -2.0]),
        "axes": np.array([1, 2], np.int32),
        "axis": np.array(-1, np.int32),
        "pads": np.array([[0, 0], [0, 1], [1, 0], [0, 0]], np.int32),
    }
    ops = [
        ("s", "Sub", ["x", "a"], {}),
        ("d", "RealDiv", ["s", "x"], {}),
        ("r", "Rsqrt", ["x"], {}),
        ("cat", "ConcatV2", ["d", "r", "axis"], {"N": 2}),
        ("p", "Pad", ["cat", "pads"], {}),
        ("m", "Mean", ["p", "axes"], {"keep_dims": True}),
        ("y", "Squeeze", ["m"], {"squeeze_dims": [1, 2]}),
    ]
    path = write_tfjs(tmp_path, ops, consts, [-1, 3, 3, 2])
    cat = np.concatenate([(x - consts["a"]) / x, 1 / np.sqrt(x)], axis=-1)
    padded = np.pad(cat, ((0, 0), (0, 1), (1, 0), (0, 0)))
    np.testing.assert_allclose(run(path, x), padded.mean(axis=(1, 2)), **EXACT)


def test_quantised_weights_are_dequantised(tmp_path):
    ramp = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 1, 3, 4)
    consts = {"w8": ramp, "w16": ramp * 3, "wh": ramp / 2}
    quantize = {
        "w8": {"dtype": "uint8", "min": -1.0, "scale": 2 / 255},
        "w16": {"dtype": "uint16", "min": -3.0, "scale": 6 / 65535},
        "wh": {"dtype": "float16"},
    }
    path = write_tfjs(tmp_path, [("y", "Conv2D", ["x", "w8"], {"padding": "VALID"})], consts, [-1, 1, 1, 3], quantize)
    doc = json.loads(path.read_text())
    weights = read_tfjs_weights(doc["weightsManifest"], tmp_path)
    np.testing.assert_allclose(weights["w8"], ramp, atol=1 / 255 + 1e-7)
    np.testing.assert_allclose(weights["w16"], ramp * 3, atol=3 / 65535 + 1e-6)
    np.testing.assert_allclose(weights["wh"], ramp / 2, atol=1e-3)
    assert all(w.dtype == np.float32 for w in weights.values())


def test_unsupported_ops_are_named_and_short_weights_refused(tmp_path):
    consts = {"k": np.ones((2, 2), np.float32)}
    ops = [("a", "Softmax", ["x"], {}), ("b", "Cumsum", ["a", "k"], {}), ("y", "MatMul", ["b", "k"], {})]
    path = write_tfjs(tmp_path, ops, consts, [-1, 2])
    with pytest.raises(UnsupportedOpError, match=r"Cumsum \(x1\), Softmax \(x1\)"):
        load_tfjs_graph(path)
    (tmp_path / "w.bin").write_bytes(b"\0" * 8)  # 2 of the 4 floats
    with pytest.raises(GraphError, match="truncated"):
        load_tfjs_graph(path)


# --- MobileFace ---


@pytest.fixture(scope="module")
def model() -> MobileFace:
    return load_mobileface()


def test_vendored_files_are_the_pinned_ones_and_licensed():
    folder = default_model_dir()
    for name, digest in MOBILEFACE_FILES.items():
        assert sha256_of(folder / name) == digest
    assert "MIT License" in (folder / "LICENSE").read_text()


def test_a_corrupted_copy_is_refused(tmp_path):
    shutil.copyfile(default_model_dir() / "mobileface.json", tmp_path / "mobileface.json")
    altered_copy(default_model_dir() / "mobileface.bin", tmp_path / "mobileface.bin")
    with pytest.raises(WeightsUnavailableError, match=r"mobileface\.bin.*SHA-256"):
        load_mobileface(tmp_path)
    (tmp_path / "mobileface.bin").unlink()
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_mobileface(tmp_path / "mobileface.json")


def test_graph_is_the_documented_network(model):
    graph = model.graph
    assert graph.input_names == ("data",) and graph.output_name == "batchnorm0/add_1"
    assert graph.input_shape == [-1, 112, 112, 3]
    # PReLUs fused and pads folded into the convolutions by the rewrites.
    assert graph.op_types == ["AddV2", "Conv2D", "DepthwiseConv2dNative", "MatMul", "Mul", "Prelu", "Reshape", "Sub"]


def test_descriptor_is_the_mirror_sum_and_symmetric(model):
    faces = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = model.graph(faces.mul(255).permute(0, 2, 3, 1).contiguous())
        mirrored = model.graph(faces.flip(-1).mul(255).permute(0, 2, 3, 1).contiguous())
        emb = model.embed(faces)
        torch.testing.assert_close(emb, raw + mirrored, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(model(faces.flip(-1)), model(faces), atol=1e-5, rtol=0)
        alone = torch.cat([model(f[None]) for f in faces])
    torch.testing.assert_close(model(faces), alone, atol=1e-5, rtol=0)
    assert emb.shape == (3, 256) and raw.abs().max() > 1


def test_gradients_reach_the_input(model):
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    target = model(torch.rand(2, 3, 112, 112)).detach()
    (model(x) * target).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().mean() > 0
    # Not only on one side: the mirrored pass carries gradient too.
    assert x.grad[..., :56].abs().mean() > 0 and x.grad[..., 56:].abs().mean() > 0


def test_template_and_thresholds(model):
    assert torch.equal(model.template, ARCFACE_TEMPLATE) and model.input_size == (112, 112)
    assert model.match_threshold == pytest.approx((2 - 2 * model.cosine_threshold) ** 0.5)


def test_same_person_pairs_are_closer_on_lfw_dev(model, lfw_dev):
    folders = [p for p in sorted(lfw_dev.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 4][:8]
    photos = [(f.name, p) for f in folders for p in sorted(f.glob("*.jpg"))[:4]]
    from cloak.detection import FaceDetector

    emb, kept = embed_photos(model, [p for _, p in photos], FaceDetector(device="cpu"))
    labels = np.array([photos[i][0] for i in kept])
    sim = (emb @ emb.T).numpy()
    iu = np.triu_indices(len(labels), k=1)
    same = labels[iu[0]] == labels[iu[1]]
    assert same.sum() >= 40 and (~same).sum() >= 400
    assert sim[iu][same].mean() > sim[iu][~same].mean() + 0.3
    auc = roc_auc(sim[iu], same)
    # 0.991 on these 8 identities (mean cosine 0.51 same, 0.12 different); 0.967 over all 296 with 4+ photos.
    assert auc >= 0.95, f"MobileFace ROC AUC {auc:.4f} over {same.sum()} same / {(~same).sum()} different pairs"


def test_config_is_a_tracker_and_the_ensemble_variant_names_it():
    from hydra.utils import instantiate

    from cloak.config import load_config
    from cloak.evaluation.trackers.registry import model_trackers

    built = instantiate(load_config(["model=mobileface"]).model)
    assert isinstance(built, MobileFace) and not built.training
    assert "mobileface" in model_trackers()
    ensemble = load_config(["model=ensemble_mobileface"]).model
    default = load_config(["model=ensemble"]).model
    assert ensemble.members.mobileface._target_ == "cloak.models.mobileface.load_mobileface"
    assert ensemble.weights.mobileface == 3.0
    assert set(ensemble.members) == set(default.members) | {"mobileface"}
    assert "mobileface" not in default.members
