"""``python -m experiments.run [experiment=...] [overrides]``: a thin Hydra entry around :func:`run`.

Examples (from the repository root)::

    uv run python -m experiments.run                              # the headline protection table
    uv run python -m experiments.run experiment=strength_sweep     # quality-protection trade-off
    uv run python -m experiments.run experiment=robustness_sweep   # JPEG / downscale robustness
    uv run python -m experiments.run experiment=adaptive           # adaptive trackers, purification, detection
    uv run python -m experiments.run experiment=generator          # a learned first guess of the cloak
    uv run python -m experiments.run --multirun strength=low,mid,high data.n_users=3

Configs: ``configs/evaluate.yaml`` and ``configs/experiment/``. See ``experiments/README.md``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cloak.config import config_dir
from cloak.evaluation.adaptive.experiment import run_adaptive_experiment
from cloak.evaluation.adaptive.report import write_adaptive_report
from cloak.evaluation.adaptive.results import AdaptiveResults
from cloak.evaluation.protocol.dataset import DatasetError
from cloak.evaluation.protocol.experiment import run_experiment
from cloak.evaluation.protocol.report import write_report
from cloak.evaluation.protocol.results import ExperimentResults
from cloak.evaluation.protocol.sweep import SweepError
from experiments.generator import run_generator

log = logging.getLogger("experiments")


def _in_hydra() -> bool:
    return HydraConfig.initialized()


def resolve_path(path: str | Path) -> Path:
    """An absolute path; a relative one is taken from the directory the command was run in."""
    path = Path(str(path)).expanduser()
    if path.is_absolute():
        return path
    base = Path(hydra.utils.get_original_cwd()) if _in_hydra() else Path.cwd()
    return (base / path).resolve()


def output_dir(cfg: DictConfig) -> Path:
    """``cfg.output_dir`` if set, else Hydra's run folder (when run by Hydra)."""
    if cfg.get("output_dir"):
        return resolve_path(cfg.output_dir)
    if _in_hydra():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ValueError("output_dir is not set and no Hydra run folder exists; pass output_dir=<folder>")


def run(cfg: DictConfig, overrides: Sequence[str] | None = None) -> ExperimentResults | AdaptiveResults | dict:
    """Runs the experiment of ``cfg`` and writes its CSV, JSON, Markdown and plots.

    A config with an ``adaptive`` section (``experiment=adaptive``) runs
    :func:`cloak.evaluation.adaptive.experiment.run_adaptive_experiment` and
    writes ``adaptive.json``, ``adaptive.csv``, ``adaptive.md`` and ``adaptive.png``.
    A config with a ``generator`` section (``experiment=generator``) trains and compares the
    learned first guess (:func:`experiments.generator.run_generator`): ``generator.json``, ``generator.md``.

    Results (without plots) are rewritten after each transform of each setting,
    so a long sweep leaves partial results behind if it is stopped.

    Args:
        cfg: a composed ``evaluate`` config.
        overrides: the Hydra overrides ``cfg`` was composed with; the settings of
            its sweep are composed from them. None: those of the running Hydra
            app, or none outside one.

    Raises:
        FileNotFoundError, NotADirectoryError, DatasetError: on a missing or too
            small data folder (with what was expected and how to set ``data.root``).
        SweepError: on a sweep entry that does not compose (named in the message).
    """
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if _in_hydra() else []
    if cfg.get("torch_threads"):
        import torch

        torch.set_num_threads(int(cfg.torch_threads))
    out = output_dir(cfg)
    root = resolve_path(cfg.data.root)
    report = cfg.get("report") or {}
    plots = bool(report.get("plots", True))
    metrics = list(report.get("metrics") or []) or None
    tradeoff = list(report.get("tradeoff_transforms") or []) or None

    def save(results: ExperimentResults, final: bool = False) -> None:
        files = write_report(results, out, plots=plots and final, tradeoff_transforms=tradeoff, metrics=metrics)
        if final:
            log.info("Wrote %s", ", ".join(str(p) for p in files.values()))

    cache = resolve_path(cfg.cache_dir) if cfg.get("cache_dir") else None
    if cfg.get("generator") is not None:
        return run_generator(cfg, root, out, resolve_path)
    if cfg.get("adaptive") is not None:
        return _run_adaptive(cfg, root, out, cache, overrides, plots)
    results = run_experiment(cfg, root, cache_dir=cache, on_progress=save, overrides=overrides)
    save(results, final=True)
    return results


def _run_adaptive(
    cfg: DictConfig, root: Path, out: Path, cache: Path | None, overrides: Sequence[str], plots: bool
) -> AdaptiveResults:
    """The adaptive-tracker experiment; its files are rewritten after each step."""
    results = run_adaptive_experiment(
        cfg,
        root,
        cache_dir=cache,
        on_progress=lambda r: write_adaptive_report(r, out, plots=False),
        overrides=overrides,
    )
    files = write_adaptive_report(results, out, plots=plots)
    log.info("Wrote %s", ", ".join(str(p) for p in files.values()))
    return results


@hydra.main(config_path=str(config_dir()), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (FileNotFoundError, NotADirectoryError, DatasetError, SweepError) as err:
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
