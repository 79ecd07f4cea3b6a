"""The face models on this machine: speed, and agreement with the pipelines they re-implement.

- time of one forward+backward (to the input, weights frozen as in the attacks) of sface and
  dlib_resnet at batch 1 and 32, the models taking turns so a busy machine slows them alike;
- agreement of our pipeline (MTCNN landmarks, differentiable similarity alignment, torch
  model) with the original: dlib's own (detector, 5-point shape predictor, get_face_chip) for
  dlib_resnet, OpenCV's (YuNet landmarks, ``FaceRecognizerSF.alignCrop``, SFace run by
  OpenCV) for sface: mean cosine similarity of the two embeddings of the same photo;
- verification ROC AUC of each model with our alignment (same vs different person).

Usage:
    uv run python scripts/bench.py models --lfw ../shared/data/lfw-dev --identities 50 --agreement-faces 100
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benches.cli import LFW_DEV, bench_parser
from cloak.alignment import align_faces
from cloak.detection import FaceDetector
from cloak.evaluation.trackers.opencv_pipeline import OpenCVSFacePipeline
from cloak.evaluation.trackers.verification import alignment_agreement, verification_auc
from cloak.models.base import FaceEmbedder
from cloak.models.dlib_resnet import load_dlib_resnet
from cloak.models.sface import SFace, load_sface
from cloak.photos.pixels import to_tensor

log = logging.getLogger("bench.models")


def time_forward_backward(models: dict[str, FaceEmbedder], batch: int, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one forward+backward to the input per model, weights frozen as in the attacks.

    The models take turns (after one warm-up run each) so that a busy machine slows them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.requires_grad_(False)
    for _ in range(repeats + 1):
        for name, model in models.items():
            x = torch.rand(batch, 3, *model.input_size, requires_grad=True)
            start = time.perf_counter()
            model(x).sum().backward()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t[1:])) for name, t in times.items()}


@torch.no_grad()
def native_agreement(model: SFace, root: Path, limit: int) -> tuple[float, float, int]:
    """``(mean, min, n)`` cosine between our and OpenCV's SFace embeddings of the first photo of each identity.

    Photos where MTCNN or YuNet does not find exactly one face are left out.
    """
    native = OpenCVSFacePipeline()
    detector = FaceDetector(device="cpu")
    sims = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if len(sims) >= limit:
            break
        rgb = np.asarray(Image.open(sorted(folder.glob("*.jpg"))[0]).convert("RGB"))
        faces = detector.detect(rgb)
        if len(faces) != 1 or len(native.detect(rgb)) != 1:
            continue
        theirs = native.embed([rgb])["sface_native"].emb[0]
        lm = torch.as_tensor(faces[0].landmarks[None], dtype=torch.float32)
        ours = model(align_faces(to_tensor(rgb), lm, model.template, model.input_size))[0].numpy()
        sims.append(float(ours @ theirs))
    return float(np.mean(sims)), float(np.min(sims)), len(sims)


def agreement(models: dict[str, FaceEmbedder], root: Path, faces: int) -> None:
    """Logs each model's agreement with the pipeline it re-implements (dlib's own, OpenCV's)."""
    mean, n = alignment_agreement(models["dlib_resnet"], root, limit=faces)
    log.info("dlib_resnet: agreement with dlib's pipeline: mean cosine %.4f over %d faces", mean, n)
    mean, worst, n = native_agreement(models["sface"], root, faces)
    log.info("sface: agreement with OpenCV's pipeline: mean cosine %.4f (min %.4f) over %d faces", mean, worst, n)


def main(argv: list[str] | None = None) -> None:
    """``scripts/bench.py models``: timings, then (with lfw-dev) agreement and verification AUC."""
    parser = bench_parser("models", __doc__, overrides=None)
    parser.add_argument("--lfw", type=Path, default=LFW_DEV)
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--agreement-faces", type=int, default=100)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models: dict[str, FaceEmbedder] = {"sface": load_sface(), "dlib_resnet": load_dlib_resnet()}
    if not args.skip_timing:
        log.info("torch threads: %d", torch.get_num_threads())
        for batch in (1, 32):
            for name, seconds in time_forward_backward(models, batch).items():
                log.info("%s forward+backward, batch %d: %.3f s", name, batch, seconds)
    if not args.lfw.is_dir():
        log.info("lfw-dev not found at %s: timings only", args.lfw)
        return
    agreement(models, args.lfw, args.agreement_faces)
    for name, model in models.items():
        auc, pairs = verification_auc(model, args.lfw, identities=args.identities)
        log.info(
            "%s: verification ROC AUC over %d identities: %.4f (%d same / %d different pairs)",
            name,
            args.identities,
            auc,
            *pairs,
        )
