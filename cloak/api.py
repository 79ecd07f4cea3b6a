"""The Python API: ``cloak.protect(images)`` cloaks every face and measures what it did.

Steps, each public: detect faces (:class:`~cloak.detection.FaceDetector`), cloak
them (:func:`cloak.cloaking.groups.cloak_photos`: an :class:`~cloak.attacks.Attack`
on a model or ensemble), quantise to 8-bit pixels, and measure
(:func:`cloak.measurement.measure`): image quality against the original and, per
model, how far each cloaked face's descriptor moved from the original, also after
a real JPEG q75 re-encode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cloak.attacks import Attack
from cloak.cloaking.groups import cloak_photos
from cloak.detection import FaceDetector
from cloak.measurement import PhotoReport, measure
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble


@dataclass
class Protected:
    """A cloaked photo (``[H, W, 3]`` uint8 RGB) and its report."""

    image: np.ndarray
    report: PhotoReport


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
    return [Protected(c, measure(p, c, f, model, torch_device, attack)) for p, c, f in zip(photos, cloaked, faces)]
