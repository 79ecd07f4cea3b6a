"""The one interface every face embedder implements."""

from __future__ import annotations

import math

import torch
from torch import nn


class FaceEmbedder(nn.Module):
    """Maps aligned face crops to L2-normalised identity embeddings.

    Subclasses declare where the five MTCNN landmarks must land in their input
    crop (``template``), so that :mod:`cloak.alignment` can warp any photo into
    the model's input differentiably. Weights are never loaded behind the
    caller's back: constructors build the network, loading is explicit.

    Attributes:
        input_size: ``(height, width)`` of the crops :meth:`forward` expects.
        template: ``[5, 2]`` float tensor, ``(x, y)`` pixel coordinates in the
            crop (pixel centres at integer coordinates) of left eye, right eye,
            nose tip, left and right mouth corner, "left" meaning the image's
            left, as MTCNN orders its landmarks.
        embedding_dim: length ``D`` of the embedding.

    Shape:
        - Input: ``[B, 3, H, W]`` RGB in ``[0, 1]`` with ``(H, W) == input_size``.
        - Output: ``[B, D]``, unit L2 norm.
    """

    input_size: tuple[int, int]
    embedding_dim: int
    #: Short name used in reports and as the member name of an ensemble of one.
    name: str = "model"
    #: Cosine similarity of two :meth:`forward` embeddings at the same-person threshold.
    #: Ensembles divide each member's loss by ``1 - cosine_threshold`` (how far a face must
    #: move to stop matching itself), so a model whose embeddings crowd together does not
    #: drown in one whose embeddings spread out. ``None``: no normalisation.
    cosine_threshold: float | None = None

    @property
    def match_threshold(self) -> float | None:
        """Distance between two :meth:`descriptor` outputs above which the model calls two faces different people.

        Derived from :attr:`cosine_threshold`: the descriptor is the unit embedding by
        default, where a Euclidean distance ``d`` and a cosine ``c`` satisfy
        ``d**2 = 2 - 2 c``. A model whose descriptor is another vector (dlib's raw
        descriptor) sets its own.
        """
        if self.cosine_threshold is None:
            return None
        return math.sqrt(2.0 - 2.0 * self.cosine_threshold)

    def __init__(self, input_size: tuple[int, int], template: torch.Tensor, embedding_dim: int) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.embedding_dim = int(embedding_dim)
        template = torch.as_tensor(template, dtype=torch.float32)
        if template.shape != (5, 2):
            raise ValueError(f"template must have shape [5, 2], got {list(template.shape)}")
        # A buffer so it follows .to(device) but is not a trainable weight.
        self.register_buffer("template", template, persistent=False)

    def check_input(self, faces: torch.Tensor) -> None:
        """Raises a clear error unless ``faces`` is ``[B, 3, *input_size]``."""
        if faces.ndim != 4 or faces.shape[1] != 3 or tuple(faces.shape[-2:]) != self.input_size:
            raise ValueError(
                f"{type(self).__name__} expects faces of shape [B, 3, {self.input_size[0]}, "
                f"{self.input_size[1]}], got {list(faces.shape)}"
            )

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Unnormalised embedding; subclasses implement this."""
        raise NotImplementedError

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        self.check_input(faces)
        return nn.functional.normalize(self.embed(faces), dim=-1)

    def descriptor(self, faces: torch.Tensor) -> torch.Tensor:
        """The vector :attr:`match_threshold` applies to (Euclidean); the normalised embedding by default."""
        return self(faces)
