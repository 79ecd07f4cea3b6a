"""How far the trackers' face alignments fall from ours: the spread the alignment jitter must cover.

Every tracker finds its own landmarks (OpenCV's YuNet for the SFace and EdgeFace
pipelines, InsightFace's SCRFD for the held-out one) and warps the face onto the
ArcFace template from them; the cloak is optimised through our MTCNN landmarks.
For each photo this maps the tracker's crop into ours and reports the rotation,
zoom and shift between them (shift as a fraction of the crop), so the alignment
jitter of the attack's distortions (``transform.max_zoom``, ``transform.max_shift``,
``transform.max_rotation``) can be set on facts (experiments/README.md, "Rotation in the
alignment jitter").

Usage:
    uv run python scripts/alignment_spread.py ../shared/data/lfw-dev --photos 80
    uv sync --group heldout   # first, for the SCRFD rows (else they are left out)
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cloak.alignment import apply_affine, crop_to_image_matrix, similarity_transform
from cloak.builders import build
from cloak.models.sface import ARCFACE_TEMPLATE
from cloak.photos import load_photo

log = logging.getLogger("alignment_spread")

#: ArcFace's crop side: shifts are given as fractions of it.
CROP = 112


def tracker_landmarks() -> dict[str, Callable[[np.ndarray], np.ndarray | None]]:
    """Each available tracker's landmark finder: RGB photo -> ``[5, 2]`` of its largest face, or None."""
    from cloak.evaluation.trackers.edgeface_pipeline import OpenCVEdgeFacePipeline

    finders = {"yunet (sface_native, edgeface_native)": OpenCVEdgeFacePipeline().landmarks}
    try:
        from cloak.evaluation.trackers.insightface_pipeline import InsightFacePipeline

        finders["scrfd (insightface_native)"] = InsightFacePipeline().landmarks
    except (ImportError, FileNotFoundError) as err:
        log.warning("SCRFD left out: %s", err)
    return finders


def relative_pose(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation (degrees), zoom - 1, and x, y shift (fractions of the crop) of their crop in ours."""
    template = ARCFACE_TEMPLATE.to(torch.float64)
    to_our_crop = similarity_transform(torch.as_tensor(ours, dtype=torch.float64)[None], template)
    from_their_crop = crop_to_image_matrix(torch.as_tensor(theirs, dtype=torch.float64)[None], template)
    # Their crop's x axis and centre, seen in our crop.
    linear = to_our_crop[0, :, :2] @ from_their_crop[0, :, :2]
    a, b = float(linear[0, 0]), float(linear[1, 0])
    centre = torch.full((1, 1, 2), (CROP - 1) / 2, dtype=torch.float64)
    shift = (apply_affine(to_our_crop, apply_affine(from_their_crop, centre)) - centre)[0, 0] / CROP
    return math.degrees(math.atan2(b, a)), math.hypot(a, b) - 1, float(shift[0]), float(shift[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a folder of identity folders (lfw-dev)")
    parser.add_argument("--photos", type=int, default=80, help="photos drawn at random (default 80)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    files = sorted(args.root.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no <identity>/<photo>.jpg under {args.root}")
    random.Random(args.seed).shuffle(files)
    detector = build(need_model=False, need_attack=False).detector
    finders = tracker_landmarks()
    poses: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in finders}
    for path in files[: args.photos]:
        rgb = load_photo(path).rgb
        faces = detector.detect(rgb)
        if not faces:
            continue
        for name, find in finders.items():
            theirs = find(rgb)
            if theirs is not None:
                poses[name].append(relative_pose(np.asarray(faces[0].landmarks), theirs))

    print("| tracker's landmarks | faces | quantity | mean | median abs | p90 abs | p99 abs | max abs |")
    print("|:---|---:|:---|---:|---:|---:|---:|---:|")
    for name, rows in poses.items():
        table = np.array(rows).reshape(-1, 4)
        for j, quantity in enumerate(["rotation (degrees)", "zoom - 1", "shift x (of crop)", "shift y (of crop)"]):
            v, a = table[:, j], np.abs(table[:, j])
            cells = [f"{v.mean():+.3f}", *(f"{np.percentile(a, q):.3f}" for q in (50, 90, 99)), f"{a.max():.3f}"]
            print(f"| {name} | {len(table)} | {quantity} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
