"""Derives the 5-point alignment templates of the face models from real faces.

dlib_resnet: dlib aligns with its own detector, 5-point shape predictor and
``get_face_chip(size=150, padding=0.25)``. We run that pipeline on face photos,
then run MTCNN (our detector) on each dlib chip: the mean MTCNN landmarks in
chip coordinates are where our alignment must put them to reproduce dlib's chips.

facenet_*: David Sandberg's facenet (which facenet-pytorch ports) was trained
and evaluated on MTCNN boxes grown by a 32 px margin and resized to 160x160; the
mean MTCNN landmarks in that crop are its template.

Usage:
    uv run python scripts/derive_templates.py ../shared/data/lfw-dev --per-identity 1
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from cloak.detection import FaceDetector

log = logging.getLogger("derive_templates")


def sample_photos(root: Path, per_identity: int, limit: int) -> list[Path]:
    photos: list[Path] = []
    for ident in sorted(p for p in root.iterdir() if p.is_dir()):
        photos += sorted(ident.glob("*.jpg"))[:per_identity]
    return photos[:limit]


def dlib_chip_landmarks(photo: np.ndarray, detector: FaceDetector, dlib_parts) -> np.ndarray | None:
    dlib, face_det, shape_pred = dlib_parts
    dets = face_det(photo, 1)
    if len(dets) != 1:
        return None
    chip = dlib.get_face_chip(photo, shape_pred(photo, dets[0]), size=150, padding=0.25)
    faces = detector.detect(np.ascontiguousarray(chip))
    return faces[0].landmarks if len(faces) == 1 else None


def facenet_crop_landmarks(
    photo: np.ndarray, detector: FaceDetector, size: int = 160, margin: float = 32
) -> np.ndarray | None:
    faces = detector.detect(photo)
    if len(faces) != 1:
        return None
    x1, y1, x2, y2 = faces[0].box
    # facenet-pytorch's extract_face: margin given in output pixels, converted to photo pixels.
    mx, my = margin * (x2 - x1) / (size - margin), margin * (y2 - y1) / (size - margin)
    x1, y1, x2, y2 = x1 - mx / 2, y1 - my / 2, x2 + mx / 2, y2 + my / 2
    scale = np.array([size / (x2 - x1), size / (y2 - y1)])
    return (faces[0].landmarks - [x1, y1]) * scale - 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="face folder in <identity>/<image> layout")
    parser.add_argument("--per-identity", type=int, default=1)
    parser.add_argument("--limit", type=int, default=400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import dlib
    import face_recognition_models

    models = Path(face_recognition_models.__file__).parent / "models"
    dlib_parts = (
        dlib,
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
    )
    detector = FaceDetector(device="cpu", min_score=0.95)

    dlib_pts, facenet_pts = [], []
    for path in sample_photos(args.root, args.per_identity, args.limit):
        photo = np.asarray(Image.open(path).convert("RGB"))
        if (lm := dlib_chip_landmarks(photo, detector, dlib_parts)) is not None:
            dlib_pts.append(lm)
        if (lm := facenet_crop_landmarks(photo, detector)) is not None:
            facenet_pts.append(lm)
    for name, pts in [("dlib_resnet (150x150)", dlib_pts), ("facenet (160x160)", facenet_pts)]:
        pts = np.stack(pts)
        log.info(
            "%s template from %d faces (std in px per point: %s):", name, len(pts), np.round(pts.std(0).mean(1), 2)
        )
        log.info("%s", np.array2string(pts.mean(0), precision=2, separator=", "))


if __name__ == "__main__":
    main()
