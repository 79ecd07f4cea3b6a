"""Where a folder of photos is cloaked: in this process (``runner=local``) or on a Ray cluster (``runner=ray``).

``configs/runner/`` builds one of these; :func:`cloak.run.run` hands every run whose runner
is not local to :func:`run_elsewhere`. Nothing here imports Ray: the Ray runner imports it
when it runs, and says how to install it when it is missing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from cloak.resources import StageTimer

log = logging.getLogger("cloak")

#: What a user without the ``ray`` extra is told.
RAY_INSTALL_HINT = (
    "runner=ray needs Ray, which is not installed: install it with `uv sync --extra ray` "
    "(pip: `pip install 'cloak[ray]'`), or run without runner=ray to cloak in this process"
)


@dataclass
class Runner:
    """A place to cloak photos: ``name`` is the option of ``configs/runner/`` that built it."""

    name: str = "local"

    def run(self, cfg: DictConfig, source: Path, output: Path, preview: bool, timer: StageTimer) -> int:
        """Cloaks the photos of ``source`` into ``output`` as :func:`cloak.run.run` does; returns the exit status."""
        from cloak.run import _run

        return _run(cfg, source, output, preview=preview, timer=timer)


@dataclass
class LocalRunner(Runner):
    """This process, batch after batch (the default)."""


@dataclass
class RayRunner(Runner):
    """A Ray cluster: Ray Data lists the photos and a pool of actors cloaks them (:mod:`cloak.runners.ray_runner`).

    Attributes:
        address: an existing cluster (``auto``, ``ray://head:10001``, ``head:6379``); ``None``
            starts a local one for the run and stops it after.
        num_cpus: CPUs of that local cluster (``None``: all of this machine's).
        num_workers: actors, each loading the model once and cloaking batches of photos.
        num_cpus_per_worker: CPUs each actor holds (its torch threads).
        num_gpus_per_worker: GPUs each actor holds; ``auto``: 1 when the cluster has GPUs, else 0.
        max_restarts: times Ray restarts an actor that dies (its batch in flight is retried).
        max_task_retries: times Ray retries a batch whose actor died.
    """

    name: str = "ray"
    address: str | None = None
    num_cpus: int | None = None
    num_workers: int = 2
    num_cpus_per_worker: float = 1
    num_gpus_per_worker: float | str = "auto"
    max_restarts: int = 3
    max_task_retries: int = 3

    def run(self, cfg: DictConfig, source: Path, output: Path, preview: bool, timer: StageTimer) -> int:
        """Cloaks on the cluster; without Ray installed, says how to install it (exit status 2)."""
        # Under `uv run`, Ray would start each worker with `uv run` again, in an environment without
        # the extra; workers run this interpreter instead (set it to 1 to keep Ray's behaviour).
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError:
            log.error("%s", RAY_INSTALL_HINT)
            return 2
        from cloak.runners.ray_runner import run_on_ray

        return run_on_ray(self, cfg, source, output, preview=preview, timer=timer)


def run_elsewhere(cfg: DictConfig, source: Path, output: Path, preview: bool, timer: StageTimer) -> int:
    """Builds ``cfg.runner`` and runs it (the local runner calls back into :func:`cloak.run._run`)."""
    runner = instantiate(cfg.runner)
    if not isinstance(runner, Runner):
        raise TypeError(f"runner config built a {type(runner).__name__}, not a cloak.runners.Runner")
    return runner.run(cfg, source, output, preview=preview, timer=timer)
