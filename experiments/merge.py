"""One sweep's tables and plots from its cells: the jobs of a ``--multirun``, run by any Hydra launcher.

``python -m experiments.run --multirun strength=low,mid`` runs one job per cell (in this
process, or through ``hydra/launcher=joblib``, ``submitit_local``, ``submitit_slurm``); each
writes its own ``results.json``, tables and plots into its folder of the sweep
(``<sweep dir>/<job number>_<overrides>/``). When the last job ends, :class:`MergeCells` (a
Hydra callback of ``configs/evaluate.yaml``) merges the cells' results, in job order, into
one ``results.json``, ``protection.csv``, ``quality.csv``, ``report.md`` and plots at the top
of the sweep folder: those the in-process sweep (``sweep=[[strength=low], [strength=mid]]``)
writes for the same settings. Cells that ran apart (a Slurm array whose driver was stopped)
are merged by hand::

    uv run python -m experiments.merge multirun/evaluate/protection/2026-01-01_12-00-00

Cells must share their data, trackers, transforms, metrics and noise baseline (a multirun
over cloak settings), and name their settings apart.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cloak.evaluation.protocol.report import load_results, write_report
from cloak.evaluation.protocol.results import ExperimentResults

log = logging.getLogger("experiments")

#: What every cell of one sweep must share for its rows to sit in one table.
SHARED = ("experiment", "data", "trackers", "transforms", "tracker_side_transforms", "metrics", "noise")


def cell_files(sweep_dir: Path) -> list[Path]:
    """The cells' ``results.json`` files, in job order (the number Hydra puts first in each cell's folder).

    A cell's folder may lie deeper than the sweep's first level: an override whose value is a
    path (``data.root=/data/lfw``) puts slashes into Hydra's folder name.
    """
    sweep_dir = Path(sweep_dir)

    def order(path: Path) -> tuple[int, str]:
        rel = path.parent.relative_to(sweep_dir).as_posix()
        number = re.match(r"\d+", rel)
        return (int(number.group()) if number else 1 << 30, rel)

    found = [p for p in sweep_dir.rglob("results.json") if p.parent != sweep_dir and ".submitit" not in p.parts]
    return sorted(found, key=order)


def cell_name(sweep_dir: Path, results: Path) -> str:
    """A cell's name: its folder below the sweep folder."""
    return results.parent.relative_to(sweep_dir).as_posix()


def merge_results(cells: Sequence[ExperimentResults], names: Sequence[str] | None = None) -> ExperimentResults:
    """The cells' settings, protection and quality rows in one result, as the in-process sweep holds them.

    Raises:
        ValueError: with no cells, cells that measured different things (named), or two
            cells with the same setting label.
    """
    if not cells:
        raise ValueError("no cell results to merge")
    names = list(names) if names is not None else [f"cell {i}" for i in range(len(cells))]
    first = cells[0]
    for name, cell in zip(names[1:], cells[1:]):
        for key in SHARED:
            if getattr(cell, key) != getattr(first, key):
                raise ValueError(f"{name} measured another {key} than {names[0]}: cells of one sweep must share it")
    labels = [s.label for cell in cells for s in cell.settings]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"setting label(s) {twice} in more than one cell: give the cells' settings distinct labels")
    skipped: dict[str, str] = {}
    for cell in cells:
        skipped.update(cell.skipped_trackers)
    return replace(
        first,
        cloak_models=list(dict.fromkeys(m for cell in cells for m in cell.cloak_models)),
        skipped_trackers=skipped,
        settings=[s for cell in cells for s in cell.settings],
        protection=[r for cell in cells for r in cell.protection],
        quality=[q for cell in cells for q in cell.quality],
        seconds=sum(cell.seconds for cell in cells),
        config={"cells": {name: cell.config for name, cell in zip(names, cells)}},
    )


def merge_sweep(sweep_dir: Path, report: Any = None) -> dict[str, Path]:
    """Merges the cells under ``sweep_dir`` and writes the sweep's files there; returns name -> path.

    ``report``: the ``report`` section of the config (plots, metrics, tradeoff transforms).
    """
    sweep_dir = Path(sweep_dir)
    files = cell_files(sweep_dir)
    if not files:
        raise FileNotFoundError(f"no cell of {sweep_dir} wrote a results.json (*/results.json)")
    merged = merge_results([load_results(f) for f in files], [cell_name(sweep_dir, f) for f in files])
    report = report or {}
    written = write_report(
        merged,
        sweep_dir,
        plots=bool(report.get("plots", True)),
        tradeoff_transforms=list(report.get("tradeoff_transforms") or []) or None,
        metrics=list(report.get("metrics") or []) or None,
    )
    log.info("Merged %d cell(s) of %s: %s", len(files), sweep_dir, ", ".join(p.name for p in written.values()))
    return written


class MergeCells(Callback):
    """Hydra callback: at the end of a multirun, merges its cells (:func:`merge_sweep`) into its sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Runs in the process that launched the cells, once they have all ended."""
        if config.get("adaptive") is not None:
            log.info("The adaptive experiment's cells are not merged: each keeps its own adaptive.* files")
            return
        try:
            merge_sweep(Path(str(config.hydra.sweep.dir)), config.get("report"))
        except (FileNotFoundError, ValueError) as err:
            log.error("The sweep's cells were not merged: %s", err)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m experiments.merge SWEEP_DIR``: merges a multirun's cells into the sweep's tables and plots."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metrics", nargs="*", default=["knn1", "logreg"])
    parser.add_argument("--tradeoff-transforms", nargs="*", default=["none", "social"])
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = {"plots": not args.no_plots, "metrics": args.metrics, "tradeoff_transforms": args.tradeoff_transforms}
    merge_sweep(args.sweep_dir, report)


if __name__ == "__main__":
    main()
