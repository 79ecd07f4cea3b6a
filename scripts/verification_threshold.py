"""A face model's verification ROC AUC and same-person thresholds on a folder of identities.

For each model config named (``configs/model/<name>.yaml``; single models), with our
pipeline (MTCNN, largest face, differentiable alignment onto the model's template):
embeds the photos of the first ``--identities`` identities that have ``--min-images``
photos or more (at most ``--per-identity`` each), compares all pairs by the cosine of
:meth:`~cloak.models.base.FaceEmbedder.forward` embeddings, and reports the ROC AUC, the
threshold at which a given share of different-person pairs matches (false match rate),
the share of same-person pairs that match there, and the threshold of best balanced
accuracy. Landmarks are found once and shared by the models.

Usage:
    uv run python scripts/verification_threshold.py mobileface edgeface --lfw ../shared/data/lfw-dev
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from cloak.alignment import align_faces
from cloak.detection import FaceDetector
from cloak.evaluation.trackers.registry import load_tracker_model
from cloak.evaluation.trackers.verification import roc_auc
from cloak.photos import load_photo
from cloak.photos.pixels import to_tensor

log = logging.getLogger("verification_threshold")


def pick_photos(root: Path, identities: int, per_identity: int, min_images: int) -> list[tuple[str, Path]]:
    """``(identity, photo)`` of the first ``identities`` folders with ``min_images`` photos or more."""
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= min_images]
    return [(f.name, p) for f in folders[:identities] for p in sorted(f.glob("*.jpg"))[:per_identity]]


def landmarks(paths: list[Path]) -> list[np.ndarray | None]:
    """The largest face's five landmarks in each photo (``None`` where MTCNN finds none)."""
    detector = FaceDetector(device="cpu")
    out = []
    for path in paths:
        faces = detector.detect(load_photo(path).rgb)
        out.append(faces[0].landmarks if faces else None)
    return out


@torch.no_grad()
def embed(model, paths: list[Path], lms: list[np.ndarray]) -> np.ndarray:
    """Unit embeddings (``model.forward``) of the aligned faces, one row per photo."""
    rows = []
    for path, lm in zip(paths, lms):
        photo = to_tensor(load_photo(path).rgb)
        crop = align_faces(photo, torch.as_tensor(lm[None], dtype=torch.float32), model.template, model.input_size)
        rows.append(model(crop)[0].float().numpy())
    return np.stack(rows)


def report(name: str, emb: np.ndarray, labels: np.ndarray, rates: list[float]) -> None:
    """Logs AUC, thresholds at the false match ``rates`` and the best balanced accuracy."""
    sim = emb @ emb.T
    iu = np.triu_indices(len(labels), k=1)
    scores, same = sim[iu], labels[iu[0]] == labels[iu[1]]
    different = np.sort(scores[~same])
    log.info(
        "%s: ROC AUC %.4f over %d same / %d different pairs", name, roc_auc(scores, same), same.sum(), len(different)
    )
    for rate in rates:
        # The smallest threshold that at most `rate` of different pairs exceed.
        threshold = float(different[min(len(different) - 1, int(np.ceil((1 - rate) * len(different))))])
        log.info(
            "%s: cosine threshold %.3f at false match rate %g: %.1f%% of same-person pairs match",
            name,
            threshold,
            rate,
            100 * float((scores[same] > threshold).mean()),
        )
    grid = np.linspace(-1, 1, 401)
    balanced = [((scores[same] > t).mean() + (scores[~same] <= t).mean()) / 2 for t in grid]
    best = int(np.argmax(balanced))
    log.info("%s: best balanced accuracy %.4f at cosine %.3f", name, balanced[best], grid[best])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model config names (configs/model/)")
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw-dev"))
    parser.add_argument("--identities", type=int, default=60)
    parser.add_argument("--per-identity", type=int, default=6)
    parser.add_argument("--min-images", type=int, default=4)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.001])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pairs = pick_photos(args.lfw, args.identities, args.per_identity, args.min_images)
    lms = landmarks([p for _, p in pairs])
    kept = [i for i, lm in enumerate(lms) if lm is not None]
    log.info("%d photos of %d identities, a face found in %d", len(pairs), len({n for n, _ in pairs}), len(kept))
    labels = np.array([pairs[i][0] for i in kept])
    for name in args.models:
        model = load_tracker_model(name).eval()
        emb = embed(model, [pairs[i][1] for i in kept], [lms[i] for i in kept])
        report(name, emb, labels, args.rates)


if __name__ == "__main__":
    main()
