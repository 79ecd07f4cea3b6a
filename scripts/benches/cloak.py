"""Speed and memory of the cloak end to end, against the bare-compute limit of its models.

Every case runs the real job (:func:`cloak.run.run`: decode, detect, cloak, measure,
encode, write, report) on photos written to a temporary folder, timed per stage by
its :class:`~cloak.resources.StageTimer`, and records the peak resident memory
(``VmHWM``; ``torch.cuda.max_memory_allocated`` on a GPU). Cases:

- ``strength``: the default strength and each preset (low, mid, high) on 250x250
  LFW photos, one face each, cloaked in one batch;
- ``batch``: 1, 8, 32 and 128 faces per batch (``--batch-steps`` steps, to keep it short);
- ``size``: a 250x250 LFW photo (the 512x512 astronaut without lfw-dev), a 1024 px photo, a 12-megapixel photo with one face and
  one with three (faces upscaled from lfw-dev, or the astronaut without it, placed
  on a 4000x3000 canvas);
- each case on every ``--devices`` entry that is present (cuda is skipped without a GPU).

**The limit**: the bare forward+backward of the model(s) on the same batches of
aligned face crops, times the steps the attack took (no distortions, budget,
alignment, detection or file work). ``ratio`` is the end-to-end time over it: 1
would mean the job costs nothing but the models' own gradients. Wall ratios
include waiting for the CPU on a shared machine; CPU ratios (process CPU seconds,
all threads) show the work done.

Usage:
    uv run python scripts/bench.py cloak [hydra overrides] [--models dlib_resnet,ensemble] [--out DIR] [--quick]
    OMP_NUM_THREADS=2 uv run python scripts/bench.py cloak --repeat 2 --out bench-out   # docs/performance.md's numbers
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benches.cli import LFW_DEV, bench_parser
from benches.limit import limit_seconds
from benches.machine import describe, machine
from benches.scenes import big_photo, lfw_photos, medium_photo
from cloak.builders import build_from_config
from cloak.config import config_choices, load_config
from cloak.resources import StageTimer, peak_rss_bytes, release_free_memory, reset_peak_rss
from cloak.run import run

log = logging.getLogger("bench.cloak")

#: The stages of a run that count as end to end (``build``, loading the models, does not).
STAGES = ("decode", "detect", "cloak", "measure", "encode", "preview", "copy", "report")
PRESETS = ("low", "mid", "high")
BATCHES = (1, 8, 32, 128)


@dataclass
class Case:
    """One benchmark case: photos written to a folder and the overrides of the run."""

    section: str
    name: str
    photos: list[np.ndarray]
    overrides: list[str] = field(default_factory=list)
    batch_size: int = 8


@dataclass
class Result:
    """What one case measured (the fastest of its repeats)."""

    section: str
    name: str
    model: str
    device: str
    photo_size: str
    photos: int
    faces: int
    batch_size: int
    steps: int
    wall: dict[str, float]
    cpu: dict[str, float]
    end_to_end_s: float
    end_to_end_cpu_s: float
    seconds_per_face: float
    faces_per_second: float
    step_ms: float
    peak_rss_mb: float
    rss_growth_mb: float
    cuda_peak_mb: float | None
    limit_s: float
    limit_cpu_s: float
    ratio: float
    ratio_cpu: float
    cloak_ratio: float
    repeats: list[float]


def cases(lfw: Path | None, quick: bool, batch_steps: int, photos: int = 8) -> list[Case]:
    """The benchmark's cases; ``quick`` keeps a few small ones; ``photos`` per strength case."""
    n = min(4, photos) if quick else photos
    out = [Case("strength", "default", lfw_photos(lfw, n), [], batch_size=n)]
    for preset in () if quick else PRESETS:
        out.append(Case("strength", preset, lfw_photos(lfw, n), [f"strength={preset}"], batch_size=n))
    for batch in (1, 8) if quick else BATCHES:
        count = max(batch, 4)
        out.append(
            Case(
                "batch",
                f"{batch} faces",
                lfw_photos(lfw, count, offset=n),
                [f"strength.steps={batch_steps}"],
                batch_size=batch,
            )
        )
    small = "LFW, 250 px" if lfw is not None else "astronaut, 512 px"
    out.append(Case("size", small, lfw_photos(lfw, 1), [], batch_size=1))
    out.append(Case("size", "1024 px, 1 face", [medium_photo(lfw)], [], batch_size=1))
    out.append(Case("size", "12 MP, 1 face", [big_photo(lfw, 1)], [], batch_size=1))
    if not quick:
        out.append(Case("size", "12 MP, 3 faces", [big_photo(lfw, 3)], [], batch_size=1))
    return out


# ---- running a case ------------------------------------------------------------------


def write_photos(folder: Path, photos: list[np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(folder / f"photo_{i:04d}.jpg", quality=95)


def run_case(case: Case, model: str, device: str, overrides: list[str], repeats: int, tmp: Path) -> Result | None:
    """Runs one case ``repeats`` times; returns the fastest run's numbers (None when no face was cloaked)."""
    folder = tmp / "in"
    shutil.rmtree(tmp, ignore_errors=True)
    write_photos(folder, case.photos)
    base = [*overrides, f"model={model}", f"device={device}", *case.overrides]
    best: Run | None = None
    times = []
    for r in range(repeats):
        cfg = load_config([*base, f"input={folder}", f"output_dir={tmp / f'out{r}'}", f"batch_size={case.batch_size}"])
        this = timed_run(cfg, torch.device(device), case.name)
        times.append(this.end_to_end)
        if best is None or this.end_to_end < best.end_to_end:
            best = this
    assert best is not None
    faces = best.timer.counts.get("faces", 0)
    if not faces:
        log.warning("case %s: no face was cloaked; left out", case.name)
        return None
    cfg = load_config([*base, f"batch_size={case.batch_size}"])
    parts = build_from_config(cfg, need_attack=False)
    if "face_steps" in best.timer.counts:
        steps_per_face = best.timer.counts["face_steps"] / faces
    else:  # a run that does not count the steps each face took
        steps_per_face = float(cfg.strength.steps)
    bfloat16 = frozenset(cfg.attack.get("bfloat16_members") or ())
    limit = limit_seconds(parts, folder, case.batch_size, steps_per_face, bfloat16)
    return case_result(case, model, device, best, steps_per_face, limit, times)


@dataclass
class Run:
    """One run of a case: its stage timer and memory peaks."""

    timer: StageTimer
    peak_rss: float
    start_rss: float
    cuda_peak_mb: float | None

    @property
    def end_to_end(self) -> float:
        return sum(self.timer.wall.get(s, 0.0) for s in STAGES)


def timed_run(cfg, device: torch.device, name: str) -> Run:
    """The real job on ``cfg``, timed per stage, with its peak memory counted from a clean slate."""
    timer = StageTimer()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # What earlier cases freed goes back first, so each case's peak counts from a clean slate.
    gc.collect()
    release_free_memory()
    reset_peak_rss()
    start_rss = peak_rss_bytes()
    status = run(cfg, timer)
    peak = peak_rss_bytes()
    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if status not in (0, 1):
        raise RuntimeError(f"case {name}: the run ended with status {status}")
    return Run(timer, peak, start_rss, cuda_peak)


def case_result(
    case: Case,
    model: str,
    device: str,
    best: Run,
    steps_per_face: float,
    limit: tuple[float, float],
    times: list[float],
) -> Result:
    """The numbers of a case's fastest run against its bare-compute limit ``(wall, cpu)``."""
    timer = best.timer
    faces = timer.counts.get("faces", 0)
    limit_wall, limit_cpu = limit
    e2e = best.end_to_end
    e2e_cpu = sum(timer.cpu.get(s, 0.0) for s in STAGES)
    steps = timer.counts.get("steps", 0)
    h, w = case.photos[0].shape[:2]
    return Result(
        section=case.section,
        name=case.name,
        model=model,
        device=device,
        photo_size=f"{w}x{h}",
        photos=len(case.photos),
        faces=faces,
        batch_size=case.batch_size,
        steps=round(steps_per_face),
        wall={k: round(v, 4) for k, v in timer.wall.items()},
        cpu={k: round(v, 4) for k, v in timer.cpu.items()},
        end_to_end_s=e2e,
        end_to_end_cpu_s=e2e_cpu,
        seconds_per_face=e2e / faces,
        faces_per_second=faces / e2e,
        step_ms=1000 * timer.wall.get("cloak", 0.0) / max(1, steps),
        peak_rss_mb=best.peak_rss / 2**20,
        rss_growth_mb=(best.peak_rss - best.start_rss) / 2**20,
        cuda_peak_mb=best.cuda_peak_mb,
        limit_s=limit_wall,
        limit_cpu_s=limit_cpu,
        ratio=e2e / limit_wall if limit_wall > 0 else float("nan"),
        ratio_cpu=e2e_cpu / limit_cpu if limit_cpu > 0 else float("nan"),
        cloak_ratio=timer.wall.get("cloak", 0.0) / limit_wall if limit_wall > 0 else float("nan"),
        repeats=[round(t, 3) for t in times],
    )


# ---- output --------------------------------------------------------------------------


def markdown(results: list[Result]) -> str:
    """Two Markdown tables: the cases, and where each case's time went."""
    head = (
        "| section | case | model | device | photo | faces (batch) | steps | s/face | CPU s/face | faces/s "
        "| ms/step | peak RSS MB (+ over start) | limit s/face | ratio (wall) | ratio (CPU) |\n"
        "|:---|:---|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = [
        f"| {r.section} | {r.name} | {r.model} | {r.device} | {r.photo_size} | {r.faces} ({r.batch_size}) "
        f"| {r.steps} | {r.seconds_per_face:.2f} | {r.end_to_end_cpu_s / r.faces:.2f} | {r.faces_per_second:.2f} "
        f"| {r.step_ms:.0f} | {r.peak_rss_mb:.0f} (+{r.rss_growth_mb:.0f}){_cuda(r)} | {r.limit_s / r.faces:.2f} | {r.ratio:.1f} "
        f"| {r.ratio_cpu:.1f} |"
        for r in results
    ]
    stages = [s for s in STAGES if any(s in r.wall for r in results)]
    head2 = (
        "| case | model | device | "
        + " | ".join(f"{s} s" for s in stages)
        + " | end to end s |\n|:---|:---|:---|"
        + "---:|" * (len(stages) + 1)
        + "\n"
    )
    rows2 = [
        f"| {r.section}: {r.name} | {r.model} | {r.device} | "
        + " | ".join(f"{r.wall.get(s, 0.0):.2f}" for s in stages)
        + f" | {r.end_to_end_s:.2f} |"
        for r in results
    ]
    return (
        head
        + "\n".join(rows)
        + "\n\nWhere the time went (wall seconds per stage, whole case):\n\n"
        + head2
        + "\n".join(rows2)
    )


def _cuda(r: Result) -> str:
    return f" (GPU {r.cuda_peak_mb:.0f})" if r.cuda_peak_mb is not None else ""


def default_model(overrides: list[str]) -> str:
    """The model config the overrides (or else configs/cloak.yaml's defaults) choose, as Hydra composes it."""
    return config_choices(overrides)["model"]


def main(argv: list[str] | None = None) -> None:
    """``scripts/bench.py cloak``: the cases, a table, and optionally bench.md and bench.json."""
    parser = bench_parser("cloak", __doc__, "Hydra overrides of the cloak config (all cases)")
    parser.add_argument("--lfw", type=Path, default=LFW_DEV, help="lfw-dev folder")
    parser.add_argument("--models", default=None, help="comma-separated model configs (default: the config's)")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    parser.add_argument("--sections", default="strength,batch,size", help="comma-separated sections to run")
    parser.add_argument("--batch-steps", type=int, default=10, help="attack steps in the batch-size section")
    parser.add_argument("--photos", type=int, default=8, help="LFW photos (faces) per strength case, one batch")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest counts")
    parser.add_argument("--quick", action="store_true", help="few cases, 3 attack steps: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="write bench.md and bench.json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cloak").setLevel(logging.WARNING)

    lfw = args.lfw if args.lfw.is_dir() else None
    if lfw is None:
        log.info("lfw-dev not found at %s: using the astronaut only", args.lfw)
    overrides = list(args.overrides)
    if args.quick:
        overrides.append("strength.steps=3")
    batch_steps = 2 if args.quick else args.batch_steps
    models = args.models.split(",") if args.models else [default_model(overrides)]
    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    sections = set(args.sections.split(","))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="cloak-bench-") as tmp:
        for model in models:
            for device in devices:
                for case in cases(lfw, args.quick, batch_steps, args.photos):
                    if case.section not in sections:
                        continue
                    log.info("%s / %s / %s: %s ...", model, device, case.section, case.name)
                    result = run_case(case, model, device, overrides, args.repeat, Path(tmp) / "case")
                    if result is not None:
                        results.append(result)
                        log.info(
                            "  %.2f s/face end to end, %.0f ms/step, peak %.0f MB, %.1fx the limit",
                            result.seconds_per_face,
                            result.step_ms,
                            result.peak_rss_mb,
                            result.ratio,
                        )
    measured_on = machine()
    table = f"Measured on: {describe(measured_on)}\n\n{markdown(results)}"
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.md").write_text(table + "\n")
        payload = {"machine": measured_on, "overrides": overrides, "results": [asdict(r) for r in results]}
        (args.out / "bench.json").write_text(json.dumps(payload, indent=2))
        log.info("Wrote %s and %s", args.out / "bench.md", args.out / "bench.json")


if __name__ == "__main__":
    main()
