"""Plain untargeted L-inf PGD: push each face's embedding away from its own."""

from __future__ import annotations

import torch

from cloak.attacks.base import Attack


class PGD(Attack):
    """Minimises the cosine similarity between the cloaked and the clean embedding.

    The baseline the other attacks are measured against; with ``transform=None``
    (``transform=none`` in the configs) it is the textbook attack.
    """

    name = "pgd"

    def face_loss(self, embedding: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return (embedding * reference).sum(-1)
