"""Cloaking several photos in one batch: faces grouped, each group on a window of its photo.

A photo's faces are cloaked together over one region around them; faces far
apart are cloaked as separate groups, each on a window of the photo around it
with its own seed (:mod:`cloak.imaging.windows`), and large faces on a shrunk
copy (:mod:`cloak.cloaking.working_scale`). Big photos cost what their faces cost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cloak.attacks import Attack, PhotoFaces
from cloak.attacks.regions import face_region
from cloak.cloaking.reuse import IdentityMemory
from cloak.cloaking.working_scale import enlarge_cloak, shrink_job, working_factor
from cloak.detection import Face
from cloak.imaging.windows import JPEG_BLOCK, WINDOW_MARGIN, Box, cut, merge_overlapping, window_around
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble, as_ensemble
from cloak.photos.pixels import to_tensor, to_uint8

#: A photo with one group of faces is cloaked on a window around it only when the photo
#: has at least this many times the window's pixels (a big photo); smaller photos are
#: cloaked whole, exactly as before windows.
WINDOW_MIN_SHARE = 4


def cloak_photos(
    photos: Sequence[np.ndarray],
    faces: Sequence[Sequence[Face]],
    attack: Attack,
    model: FaceEmbedder | Ensemble,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    steps_taken: list[int] | None = None,
    memory: IdentityMemory | None = None,
    face_steps: list[list[FaceSteps]] | None = None,
) -> list[np.ndarray]:
    """Cloaks the given faces of several photos in one batch; photos without faces come back unchanged.

    A photo's faces are cloaked together over one region around them. Faces whose
    regions lie apart (people at both ends of a group photo) are cloaked as
    separate groups instead, each on a window of the photo around it with its own
    seed, so the optimisation never touches the pixels between them. Faces larger than
    ``attack.work_scale`` photo pixels per model pixel are cloaked on a shrunk copy of
    their window, the cloak enlarged back to full resolution (:mod:`cloak.cloaking.working_scale`).

    Args:
        photos: ``[H, W, 3]`` uint8 RGB photos.
        faces: the faces to cloak in each photo.
        attack, model: the attack and the model or ensemble it runs against.
        device: where the photos are cloaked.
        progress: called with the number of steps done (for a progress bar).
        steps_taken: if given, receives each photo's optimisation steps (the most any
            of its groups took; fewer than ``attack.steps`` when it stopped early, 0
            without faces).
        memory: the run's people and their cloaks (:class:`~cloak.cloaking.reuse.IdentityMemory`):
            a face of a person seen before starts from their cloak; None: every face starts
            from the attack's own start, as the photo would alone.
        face_steps: if given, receives per photo, per face, the steps its cloak took and
            whether it started from its person's cloak.
    """
    view_models = {name: m for name, (m, _) in attack.views(as_ensemble(model)).items()}
    jobs, places = [], []
    for i, (photo, found) in enumerate(zip(photos, faces)):
        if found:
            for job, window, rows in _jobs(photo, found, attack.seed, view_models, device):
                jobs.append(job)
                places.append((i, window, rows))
    # Large faces are cloaked on shrunk copies; their cloaks come back at full resolution.
    factors = [working_factor(job, view_models, attack.work_scale) if attack.work_scale else 1.0 for job in jobs]
    work = [shrink_job(job, f) if f < 1 else job for job, f in zip(jobs, factors)]
    results = (
        memory.cloak(attack, model, work, progress) if memory is not None else attack(model, work, progress=progress)
    )
    results = [enlarge_cloak(attack, job, w, r) if w is not job else r for job, w, r in zip(jobs, work, results)]
    out = [np.array(p, copy=True) for p in photos]
    steps = [0] * len(photos)
    per_face: list[list[FaceSteps]] = [[FaceSteps(0, False)] * len(f) for f in faces]
    for (i, window, rows), result in zip(places, results):
        steps[i] = max(steps[i], result.steps)
        for row in rows:
            per_face[i][row] = FaceSteps(result.steps, result.warm)
        if window is None:
            out[i] = to_uint8(result.photo)
            continue
        # Only the group's own region changed: paste it back at its place in the photo.
        rx0, ry0, rx1, ry1 = result.box
        x0, y0 = window[:2]
        out[i][y0 + ry0 : y0 + ry1, x0 + rx0 : x0 + rx1] = to_uint8(result.photo[:, ry0:ry1, rx0:rx1])
    if steps_taken is not None:
        steps_taken[:] = steps
    if face_steps is not None:
        face_steps[:] = per_face
    return out


@dataclass(frozen=True)
class FaceSteps:
    """The optimisation steps one face's cloak took, and whether it started from its person's cloak."""

    steps: int
    warm: bool


def _jobs(
    photo: np.ndarray,
    found: Sequence[Face],
    seed: int,
    models: dict[str, FaceEmbedder],
    device: torch.device | str,
) -> list[tuple[PhotoFaces, Box | None, list[int]]]:
    """A photo's attack jobs, each with the window it was cut from (None: the whole photo) and its faces' indices.

    Faces far apart: one window per group, each with its own seed. One group on a
    photo much larger than it (:data:`WINDOW_MIN_SHARE`): one window with the photo's
    seed, the same cloak as on the whole photo up to float rounding. Otherwise the
    whole photo, exactly as the attack would cloak it alone.
    """
    h, w = photo.shape[:2]
    # face_region reads only a photo's size, dtype and device: no pixels are converted for grouping.
    shape_only = torch.zeros((), dtype=torch.float32, device=device).expand(3, h, w)
    landmarks = torch.as_tensor(np.stack([f.landmarks for f in found]), dtype=torch.float32, device=device)
    boxes = torch.as_tensor(np.stack([f.box for f in found]), dtype=torch.float64)
    base = pixels_seed(seed, photo)
    groups = _face_groups(shape_only, landmarks, models)
    windows = [window_around(region, (h, w), margin=WINDOW_MARGIN, align=JPEG_BLOCK) for region, _ in groups]
    if len(groups) == 1 and h * w < WINDOW_MIN_SHARE * _area(windows[0]):
        whole = PhotoFaces(to_tensor(photo).to(device), landmarks, seed=base, boxes=boxes)
        return [(whole, None, list(range(len(found))))]
    jobs = []
    for k, ((_, idx), window) in enumerate(zip(groups, windows)):
        x0, y0 = window[:2]
        piece = to_tensor(np.ascontiguousarray(cut(photo, window))).to(device)
        rows = torch.as_tensor(idx, device=landmarks.device)
        shift = torch.tensor([x0, y0], dtype=landmarks.dtype, device=landmarks.device)
        box_shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float64)
        part_seed = base if len(groups) == 1 else _group_seed(base, k)
        job = PhotoFaces(piece, landmarks[rows] - shift, seed=part_seed, boxes=boxes[idx] - box_shift)
        jobs.append((job, window, list(idx)))
    return jobs


def pixels_seed(seed: int, photo: np.ndarray) -> int:
    """:func:`~cloak.attacks.photo_seed` of a ``[H, W, 3]`` uint8 photo, without converting it whole.

    Hashes the bytes of ``to_tensor(photo)`` (float32 planes R, G, B) a few rows at
    a time, so a 12-megapixel photo needs no 144 MB float copy to seed its cloak.
    """
    digest = hashlib.blake2b(digest_size=8)
    h, w = photo.shape[:2]
    rows = max(1, (1 << 20) // max(1, w))
    for channel in range(3):
        for y in range(0, h, rows):
            digest.update((photo[y : y + rows, :, channel].astype(np.float32) / 255.0).tobytes())
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little") & ((1 << 62) - 1)


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _face_groups(
    shape: torch.Tensor, landmarks: torch.Tensor, models: dict[str, FaceEmbedder]
) -> list[tuple[Box, list[int]]]:
    """Groups of faces whose cloak regions (:func:`~cloak.attacks.regions.face_region`) come within a block."""
    regions = [face_region(PhotoFaces(shape, landmarks[i : i + 1]), models).box for i in range(len(landmarks))]
    grown = [(x0 - JPEG_BLOCK, y0 - JPEG_BLOCK, x1 + JPEG_BLOCK, y1 + JPEG_BLOCK) for x0, y0, x1, y1 in regions]
    groups = merge_overlapping(grown)
    return [(_bounds([regions[i] for i in idx]), idx) for _, idx in groups]


def _bounds(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _group_seed(seed: int, group: int) -> int:
    """The seed of one group of a photo's faces, from the photo's seed."""
    digest = hashlib.blake2b(int(seed).to_bytes(8, "little") + int(group).to_bytes(8, "little"), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & ((1 << 62) - 1)
