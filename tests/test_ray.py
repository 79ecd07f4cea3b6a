"""``runner=ray``: the same copies and report as the local runner, retries after a dead worker, and a clear refusal.

The cluster tests need the ``ray`` extra (``uv sync --extra ray``) and lfw-dev, skip without
them, and are marked slow (``uv run pytest -m slow tests/test_ray.py``). The refusal and the actors' own steps run without Ray.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloak.config import load_config
from cloak.run import run
from cloak.runners import RAY_INSTALL_HINT, RayRunner
from cloak.runners.ray_actor import DIE_ONCE_ENV, CloakActor, cloak_paths, outcome_columns
from cloak.runners.ray_runner import add_row, gpus_per_worker, in_order, init_kwargs

#: Cheap cloaks: one small model, two steps; two photos per batch so 4 photos make 2 batches.
CHEAP = ["model=sface", "strength.steps=2", "device=cpu", "batch_size=2"]


@pytest.fixture
def four_photos(lfw_dev, tmp_path) -> Path:
    """The first photo of 4 lfw-dev people, in a folder of their own."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for person in sorted(p for p in lfw_dev.iterdir() if p.is_dir())[:4]:
        shutil.copy(sorted(person.glob("*.jpg"))[0], folder)
    return folder


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.jpg"))}


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_runner_ray_without_ray_says_how_to_install_it(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as it does without the extra
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "photos" / "a.jpg")
    with caplog.at_level(logging.ERROR, logger="cloak"):
        status = run(load_config([*CHEAP, f"input={tmp_path / 'photos'}", "runner=ray"]))
    assert status == 2
    assert "uv sync --extra ray" in caplog.text and RAY_INSTALL_HINT in caplog.text
    assert not (tmp_path / "photos_cloaked").exists(), "nothing is written when the runner cannot run"


def test_runner_options_reach_ray():
    assert init_kwargs(RayRunner(num_cpus=2)) == {"include_dashboard": False, "num_cpus": 2}
    assert init_kwargs(RayRunner(address="auto", num_cpus=2)) == {"address": "auto"}
    assert gpus_per_worker(RayRunner(), cluster_gpus=0) == 0 and gpus_per_worker(RayRunner(), cluster_gpus=4) == 1
    assert gpus_per_worker(RayRunner(num_gpus_per_worker=0.5), cluster_gpus=4) == 0.5
    built = load_config(["runner=ray", "runner.address=auto"]).runner
    assert built.address == "auto" and built.num_workers == 2 and built.num_gpus_per_worker == "auto"


def test_rows_come_back_in_the_listings_order(tmp_path, four_photos):
    """An actor's rows round-trip into the driver's outcome, sorted as the local runner lists photos."""
    cfg = load_config([*CHEAP, f"input={four_photos}"])
    actor = CloakActor(dict(cfg), str(four_photos), str(tmp_path / "out"), preview=False)
    names = sorted(p.name for p in four_photos.iterdir())
    columns = actor({"path": np.array([str(four_photos / n) for n in reversed(names)], dtype=object)})
    assert list(columns["status"]) == ["cloaked"] * 4
    from cloak.run import Outcome

    outcome = Outcome()
    for rel, status, payload in zip(columns["rel"], columns["status"], columns["payload"]):
        add_row(outcome, rel, status, payload)
    assert list(in_order(outcome, names).cloaked) == names
    assert {p.name for p in (tmp_path / "out").iterdir()} == set(names)


def test_a_retried_batch_reports_its_written_copies_without_rewriting_them(tmp_path, four_photos):
    """A batch retried after its actor died: copies written by the first try stay, their reports come back equal."""
    cfg = load_config([*CHEAP, f"input={four_photos}"])
    out = tmp_path / "out"
    actor = CloakActor(dict(cfg), str(four_photos), str(out), preview=False)
    paths = sorted(four_photos.iterdir())[:2]
    first = cloak_paths(actor.job, paths)
    written = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    again = cloak_paths(actor.job, paths)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == written
    assert list(first.cloaked) == list(again.cloaked) == [p.name for p in paths]
    assert not again.failed and not again.skipped_done
    for rel in first.cloaked:
        assert again.cloaked[rel].to_dict() == first.cloaked[rel].to_dict()
    assert set(outcome_columns(again)["status"]) == {"cloaked"}


# ---------------------------------------------------------------------------
# On a local Ray cluster (the ray extra)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local 2-CPU Ray cluster for the module; its workers see :data:`DIE_ONCE_ENV` (a marker file)."""
    import os

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray = pytest.importorskip("ray", reason="needs the ray extra: uv sync --extra ray")
    marker = tmp_path_factory.mktemp("ray") / "died"
    os.environ[DIE_ONCE_ENV] = str(marker)
    ray.init(num_cpus=2, include_dashboard=False)
    yield marker
    ray.shutdown()
    del os.environ[DIE_ONCE_ENV]


def _cloak_locally(folder: Path, out: Path) -> int:
    """The local runner on one torch thread, as each Ray worker of 1 CPU runs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(load_config([*CHEAP, f"input={folder}", f"output_dir={out}"]))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # about 40 s with the cluster's start: `uv run pytest -m slow tests/test_ray.py`
def test_ray_gives_the_local_runners_copies_and_report(cluster, four_photos, tmp_path):
    cluster.touch()  # no worker dies here
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    assert run(load_config([*CHEAP, f"input={four_photos}", f"output_dir={ray_out}", "runner=ray"])) == 0
    assert _cloak_locally(four_photos, local_out) == 0
    ray_px, local_px = _pixels(ray_out), _pixels(local_out)
    assert sorted(ray_px) == sorted(p.name for p in four_photos.iterdir())
    for name, pixels in local_px.items():
        assert np.array_equal(ray_px[name], pixels), name
        assert (ray_out / name).read_bytes() == (local_out / name).read_bytes(), name
    assert _report(ray_out) == _report(local_out)
    # A re-run skips the finished copies and keeps their report entries.
    before = {p.name: p.stat().st_mtime_ns for p in ray_out.iterdir()}
    assert run(load_config([*CHEAP, f"input={four_photos}", f"output_dir={ray_out}", "runner=ray"])) == 0
    assert {p.name: p.stat().st_mtime_ns for p in ray_out.glob("*.jpg")} == {
        k: v for k, v in before.items() if k.endswith(".jpg")
    }
    assert _report(ray_out) == _report(local_out)


@pytest.mark.slow  # about 40 s
def test_a_worker_killed_mid_run_loses_no_photo(cluster, four_photos, tmp_path):
    cluster.unlink(missing_ok=True)  # the first worker to write a batch dies before reporting it
    out = tmp_path / "ray"
    assert run(load_config([*CHEAP, f"input={four_photos}", f"output_dir={out}", "runner=ray"])) == 0
    assert cluster.is_file(), "no worker died: the test did not test a retry"
    report = _report(out)["photos"]
    assert sorted(report) == sorted(p.name for p in four_photos.iterdir())
    assert {entry["status"] for entry in report.values()} == {"cloaked"}
    assert all(entry["faces"] for entry in report.values())
    local = tmp_path / "local"
    assert _cloak_locally(four_photos, local) == 0
    assert _pixels(out).keys() == _pixels(local).keys()
    for name, pixels in _pixels(local).items():
        assert np.array_equal(_pixels(out)[name], pixels), name
    assert _report(out) == _report(local)
