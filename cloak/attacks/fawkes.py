"""Fawkes (Shan et al., USENIX Security 2020): pull each face toward a target identity far from its own."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cloak.alignment import align_faces
from cloak.attacks.base import Attack, Views
from cloak.detection import FaceDetector

log = logging.getLogger(__name__)


class Fawkes(Attack):
    """Targeted: minimises the distance between each cloaked face's embedding and a target's.

    Where targets come from:

    - ``target_dir`` (a folder of photos of *other* people, e.g. public-domain
      portraits): every face found there is a candidate, and each face gets the
      candidate whose embedding is farthest from its own, as Fawkes picks the
      farthest target identity.
    - otherwise, a synthetic target per model: one seeded random direction of
      the model's identity space, shared by all faces and made orthogonal to
      each face's own embedding (as far from the person as a stranger
      typically is). Shared, so all of a person's photos move the same way.

    Args:
        target_dir: optional folder of target face photos.
        detector: finds the faces in ``target_dir`` (the run's configured detector;
            the builder passes it). Needed only with ``target_dir``.
        **kwargs: see :class:`~cloak.attacks.base.Attack`.
    """

    name = "fawkes"

    def __init__(self, target_dir: str | Path | None = None, detector: FaceDetector | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target_dir = Path(target_dir).expanduser() if target_dir else None
        if self.target_dir is not None and not self.target_dir.is_dir():
            raise FileNotFoundError(f"fawkes target_dir {self.target_dir} is not a folder of face photos")
        if self.target_dir is not None and detector is None:
            raise ValueError("fawkes with a target_dir needs a face detector (the builder passes the configured one)")
        self.detector = detector

    def references(self, views: Views, clean_crops: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            own = {name: model(clean_crops[name]) for name, (model, _) in views.items()}
            candidates = self._candidate_embeddings(views, next(iter(own.values())))
            if candidates is None:
                return {name: _shared_direction_targets(e, self.seed + i) for i, (name, e) in enumerate(own.items())}
            # Farthest candidate on average over the views (cosine similarity, lower = farther).
            sim = sum(own[name] @ candidates[name].T for name in views) / len(views)
            pick = sim.argmin(dim=1)
            return {name: candidates[name][pick] for name in views}

    def face_loss(self, embedding: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return 1.0 - (embedding * reference).sum(-1)

    def _candidate_embeddings(self, views: Views, like: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if self.target_dir is None:
            return None
        from cloak.photos import find_photos, load_photo, to_tensor

        out: dict[str, list[torch.Tensor]] = {name: [] for name in views}
        for path in find_photos(self.target_dir).photos:
            rgb = load_photo(path).rgb
            faces = self.detector.detect(rgb)
            if not faces:
                continue
            photo = to_tensor(rgb).to(like)
            lm = torch.as_tensor(np.stack([faces[0].landmarks]), dtype=like.dtype, device=like.device)
            for name, (model, _) in views.items():
                out[name].append(model(align_faces(photo, lm, model.template, model.input_size)))
        if not next(iter(out.values())):
            log.warning("No faces found in fawkes target_dir %s; using synthetic targets", self.target_dir)
            return None
        return {name: torch.cat(e) for name, e in out.items()}


def _shared_direction_targets(own: torch.Tensor, seed: int) -> torch.Tensor:
    """One seeded random direction for every face, made orthogonal to each face's own embedding.

    Sharing the direction matters: a tracker's classifier learns where a person's
    photos cluster, and cloaks that scatter them in random directions leave the
    cluster's centre, and so the person, where it was. All faces pulled toward
    one point move that centre.
    """
    r = torch.randn(own.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(own)
    r = r.expand_as(own) - (own @ r).unsqueeze(1) * own
    return torch.nn.functional.normalize(r, dim=-1)
