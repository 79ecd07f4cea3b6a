"""Does cloaking large faces on a shrunk copy cost protection? A check on upscaled LFW faces.

Each lfw-dev photo (one per identity) is enlarged with Lanczos, standing in for
a phone portrait, then cloaked at the default strength once per ``work_scale``
(``none``: on the photo's own pixels). For each setting the script prints the
mean over faces of each model's descriptor distance after a JPEG q75 re-encode
divided by the model's same-person threshold (above 1: the model no longer
matches the cloaked face to the original), the share of faces past it, face
SSIM and p5 local SSIM, and the cloak's seconds per photo.

Usage:
    OMP_NUM_THREADS=2 uv run python scripts/working_scale.py --photos 8 --upscale 3 --scales none,2,1.5,1
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from cloak.builders import build
from cloak.cloaking.groups import cloak_photos
from cloak.evaluation.protocol.dataset import enlarge
from cloak.measurement import measure
from cloak.photos import load_photo


def lfw_photos(folder: Path, n: int, upscale: float) -> list[np.ndarray]:
    people = sorted(p for p in folder.iterdir() if p.is_dir())[:n]
    return [enlarge(load_photo(sorted(person.glob("*.jpg"))[0]).rgb, upscale) for person in people]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the cloak config")
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw-dev"))
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--upscale", type=float, default=3.0)
    parser.add_argument("--scales", default="none,2,1.5,1", help="comma-separated attack.work_scale values")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.lfw.is_dir():
        raise SystemExit(f"lfw-dev not found at {args.lfw}: pass --lfw")
    photos = lfw_photos(args.lfw, args.photos, args.upscale)
    parts = build(args.overrides, need_attack=False)
    faces = parts.detector.detect_many(photos)
    print(f"{len(photos)} photos {photos[0].shape[1]}x{photos[0].shape[0]}, faces {sum(map(len, faces))}")
    print(
        "| work_scale | model | distance / threshold after JPEG q75 | past it | face SSIM | face p5 SSIM | s / photo |"
    )
    print("|:---|:---|---:|---:|---:|---:|---:|")
    for scale in args.scales.split(","):
        value = "null" if scale == "none" else scale
        attack = build([*args.overrides, f"attack.work_scale={value}"], need_model=False, need_detector=False).attack
        start = time.perf_counter()
        cloaked = cloak_photos(photos, faces, attack, parts.model, parts.device)
        seconds = (time.perf_counter() - start) / len(photos)
        reports = [measure(p, c, f, parts.model, parts.device) for p, c, f in zip(photos, cloaked, faces)]
        rows = [face for r in reports for face in r.faces]
        for name in rows[0].distance_jpeg75:
            ratios = np.array([f.distance_jpeg75[name] / f.threshold[name] for f in rows if f.threshold.get(name)])
            ssim = np.mean([f.ssim for f in rows])
            p5 = np.mean([f.ssim_p5 for f in rows])
            print(
                f"| {scale} | {name} | {ratios.mean():.2f} | {(ratios > 1).mean():.0%} "
                f"| {ssim:.3f} | {p5:.3f} | {seconds:.1f} |"
            )


if __name__ == "__main__":
    main()
