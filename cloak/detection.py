"""Face detection: every face in a photo, with its box, score and five landmarks.

A pipeline of public steps in the spirit of facenet-pytorch's MTCNN:
:meth:`FaceDetector.detect` finds candidate faces, :func:`select_faces` keeps
the ones worth cloaking. Alignment to a model's input lives in
:mod:`cloak.alignment`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cloak.device import resolve_device


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the photo it was found in.

    Attributes:
        box: ``[4]`` float array ``(x1, y1, x2, y2)``.
        score: detector confidence in ``[0, 1]``.
        landmarks: ``[5, 2]`` float array of ``(x, y)``: left eye, right eye, nose,
            left and right mouth corner ("left" is the image's left).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def size(self) -> float:
        """Geometric mean of the box's width and height, in pixels."""
        w, h = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(np.sqrt(max(w, 0.0) * max(h, 0.0)))


def select_faces(faces: list[Face], min_score: float = 0.9, min_size: float = 20.0) -> list[Face]:
    """Keeps the faces confident and large enough to cloak, largest first.

    Args:
        faces: candidates from :meth:`FaceDetector.detect`.
        min_score: lowest detector confidence kept.
        min_size: smallest face size (see :attr:`Face.size`) kept, in pixels.
    """
    kept = [f for f in faces if f.score >= min_score and f.size >= min_size]
    return sorted(kept, key=lambda f: -f.size)


class FaceDetector:
    """Finds all faces in RGB photos with facenet-pytorch's MTCNN.

    MTCNN's weights ship inside facenet-pytorch, so this works offline. Building
    the detector loads them; nothing else is loaded later behind the caller's back.

    Args:
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        min_face_size: smallest face MTCNN searches for, in pixels.
        thresholds: MTCNN's three stage thresholds.
        min_score: faces below this confidence are dropped by :meth:`detect`.
    """

    def __init__(
        self,
        device: str = "auto",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
    ) -> None:
        from facenet_pytorch import MTCNN

        self.device = resolve_device(device)
        self.min_face_size = int(min_face_size)
        self.min_score = float(min_score)
        self._mtcnn = MTCNN(
            keep_all=True,
            min_face_size=self.min_face_size,
            thresholds=list(thresholds),
            device=self.device,
            post_process=False,
        )

    def detect(self, photo: np.ndarray) -> list[Face]:
        """All faces in one photo, largest first.

        Args:
            photo: ``[H, W, 3]`` uint8 RGB array.
        """
        if not (isinstance(photo, np.ndarray) and photo.ndim == 3 and photo.shape[2] == 3):
            shape = getattr(photo, "shape", type(photo).__name__)
            raise ValueError(f"detect expects an [H, W, 3] uint8 RGB array, got {shape}")
        if photo.dtype != np.uint8:
            raise ValueError(f"detect expects uint8 pixels, got {photo.dtype}")
        with torch.no_grad():
            boxes, probs, points = self._mtcnn.detect(photo, landmarks=True)
        if boxes is None:
            return []
        faces = [
            Face(box=np.asarray(b, np.float64), score=float(p), landmarks=np.asarray(lm, np.float64))
            for b, p, lm in zip(boxes, probs, points)
        ]
        return select_faces(faces, min_score=self.min_score, min_size=self.min_face_size)

    def detect_many(self, photos: list[np.ndarray]) -> list[list[Face]]:
        """:meth:`detect` for each photo (photos may differ in size)."""
        return [self.detect(p) for p in photos]
