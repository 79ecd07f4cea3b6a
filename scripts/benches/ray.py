"""The Ray runner against the local runner: photos per second on the same photos, and equal copies.

Copies ``--photos`` lfw-dev photos (the first of each person) to a temporary folder, cloaks
them with the local runner (this process, torch's threads) and then with ``runner=ray`` on a
local cluster of ``--workers`` CPUs (one actor per CPU, one torch thread each), both with the
same Hydra overrides. The cluster is started before the Ray run and timed apart; the Ray run's
time includes its actors loading the models. Reports both runs' photos per second, their
ratio (the target: at least 0.8), and how far the copies' pixels differ from the local run's
(with ``--check-pixels``, also from a local run on one torch thread, as each worker runs: 0).
Other thread counts sum floats in another order, and the optimisation carries those
differences on: the copies differ by a few levels in some pixels.

Usage:
    uv run --extra ray python scripts/bench.py ray [hydra overrides] [--photos 16] [--workers 2] [--check-pixels] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benches.cli import LFW_DEV, bench_parser
from cloak.config import load_config
from cloak.run import run

log = logging.getLogger("bench.ray")


def photos(lfw: Path, count: int, folder: Path) -> Path:
    """The first photo of ``count`` lfw-dev people, copied to ``folder``."""
    folder.mkdir(parents=True)
    for person in sorted(p for p in lfw.iterdir() if p.is_dir())[:count]:
        shutil.copy(sorted(person.glob("*.jpg"))[0], folder)
    return folder


def timed_run(overrides: list[str]) -> tuple[int, float]:
    """The exit status and wall seconds of one run."""
    start = time.perf_counter()
    status = run(load_config(overrides))
    return status, time.perf_counter() - start


def pixel_gap(a: Path, b: Path) -> dict:
    """How the copies of two output folders differ: photos identical, largest difference, pixels differing."""
    names = sorted(p.name for p in a.glob("*.jpg"))
    gaps = [
        np.abs(np.asarray(Image.open(a / n), dtype=np.int16) - np.asarray(Image.open(b / n), dtype=np.int16))
        for n in names
    ]
    return {
        "photos": len(names),
        "identical": sum(int(g.max() == 0) for g in gaps),
        "max_level_difference": int(max((g.max() for g in gaps), default=0)),
        "pixels_differing": int(sum((g > 0).any(axis=-1).sum() for g in gaps)),
    }


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    """Both runs on the same photos; their times, throughputs and pixel gap."""
    import ray

    source = photos(args.lfw, args.photos, tmp / "photos")
    common = [*args.overrides, f"input={source}"]
    local_status, local_s = timed_run([*common, f"output_dir={tmp / 'local'}"])
    start = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False)
    cluster_s = time.perf_counter() - start
    try:
        ray_over = ["runner=ray", f"runner.num_workers={args.workers}", "runner.num_cpus_per_worker=1"]
        ray_status, ray_s = timed_run([*common, *ray_over, f"output_dir={tmp / 'ray'}"])
    finally:
        ray.shutdown()
    if args.check_pixels:  # the local runner on one torch thread, as each worker runs: the same pixels
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            timed_run([*common, f"output_dir={tmp / 'local1'}"])
        finally:
            torch.set_num_threads(threads)
    if {local_status, ray_status} - {0, 1}:
        raise RuntimeError(f"a run did not finish (local status {local_status}, ray status {ray_status})")
    n = args.photos
    return {
        "photos": n,
        "workers": args.workers,
        "overrides": args.overrides,
        "status": {"local": local_status, "ray": ray_status},
        "seconds": {"local": local_s, "ray": ray_s, "cluster_start": cluster_s},
        "photos_per_second": {"local": n / local_s, "ray": n / ray_s},
        "ray_over_local": local_s / ray_s,
        "pixels": pixel_gap(tmp / "local", tmp / "ray"),
        "torch_threads_local": __import__("torch").get_num_threads(),
        "pixels_vs_local_one_thread": pixel_gap(tmp / "local1", tmp / "ray") if args.check_pixels else None,
    }


def main(argv: list[str] | None = None) -> int:
    """``scripts/bench.py ray``: 0 when Ray's throughput is at least ``--target`` times the local runner's, else 1."""
    parser = bench_parser("ray", __doc__, "Hydra overrides of the cloak config (both runs)")
    parser.add_argument("--lfw", type=Path, default=LFW_DEV)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local cluster, one actor each")
    parser.add_argument("--target", type=float, default=0.8, help="least Ray throughput over the local runner's")
    parser.add_argument("--out", type=Path, default=None, help="write bench_ray.json here")
    parser.add_argument(
        "--check-pixels", action="store_true", help="also cloak locally on one torch thread and compare the copies"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cloak").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray  # noqa: F401
    except ImportError:
        log.error("needs the ray extra: uv sync --extra ray")
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        result = measure(args, Path(tmp))
    log.info("%s", json.dumps(result, indent=1))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_ray.json").write_text(json.dumps(result, indent=1) + "\n")
    ratio = result["ray_over_local"]
    log.info(
        "local %.3f photo/s, ray %.3f photo/s on %d workers: %.2fx (target %.2fx)",
        result["photos_per_second"]["local"],
        result["photos_per_second"]["ray"],
        args.workers,
        ratio,
        args.target,
    )
    return 0 if ratio >= args.target else 1
