"""What every ``scripts/bench.py`` subcommand's command line shares."""

from __future__ import annotations

import argparse
from pathlib import Path

#: Where the benchmarks find lfw-dev photos by default (``--lfw`` / ``--data``).
LFW_DEV = Path("../shared/data/lfw-dev")


def bench_parser(
    kind: str, doc: str | None, overrides: str | None = "Hydra overrides of the cloak config"
) -> argparse.ArgumentParser:
    """The parser of ``bench.py KIND``: its module docstring as the description, and ``overrides`` (positional) when helped."""
    parser = argparse.ArgumentParser(
        prog=f"bench.py {kind}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if overrides is not None:
        parser.add_argument("overrides", nargs="*", help=overrides)
    return parser
