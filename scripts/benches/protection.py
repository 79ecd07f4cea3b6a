"""Protection, image quality and speed of the cloak on real faces.

For one photo per identity of a face folder: cloak it with the configured attack,
then measure, with dlib's ResNet, the distance between the clean face's
descriptor and the cloaked face's after a real JPEG q75 re-encode and after a
0.5x downscale (upsampled back), against dlib's same-person threshold 0.6; the
photo's SSIM against the original; and the seconds per face and per step.

Usage:
    uv run python scripts/bench.py protection --photos 40 [hydra overrides, e.g. strength=high attack=pgd]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benches.cli import LFW_DEV, bench_parser
from cloak.builders import build_from_config
from cloak.cloaking.groups import cloak_photos
from cloak.config import load_config
from cloak.imaging.platform import downscale, jpeg
from cloak.measurement import measure
from cloak.photos.pixels import to_tensor
from cloak.quality import ssim

log = logging.getLogger("bench.protection")


def main(argv: list[str] | None = None) -> None:
    """``scripts/bench.py protection``."""
    parser = bench_parser("protection", __doc__)
    parser.add_argument("--data", type=Path, default=LFW_DEV)
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="photos cloaked together")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(torch.get_num_threads())

    cfg = load_config(args.overrides)
    parts = build_from_config(cfg)
    folders = sorted(p for p in args.data.iterdir() if p.is_dir())[: args.photos]
    photos = [np.asarray(Image.open(sorted(f.glob("*.jpg"))[0]).convert("RGB")) for f in folders]
    faces = [parts.detector.detect(p)[:1] for p in photos]
    keep = [i for i, f in enumerate(faces) if f]
    photos, faces = [photos[i] for i in keep], [faces[i] for i in keep]

    start = time.perf_counter()
    cloaked = []
    for i in range(0, len(photos), args.batch):
        cloaked += cloak_photos(
            photos[i : i + args.batch], faces[i : i + args.batch], parts.attack, parts.model, parts.device
        )
    seconds = time.perf_counter() - start

    from cloak.models.dlib_resnet import load_dlib_resnet

    dlib = load_dlib_resnet().to(parts.device)
    rows = {"jpeg75": [], "down0.5": [], "jpeg75+down0.5": [], "none": []}
    ssims = []
    for p, c, f in zip(photos, cloaked, faces):
        ssims.append(float(ssim(to_tensor(p), to_tensor(c))[0]))
        pil = Image.fromarray(c)
        variants = {
            "none": c,
            "jpeg75": np.asarray(jpeg(pil, 75)),
            "down0.5": np.asarray(downscale(pil, 0.5)),
            "jpeg75+down0.5": np.asarray(jpeg(downscale(pil, 0.5), 75)),
        }
        for name, v in variants.items():
            rows[name].append(measure(p, v, f, dlib, parts.device).faces[0].distance["dlib_resnet"])
    n = len(photos)
    log.info(
        "attack=%s steps=%d eps=%.1f/255 transform=%s: %d faces",
        parts.attack.name,
        parts.attack.steps,
        parts.attack.eps * 255,
        type(parts.attack.transform).__name__ if parts.attack.transform else None,
        n,
    )
    log.info("time: %.2f s per face, %.3f s per step per face", seconds / n, seconds / n / max(1, parts.attack.steps))
    log.info("SSIM: mean %.4f, min %.4f", np.mean(ssims), np.min(ssims))
    for name, d in rows.items():
        d = np.array(d)
        log.info(
            "dlib distance after %-15s mean %.3f, median %.3f, beyond 0.6: %.1f%%",
            name,
            d.mean(),
            np.median(d),
            100 * (d > 0.6).mean(),
        )
