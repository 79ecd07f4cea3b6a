"""Large faces are cloaked on a shrunk copy; the cloak comes back at full resolution, within its bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_face

from cloak.alignment import align_faces
from cloak.attacks import PGD, PhotoFaces
from cloak.cloaking.groups import cloak_photos
from cloak.cloaking.working_scale import shrink_job, working_factor
from cloak.detection import Face
from cloak.photos import to_tensor
from cloak.quality import face_quality


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth shading with mild noise: a face-sized structure the tiny model can read at any scale."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 110 + 50 * np.sin(x / 23.0)[..., None] * np.cos(y / 31.0)[..., None] + g.normal(0, 4, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _job(photo: np.ndarray, faces: list[Face]) -> PhotoFaces:
    landmarks = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=torch.float32)
    boxes = torch.as_tensor(np.stack([f.box for f in faces]), dtype=torch.float64)
    return PhotoFaces(to_tensor(photo), landmarks, seed=3, boxes=boxes)


def test_small_faces_are_cloaked_as_they_are(tiny_embedder):
    model = tiny_embedder(dtype=torch.float32)
    job = _job(_photo(120, 160), [tiny_face(40.0, 30.0, scale=1.5)])
    assert working_factor(job, {"model": model}, work_scale=2.0) == 1.0


def test_a_shrunk_job_shows_the_model_the_same_face(tiny_embedder):
    model = tiny_embedder(dtype=torch.float32)
    job = _job(_photo(480, 640, seed=1), [tiny_face(200.3, 120.7, scale=12.0)])
    factor = working_factor(job, {"model": model}, work_scale=2.0)
    assert factor == pytest.approx(2.0 / 12.0, rel=1e-3)
    small = shrink_job(job, factor)
    assert small.photo.shape[-2:] == (80, 107)
    assert torch.equal(small.photo, (small.photo * 255).round() / 255)  # on the 8-bit grid, like a decoded photo
    assert small.seed == job.seed
    full_crop = align_faces(job.photo, job.landmarks, model.template, model.input_size)
    small_crop = align_faces(small.photo, small.landmarks, model.template, model.input_size)
    assert (full_crop - small_crop).abs().mean() < 0.01
    # Boxes follow the photo: the face box holds the same share of it.
    assert torch.allclose(
        small.boxes / torch.tensor([107, 80, 107, 80]), job.boxes / torch.tensor([640, 480, 640, 480]), atol=2e-3
    )


def test_a_large_face_is_cloaked_at_full_resolution_within_its_bounds(tiny_embedder):
    model = tiny_embedder(dtype=torch.float32)
    photo = _photo(480, 640, seed=2)
    faces = [tiny_face(200.3, 120.7, scale=12.0)]
    eps = 8.0
    attack = PGD(eps=eps, steps=6, max_dssim=None, min_face_ssim=0.97, transform=None, work_scale=2.0)
    [cloaked] = cloak_photos([photo], [faces], attack, model)
    changed = np.abs(cloaked.astype(int) - photo.astype(int))
    assert changed.max() <= eps and changed.max() > 0
    # Only around the face: the rows and columns far from it keep every pixel.
    assert (changed[:, :120] == 0).all() and (changed[:, 470:] == 0).all()
    # The face budget holds on the saved full-resolution pixels.
    quality = face_quality(to_tensor(photo), to_tensor(cloaked), torch.as_tensor(np.stack([f.box for f in faces])))
    assert float(quality.ssim[0]) >= 0.97
    # And the model, reading the full-resolution photo, sees the face moved about as far as on the copy.
    job = _job(photo, faces)
    crops = [align_faces(to_tensor(p), job.landmarks, model.template, model.input_size) for p in (photo, cloaked)]
    with torch.no_grad():
        moved = float((model(crops[1]) - model(crops[0])).norm())
    untouched = PGD(eps=eps, steps=6, max_dssim=None, min_face_ssim=0.97, transform=None, work_scale=None)
    [direct] = cloak_photos([photo], [faces], untouched, model)
    with torch.no_grad():
        direct_moved = float(
            (
                model(align_faces(to_tensor(direct), job.landmarks, model.template, model.input_size)) - model(crops[0])
            ).norm()
        )
    assert moved > 0.5 * direct_moved > 0


def test_work_scale_below_one_is_refused():
    with pytest.raises(ValueError, match="work_scale"):
        PGD(eps=8.0, steps=2, work_scale=0.5)
