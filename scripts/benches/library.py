"""Memory over a photo library: does a run over 1,000 photos stay as flat as one over 100?

Writes ``--photos`` small photos (lfw-dev faces shrunk to ``--side`` pixels, cycled;
the astronaut without lfw-dev) to a temporary folder and cloaks them with the real
job (:func:`cloak.run.run`) at one optimisation step, sampling the process's peak
and current resident memory (``VmHWM``, ``VmRSS``) and its count of Python objects
every ``--every`` photos. The run passes when the peak after the last photo is at
most ``--limit`` times the peak after ``--reference`` photos.

Usage:
    uv run python scripts/bench.py library [hydra overrides] [--photos 1000] [--reference 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benches.cli import LFW_DEV, bench_parser
from cloak.config import load_config
from cloak.resources import StageTimer, peak_rss_bytes, reset_peak_rss, rss_bytes
from cloak.run import run

log = logging.getLogger("bench.library")


def faces(lfw: Path | None, side: int, count: int) -> list[np.ndarray]:
    """``count`` distinct face photos of ``side`` pixels (fewer when lfw-dev has fewer identities)."""
    if lfw is None:
        from skimage import data

        return [np.asarray(Image.fromarray(data.astronaut()).resize((side, side)))]
    folders = sorted(p for p in lfw.iterdir() if p.is_dir())[:count]
    return [np.asarray(Image.open(sorted(f.glob("*.jpg"))[0]).convert("RGB").resize((side, side))) for f in folders]


class MemorySampler:
    """A :class:`~cloak.resources.StageTimer` ``on_count`` hook: samples memory every ``every`` photos."""

    def __init__(self, every: int, marks: tuple[int, ...]) -> None:
        self.every, self.marks = every, marks
        self.samples: list[dict] = []
        self.start = time.perf_counter()

    def __call__(self, name: str, total: int) -> None:
        if name != "photos" or not (total % self.every == 0 or total in self.marks):
            return
        s = {
            "photos": total,
            "peak_rss_mb": peak_rss_bytes() / 2**20,
            "rss_mb": rss_bytes() / 2**20,
            "python_objects": len(gc.get_objects()),
            "seconds": time.perf_counter() - self.start,
        }
        self.samples.append(s)
        log.info(
            "%5d photos: peak %.0f MB, resident %.0f MB, %d Python objects, %.0f s",
            total,
            s["peak_rss_mb"],
            s["rss_mb"],
            s["python_objects"],
            s["seconds"],
        )


def cloak_library(args: argparse.Namespace, sampler: MemorySampler) -> tuple[int, StageTimer]:
    """Writes the library to a temporary folder and cloaks it with the real job; ``(status, timer)``."""
    lfw = args.lfw if args.lfw.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="cloak-library-") as tmp:
        folder = Path(tmp) / "library"
        folder.mkdir()
        # As many distinct faces as the reference point: by then every photo of the pool has
        # been cloaked once, so later growth is the library's, not a new face's (with a pool of
        # 200 and a reference of 100, the peak rose once between photos 100 and 200: 1452 -> 1605
        # MB, then 1620 at 1000).
        pool = faces(lfw, args.side, args.reference)
        for i in range(args.photos):
            Image.fromarray(pool[i % len(pool)]).save(folder / f"photo_{i:05d}.jpg", quality=92)
        cfg = load_config(
            [
                "strength.steps=1",
                *args.overrides,
                f"input={folder}",
                f"output_dir={Path(tmp) / 'cloaked'}",
            ]
        )
        log.info("Cloaking %d photos of %d px at %d step(s)...", args.photos, args.side, cfg.strength.steps)
        timer = StageTimer(on_count=sampler)
        gc.collect()
        reset_peak_rss()
        return run(cfg, timer), timer


def verdict(args: argparse.Namespace, timer: StageTimer, samples: list[dict]) -> int:
    """Prints the reference and last samples and the verdict, writes the JSON; 0 on PASS, 1 on FAIL, 2 on error."""
    by_count = {s["photos"]: s for s in samples}
    if args.reference not in by_count or args.photos not in by_count:
        log.error("the run cloaked %d photos; expected %d", timer.counts.get("photos", 0), args.photos)
        return 2
    reference, last = by_count[args.reference], by_count[args.photos]
    growth = last["peak_rss_mb"] / reference["peak_rss_mb"]
    outcome = "PASS" if growth <= args.limit else "FAIL"
    print("| photos | peak RSS MB | resident MB | Python objects |\n|---:|---:|---:|---:|")
    for s in (reference, last):
        print(f"| {s['photos']} | {s['peak_rss_mb']:.0f} | {s['rss_mb']:.0f} | {s['python_objects']} |")
    print(
        f"\npeak after {args.photos} / after {args.reference}: {growth:.3f} "
        f"(limit {args.limit}): {outcome}; {last['seconds'] / args.photos:.2f} s per photo"
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {
            "photos": args.photos,
            "reference": args.reference,
            "side": args.side,
            "overrides": ["strength.steps=1", *args.overrides],
            "growth": growth,
            "verdict": outcome,
            "stages": {"wall": timer.wall, "cpu": timer.cpu, "counts": timer.counts},
            "samples": samples,
        }
        (args.out / "bench_library.json").write_text(json.dumps(payload, indent=2))
    return 0 if outcome == "PASS" else 1


def main(argv: list[str] | None = None) -> int:
    """``scripts/bench.py library``: 0 when the peak stays within ``--limit``, 1 when not, 2 on error."""
    parser = bench_parser("library", __doc__)
    parser.add_argument("--lfw", type=Path, default=LFW_DEV)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--reference", type=int, default=100, help="photos after which the reference peak is taken")
    parser.add_argument("--every", type=int, default=50, help="sample memory every this many photos")
    parser.add_argument("--side", type=int, default=160, help="photo size in pixels")
    parser.add_argument("--limit", type=float, default=1.1, help="largest allowed peak growth over the reference")
    parser.add_argument("--out", type=Path, default=None, help="write bench_library.json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cloak").setLevel(logging.WARNING)
    if args.reference >= args.photos:
        parser.error("--reference must be smaller than --photos")
    sampler = MemorySampler(args.every, (args.reference, args.photos))
    status, timer = cloak_library(args, sampler)
    if status not in (0, 1):
        log.error("the run ended with status %d", status)
        return 2
    log.info("Time per stage: %s", timer.summary())
    return verdict(args, timer, sampler.samples)
