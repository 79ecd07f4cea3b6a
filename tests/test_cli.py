"""The main job end to end: `python -m cloak`, its files, and every kind of bad input."""

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloak.config import load_config
from cloak.run import run

FAST = ["strength.steps=2", "device=cpu"]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def photos(tmp_path, astronaut) -> Path:
    """A folder with a face (JPEG, nested), a photo without a face (PNG), a text file and a corrupt JPEG."""
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    face = Image.fromarray(astronaut).resize((256, 256))
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}  # GPS latitude: must not leak into the copy
    face.save(root / "trip" / "me.jpg", quality=92, exif=exif)
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(root / "wall.png")
    (root / "notes.txt").write_text("not a photo")
    (root / "broken.jpg").write_bytes((root / "trip" / "me.jpg").read_bytes()[:300])
    return root


def _run(*overrides: str) -> int:
    return run(load_config([*FAST, *overrides]))


def test_folder_is_cloaked_safely_and_reported(photos, caplog):
    caplog.set_level(logging.INFO, logger="cloak")
    before = _digest(photos)
    status = _run(f"input={photos}")
    out = photos.parent / "photos_cloaked"
    assert status == 1, "a photo failed (broken.jpg), so the exit status must say so"
    assert _digest(photos) == before, "the input folder was modified"

    cloaked = Image.open(out / "trip" / "me.jpg")
    assert cloaked.format == "JPEG" and cloaked.size == (256, 256)
    assert 0x8825 not in cloaked.getexif(), "GPS EXIF leaked into the cloaked copy"
    original = np.asarray(Image.open(photos / "trip" / "me.jpg").convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(cloaked.convert("RGB"), dtype=np.int16) - original).max() > 0

    copied = Image.open(out / "wall.png")
    assert copied.format == "PNG" and np.array_equal(np.asarray(copied), np.asarray(Image.open(photos / "wall.png")))
    assert not (out / "notes.txt").exists() and not (out / "broken.jpg").exists()

    report = json.loads((out / "report.json").read_text())["photos"]
    assert report["trip/me.jpg"]["status"] == "cloaked" and len(report["trip/me.jpg"]["faces"]) == 1
    face = report["trip/me.jpg"]["faces"][0]
    assert face["distance"]["dlib_resnet"] > 0 and face["threshold"]["dlib_resnet"] == 0.6
    assert 0.9 < report["trip/me.jpg"]["ssim"] <= 1.0
    assert report["wall.png"]["status"] == "no_face"
    assert report["broken.jpg"]["status"] == "failed" and "broken.jpg" in report["broken.jpg"]["error"]
    assert "notes.txt" not in report
    # The summary says what one photo's numbers cannot promise, and where the measurements are.
    assert "necessary, not sufficient" in caplog.text and "Limits" in caplog.text
    # And the face's colour shift, which SSIM does not see, as report.json has it.
    assert f"largest {face['color_shift']:.2f}" in caplog.text
    # The shading figure, the share of each visibility limit used and each model's margin.
    assert f"largest {face['shading']:.2f}" in caplog.text
    limits = {"shading": 1.0, "ssim": 0.97, "ssim_p5": 0.90}  # the default preset's
    assert 0 < face["shading"] <= limits["shading"]
    assert face["limit_use"]["shading"] == pytest.approx(face["shading"] / limits["shading"], abs=1e-4)
    assert face["limit_use"]["ssim"] == pytest.approx((1 - face["ssim"]) / (1 - limits["ssim"]), abs=1e-3)
    assert 0 < face["limit_use"]["ssim_p5"] <= 1 + 1e-6 and face["limit_use"]["ssim"] <= 1 + 1e-6
    for model, margin in face["margin_jpeg75"].items():
        assert margin == pytest.approx(face["distance_jpeg75"][model] / face["threshold"][model], abs=1e-4)


def test_rerun_skips_done_photos_and_overwrite_redoes_them(photos):
    _run(f"input={photos}")
    out = photos.parent / "photos_cloaked"
    first = _digest(out)
    _run(f"input={photos}")
    assert {k: v for k, v in _digest(out).items() if k != "report.json"} == {
        k: v for k, v in first.items() if k != "report.json"
    }
    _run(f"input={photos}", "overwrite=true", "seed=1")
    assert _digest(out)["trip/me.jpg"] != first["trip/me.jpg"]


def test_no_face_skip_and_preview(photos):
    _run(f"input={photos}", "no_face=skip", "preview=true")
    out = photos.parent / "photos_cloaked"
    assert not (out / "wall.png").exists()
    preview = Image.open(out / "previews" / "trip" / "me.png")
    assert preview.size[0] > 3 * 256 and preview.size[1] == 256


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_input_is_refused(photos, where):
    out = photos if where == "same" else photos / "cloaked"
    before = _digest(photos)
    assert _run(f"input={photos}", f"output_dir={out}") == 2
    assert _digest(photos) == before


def test_missing_input_is_an_error(tmp_path):
    assert _run(f"input={tmp_path / 'nope'}") == 2


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("no_face=delete", "no_face"),
        ("jpeg_quality=0", "jpeg_quality"),
        ("jpeg_subsampling=4:1:1", "jpeg_subsampling"),
        ("metadata=some", "metadata"),
    ],
)
def test_bad_output_options_stop_the_run_before_any_cloak(photos, option, named, caplog):
    """A typo in an output option is caught at the start (exit 2, named), not per photo after every cloak."""
    assert _run(f"input={photos}", option) == 2
    assert not (photos.parent / "photos_cloaked").exists()
    assert named in caplog.text


def test_oversized_photo_is_refused_by_name(photos):
    status = _run(f"input={photos / 'trip'}", "max_pixels=1000")
    assert status == 1
    report = json.loads((photos / "trip_cloaked" / "report.json").read_text())["photos"]
    assert report["me.jpg"]["status"] == "failed" and "max_pixels" in report["me.jpg"]["error"]


def test_cli_runs_the_demo_end_to_end(tmp_path):
    """The README's "run it" command, as a user types it (fewer steps)."""
    done = subprocess.run(
        [sys.executable, "-m", "cloak", *FAST], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "cloak-demo" / "astronaut.png").is_file()
    assert (tmp_path / "cloak-demo" / "report.json").is_file()
    assert (tmp_path / "cloak-demo" / "previews" / "astronaut.png").is_file()
    assert "cloak-demo" in done.stdout


def test_positional_folder_with_odd_characters(tmp_path, astronaut):
    folder = tmp_path / "my photos, 2024 [x]"
    folder.mkdir()
    Image.fromarray(astronaut).resize((200, 200)).save(folder / "a.png")
    done = subprocess.run(
        [sys.executable, "-m", "cloak", str(folder), *FAST], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "my photos, 2024 [x]_cloaked" / "a.png").is_file()


def test_python_api(astronaut):
    import cloak

    [result] = cloak.protect(astronaut, overrides=["strength.steps=2"], device="cpu")
    assert result.image.shape == astronaut.shape and result.image.dtype == np.uint8
    assert np.abs(result.image.astype(int) - astronaut.astype(int)).max() <= load_config([]).strength.eps
    assert len(result.report.faces) == 1 and result.report.ssim > 0.9


def test_interrupted_run_keeps_finished_photos_and_the_rerun_completes(tmp_path, astronaut, monkeypatch):
    """Photos are written batch by batch: an interruption loses nothing finished, and the re-run does the rest."""
    import cloak.run as run_module

    root = tmp_path / "album"
    root.mkdir()
    for i, size in enumerate((240, 256, 272)):
        Image.fromarray(astronaut).resize((size, size)).save(root / f"p{i}.png")
    out = tmp_path / "album_cloaked"
    real_batch, batches = run_module._cloak_batch, []

    def interrupt_second_batch(*args, **kwargs):
        batches.append(1)
        if len(batches) == 2:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(run_module, "_cloak_batch", interrupt_second_batch)
    assert _run(f"input={root}", "batch_size=1") == 130
    assert sorted(p.name for p in out.glob("*.png")) == ["p0.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temporary file was left behind"
    report = json.loads((out / "report.json").read_text())["photos"]
    assert list(report) == ["p0.png"] and report["p0.png"]["status"] == "cloaked"
    done = (out / "p0.png").read_bytes()

    monkeypatch.setattr(run_module, "_cloak_batch", real_batch)
    assert _run(f"input={root}", "batch_size=1") == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["p0.png", "p1.png", "p2.png"]
    assert (out / "p0.png").read_bytes() == done, "the finished photo was redone"
    report = json.loads((out / "report.json").read_text())["photos"]
    assert all(report[f"p{i}.png"]["status"] == "cloaked" for i in range(3))
