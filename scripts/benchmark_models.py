"""Benchmarks and agreement checks of the face models on this machine.

- time of one forward+backward of dlib_resnet at batch 1 and 32;
- agreement of our MTCNN alignment with dlib's own pipeline (detector, 5-point
  shape predictor, get_face_chip): mean cosine similarity of the descriptors;
- verification ROC AUC of dlib_resnet with our alignment (same vs different person).

Usage:
    uv run python scripts/benchmark_models.py --lfw ../shared/data/lfw-dev --identities 50
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from cloak.evaluation.verification import alignment_agreement, verification_auc
from cloak.models.dlib_resnet import load_dlib_resnet

log = logging.getLogger("benchmark_models")


def time_forward_backward(model: torch.nn.Module, batch: int, repeats: int = 5) -> float:
    """Median seconds of one forward+backward to the input."""
    x = torch.rand(batch, 3, 150, 150, requires_grad=True)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        model(x).sum().backward()
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw-dev"))
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--agreement-faces", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_dlib_resnet()
    for batch in (1, 32):
        log.info("dlib_resnet forward+backward, batch %d: %.3f s", batch, time_forward_backward(model, batch))
    if args.lfw.is_dir():
        mean, n = alignment_agreement(model, args.lfw, limit=args.agreement_faces)
        log.info("alignment agreement with dlib's pipeline: mean cosine %.4f over %d faces", mean, n)
        auc, pairs = verification_auc(model, args.lfw, identities=args.identities)
        log.info(
            "verification ROC AUC over %d identities: %.4f (%d same / %d different pairs)", args.identities, auc, *pairs
        )


if __name__ == "__main__":
    main()
