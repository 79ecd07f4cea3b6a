"""A quick look at transfer: cloak with one set of models, judge with others.

For one photo per identity of a face folder: cloak it with the configured model(s)
and attack, pass the cloaked photo through what platforms do (JPEG q75 after a
0.5x downscale), and ask each judge model (a config of ``configs/model/``) how far
the cloaked face moved from the clean one: the share of faces beyond the judge's
own same-person threshold, and the mean movement in units of that threshold
(``(1 - cos) / (1 - cos_threshold)``: 1 = on the threshold). A judge absent from the
cloak's model(s) measures transfer. This is a fast proxy; the tracker protocol of
``experiments/`` (a classifier trained on the cloaked photos) is the real measure.

Usage:
    uv run python scripts/transfer_check.py model=dlib_resnet --judges dlib_resnet sface --photos 20
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image

from cloak.alignment import align_faces
from cloak.builders import build_from_config
from cloak.cloaking.groups import cloak_photos
from cloak.config import load_config
from cloak.imaging.platform import downscale, jpeg
from cloak.models.ensemble import loss_scale
from cloak.photos import load_photo, to_tensor

log = logging.getLogger("transfer_check")


@torch.no_grad()
def movement(model, clean: np.ndarray, cloaked: np.ndarray, landmarks: np.ndarray, device) -> float:
    """``(1 - cos) / (1 - cos_threshold)`` between the clean and the cloaked face."""
    lm = torch.as_tensor(landmarks[None], dtype=torch.float32, device=device)
    a, b = (model(align_faces(to_tensor(x).to(device), lm, model.template, model.input_size)) for x in (clean, cloaked))
    return float((1 - (a * b).sum()) / loss_scale(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the cloak config")
    parser.add_argument("--judges", nargs="+", default=["dlib_resnet", "sface"], help="model configs that judge")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lfw-dev"))
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cfg = load_config(args.overrides)
    parts = build_from_config(cfg)
    folders = sorted(p for p in args.data.iterdir() if p.is_dir())[: args.photos]
    photos = [load_photo(sorted(f.glob("*.jpg"))[0]).rgb for f in folders]
    faces = [parts.detector.detect(p)[:1] for p in photos]
    keep = [i for i, f in enumerate(faces) if f]
    photos, faces = [photos[i] for i in keep], [faces[i] for i in keep]

    start = time.perf_counter()
    cloaked = []
    for i in range(0, len(photos), args.batch):
        batch = slice(i, i + args.batch)
        cloaked += cloak_photos(photos[batch], faces[batch], parts.attack, parts.model, parts.device)
    seconds = time.perf_counter() - start
    shared = [np.asarray(jpeg(downscale(Image.fromarray(c), 0.5), 75)) for c in cloaked]

    out = {"overrides": args.overrides, "faces": len(photos), "seconds_per_face": seconds / max(1, len(photos))}
    log.info(
        "cloak %s: %d faces, %.2f s per face",
        " ".join(args.overrides) or "(defaults)",
        len(photos),
        out["seconds_per_face"],
    )
    for judge in args.judges:
        model = instantiate(load_config([f"model={judge}"]).model).to(parts.device).eval()
        moved = np.array(
            [movement(model, p, s, f[0].landmarks, parts.device) for p, s, f in zip(photos, shared, faces)]
        )
        out[judge] = {"beyond_threshold": float((moved > 1).mean()), "mean_movement": float(moved.mean())}
        log.info(
            "judge %-12s after JPEG75+0.5x: %5.1f%% beyond its threshold, mean movement %.2f thresholds",
            judge,
            100 * out[judge]["beyond_threshold"],
            out[judge]["mean_movement"],
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
