"""Plain untargeted L-inf PGD: push each face's embedding away from its own."""

from __future__ import annotations

import torch

from cloak.attacks.base import Attack
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import loss_scale


class PGD(Attack):
    """Minimises the cosine similarity between the cloaked and the clean embedding.

    The baseline the other attacks are measured against; with ``transform=None``
    (``transform=none`` in the configs) it is the textbook attack.
    """

    name = "pgd"

    def face_loss(self, embedding: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return (embedding * reference).sum(-1)

    def face_margin(self, loss: torch.Tensor, model: FaceEmbedder) -> torch.Tensor | None:
        """``(threshold - cos) / (1 - threshold)``: 0 on the model's threshold, 1 one loss scale past it."""
        if model.cosine_threshold is None:
            return None
        return (model.cosine_threshold - loss) / loss_scale(model)
