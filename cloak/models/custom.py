"""A user's own face-embedding model, from an ONNX file or a TensorFlow.js graph, as a face embedder.

``model=custom model.path=/my/model.onnx`` (``configs/model/custom.yaml``) cloaks
against any face recognizer whose graph uses the operators the interpreters
cover (:mod:`cloak.models.onnx_graph`, :mod:`cloak.models.tfjs_graph`): the file
runs in torch, so the attack differentiates through it like through the
built-in models. What the file does not say, the config does: where the five
landmarks must land in the crop (``template``), how pixels are scaled
(``mean``/``std`` on 0-255 values), channel order and layout, whether the
descriptor adds the mirrored face, and the same-person threshold.

Example (Python)::

    model = load_custom("w600k.onnx", template="arcface", mean=127.5, std=127.5, cosine_threshold=0.3)

On the command line::

    python -m cloak photos/ model=custom model.path=/my/model.onnx model.input_size=[112,112]

and as one more member of the default ensemble::

    python -m cloak photos/ '+model.members.mine={_target_:cloak.models.custom.load_custom,path:/my/model.onnx}'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from cloak.models.base import FaceEmbedder
from cloak.models.dlib_resnet import DLIB_TEMPLATE
from cloak.models.facenet import FACENET_TEMPLATE
from cloak.models.graph_interpreter import GraphError, GraphInterpreter
from cloak.models.sface import ARCFACE_TEMPLATE
from cloak.models.weights import WeightsUnavailableError, require_pinned_file

__all__ = ["TEMPLATES", "CustomEmbedder", "CustomModelError", "load_custom", "resolve_template"]

#: Named landmark templates and the crop size each is defined for (height, width).
TEMPLATES: dict[str, tuple[torch.Tensor, tuple[int, int]]] = {
    "arcface": (ARCFACE_TEMPLATE, (112, 112)),
    "dlib": (DLIB_TEMPLATE, (150, 150)),
    "facenet": (FACENET_TEMPLATE, (160, 160)),
}


class CustomModelError(GraphError):
    """A user's model file or its settings cannot make a face embedder."""


def resolve_template(template: str | Sequence[Sequence[float]], input_size: tuple[int, int]) -> torch.Tensor:
    """``[5, 2]`` landmark positions in an ``input_size`` crop.

    A named template (:data:`TEMPLATES`) is scaled from the crop it is defined for
    (pixel centres on integers: ``x' = (x + 0.5) * s - 0.5``); a list of five
    ``[x, y]`` is taken as is.

    Raises:
        CustomModelError: an unknown name, or a list that is not five points.
    """
    if isinstance(template, str):
        if template not in TEMPLATES:
            raise CustomModelError(
                f"unknown template {template!r}; use one of {sorted(TEMPLATES)} or five [x, y] points"
            )
        points, (h, w) = TEMPLATES[template]
        scale = torch.tensor([input_size[1] / w, input_size[0] / h])
        return (points + 0.5) * scale - 0.5
    points = torch.as_tensor([list(map(float, p)) for p in template], dtype=torch.float32)
    if points.shape != (5, 2):
        raise CustomModelError(f"template must be five [x, y] points, got shape {list(points.shape)}")
    return points


def _per_channel(value: float | Sequence[float], what: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if t.numel() not in (1, 3):
        raise CustomModelError(f"{what} must be a number or three numbers, got {list(t.shape)}")
    return t.expand(3).reshape(1, 3, 1, 1).clone()


class CustomEmbedder(FaceEmbedder):
    """A face-embedding graph with its pre-processing: the model a user brings.

    Args:
        graph: the network (:func:`~cloak.models.onnx_graph.load_onnx_graph` or
            :func:`~cloak.models.tfjs_graph.load_tfjs_graph`).
        input_size: ``(height, width)`` of the crop.
        template: ``[5, 2]`` landmark positions in the crop.
        embedding_dim: length of the output vector.
        mean, std: the graph sees ``(pixel - mean) / std`` for pixels in 0-255, per channel
            in the graph's channel order.
        bgr: feed channels in BGR order.
        nhwc: feed ``[B, H, W, 3]`` instead of ``[B, 3, H, W]``.
        flip: the embedding is the output for the face plus that for its mirror image.

    Shape:
        - Input: :math:`(B, 3, H, W)` RGB in ``[0, 1]``.
        - Output: :math:`(B, D)`, unit norm from :meth:`forward`, raw from :meth:`embed`.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        graph: GraphInterpreter,
        input_size: tuple[int, int],
        template: torch.Tensor,
        embedding_dim: int,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        bgr: bool = False,
        nhwc: bool = False,
        flip: bool = False,
    ) -> None:
        super().__init__(input_size=input_size, template=template, embedding_dim=embedding_dim)
        self.graph = graph
        self.register_buffer("mean", _per_channel(mean, "mean"))
        self.register_buffer("std", _per_channel(std, "std"))
        if bool((self.std == 0).any()):
            raise CustomModelError("std must not be 0")
        self.bgr, self.nhwc, self.flip = bool(bgr), bool(nhwc), bool(flip)

    def prepare(self, faces: torch.Tensor) -> torch.Tensor:
        """The graph's input for ``[B, 3, H, W]`` RGB faces in ``[0, 1]``: scaled, reordered, laid out."""
        x = faces * 255.0
        x = x.flip(1) if self.bgr else x
        x = (x - self.mean.to(x)) / self.std.to(x)
        # Channels-last in memory either way: torch's CPU convolutions run faster on it.
        return x.permute(0, 2, 3, 1).contiguous() if self.nhwc else x.contiguous(memory_format=torch.channels_last)

    def run_graph(self, faces: torch.Tensor) -> torch.Tensor:
        """The graph's output for ``[B, 3, H, W]`` RGB faces in ``[0, 1]``, as ``[B, -1]`` (no mirror)."""
        return self.graph(self.prepare(faces)).reshape(len(faces), -1)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """The unnormalised embedding (with ``flip``, face and mirror image summed)."""
        if not self.flip:
            return self.run_graph(faces)
        out = self.run_graph(torch.cat([faces, faces.flip(-1)]))
        return out[: len(faces)] + out[len(faces) :]


def _graph_file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.onnx")) + sorted(path.glob("model.json"))
        if len(found) != 1:
            raise CustomModelError(f"{path} is a folder; name the model file (an .onnx or a model.json) in model.path")
        return found[0]
    return path


def _load_graph(path: Path, output: str | None) -> GraphInterpreter:
    from cloak.models.onnx_graph import load_onnx_graph
    from cloak.models.tfjs_graph import load_tfjs_graph

    if path.suffix.lower() == ".onnx":
        return load_onnx_graph(path, output)
    if path.suffix.lower() == ".json":
        return load_tfjs_graph(path, output)
    raise CustomModelError(f"{path}: expected an ONNX file (.onnx) or a TensorFlow.js graph model (.json)")


def _geometry(
    declared: list[int] | None, input_size: Sequence[int] | None, layout: str | None
) -> tuple[tuple[int, int], bool]:
    """``(input_size, nhwc)`` from the settings, or where unset from the file's declared input shape."""
    shape = declared if declared and len(declared) == 4 else [-1, -1, -1, -1]
    if layout is None:
        if shape[1] == 3 and shape[3] != 3:
            layout = "nchw"
        elif shape[3] == 3 and shape[1] != 3:
            layout = "nhwc"
        else:
            raise CustomModelError(f"the file declares input shape {declared}: set layout (nchw or nhwc)")
    if layout not in ("nchw", "nhwc"):
        raise CustomModelError(f"layout must be nchw or nhwc, got {layout!r}")
    nhwc = layout == "nhwc"
    if input_size is None:
        size = shape[1:3] if nhwc else shape[2:4]
        if min(size) <= 0:
            raise CustomModelError(f"the file declares input shape {declared}: set input_size [height, width]")
        input_size = size
    if len(input_size) != 2 or min(input_size) <= 0:
        raise CustomModelError(f"input_size must be [height, width], got {list(input_size)}")
    return (int(input_size[0]), int(input_size[1])), nhwc


def _output_dim(model: CustomEmbedder) -> int:
    """The embedding length, from a trial run on two grey faces; refuses outputs that are not vectors."""
    faces = torch.full((2, 3, *model.input_size), 0.5)
    try:
        with torch.no_grad():
            out = model.graph(model.prepare(faces))
    except (RuntimeError, IndexError, ValueError) as err:
        raise CustomModelError(
            f"the model failed on a batch of two {model.input_size[0]}x{model.input_size[1]} faces "
            f"(check input_size and layout): {err}"
        ) from err
    if out.ndim < 2 or out.shape[0] != 2 or sum(d != 1 for d in out.shape[1:]) > 1:
        raise CustomModelError(
            f"the model's output has shape {list(out.shape)} for 2 faces; a face-embedding model must give "
            "one vector per face ([batch, D]): choose another output (output=...)"
        )
    return math.prod(out.shape[1:])


def load_custom(
    path: str | Path | None,
    input_size: Sequence[int] | None = None,
    template: str | Sequence[Sequence[float]] = "arcface",
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    channel_order: str = "rgb",
    layout: str | None = None,
    flip: bool = False,
    cosine_threshold: float | None = None,
    output: str | None = None,
    sha256: str | None = None,
    name: str = "custom",
) -> CustomEmbedder:
    """A face embedder from the user's ONNX file or TensorFlow.js graph model, in eval mode.

    Args:
        path: the ``.onnx`` file, or the ``model.json`` of a TensorFlow.js graph model
            (its ``.bin`` shards beside it); a folder holding exactly one of them.
        input_size: ``[height, width]`` of the face crop; default: what the file declares.
        template: where the five landmarks land in the crop: ``"arcface"``, ``"dlib"``,
            ``"facenet"`` (scaled to ``input_size``) or five ``[x, y]`` pixel positions.
        mean, std: the graph sees ``(pixel - mean) / std``, pixels 0-255; numbers or
            three per-channel values in the graph's channel order.
        channel_order: ``"rgb"`` or ``"bgr"``.
        layout: ``"nchw"`` or ``"nhwc"``; default: from the declared input shape.
        flip: embedding = output(face) + output(mirrored face).
        cosine_threshold: the same-person cosine similarity (ensembles normalise each
            member's loss by it; reports use it); ``None``: unknown.
        output: the graph output to use, when it has several.
        sha256: if given, the file must have this SHA-256.
        name: the model's name in reports.

    Raises:
        WeightsUnavailableError: no path given, the file is missing, or its SHA-256 differs.
        UnsupportedOpError: the graph uses an operator the interpreters lack (all are named).
        CustomModelError: a setting is invalid, or the model does not output one vector per face.
        GraphError: the file is not a graph of a supported format.
    """
    if path is None:
        raise WeightsUnavailableError("custom model: no model file given. Set model.path=/path/to/model.onnx")
    file = _graph_file(Path(path).expanduser())
    how = "Check model.path (an .onnx file or a TensorFlow.js model.json)."
    if sha256 is not None:
        require_pinned_file(file, str(sha256).lower(), f"custom model {file.name}", how)
    elif not file.is_file():
        raise WeightsUnavailableError(f"custom model not found at {file}. {how}")
    if channel_order not in ("rgb", "bgr"):
        raise CustomModelError(f"channel_order must be rgb or bgr, got {channel_order!r}")
    graph = _load_graph(file, output)
    size, nhwc = _geometry(graph.input_shape, input_size, layout)
    model = CustomEmbedder(
        graph, size, resolve_template(template, size), 1, mean, std, channel_order == "bgr", nhwc, flip
    )
    model.embedding_dim = _output_dim(model)
    model.name = str(name)
    if cosine_threshold is not None:
        model.cosine_threshold = float(cosine_threshold)
    return model.eval()
