"""``runner=ray``: the local runner's job on a Ray cluster, with the same files, report and safety.

The driver lists the photos (as the local runner does) and leaves out those whose copy
already exists (unless ``overwrite=true``); Ray Data spreads the rest over a pool of
:class:`~cloak.runners.ray_actor.CloakActor` actors, ``batch_size`` photos per call. Each
actor loads the models once, reads, detects, cloaks and writes its photos atomically, and
sends back one row per photo; the driver records each row as it comes (the local runner's
journal, :class:`~cloak.run_report.RunReport`: a stopped or killed run loses no entry) and
writes ``report.json`` in the listing's order at the end. An actor that dies loses only its batch in flight: Ray
restarts it and retries the batch (``runner.max_restarts``, ``runner.max_task_retries``).
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from cloak.photos import destination_for
from cloak.resources import StageTimer
from cloak.run import _settings, list_photos, note_done
from cloak.run_report import RunReport, cloaked_entry, failed_entry, no_face_entry
from cloak.run_summary import Outcome, summarise
from cloak.runners import RayRunner
from cloak.runners.ray_actor import CloakActor

log = logging.getLogger("cloak")


def run_on_ray(runner: RayRunner, cfg: DictConfig, source: Path, output: Path, preview: bool, timer: StageTimer) -> int:
    """Cloaks the photos of ``source`` into ``output`` on the cluster; returns the exit status (as the local runner)."""
    root, photos = list_photos(source)
    if not photos:
        return 2
    outcome, report = Outcome(), RunReport(output, _settings(cfg))
    todo = []
    for path in photos:
        if destination_for(path, source, output).exists() and not cfg.overwrite:
            note_done(outcome, report, str(path.relative_to(root)))
        else:
            todo.append(str(path))
    stopped = None
    if todo:
        with timer.stage("ray"):
            stopped = _on_cluster(runner, cfg, todo, (source, output, preview), (outcome, report))
    order = [str(p.relative_to(root)) for p in photos]
    final = in_order(outcome, order)
    with timer.stage("report"):
        report.photos = {rel: report.photos[rel] for rel in sorted(report.photos, key=_ranks(order))}
        report.write()
    if stopped is not None:
        log.warning(
            "%s: %d photo(s) cloaked and written to %s; run the same command again to cloak the rest",
            "Interrupted" if stopped == 130 else "The run stopped",
            len(final.cloaked),
            output,
        )
        return stopped
    summarise(final, output)
    return 1 if final.failed else 0


def _on_cluster(runner: RayRunner, cfg: DictConfig, todo: list[str], where: tuple, record: tuple) -> int | None:
    """Cloaks ``todo`` on the cluster (started here when ``runner.address`` is null), filling ``record``.

    ``record``: the run's :class:`Outcome` and its :class:`RunReport`.

    Returns ``None`` when every photo came back, else the run's exit status: 130 on Ctrl-C, 1
    when the cluster gave up (an actor that cannot start, a batch out of retries: logged).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(**init_kwargs(runner))
    try:
        rows = _dataset(ray, runner, cfg, todo, where)
        log.info(
            "Cloaking %d photo(s) from %s into %s on Ray (%d worker(s), %s CPU(s) each, batches of %d)",
            len(todo), where[0], where[1], runner.num_workers, runner.num_cpus_per_worker, int(cfg.batch_size),
        )  # fmt: skip
        _gather(rows, *record, total=len(todo))
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # Ray wraps what failed on the cluster in its own errors
        lines = str(err).strip().splitlines()
        log.error("The Ray run stopped: %s", lines[-1] if lines else repr(err))
        return 1
    finally:
        if started:
            ray.shutdown()
    return None


def init_kwargs(runner: RayRunner) -> dict:
    """``ray.init``'s arguments: connect to ``runner.address``, or start a local cluster of ``runner.num_cpus``."""
    if runner.address:
        return {"address": str(runner.address)}
    kwargs: dict = {"include_dashboard": False}
    if runner.num_cpus is not None:
        kwargs["num_cpus"] = int(runner.num_cpus)
    return kwargs


def gpus_per_worker(runner: RayRunner, cluster_gpus: float) -> float:
    """``runner.num_gpus_per_worker``, with ``auto`` as 1 on a cluster with GPUs and 0 without."""
    if str(runner.num_gpus_per_worker) == "auto":
        return 1.0 if cluster_gpus > 0 else 0.0
    return float(runner.num_gpus_per_worker)


def _dataset(ray, runner: RayRunner, cfg: DictConfig, todo: list[str], where: tuple):
    """The rows of the run: Ray Data over the paths, mapped in batches by a pool of actors."""
    source, output, preview = where
    gpus = gpus_per_worker(runner, ray.cluster_resources().get("GPU", 0))
    plain = OmegaConf.to_container(cfg, resolve=True)
    threads = max(1, int(runner.num_cpus_per_worker))
    ctor = dict(cfg=plain, source=str(source), output=str(output), preview=preview, threads=threads)
    paths = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=max(1, len(todo)))
    with warnings.catch_warnings():  # Ray >= 2.60 names no parameter for the actors' restarts yet
        warnings.simplefilter("ignore", DeprecationWarning)
        return _map(paths, runner, cfg, gpus, ctor)


def _map(paths, runner: RayRunner, cfg: DictConfig, gpus: float, ctor: dict):
    """``paths`` mapped batch by batch by the actor pool."""
    return paths.map_batches(
        CloakActor,
        fn_constructor_kwargs=ctor,
        batch_size=int(cfg.batch_size),
        batch_format="numpy",
        concurrency=int(runner.num_workers),
        num_cpus=float(runner.num_cpus_per_worker),
        num_gpus=gpus,
        max_restarts=int(runner.max_restarts),
        max_task_retries=int(runner.max_task_retries),
    )


def _gather(rows, outcome: Outcome, report: RunReport, total: int) -> None:
    """Adds each photo's row to ``outcome`` and records it in the run's journal as it arrives."""
    bar = tqdm(total=total, unit="photo", desc="cloaking on ray", disable=None)
    for row in rows.iter_rows():
        rel = str(row["rel"])
        report.add(rel, add_row(outcome, rel, str(row["status"]), bytes(row["payload"])))
        bar.update(1)
    bar.close()


def add_row(outcome: Outcome, rel: str, status: str, payload: bytes) -> dict:
    """One actor row into ``outcome`` (a retried batch's row replaces nothing: each photo comes once); its entry."""
    if status == "cloaked":
        outcome.cloaked[rel] = pickle.loads(payload)
        return cloaked_entry(outcome.cloaked[rel])
    if status.startswith("no_face"):
        outcome.no_face.append(rel)
        return no_face_entry(status == "no_face_copied")
    outcome.failed[rel] = payload.decode()
    log.error("Failed: %s", outcome.failed[rel])
    return failed_entry(outcome.failed[rel])


def _ranks(order: list[str]):
    """A sort key: a photo's place in ``order`` (photos not in it last)."""
    rank = {rel: i for i, rel in enumerate(order)}
    return lambda rel: rank.get(rel, len(rank))


def in_order(outcome: Outcome, order: list[str]) -> Outcome:
    """``outcome`` with each of its lists and tables in the listing's order (the local runner's)."""
    key = _ranks(order)

    return Outcome(
        cloaked={rel: outcome.cloaked[rel] for rel in sorted(outcome.cloaked, key=key)},
        no_face=sorted(outcome.no_face, key=key),
        skipped_done=sorted(outcome.skipped_done, key=key),
        unrecorded=sorted(outcome.unrecorded, key=key),
        failed={rel: outcome.failed[rel] for rel in sorted(outcome.failed, key=key)},
    )
