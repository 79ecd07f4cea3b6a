"""The faces ``experiment=generator`` trains and evaluates on: lfw-dev photos, one face each.

Identities are split by name (sorted): the first ``train_share`` train the generator, the rest
are held out for the evaluation. Each photo's face is the detected face nearest the photo's
centre (LFW's person); detection runs once and is cached in a ``.pt`` file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cloak.attacks import Attack, PhotoFaces
from cloak.attacks.base import Views
from cloak.attacks.budget import CloakShape, FaceBudget
from cloak.attacks.regions import Region, face_region, photo_seed
from cloak.cloaking.generator import frame_faces
from cloak.detection import FaceDetector
from cloak.photos.pixels import to_tensor

log = logging.getLogger(__name__)


@dataclass
class FacePhoto:
    """One photo and its person's face: ``photo`` ``[H, W, 3]`` uint8, ``landmarks`` ``[5, 2]``, ``box`` ``[4]``."""

    name: str
    path: str
    photo: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray


def split_identities(root: Path, train_share: float) -> tuple[list[str], list[str]]:
    """Identity folders of ``root`` sorted by name: the first ``train_share`` of them, and the rest."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    cut = round(len(names) * train_share)
    return names[:cut], names[cut:]


def _central_face(detector: FaceDetector, rgb: np.ndarray):
    faces = detector.detect(rgb)
    if not faces:
        return None
    centre = np.array([rgb.shape[1], rgb.shape[0]]) / 2
    return min(faces, key=lambda f: float(np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre)))


def collect(root: Path, names: list[str], per_person: int, detector: FaceDetector, cache: Path) -> list[FacePhoto]:
    """The first ``per_person`` photos with a face of each identity in ``names``; cached in ``cache``."""
    if cache.exists():
        saved = torch.load(cache, weights_only=False)
        if saved.get("names") == names and saved.get("per_person") == per_person:
            log.info("Faces from %s (%d)", cache, len(saved["faces"]))
            return saved["faces"]
    faces = []
    for k, name in enumerate(names):
        kept = 0
        for path in sorted((root / name).glob("*.jpg")):
            if kept >= per_person:
                break
            rgb = np.asarray(Image.open(path).convert("RGB"))
            face = _central_face(detector, rgb)
            if face is not None:
                faces.append(FacePhoto(name, str(path), rgb, face.landmarks.astype(np.float32), face.box))
                kept += 1
        if k % 50 == 0:
            log.info("Detected %d / %d identities, %d faces", k + 1, len(names), len(faces))
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"names": names, "per_person": per_person, "faces": faces}, cache)
    return faces


def job(face: FacePhoto, seed: int, start: torch.Tensor | None = None) -> PhotoFaces:
    """The attack's job for the face, as :mod:`cloak.cloaking.groups` builds a whole-photo job."""
    photo = to_tensor(face.photo)
    return PhotoFaces(
        photo,
        torch.as_tensor(face.landmarks, dtype=torch.float32)[None],
        seed=photo_seed(seed, photo),
        boxes=torch.as_tensor(face.box, dtype=torch.float64)[None],
        start=start,
    )


@dataclass
class Case:
    """What the training needs of one face, prepared once: as the attack's loop prepares a photo."""

    job: PhotoFaces
    frame: torch.Tensor
    region: Region
    clean: torch.Tensor
    shape: CloakShape
    budget: FaceBudget
    refs: dict[str, torch.Tensor] | None = None
    generator: torch.Generator | None = None


def prepare(attack: Attack, views: Views, face: FacePhoto, seed: int) -> Case:
    """One face's region, clean pixels, cloak shape, budget and shrunk frame (references come later)."""
    j = job(face, seed)
    region = face_region(j, {n: m for n, (m, _) in views.items()})
    clean = region.crop(j.photo).unsqueeze(0)
    frame = frame_faces(j.photo[None], j.landmarks)[0]
    return Case(
        job=j,
        frame=frame,
        region=region,
        clean=clean,
        shape=attack._shape(clean, region, j.boxes),
        budget=attack._budget(j, region),
        generator=torch.Generator().manual_seed(j.seed),
    )


def references(attack: Attack, views: Views, case: Case) -> dict[str, torch.Tensor]:
    """Per view, the ``[1, D]`` clean embedding the attack's loss compares against (computed once)."""
    if case.refs is None:
        case.refs = attack.references(views, attack._crops(views, [case.clean], [case.region], None))
    return case.refs
