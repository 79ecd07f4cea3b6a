"""A person's cloak reused within a run: their later faces start from it.

An album shows the same few people again and again. The first face of a person is
cloaked from the attack's usual start; the optimised variable it ends with is carried
into an aligned face frame (a similarity from the five landmarks, like the models' own
crops) and kept with the face's descriptors. A later face whose descriptors match that
person on *every* model of the ensemble (each model's own same-person threshold) starts
from that cloak, warped into its own pixels, and takes the attack's ``warm_steps``
instead of ``steps``. A face that matches nobody starts as before: one person's cloak
never starts another person's.

Only photos cloaked one face at a time (a portrait, or a face far from the others) take
part; faces cloaked together over one region start as before and are not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from cloak.alignment import align_faces, invert_affine, similarity_transform, warp_crops
from cloak.attacks import Attack, PhotoFaces
from cloak.attacks.base import CloakResult
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble, as_ensemble
from cloak.models.sface import ARCFACE_TEMPLATE

#: Side of the aligned frame a person's cloak is kept in, in pixels.
FRAME_SIZE = 224
#: The five landmarks' place in that frame: ArcFace's 112-pixel template in its middle, so
#: the frame covers twice the tight crop (the loose crops, hair and jaw included).
FRAME_TEMPLATE = ARCFACE_TEMPLATE + (FRAME_SIZE - 112) / 2
#: People kept at most (the least recently seen are forgotten first): about 0.6 MB each.
MAX_PEOPLE = 256
#: Faces a person is matched against at most: their first and their latest ones.
MAX_FACES_PER_PERSON = 16


@dataclass
class Person:
    """One person seen in this run: their faces' descriptors and their latest cloak in the frame."""

    descriptors: list[dict[str, torch.Tensor]] = field(default_factory=list)
    variable: torch.Tensor | None = None


def descriptors(ensemble: Ensemble, job: PhotoFaces) -> dict[str, torch.Tensor]:
    """Per member with a same-person threshold, the ``[F, D]`` descriptors of the job's faces."""
    out = {}
    with torch.no_grad():
        for name, model, _ in ensemble.items():
            if model.match_threshold is None:
                continue
            crops = align_faces(job.photo, job.landmarks.to(job.photo), model.template.to(job.photo), model.input_size)
            out[name] = model.descriptor(crops).float()
    return out


def same_person(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], models: dict[str, FaceEmbedder]) -> float:
    """The largest over models of distance / threshold between two faces' descriptors: <= 1 on every model is a match.

    ``inf`` when the two share no model with a threshold: nothing vouches for them.
    """
    shared = [n for n in a if n in b and models[n].match_threshold]
    if not shared:
        return float("inf")
    return max(float((a[n] - b[n]).norm()) / float(models[n].match_threshold) for n in shared)


class IdentityMemory:
    """The people of one run and their cloaks, for warm starts (see the module's docstring).

    Args:
        max_people: how many people are kept; the least recently seen is forgotten first.
    """

    def __init__(self, max_people: int = MAX_PEOPLE) -> None:
        self.max_people = int(max_people)
        self.people: OrderedDict[int, Person] = OrderedDict()
        self._next = 0

    def match(self, face: dict[str, torch.Tensor], models: dict[str, FaceEmbedder]) -> int | None:
        """The person this face matches on every model (the closest if several), or None."""
        best, best_score = None, 1.0
        for key, person in self.people.items():
            score = min((same_person(face, seen, models) for seen in person.descriptors), default=float("inf"))
            if score <= best_score:
                best, best_score = key, score
        return best

    def add(self, face: dict[str, torch.Tensor]) -> int:
        """A new person with this face; forgets the least recently seen beyond :attr:`max_people`."""
        key, self._next = self._next, self._next + 1
        self.people[key] = Person([face])
        while len(self.people) > self.max_people:
            self.people.popitem(last=False)
        return key

    def start(self, key: int, job: PhotoFaces) -> torch.Tensor | None:
        """The person's cloak warped into the job's photo pixels, ``[C, H, W]``; None if they have none yet."""
        person = self.people.get(key)
        if person is None or person.variable is None:
            return None
        to_frame = similarity_transform(job.landmarks.to(person.variable), FRAME_TEMPLATE.to(person.variable))
        return warp_crops(person.variable[None], to_frame, tuple(job.photo.shape[-2:]))[0]

    def keep(self, key: int, job: PhotoFaces, result: CloakResult, face: dict[str, torch.Tensor]) -> None:
        """Keeps the job's final variable as the person's cloak, in the frame, and the face's descriptors."""
        person = self.people.get(key)
        if person is None or result.variable is None:
            return
        x0, y0 = result.box[:2]
        landmarks = job.landmarks.to(result.variable) - result.variable.new_tensor([x0, y0])
        frame_to_region = invert_affine(similarity_transform(landmarks, FRAME_TEMPLATE.to(result.variable)))
        person.variable = warp_crops(result.variable, frame_to_region, (FRAME_SIZE, FRAME_SIZE))[0]
        if face is not person.descriptors[0]:
            person.descriptors.append(face)
            if len(person.descriptors) > MAX_FACES_PER_PERSON:  # matching stays cheap over a long album
                del person.descriptors[1]
        self.people.move_to_end(key)

    def cloak(
        self,
        attack: Attack,
        model: FaceEmbedder | Ensemble,
        jobs: Sequence[PhotoFaces],
        progress: Callable[[int], None] | None = None,
    ) -> list[CloakResult]:
        """Cloaks the jobs: first every face of a person not seen yet, then the others from their person's cloak.

        A face whose person's first face is in the same batch waits for it: it is cloaked
        in the second pass, from the cloak the first pass left.
        """
        ensemble = as_ensemble(model)
        models = {name: m for name, m, _ in ensemble.items()}
        faces = [descriptors(ensemble, j) if len(j.landmarks) == 1 else None for j in jobs]
        owners: list[int | None] = []
        first: list[int] = []
        for k, face in enumerate(faces):
            key = self.match(face, models) if face else None
            if face and key is None:
                key = self.add(face)
                first.append(k)
            owners.append(key)
        cold = [k for k in range(len(jobs)) if owners[k] is None or k in first]
        results: list[CloakResult | None] = [None] * len(jobs)
        for k, r in zip(cold, attack(model, [jobs[k] for k in cold], progress=progress)):
            results[k] = r
            if owners[k] is not None:
                self.keep(owners[k], jobs[k], r, faces[k])
        warm = [k for k in range(len(jobs)) if results[k] is None]
        starts = [replace(jobs[k], start=self.start(owners[k], jobs[k])) for k in warm]
        for k, job, r in zip(warm, starts, attack(model, starts, progress=progress)):
            results[k] = r
            self.keep(owners[k], job, r, faces[k])
        return results
