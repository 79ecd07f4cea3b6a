"""Cloaking large faces on a smaller copy, and the cloak pasted back at full resolution.

A face 750 pixels wide in a 12-megapixel photo reaches the models as a 112-150
pixel crop; the cloak is smoothed at 1.5 model-input pixels
(``attack.perturbation_sigma``), so nothing it holds is finer than a few of the
photo's pixels at that size. Optimising it on the photo's own pixels spends every
step's distortions, smoothing and SSIM on millions of pixels that carry no more
of it. Instead, a job whose faces are larger than ``attack.work_scale`` photo
pixels per model pixel is cloaked on a copy shrunk (with antialiasing) to that
scale; the *perturbation*, never the shrunk photo, is then enlarged (bilinear,
so its per-pixel L-inf bound still holds) and added to the full-resolution
pixels, and the perceptual budget is enforced again there, on the pixels that
are saved (:meth:`~cloak.attacks.budget.FaceBudget.shrink`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cloak.attacks import Attack, PhotoFaces
from cloak.attacks.base import CloakResult
from cloak.attacks.regions import face_region
from cloak.models.base import FaceEmbedder
from cloak.quality import dssim


def working_factor(job: PhotoFaces, models: dict[str, FaceEmbedder], work_scale: float) -> float:
    """How much to shrink a job so its smallest face has at most ``work_scale`` photo pixels per model pixel.

    1 when its faces are small enough already (every LFW photo): the job is cloaked as it is.
    """
    return min(1.0, work_scale / face_region(job, models).model_pixel_scale)


def shrink_job(job: PhotoFaces, factor: float) -> PhotoFaces:
    """The job on a copy of its photo shrunk by ``factor`` (< 1), faces moved with it; same seed.

    The copy is antialiased and rounded to 8-bit levels, like a decoded photo.
    """
    _, h, w = job.photo.shape
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    small = F.interpolate(job.photo[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    small = (small * 255).round().clamp(0, 255) / 255
    sx, sy = size[1] / w, size[0] / h
    # Pixel centres: x_small + 0.5 = (x + 0.5) * sx (interpolate's align_corners=False grid).
    scale = torch.tensor([sx, sy], dtype=job.landmarks.dtype, device=job.landmarks.device)
    landmarks = (job.landmarks + 0.5) * scale - 0.5
    boxes = None
    if job.boxes is not None:
        boxes = torch.as_tensor(job.boxes, dtype=torch.float64) * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    return PhotoFaces(small, landmarks, seed=job.seed, boxes=boxes)


def enlarge_cloak(attack: Attack, job: PhotoFaces, small: PhotoFaces, result: CloakResult) -> CloakResult:
    """The cloak ``attack`` made on ``small`` (:func:`shrink_job` of ``job``), applied to ``job`` at full resolution.

    The perturbation and its bound are enlarged bilinearly (a convex mix of
    neighbours, so ``|delta| <= bound`` still holds), then the attack's budget is
    enforced on the full-resolution region and the result quantised to 8 bits.
    """
    _, h, w = job.photo.shape
    _, hs, ws = small.photo.shape
    x0, y0, x1, y1 = result.box
    delta = result.photo - small.photo
    bound = torch.zeros(1, 1, hs, ws, dtype=delta.dtype, device=delta.device)
    bound[..., y0:y1, x0:x1] = result.bound if result.bound is not None else attack.eps
    delta, bound = (
        F.interpolate(t if t.ndim == 4 else t[None], size=(h, w), mode="bilinear", align_corners=False)
        for t in (delta, bound)
    )
    # The region at full resolution: the small one's pixels, rounded outwards.
    box = (
        max(0, math.floor(x0 * w / ws)),
        max(0, math.floor(y0 * h / hs)),
        min(w, math.ceil(x1 * w / ws)),
        min(h, math.ceil(y1 * h / hs)),
    )
    bx0, by0, bx1, by1 = box
    clean = job.photo[None, :, by0:by1, bx0:bx1]
    boxes = None
    if job.boxes is not None:
        shift = torch.tensor([bx0, by0, bx0, by0], dtype=torch.float64)
        boxes = torch.as_tensor(job.boxes, dtype=torch.float64).reshape(-1, 4).cpu() - shift
    budget = attack.face_budget(boxes, (by1 - by0, bx1 - bx0))
    region_bound = bound[..., by0:by1, bx0:bx1]
    final = budget.shrink(clean, delta[..., by0:by1, bx0:bx1], region_bound)
    photo = job.photo.clone()
    photo[:, by0:by1, bx0:bx1] = final[0]
    return CloakResult(
        photo=photo,
        box=box,
        dssim=float(dssim(final, clean)[0]),
        loss=result.loss,
        bound=region_bound[0],
        steps=result.steps,
        variable=result.variable,
        warm=result.warm,
    )
