"""The Python API: ``cloak.protect(images)`` cloaks every face and measures what it did.

Steps, each public: detect faces (:class:`~cloak.detection.FaceDetector`), cloak
them (an :class:`~cloak.attacks.Attack` on a model or ensemble), quantise to
8-bit pixels, and measure (:func:`measure`): image quality against the original
and, per model, how far each cloaked face's descriptor moved from the original,
also after a real JPEG q75 re-encode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from cloak.alignment import align_faces
from cloak.attacks import Attack, PhotoFaces, photo_seed
from cloak.detection import Face, FaceDetector
from cloak.evaluation.platform import jpeg
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble, as_ensemble
from cloak.photos import pixels, to_uint8
from cloak.quality import FACE_BOX_GROWTH, face_quality, psnr, ssim

log = logging.getLogger(__name__)

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
    on flat skin shows there first), ``psnr`` (dB) and ``perceptual`` (HaarPSI,
    1 = identical; None for faces under 16 pixels).
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


@dataclass
class PhotoReport:
    """One photo: its faces and the cloaked copy's quality against the original.

    ``ssim`` and ``psnr`` are over the whole photo; ``face_ssim`` and
    ``face_ssim_p5`` are those of its worst face (None without faces), which is
    where a cloak shows.
    """

    faces: list[FaceReport]
    ssim: float
    psnr: float
    face_ssim: float | None = None
    face_ssim_p5: float | None = None

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
    """
    a, b = to_tensor(original, device), to_tensor(cloaked, device)
    jb = to_tensor(jpeg_round_trip(cloaked), device)
    reports = [FaceReport(box=[float(v) for v in f.box], score=f.score) for f in faces]
    if faces:
        lm = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=a.dtype, device=device)
        for name, m in _members(model).items():
            crops = [align_faces(x, lm, m.template, m.input_size) for x in (a, b, jb)]
            d0, d1, d2 = (m.descriptor(c) for c in crops)
            for r, dist, dist_j in zip(reports, (d1 - d0).norm(dim=1), (d2 - d0).norm(dim=1)):
                r.distance[name] = float(dist)
                r.distance_jpeg75[name] = float(dist_j)
                r.threshold[name] = m.match_threshold
        boxes = torch.as_tensor(np.stack([f.box for f in faces]), dtype=torch.float64)
        quality = face_quality(a, b, boxes, growth=FACE_BOX_GROWTH)
        for r, values in zip(reports, zip(*quality)):
            r.ssim, r.ssim_p5, r.psnr, perceptual = (float(v) for v in values)
            r.perceptual = None if np.isnan(perceptual) else perceptual
    return PhotoReport(
        faces=reports,
        ssim=float(ssim(a.unsqueeze(0), b.unsqueeze(0))[0]),
        psnr=float(psnr(a.unsqueeze(0), b.unsqueeze(0))[0]),
        face_ssim=min((r.ssim for r in reports), default=None),
        face_ssim_p5=min((r.ssim_p5 for r in reports), default=None),
    )


def cloak_photos(
    photos: Sequence[np.ndarray],
    faces: Sequence[Sequence[Face]],
    attack: Attack,
    model: FaceEmbedder | Ensemble,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Cloaks the given faces of several photos in one batch; photos without faces come back unchanged."""
    jobs, index = [], []
    for i, (photo, found) in enumerate(zip(photos, faces)):
        if found:
            tensor = to_tensor(photo, device)
            landmarks = torch.as_tensor(np.stack([f.landmarks for f in found]), dtype=tensor.dtype, device=device)
            boxes = torch.as_tensor(np.stack([f.box for f in found]), dtype=torch.float64)
            jobs.append(PhotoFaces(tensor, landmarks, seed=photo_seed(attack.seed, tensor), boxes=boxes))
            index.append(i)
    out = [np.array(p, copy=True) for p in photos]
    for i, result in zip(index, attack(model, jobs, progress=progress)):
        out[i] = to_uint8(result.photo)
    return out


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
