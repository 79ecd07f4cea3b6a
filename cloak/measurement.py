"""Measuring a cloak: image quality against the original and how far each model's descriptor moved.

:func:`measure` reports, per face, the distance between the descriptors of the
original and the cloaked face for every model, also after a real JPEG q75
re-encode, and the image quality of the face and of the whole photo.

Big photos cost what their faces cost: :func:`measure` reads only windows around
the faces and the pixels that changed (:mod:`cloak.imaging.windows`), with the
same numbers as on the whole photo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from cloak.alignment import crop_footprint, crop_to_image_matrix, warp_crops
from cloak.attacks.base import Attack
from cloak.detection import Face
from cloak.imaging.platform import jpeg
from cloak.imaging.windows import (
    JPEG_BLOCK,
    WINDOW_MARGIN,
    Box,
    changed_boxes,
    common_grid,
    cut,
    merge_overlapping,
    window_around,
)
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble, as_ensemble
from cloak.photos.pixels import to_tensor
from cloak.quality import FACE_BOX_GROWTH, SSIM_WINDOW, face_quality, ssim_map

#: Quality of the real JPEG re-encode the report measures protection after.
REPORT_JPEG_QUALITY = 75


@dataclass
class FaceReport:
    """One cloaked face: where it is and how far each model's descriptor moved.

    ``distance[model]`` and ``distance_jpeg75[model]`` are Euclidean distances
    between the descriptors of the original and the cloaked face (the latter
    after a JPEG q75 re-encode); ``threshold[model]`` is the model's own
    same-person threshold (None when the model has none): above it, the model
    no longer matches the cloaked face to the original.

    The image quality of the face itself, measured on its box grown by
    :data:`~cloak.quality.FACE_BOX_GROWTH` (see :func:`cloak.quality.face_quality`):
    ``ssim`` (mean), ``ssim_p5`` (5th percentile of the local SSIM map: texture
    on flat skin shows there first), ``psnr`` (dB), ``perceptual`` (HaarPSI,
    1 = identical; None for faces under 16 pixels) and ``color_shift`` (mean a*b*
    distance in CIELAB after a blur, :func:`cloak.shading.color_shift`: tinted patches,
    which the others miss; 0 = same colours) and ``shading`` (:func:`cloak.shading.shading`:
    the 95th percentile of CIEDE2000 after a blur of 3% of the face's width, over the face
    with its forehead and cheeks; about 1 starts to show side by side) and ``shading_peak``
    (:func:`cloak.shading.shading_peak`: the same map at its worst pixel, where a change
    confined to the eye sockets or the side of the nose shows).

    ``margin_jpeg75[model]`` is ``distance_jpeg75 / threshold``: past 1, the model no
    longer matches the face after JPEG. ``limit_use[limit]`` is the share of each of the
    cloak's visibility limits the face used (:func:`limit_use`; 1 = all of it). ``steps``: the
    optimisation steps its cloak took; ``warm_start``: whether it started from the cloak of the
    same person's earlier face (:mod:`cloak.cloaking.reuse`); both None where not recorded.
    """

    box: list[float]
    score: float
    distance: dict[str, float] = field(default_factory=dict)
    distance_jpeg75: dict[str, float] = field(default_factory=dict)
    threshold: dict[str, float | None] = field(default_factory=dict)
    ssim: float | None = None
    ssim_p5: float | None = None
    psnr: float | None = None
    perceptual: float | None = None
    color_shift: float | None = None
    shading: float | None = None
    shading_peak: float | None = None
    margin_jpeg75: dict[str, float] = field(default_factory=dict)
    limit_use: dict[str, float] = field(default_factory=dict)
    steps: int | None = None
    warm_start: bool | None = None


def limit_use(
    face: FaceReport,
    max_shading: float | None = None,
    min_face_ssim: float | None = None,
    min_face_ssim_p5: float | None = None,
    max_shading_peak: float | None = None,
) -> dict[str, float]:
    """The share of each set visibility limit a cloaked face used: 0 = none, 1 = all of it.

    ``shading`` (``shading_peak``): its figure (its peak) over ``max_shading``
    (``max_shading_peak``); ``ssim`` and ``ssim_p5``: how far each fell below 1 over how
    far the limit lets it fall.
    """
    use = {}
    if max_shading is not None and face.shading is not None:
        use["shading"] = face.shading / max_shading
    if max_shading_peak is not None and face.shading_peak is not None:
        use["shading_peak"] = face.shading_peak / max_shading_peak
    for key, floor, value in (("ssim", min_face_ssim, face.ssim), ("ssim_p5", min_face_ssim_p5, face.ssim_p5)):
        if floor is not None and value is not None and floor < 1:
            use[key] = (1 - value) / (1 - floor)
    return {k: round(v, 4) for k, v in use.items()}


@dataclass
class PhotoReport:
    """One photo: its faces and the cloaked copy's quality against the original.

    ``ssim`` and ``psnr`` are over the whole photo; ``face_ssim`` and
    ``face_ssim_p5`` (and ``face_shading``, the largest) are those of its worst face (None without faces), which is
    where a cloak shows.
    """

    faces: list[FaceReport]
    ssim: float
    psnr: float
    face_ssim: float | None = None
    face_ssim_p5: float | None = None
    face_shading: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _members(model: FaceEmbedder | Ensemble) -> dict[str, FaceEmbedder]:
    return {name: m for name, m, _ in as_ensemble(model).items()}


@torch.no_grad()
def measure(
    original: np.ndarray,
    cloaked: np.ndarray,
    faces: Sequence[Face],
    model: FaceEmbedder | Ensemble,
    device: torch.device | str = "cpu",
    attack: Attack | None = None,
) -> PhotoReport:
    """Image quality and per-model descriptor distances of a cloaked photo against its original.

    With the ``attack`` that made the cloak, each face also says how much of its
    visibility limits it used (:attr:`FaceReport.limit_use`).

    Faces are aligned with the landmarks found in the original, so the distances
    show what the cloak did, not detector jitter.

    Only windows of the photo are read (:mod:`cloak.imaging.windows`), so a 12-megapixel
    photo costs about what its faces cost; the numbers are the whole photo's, to
    float rounding: faces far apart are measured on separate windows (re-encoded
    to JPEG on block-aligned windows, which gives the photo's own JPEG pixels
    there), and the whole-photo SSIM and PSNR on the pixels that changed, since
    every other pixel has a local SSIM of exactly 1 and no error.
    """
    original, cloaked = np.asarray(original), np.asarray(cloaked)
    reports = [FaceReport(box=[float(v) for v in f.box], score=f.score) for f in faces]
    if faces:
        members = _members(model)
        lm = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=torch.float32, device=device)
        matrices = {name: crop_to_image_matrix(lm, m.template.to(lm)) for name, m in members.items()}
        boxes = torch.as_tensor(np.stack([f.box for f in faces]), dtype=torch.float64)
        reads = _face_reads(matrices, members, boxes)
        for window, idx in _windows(reads, original.shape[:2], matrices):
            _measure_window(original, cloaked, window, idx, matrices, members, boxes, reports, device)
    for r in reports:
        r.margin_jpeg75 = {
            name: round(dist / r.threshold[name], 4)
            for name, dist in r.distance_jpeg75.items()
            if r.threshold.get(name)
        }
        if attack is not None:
            r.limit_use = limit_use(
                r, attack.max_shading, attack.min_face_ssim, attack.min_face_ssim_p5, attack.max_shading_peak
            )
    whole_ssim, whole_psnr = photo_quality(original, cloaked)
    return PhotoReport(
        faces=reports,
        ssim=whole_ssim,
        psnr=whole_psnr,
        face_ssim=min((r.ssim for r in reports), default=None),
        face_ssim_p5=min((r.ssim_p5 for r in reports), default=None),
        face_shading=max((r.shading for r in reports if r.shading is not None), default=None),
    )


def photo_quality(original: np.ndarray, cloaked: np.ndarray) -> tuple[float, float]:
    """Whole-photo SSIM and PSNR (dB) of two ``[H, W, 3]`` uint8 photos, computed where they differ.

    Equal to :func:`cloak.quality.ssim` and :func:`cloak.quality.psnr` on the whole
    photos (to float rounding): a pixel whose SSIM window (with the photo's reflect
    padding) holds no changed pixel has a local SSIM of exactly 1, and no error.
    Identical photos give ``(1.0, inf)``.
    """
    reach = SSIM_WINDOW // 2
    # Changed regions at least an SSIM window (11 px) apart, faces far apart in a large photo,
    # are measured each on its own: no pixel's window then sees two of them.
    boxes = changed_boxes(original, cloaked, min_gap=2 * reach + 1)
    if not boxes:
        return 1.0, math.inf
    size = original.shape[:2]
    pixels = size[0] * size[1]
    ssim_sum, affected_pixels, squared_error = 0.0, 0, 0.0
    for box in boxes:
        # Pixels whose SSIM can differ from 1, and the context their windows read.
        inner = window_around(box, size, margin=reach, align=1)
        outer = window_around(box, size, margin=2 * reach, align=1)
        a, b = to_tensor(cut(original, outer)), to_tensor(cut(cloaked, outer))
        local = ssim_map(a, b)[0, 0].double()
        x0, y0 = inner[0] - outer[0], inner[1] - outer[1]
        affected = local[y0 : y0 + inner[3] - inner[1], x0 : x0 + inner[2] - inner[0]]
        ssim_sum += float(affected.sum())
        affected_pixels += affected.numel()
        squared_error += float((a.double() - b.double()).pow(2).sum())
    mean_ssim = (pixels - affected_pixels + ssim_sum) / pixels
    return mean_ssim, 10.0 * math.log10(3 * pixels / squared_error)


def _face_reads(matrices: dict[str, torch.Tensor], members: dict[str, FaceEmbedder], boxes: torch.Tensor) -> list[Box]:
    """Per face, the pixels measuring reads: every model's crop and the face box grown for quality."""
    grow = (boxes[:, 2:] - boxes[:, :2]) * FACE_BOX_GROWTH / 2
    reads = torch.cat([boxes[:, :2] - grow, boxes[:, 2:] + grow], dim=1)
    for name, m in members.items():
        foot = crop_footprint(matrices[name], m.input_size).double().cpu()
        reads = torch.cat([torch.minimum(reads[:, :2], foot[:, :2]), torch.maximum(reads[:, 2:], foot[:, 2:])], dim=1)
    return [(math.floor(x0), math.floor(y0), math.ceil(x1) + 1, math.ceil(y1) + 1) for x0, y0, x1, y1 in reads.tolist()]


def _pooling_factor(matrices: torch.Tensor) -> int:
    """The k of :func:`cloak.alignment.warp_crops`' antialiasing (k x k pooling) for crops taken together."""
    k = math.floor(float(torch.linalg.det(matrices[:, :, :2]).abs().sqrt().min()))
    return k if k >= 2 else 1


def _windows(reads: list[Box], size: tuple[int, int], matrices: dict[str, torch.Tensor]) -> list[tuple[Box, list[int]]]:
    """Windows around groups of faces whose reads (with a margin) overlap: ``[(window, face indices)]``.

    A window's corner lies on JPEG's blocks and on the pooling grid of each model's
    antialiased alignment of its faces, so both see the photo's own blocks.
    """
    largest = max(_pooling_factor(m[i : i + 1]) for m in matrices.values() for i in range(len(reads)))
    margin = WINDOW_MARGIN + largest
    grown = [(x0 - margin, y0 - margin, x1 + margin, y1 + margin) for x0, y0, x1, y1 in reads]
    windows = []
    for box, idx in merge_overlapping(grown):
        rows = torch.as_tensor(idx)
        align = common_grid(JPEG_BLOCK, *(_pooling_factor(m[rows.to(m.device)]) for m in matrices.values()))
        windows.append((window_around(box, size, margin=align, align=align), idx))
    return windows


def _measure_window(
    original: np.ndarray,
    cloaked: np.ndarray,
    window: Box,
    idx: list[int],
    matrices: dict[str, torch.Tensor],
    members: dict[str, FaceEmbedder],
    boxes: torch.Tensor,
    reports: list[FaceReport],
    device: torch.device | str,
) -> None:
    """Fills the reports of faces ``idx`` from one window of the photos."""
    x0, y0 = window[:2]
    piece = np.ascontiguousarray(cut(cloaked, window))
    a, b = to_tensor(cut(original, window)).to(device), to_tensor(piece).to(device)
    jb = to_tensor(np.asarray(jpeg(Image.fromarray(piece), REPORT_JPEG_QUALITY))).to(device)
    rows = torch.as_tensor(idx, device=device)
    for name, m in members.items():
        matrix = matrices[name][rows].clone()
        matrix[:, :, 2] -= matrix.new_tensor([x0, y0])
        crops = [warp_crops(x.unsqueeze(0).expand(len(idx), -1, -1, -1), matrix, m.input_size) for x in (a, b, jb)]
        d0, d1, d2 = (m.descriptor(c) for c in crops)
        for i, dist, dist_j in zip(idx, (d1 - d0).norm(dim=1), (d2 - d0).norm(dim=1)):
            reports[i].distance[name] = float(dist)
            reports[i].distance_jpeg75[name] = float(dist_j)
            reports[i].threshold[name] = m.match_threshold
    shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float64)
    quality = face_quality(a, b, boxes[idx] - shift, growth=FACE_BOX_GROWTH)
    for i, values in zip(idx, zip(*quality)):
        r = reports[i]
        r.ssim, r.ssim_p5, r.psnr, perceptual, r.color_shift, r.shading, r.shading_peak = (float(v) for v in values)
        r.perceptual = None if np.isnan(perceptual) else perceptual
