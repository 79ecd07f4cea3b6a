"""Face detection: every face in a photo, with its box, score and five landmarks.

A pipeline of public steps in the spirit of facenet-pytorch's MTCNN:
:meth:`FaceDetector.detect` finds candidate faces, :func:`select_faces` keeps
the ones worth cloaking. Alignment to a model's input lives in
:mod:`cloak.alignment`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cloak.device import resolve_device

#: MTCNN's first stage looks at 12x12-pixel windows: faces it finds are at least this large
#: in the image it runs on (smaller minimum sizes make it upsample the photo first).
MTCNN_WINDOW = 12

#: Photos whose longer side exceeds this are searched on a copy shrunk to it (see :class:`FaceDetector`).
DETECTION_MAX_SIDE = 1600


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

    def scaled(self, sx: float, sy: float) -> Face:
        """This face in a copy of its photo resized by ``(sx, sy)`` (pixel centres map onto pixel centres)."""
        scale = np.array([sx, sy])
        box = ((self.box.reshape(2, 2) + 0.5) * scale - 0.5).reshape(4)
        return Face(box=box, score=self.score, landmarks=(self.landmarks + 0.5) * scale - 0.5)


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
        max_side: photos whose longer side is larger are searched on a copy shrunk to
            this many pixels (boxes and landmarks are mapped back to the photo), which
            makes detection on a 12-megapixel photo about 3x cheaper; ``None`` searches
            every photo at full size. Sizes stay in the photo's own pixels: faces
            smaller than ``min_face_size`` are not searched for, and on a shrunk copy
            neither are faces under ``12 / shrink factor`` pixels (MTCNN's 12-pixel
            window; 30 px on a 4000-pixel-wide photo with ``max_side=1600``).
    """

    def __init__(
        self,
        device: str = "auto",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
        max_side: int | None = DETECTION_MAX_SIDE,
    ) -> None:
        from facenet_pytorch import MTCNN

        if max_side is not None and int(max_side) < 4 * MTCNN_WINDOW:
            raise ValueError(
                f"max_side must be at least {4 * MTCNN_WINDOW} pixels or null (no shrinking), got {max_side}"
            )
        self.device = resolve_device(device)
        self.min_face_size = int(min_face_size)
        self.min_score = float(min_score)
        self.max_side = None if max_side is None else int(max_side)
        # MTCNN reads its minimum face size from an attribute; detect() sets it per photo.
        self._lock = threading.Lock()
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
        h, w = photo.shape[:2]
        searched = self.search_copy(photo)
        sy, sx = searched.shape[0] / h, searched.shape[1] / w
        with self._lock, torch.no_grad():
            # The minimum face size in the searched copy's pixels (MTCNN cannot go below its window).
            self._mtcnn.min_face_size = max(float(MTCNN_WINDOW), self.min_face_size * min(sx, sy))
            boxes, probs, points = self._mtcnn.detect(searched, landmarks=True)
        if boxes is None:
            return []
        faces = [
            Face(box=np.asarray(b, np.float64), score=float(p), landmarks=np.asarray(lm, np.float64))
            for b, p, lm in zip(boxes, probs, points)
        ]
        if searched is not photo:
            faces = [f.scaled(1 / sx, 1 / sy) for f in faces]
        return select_faces(faces, min_score=self.min_score, min_size=self.min_face_size)

    def search_copy(self, photo: np.ndarray) -> np.ndarray:
        """The photo itself, or a copy shrunk to :attr:`max_side` pixels (antialiased) when it is larger."""
        h, w = photo.shape[:2]
        if self.max_side is None or max(h, w) <= self.max_side:
            return photo
        scale = self.max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))

    def detect_many(self, photos: list[np.ndarray]) -> list[list[Face]]:
        """:meth:`detect` for each photo (photos may differ in size)."""
        return [self.detect(p) for p in photos]
