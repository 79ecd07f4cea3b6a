"""A stopped run keeps an honest record: SIGTERM as Ctrl-C, each copy recorded with it, every copy listed."""

import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloak.config import load_config
from cloak.interrupts import StopOnSigterm, Terminated
from cloak.run import run
from cloak.run_report import JOURNAL_NAME, UNRECORDED

# One small model and one step: what is checked here is the bookkeeping, not the cloak.
FAST = ["strength.steps=1", "device=cpu", "model=sface"]


def _faces(root: Path, astronaut: np.ndarray, count: int) -> list[str]:
    """``count`` small photos of the astronaut's face (each size and side its own), as PNGs in ``root``."""
    root.mkdir(parents=True)
    face = Image.fromarray(astronaut[0:300, 100:400])
    names = []
    for i in range(count):
        photo = face.resize((96 + 4 * i, 96 + 4 * i))
        if i % 2:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        names.append(f"p{i:02d}.png")
        photo.save(root / names[-1])
    return names


def _copies(out: Path) -> set[str]:
    return {p.name for p in out.glob("*.png")} if out.is_dir() else set()


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())["photos"]


def test_sigterm_stops_the_run_as_ctrl_c_and_the_rerun_lists_every_copy(tmp_path, astronaut):
    """The issue's run: 16 photos in batches of 2, SIGTERM once 4 copies exist, then the same command again."""
    names = _faces(tmp_path / "album", astronaut, 16)
    out = tmp_path / "album_cloaked"
    command = [sys.executable, "-m", "cloak", str(tmp_path / "album"), "batch_size=2", *FAST]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300  # a guard against a hung run, not a timing check
            while len(_copies(out)) < 4 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (tmp_path / "first.log").read_text()
    assert status == 130, text
    assert "Stopped (SIGTERM)" in text and "run the same command again" in text
    written = _copies(out)
    assert 4 <= len(written) < 16, text
    # Every copy written is in report.json with its measurements; nothing else is.
    first = _report(out)
    assert set(first) == written
    assert all(e["status"] == "cloaked" and len(e["faces"]) == 1 for e in first.values())
    assert not (out / JOURNAL_NAME).exists(), "the journal was not folded into report.json"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temporary file was left behind"

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _copies(out) == set(names)
    for name in names:
        with Image.open(out / name) as copy:
            copy.load()
            assert copy.size == Image.open(tmp_path / "album" / name).size
    report = _report(out)
    assert set(report) == set(names)
    assert all(e["status"] == "cloaked" for e in report.values())
    assert {k: report[k] for k in first} == first, "the first run's entries changed"


@pytest.fixture(scope="module")
def done_folder(tmp_path_factory) -> Path:
    """A folder of 3 photos, cloaked once; tests copy it (``album``, ``album_cloaked``)."""
    from skimage import data

    base = tmp_path_factory.mktemp("done")
    _faces(base / "album", data.astronaut(), 3)
    assert run(load_config([*FAST, f"input={base / 'album'}"])) == 0
    return base


def _copy_of(done: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(done, tmp_path, dirs_exist_ok=True)
    return tmp_path / "album", tmp_path / "album_cloaked"


def test_a_copy_without_a_record_is_listed_not_dropped(done_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cloak")
    album, out = _copy_of(done_folder, tmp_path)
    before = _report(out)
    data = json.loads((out / "report.json").read_text())
    del data["photos"]["p01.png"]  # as a run killed between the copy and its record leaves it
    (out / "report.json").write_text(json.dumps(data))
    copy = (out / "p01.png").read_bytes()

    assert run(load_config([*FAST, f"input={album}"])) == 0
    report = _report(out)
    assert set(report) == {"p00.png", "p01.png", "p02.png"}
    assert report["p01.png"]["status"] == UNRECORDED and "overwrite=true" in report["p01.png"]["note"]
    assert report["p00.png"] == before["p00.png"] and report["p02.png"] == before["p02.png"]
    assert (out / "p01.png").read_bytes() == copy, "the copy was redone"
    assert f"lists them as {UNRECORDED}: p01.png" in caplog.text, "the summary does not name the copy"


def test_the_journal_of_a_killed_run_is_folded_in(done_folder, tmp_path):
    """A run killed outright (SIGKILL) leaves its journal, its last line maybe cut short; the next run reads it."""
    album, out = _copy_of(done_folder, tmp_path)
    before = _report(out)
    data = json.loads((out / "report.json").read_text())
    entry = data["photos"].pop("p02.png")
    (out / "report.json").write_text(json.dumps(data))
    line = json.dumps({"photo": "p02.png", "entry": entry})
    (out / JOURNAL_NAME).write_text(line + "\n" + line[: len(line) // 2])

    assert run(load_config([*FAST, f"input={album}"])) == 0
    assert _report(out) == before
    assert not (out / JOURNAL_NAME).exists()


def test_sigterm_raises_terminated_waits_for_a_critical_block_and_restores_the_handler():
    previous = signal.getsignal(signal.SIGTERM)
    stopper = StopOnSigterm()
    done = []
    with pytest.raises(Terminated), stopper:
        with stopper.critical():
            signal.raise_signal(signal.SIGTERM)
            done.append("copy")
            done.append("record")
        done.append("next photo")
    assert done == ["copy", "record"], "SIGTERM cut the critical block or did not stop after it"
    assert signal.getsignal(signal.SIGTERM) == previous
    assert issubclass(Terminated, KeyboardInterrupt), "the run's Ctrl-C path must catch it"


def test_outside_the_main_thread_sigterm_is_left_alone():
    """``python -m cloak serve`` cloaks in a worker thread: no signal handler may be set from there."""
    previous = signal.getsignal(signal.SIGTERM)
    seen = []

    def work():
        with StopOnSigterm() as stopper, stopper.critical():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [previous] and signal.getsignal(signal.SIGTERM) == previous
