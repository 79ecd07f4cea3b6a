"""Benchmarks of cloak on this machine, one subcommand each.

- ``cloak``: speed and memory of the cloak end to end (the real job), against the bare
  compute of its models (:mod:`benches.cloak`);
- ``protection``: protection against dlib after JPEG and downscaling, image quality and
  seconds per face on real faces (:mod:`benches.protection`);
- ``models``: the face models' forward+backward time, their agreement with the pipelines
  they re-implement and their verification AUC (:mod:`benches.models`);
- ``library``: memory over a photo library of 1,000 photos (:mod:`benches.library`);
- ``web``: the web page's time from drop to result and its memory (:mod:`benches.web`);
- ``album`` and ``strangers``: seconds and steps per face over an album of a few people and
  a folder of strangers, with and without reusing a person's cloak, and the models' share
  of the time (:mod:`benches.amortised`);
- ``ray``: the Ray runner's photos per second against the local runner's (:mod:`benches.ray`).

Usage:
    uv run python scripts/bench.py SUBCOMMAND [options and Hydra overrides]
    uv run python scripts/bench.py SUBCOMMAND --help
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SUBCOMMANDS = ("cloak", "protection", "models", "library", "web", "album", "strangers", "ray")


def main(argv: list[str] | None = None) -> int:
    """Runs the subcommand named first in ``argv`` with the rest; its exit status (0 when it returns none)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:
        sys.stderr.write(__doc__ or "")
        sys.stderr.write(f"\nerror: the first argument must be one of {', '.join(SUBCOMMANDS)}\n")
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    module = importlib.import_module(f"benches.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
