"""The Python API: ``cloak.protect(images)`` cloaks every face and measures what it did.

Steps, each public: detect faces (:class:`~cloak.detection.FaceDetector`), cloak
them (an :class:`~cloak.attacks.Attack` on a model or ensemble), quantise to
8-bit pixels, and measure (:func:`measure`): image quality against the original
and, per model, how far each cloaked face's descriptor moved from the original,
also after a real JPEG q75 re-encode.

Big photos cost what their faces cost: faces far apart are cloaked as separate
groups, each on a window of the photo around it (:func:`cloak_photos`), and
:func:`measure` reads only windows around the faces and the pixels that changed
(:mod:`cloak.windows`), with the same numbers as on the whole photo.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from cloak.alignment import crop_footprint, crop_to_image_matrix, warp_crops
from cloak.attacks import Attack, PhotoFaces
from cloak.attacks.regions import face_region
from cloak.detection import Face, FaceDetector
from cloak.evaluation.platform import jpeg
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble, as_ensemble
from cloak.photos import pixels, to_uint8
from cloak.quality import FACE_BOX_GROWTH, SSIM_WINDOW, face_quality, ssim_map
from cloak.windows import JPEG_BLOCK, Box, changed_boxes, common_grid, cut, merge_overlapping, window_around
from cloak.working_scale import enlarge_cloak, shrink_job, working_factor

log = logging.getLogger(__name__)

#: Quality of the real JPEG re-encode the report measures protection after.
REPORT_JPEG_QUALITY = 75

#: Pixels kept around what a window is cut for: JPEG's chroma upsampling, the bilinear
#: sampling of the alignment and the robust attacks' jitter reach a little beyond it.
WINDOW_MARGIN = 2 * JPEG_BLOCK

#: A photo with one group of faces is cloaked on a window around it only when the photo
#: has at least this many times the window's pixels (a big photo); smaller photos are
#: cloaked whole, exactly as before windows.
WINDOW_MIN_SHARE = 4


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
    distance in CIELAB after a blur, :func:`cloak.quality.color_shift`: tinted patches,
    which the others miss; 0 = same colours) and ``shading`` (:func:`cloak.shading.shading`:
    the 95th percentile of CIEDE2000 after a blur of 3% of the face's width, over the face
    with its forehead and cheeks; about 1 starts to show side by side).
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


@dataclass
class Protected:
    """A cloaked photo (``[H, W, 3]`` uint8 RGB) and its report."""

    image: np.ndarray
    report: PhotoReport


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` float32 in ``[0, 1]`` on ``device``."""
    return pixels.to_tensor(np.asarray(image)).to(device)


def jpeg_round_trip(image: np.ndarray, quality: int = REPORT_JPEG_QUALITY) -> np.ndarray:
    """A real (PIL, 4:2:0) JPEG encode and decode, as platforms do (:func:`cloak.evaluation.platform.jpeg`)."""
    return np.asarray(jpeg(Image.fromarray(image), quality))


def _members(model: FaceEmbedder | Ensemble) -> dict[str, FaceEmbedder]:
    return {name: m for name, m, _ in as_ensemble(model).items()}


@torch.no_grad()
def measure(
    original: np.ndarray,
    cloaked: np.ndarray,
    faces: Sequence[Face],
    model: FaceEmbedder | Ensemble,
    device: torch.device | str = "cpu",
) -> PhotoReport:
    """Image quality and per-model descriptor distances of a cloaked photo against its original.

    Faces are aligned with the landmarks found in the original, so the distances
    show what the cloak did, not detector jitter.

    Only windows of the photo are read (:mod:`cloak.windows`), so a 12-megapixel
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
    a, b = to_tensor(cut(original, window), device), to_tensor(piece, device)
    jb = to_tensor(jpeg_round_trip(piece), device)
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
        r.ssim, r.ssim_p5, r.psnr, perceptual, r.color_shift, r.shading = (float(v) for v in values)
        r.perceptual = None if np.isnan(perceptual) else perceptual


def cloak_photos(
    photos: Sequence[np.ndarray],
    faces: Sequence[Sequence[Face]],
    attack: Attack,
    model: FaceEmbedder | Ensemble,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    steps_taken: list[int] | None = None,
) -> list[np.ndarray]:
    """Cloaks the given faces of several photos in one batch; photos without faces come back unchanged.

    A photo's faces are cloaked together over one region around them. Faces whose
    regions lie apart (people at both ends of a group photo) are cloaked as
    separate groups instead, each on a window of the photo around it with its own
    seed, so the optimisation never touches the pixels between them. Faces larger than
    ``attack.work_scale`` photo pixels per model pixel are cloaked on a shrunk copy of
    their window, the cloak enlarged back to full resolution (:mod:`cloak.working_scale`).

    Args:
        photos: ``[H, W, 3]`` uint8 RGB photos.
        faces: the faces to cloak in each photo.
        attack, model: the attack and the model or ensemble it runs against.
        device: where the photos are cloaked.
        progress: called with the number of steps done (for a progress bar).
        steps_taken: if given, receives each photo's optimisation steps (the most any
            of its groups took; fewer than ``attack.steps`` when it stopped early, 0
            without faces).
    """
    view_models = {name: m for name, (m, _) in attack.views(as_ensemble(model)).items()}
    jobs, places = [], []
    for i, (photo, found) in enumerate(zip(photos, faces)):
        if found:
            for job, window in _jobs(photo, found, attack.seed, view_models, device):
                jobs.append(job)
                places.append((i, window))
    # Large faces are cloaked on shrunk copies; their cloaks come back at full resolution.
    factors = [working_factor(job, view_models, attack.work_scale) if attack.work_scale else 1.0 for job in jobs]
    work = [shrink_job(job, f) if f < 1 else job for job, f in zip(jobs, factors)]
    results = attack(model, work, progress=progress)
    results = [enlarge_cloak(attack, job, w, r) if w is not job else r for job, w, r in zip(jobs, work, results)]
    out = [np.array(p, copy=True) for p in photos]
    steps = [0] * len(photos)
    for (i, window), result in zip(places, results):
        steps[i] = max(steps[i], result.steps)
        if window is None:
            out[i] = to_uint8(result.photo)
            continue
        # Only the group's own region changed: paste it back at its place in the photo.
        rx0, ry0, rx1, ry1 = result.box
        x0, y0 = window[:2]
        out[i][y0 + ry0 : y0 + ry1, x0 + rx0 : x0 + rx1] = to_uint8(result.photo[:, ry0:ry1, rx0:rx1])
    if steps_taken is not None:
        steps_taken[:] = steps
    return out


def _jobs(
    photo: np.ndarray,
    found: Sequence[Face],
    seed: int,
    models: dict[str, FaceEmbedder],
    device: torch.device | str,
) -> list[tuple[PhotoFaces, Box | None]]:
    """A photo's attack jobs, each with the window it was cut from (None: the whole photo).

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
        return [(PhotoFaces(to_tensor(photo, device), landmarks, seed=base, boxes=boxes), None)]
    jobs = []
    for k, ((_, idx), window) in enumerate(zip(groups, windows)):
        x0, y0 = window[:2]
        piece = to_tensor(np.ascontiguousarray(cut(photo, window)), device)
        rows = torch.as_tensor(idx, device=landmarks.device)
        shift = torch.tensor([x0, y0], dtype=landmarks.dtype, device=landmarks.device)
        box_shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float64)
        part_seed = base if len(groups) == 1 else _group_seed(base, k)
        jobs.append((PhotoFaces(piece, landmarks[rows] - shift, seed=part_seed, boxes=boxes[idx] - box_shift), window))
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


def protect(
    images: np.ndarray | Sequence[np.ndarray],
    *,
    attack: Attack | None = None,
    model: FaceEmbedder | Ensemble | None = None,
    detector: FaceDetector | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
) -> list[Protected]:
    """Cloaks every face in the given photos.

    Args:
        images: one ``[H, W, 3]`` uint8 RGB array or a sequence of them.
        attack, model, detector: ready objects; whichever is missing is built from
            the default config with ``overrides`` (e.g. ``["strength=high"]``).
        overrides: Hydra overrides for the missing parts.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``.

    Returns:
        One :class:`Protected` per image, in order.
    """
    from cloak.builders import build

    single = isinstance(images, np.ndarray) and images.ndim == 3
    photos = [images] if single else list(images)
    for i, p in enumerate(photos):
        if not (isinstance(p, np.ndarray) and p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8):
            raise ValueError(f"image {i} must be an [H, W, 3] uint8 RGB array, got {getattr(p, 'shape', type(p))}")
    parts = build(
        [*overrides, f"device={device}"],
        need_attack=attack is None,
        need_model=model is None,
        need_detector=detector is None,
    )
    attack, model, detector = attack or parts.attack, model or parts.model, detector or parts.detector
    torch_device = parts.device
    model = model.to(torch_device)
    faces = detector.detect_many(photos)
    cloaked = cloak_photos(photos, faces, attack, model, torch_device)
    return [Protected(c, measure(p, c, f, model, torch_device)) for p, c, f in zip(photos, cloaked, faces)]
