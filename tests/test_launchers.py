"""Experiment sweeps through Hydra's launchers: each cell writes its own results, one step merges them.

The merge runs on fake numbers without any extra. The launchers (``uv sync --extra launchers``)
run a two-cell sweep on lfw-dev (marked slow): ``joblib`` and ``submitit_local`` give the
in-process sweep's results, and the example Slurm launcher config composes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cloak.evaluation.protocol.report import load_results, write_report
from experiments.merge import cell_files, merge_results, merge_sweep

REPO = Path(__file__).resolve().parents[1]


def _cell(label: str) -> object:
    """A one-setting fake result, as one cell of a sweep writes it."""
    from test_experiments import _fake_results  # tests/ is on the path under pytest

    res = _fake_results()
    res.settings = [replace(s, label=label) for s in res.settings if s.label == "a"]
    res.protection = [replace(r, setting=label) for r in res.protection if r.setting == "a"]
    res.quality = [replace(q, setting=label) for q in res.quality if q.setting == "a"]
    res.seconds, res.config = 10.0, {"strength": label}
    return res


def test_cells_merge_into_one_sweep_in_job_order(tmp_path):
    for num, label in ((1, "mid"), (0, "low"), (10, "high")):
        write_report(_cell(label), tmp_path / f"{num}_strength={label}", plots=False)
    write_report(_cell("deep"), tmp_path / "2_data.root=" / "faces,strength=deep", plots=False)  # a path override
    names = [p.parent.relative_to(tmp_path).as_posix() for p in cell_files(tmp_path)]
    assert names == ["0_strength=low", "1_strength=mid", "2_data.root=/faces,strength=deep", "10_strength=high"]
    files = merge_sweep(tmp_path, {"plots": True, "metrics": ["knn1"], "tradeoff_transforms": ["none"]})
    merged = load_results(files["json"])
    assert [s.label for s in merged.settings] == ["low", "mid", "deep", "high"]
    assert len(merged.protection) == 4 * len(_cell("x").protection) and len(merged.quality) == 4 * 2
    assert merged.seconds == 40.0 and list(merged.config["cells"]) == names
    assert {"protection_png", "tradeoff_png", "markdown", "protection_csv"} <= set(files)
    assert "## Protection: mid" in files["markdown"].read_text()


def test_cells_that_measured_different_things_are_not_merged():
    other = _cell("mid")
    other.data = {**other.data, "users": ["someone else"]}
    with pytest.raises(ValueError, match="another data"):
        merge_results([_cell("low"), other], ["0_low", "1_mid"])
    with pytest.raises(ValueError, match="more than one cell"):
        merge_results([_cell("low"), _cell("low")])
    with pytest.raises(ValueError, match="no cell"):
        merge_results([])


# ---------------------------------------------------------------------------
# The launchers (the launchers extra) on lfw-dev
# ---------------------------------------------------------------------------

#: A two-cell sweep's common settings: one user of few photos, one tracker, two attack steps.
CHEAP = [
    "data.n_users=2",
    "data.max_photos_per_user=4",
    "data.max_distractors=2",
    "model=sface",
    "strength.steps=2",
    "device=cpu",
    "trackers=[dlib_resnet]",
    "platform.transforms=[none,jpeg75]",
    "platform.tracker_side=[]",
    "torch_threads=1",
]


def _comparable(path: Path) -> dict:
    """A results.json without what differs between runs of the same cells: times and configs."""
    data = json.loads(path.read_text())
    data.pop("seconds"), data.pop("config")
    for setting in data["settings"]:
        setting.pop("seconds")
    return data


def _multirun(launcher: str, sweep_dir: Path, lfw: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable, "-m", "experiments.run", "--multirun", f"hydra/launcher={launcher}",
            f"data.root={lfw}", *CHEAP, "strength=low,mid", f"hydra.sweep.dir={sweep_dir}", *extra,
        ],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def in_process_sweep(lfw_dev, tmp_path_factory) -> Path:
    """The same two settings as one in-process sweep (``sweep=[[strength=low], [strength=mid]]``)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="uv sync --extra launchers")
    from cloak.config import load_config
    from experiments.run import run

    out = tmp_path_factory.mktemp("in-process")
    overrides = [f"data.root={lfw_dev}", *CHEAP, "sweep=[['strength=low'],['strength=mid']]", f"output_dir={out}"]
    run(load_config(overrides, config_name="evaluate"), overrides)
    return out / "results.json"


@pytest.mark.slow  # about a minute per launcher on 2 CPUs
@pytest.mark.parametrize(
    "launcher, extra",
    [("joblib", ["hydra.launcher.n_jobs=2"]), ("submitit_local", ["hydra.launcher.timeout_min=15"])],
)
def test_a_launchers_two_cells_give_the_in_process_sweep(launcher, extra, lfw_dev, in_process_sweep, tmp_path):
    pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher", reason="uv sync --extra launchers")
    proc = _multirun(launcher, tmp_path / "sweep", lfw_dev, *extra)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    cells = cell_files(tmp_path / "sweep")
    names = [p.parent.relative_to(tmp_path / "sweep").as_posix() for p in cells]
    assert len(names) == 2 and names[0].startswith("0_") and names[1].startswith("1_"), names
    assert "strength=low" in names[0] and "strength=mid" in names[1], "each cell writes its own results"
    assert "lfw" not in names[0], "data.root stays out of the cells' folder names"
    assert _comparable(tmp_path / "sweep" / "results.json") == _comparable(in_process_sweep)
    for name in ("protection.csv", "quality.csv", "report.md", "protection.png", "tradeoff.png"):
        assert (tmp_path / "sweep" / name).is_file(), name


def test_the_example_slurm_launcher_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="uv sync --extra launchers")
    from hydra import compose, initialize_config_dir

    from cloak.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("evaluate", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
