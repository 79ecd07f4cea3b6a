"""What a face costs when a run sees the same people again: an album against a folder of strangers.

Each case runs the real job (:func:`cloak.run.run`) on LFW photos written to a temporary
folder, with and without ``reuse`` (a person's later faces start from their earlier cloak,
:mod:`cloak.cloaking.reuse`), and reads its ``report.json``:

- ``album``: ``--people`` people with ``--per-person`` photos each (identities of lfw-dev with
  enough photos), in album order (the people interleaved, as a camera roll mixes them);
- ``strangers``: ``--people`` people, one photo each.

Printed per case: seconds per face end to end (loading the models left out), steps per face
(and per warm-started face), the models' own forward and backward against everything else
(:func:`benches.limit.limit_seconds`: the bare compute on the same crops times the steps
taken; the rest is detection, alignment, distortions, JPEG, budgets and I/O), and the
white-box protection the report shows (faces past every model's threshold after JPEG q75,
and the mean of each face's smallest margin).

Usage:
    uv run python scripts/bench.py album [hydra overrides] [--people 6] [--per-person 10] [--reuse both]
    uv run python scripts/bench.py strangers [hydra overrides] [--people 24]
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benches.cli import LFW_DEV, bench_parser
from benches.cloak import STAGES, timed_run
from benches.limit import limit_seconds
from benches.machine import describe, machine
from cloak.builders import build_from_config
from cloak.config import load_config
from cloak.run_report import REPORT_NAME

log = logging.getLogger("bench.amortised")


@dataclass
class Row:
    """One run of a case."""

    case: str
    reuse: bool
    faces: int
    seconds_per_face: float
    steps_per_face: float
    warm_faces: int
    steps_per_warm_face: float | None
    model_seconds_per_face: float
    outside_share: float
    protected: float
    mean_margin: float


def album(lfw: Path, people: int, per_person: int, seed: int = 0) -> list[Path]:
    """``per_person`` photos of each of ``people`` lfw-dev identities, interleaved in a seeded album order."""
    folders = [f for f in sorted(lfw.iterdir()) if f.is_dir() and len(list(f.glob("*.jpg"))) >= per_person]
    if len(folders) < people:
        raise SystemExit(f"lfw-dev at {lfw} has only {len(folders)} people with {per_person} photos")
    paths = [p for f in folders[:people] for p in sorted(f.glob("*.jpg"))[:per_person]]
    random.Random(seed).shuffle(paths)
    return paths


def strangers(lfw: Path, people: int) -> list[Path]:
    """The first photo of each of ``people`` lfw-dev identities, taken from the end of the list (not the album's)."""
    folders = [f for f in sorted(lfw.iterdir()) if f.is_dir()]
    return [sorted(f.glob("*.jpg"))[0] for f in folders[-people:]]


def run_case(name: str, paths: list[Path], overrides: list[str], reuse: bool, tmp: Path) -> Row:
    """The real job on copies of ``paths``, and what its timer and report say."""
    folder = tmp / f"{name}-in"
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        Image.open(path).save(folder / f"{i:04d}_{path.name}", quality=95)
    out = tmp / f"{name}-{'reuse' if reuse else 'zero'}"
    cfg = load_config([*overrides, f"reuse={str(reuse).lower()}", f"input={folder}", f"output_dir={out}"])
    run = timed_run(cfg, build_from_config(cfg, need_model=False, need_detector=False).device, name)
    faces = [
        f for entry in json.loads((out / REPORT_NAME).read_text())["photos"].values() for f in entry.get("faces", [])
    ]
    steps = [f["steps"] for f in faces]
    warm = [f["steps"] for f in faces if f["warm_start"]]
    margins = [min(f["margin_jpeg75"].values()) for f in faces if f["margin_jpeg75"]]
    e2e = sum(run.timer.wall.get(s, 0.0) for s in STAGES)
    parts = build_from_config(cfg, need_attack=False)
    bfloat16 = frozenset(cfg.attack.get("bfloat16_members") or ())
    model_s, _ = limit_seconds(parts, folder, int(cfg.batch_size), float(np.mean(steps)), bfloat16)
    return Row(
        case=name,
        reuse=reuse,
        faces=len(faces),
        seconds_per_face=e2e / len(faces),
        steps_per_face=float(np.mean(steps)),
        warm_faces=len(warm),
        steps_per_warm_face=float(np.mean(warm)) if warm else None,
        model_seconds_per_face=model_s / len(faces),
        outside_share=max(0.0, 1 - model_s / e2e),
        protected=float(np.mean([m > 1 for m in margins])),
        mean_margin=float(np.mean(margins)),
    )


def markdown(rows: list[Row]) -> str:
    head = (
        "| case | reuse | faces | s/face | steps/face | warm faces (steps each) | model s/face | outside the models "
        "| past every threshold after JPEG | mean smallest margin |\n"
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.case} | {'yes' if r.reuse else 'no'} | {r.faces} | {r.seconds_per_face:.2f} | {r.steps_per_face:.1f} "
        f"| {r.warm_faces}"
        + (f" ({r.steps_per_warm_face:.1f})" if r.steps_per_warm_face is not None else "")
        + f" | {r.model_seconds_per_face:.2f} | {100 * r.outside_share:.0f}% | {100 * r.protected:.0f}% "
        f"| {r.mean_margin:.2f} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def main(kind: str, argv: list[str] | None = None) -> None:
    """``scripts/bench.py album`` or ``strangers``: the cases with and without reuse, and a table."""
    parser = bench_parser(kind, __doc__)
    parser.add_argument("--lfw", type=Path, default=LFW_DEV, help="lfw-dev folder")
    parser.add_argument("--people", type=int, default=6 if kind == "album" else 24, help="people in the folder")
    parser.add_argument("--per-person", type=int, default=10, help="photos per person (album)")
    parser.add_argument(
        "--reuse", choices=("both", "on", "off"), default="both", help="runs with reuse on, off or both"
    )
    parser.add_argument("--out", type=Path, default=None, help="write amortised.md and amortised.json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cloak").setLevel(logging.WARNING)
    if not args.lfw.is_dir():
        raise SystemExit(f"this benchmark needs lfw-dev photos: none at {args.lfw} (--lfw names the folder)")
    paths = album(args.lfw, args.people, args.per_person) if kind == "album" else strangers(args.lfw, args.people)
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.reuse]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cloak-bench-") as tmp:
        for reuse in modes:
            log.info("%s: %d photos, reuse %s ...", kind, len(paths), "on" if reuse else "off")
            rows.append(run_case(kind, paths, list(args.overrides), reuse, Path(tmp)))
            log.info("  %.2f s/face, %.1f steps/face", rows[-1].seconds_per_face, rows[-1].steps_per_face)
    table = f"Measured on: {describe(machine())}\n\n{markdown(rows)}"
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{kind}.md").write_text(table + "\n")
        (args.out / f"{kind}.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
