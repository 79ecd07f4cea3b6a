"""The evaluation experiments: protocol pieces on known answers, sweeps, reports on fake numbers, an lfw-dev run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloak.config import config_dir, load_config
from cloak.detection import Face
from cloak.evaluation.protocol.baselines import random_noise
from cloak.evaluation.protocol.cache import EmbeddingCache, PhotoEmbedder
from cloak.evaluation.protocol.dataset import DatasetError, select_photos
from cloak.evaluation.protocol.experiment import quality_row
from cloak.evaluation.protocol.plots import downscale_axis, jpeg_axis
from cloak.evaluation.protocol.report import headline_rows, load_results, markdown_table, matrix_rows, pct, write_report
from cloak.evaluation.protocol.results import ExperimentResults, ProtectionRow, QualityRow, Setting
from cloak.evaluation.protocol.scoring import Embedded
from cloak.evaluation.protocol.sweep import SweepError, sweep_settings
from cloak.evaluation.trackers.registry import (
    NATIVE_TRACKERS,
    NativeTracker,
    build_pipelines,
    model_trackers,
    relation,
    tracker_names,
)

REPO = Path(__file__).resolve().parents[1]


def _cfg(*overrides: str):
    return load_config(list(overrides), config_name="evaluate")


def _settings(*overrides: str):
    """The sweep settings of the evaluate config composed with ``overrides``."""
    return sweep_settings(_cfg(*overrides), overrides)


# ---------------------------------------------------------------------------
# Protocol pieces
# ---------------------------------------------------------------------------


class _Square:
    """A stand-in embedder: only its template and input size matter for the cloak's region."""

    def __init__(self) -> None:
        import torch

        self.template = torch.tensor([[6.0, 8.0], [14.0, 8.0], [10.0, 12.0], [7.0, 17.0], [13.0, 17.0]])
        self.input_size = (24, 20)


def _face(offset=(30.0, 30.0)) -> Face:
    lm = np.array([[6.0, 8.0], [14.0, 8.0], [10.0, 12.0], [7.0, 17.0], [13.0, 17.0]]) * 1.5 + np.array(offset)
    return Face(
        box=np.array([lm[:, 0].min() - 5, lm[:, 1].min() - 5, lm[:, 0].max() + 5, lm[:, 1].max() + 5]),
        score=0.99,
        landmarks=lm,
    )


@pytest.mark.parametrize("kind", ["sign", "uniform"])
def test_random_noise_has_the_cloaks_linf_size_inside_the_face_region_only(kind):
    photo = np.full((96, 112, 3), 128, np.uint8)
    face = _face()
    noised = random_noise(photo, [face], {"m": _Square()}, eps=8, seed=3, kind=kind)
    diff = noised.astype(int) - photo.astype(int)
    assert np.abs(diff).max() == 8
    changed = np.argwhere(np.abs(diff).max(axis=2) > 0)
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    # Around the face (landmarks span x 39..51, y 42..55 here), far from the photo's corners.
    assert 0 < x0 <= 39 and x1 >= 51 and 0 < y0 <= 42 and y1 >= 55 and x1 < 111 and y1 < 95
    if kind == "sign":
        # Full +-eps over the face; the cloak's mask may feather it towards the region's edges.
        region = diff[y0 : y1 + 1, x0 : x1 + 1]
        assert (np.abs(region) == 8).mean() > 0.5
        assert (np.abs(diff[45:52, 40:50]) == 8).all()
    assert np.array_equal(noised, random_noise(photo, [face], {"m": _Square()}, eps=8, seed=3, kind=kind))
    assert not np.array_equal(noised, random_noise(photo, [face], {"m": _Square()}, eps=8, seed=4, kind=kind))
    assert np.array_equal(random_noise(photo, [], {"m": _Square()}, eps=8, seed=3), photo)
    with pytest.raises(ValueError, match="sign"):
        random_noise(photo, [face], {"m": _Square()}, eps=8, seed=3, kind="gaussian")


def test_quality_row_averages_changed_photos_only():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 4, 0, 255).astype(np.uint8)
    q = quality_row("s", "cloak", [a, a], [b, a])
    assert q.n_photos == 1 and q.ssim < 1 and q.dssim == pytest.approx((1 - q.ssim) / 2)
    assert q.psnr == pytest.approx(10 * math.log10(255**2 / np.mean((b.astype(float) - a) ** 2)), rel=1e-4)
    assert quality_row("s", "cloak", [a], [a]).n_photos == 0
    assert q.face_ssim is None and q.n_faces == 0


def test_quality_row_measures_the_faces_where_the_photo_dilutes_the_change():
    rng = np.random.default_rng(2)
    photo = rng.integers(60, 200, (96, 96, 3), dtype=np.uint8)
    changed = photo.copy()
    noise = rng.choice([-10, 10], (30, 30, 3))
    changed[30:60, 30:60] = np.clip(photo[30:60, 30:60].astype(int) + noise, 0, 255).astype(np.uint8)
    face = Face(box=np.array([32.0, 32.0, 58.0, 58.0]), score=1.0, landmarks=np.zeros((5, 2)))
    q = quality_row("s", "cloak", [photo], [changed], [[face]])
    assert q.n_faces == 1 and q.face_ssim < q.ssim and q.face_ssim_p5 <= q.face_ssim
    assert q.face_psnr < q.psnr and q.face_ssim_min == q.face_ssim
    # A face box that covers the whole photo gives the whole photo's figures.
    whole = Face(box=np.array([0.0, 0.0, 96.0, 96.0]), score=1.0, landmarks=np.zeros((5, 2)))
    w = quality_row("s", "cloak", [photo], [changed], [[whole]])
    assert w.face_ssim == pytest.approx(w.ssim, abs=1e-6) and w.face_psnr == pytest.approx(w.psnr, rel=1e-6)
    # Colour: a change that is the same on R, G and B moves it far less than one that is not.
    grey = photo.copy()
    grey[30:60, 30:60] = np.clip(photo[30:60, 30:60].astype(int) + noise[..., :1], 0, 255).astype(np.uint8)
    g = quality_row("s", "cloak", [photo], [grey], [[face]])
    assert 0 <= g.face_color_shift < q.face_color_shift / 2


class _CountingPipeline:
    """A fake tracker whose embedding of a photo is its mean grey level; counts the photos it embeds."""

    trackers = ["fake"]

    def __init__(self, **options) -> None:
        self.options = options
        self.seen = 0

    def embed(self, photos, progress=None):
        self.seen += len(photos)
        emb = np.stack([np.full(4, float(p.mean()), np.float32) for p in photos])
        return {"fake": Embedded(emb, np.array([p.mean() > 0 for p in photos]))}


def test_embedding_cache_embeds_only_photos_it_lacks(tmp_path):
    paths = []
    for i, grey in enumerate((0, 50, 100)):
        paths.append(tmp_path / f"p{i}.png")
        Image.new("RGB", (8, 8), (grey,) * 3).save(paths[-1])
    first = _CountingPipeline()
    PhotoEmbedder([first], EmbeddingCache(tmp_path / "cache", "fp")).paths(paths[:2], None, "none", "clean")
    assert first.seen == 2
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"fake-none-{EmbeddingCache(tmp_path, 'fp').tag}.npz"]
    again = _CountingPipeline()
    got = PhotoEmbedder([again], EmbeddingCache(tmp_path / "cache", "fp")).paths(paths, None, "none", "clean")["fake"]
    assert again.seen == 1
    assert got.emb[:, 0].tolist() == [0.0, 50.0, 100.0] and got.found.tolist() == [False, True, True]
    other = _CountingPipeline()
    PhotoEmbedder([other], EmbeddingCache(tmp_path / "cache", "other settings")).paths(paths, None, "none", "clean")
    PhotoEmbedder([other], EmbeddingCache(tmp_path / "cache", "fp")).paths(paths, None, "purify", "clean")
    assert other.seen == 6


def test_photos_are_enlarged_before_embedding(tmp_path):
    from cloak.evaluation.protocol.dataset import enlarge

    path = tmp_path / "p.png"
    Image.new("RGB", (10, 6), (90, 20, 20)).save(path)
    seen = []

    class _Sizes(_CountingPipeline):
        def embed(self, photos, progress=None):
            seen.extend(p.shape for p in photos)
            return super().embed(photos, progress)

    PhotoEmbedder([_Sizes()], None, upscale=3.0).paths([path], None, "none", "clean")
    assert seen == [(18, 30, 3)]
    assert enlarge(np.zeros((6, 10, 3), np.uint8), 1.0).shape == (6, 10, 3)
    assert enlarge(np.full((6, 10, 3), 90, np.uint8), 2.5)[2, 3].tolist() == [90, 90, 90]


def test_photos_are_read_upright(tmp_path):
    """The embedder reads photos with the photo loader, which applies the EXIF orientation."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was rotated: display turned 90 degrees clockwise
    Image.new("RGB", (20, 10), (200, 10, 10)).save(path, exif=exif)
    shapes = []

    class _Shapes(_CountingPipeline):
        def embed(self, photos, progress=None):
            shapes.extend(p.shape for p in photos)
            return super().embed(photos, progress)

    PhotoEmbedder([_Shapes()]).paths([path], None, "none", "clean")
    assert shapes == [(20, 10, 3)]


# ---------------------------------------------------------------------------
# Trackers: the model zoo and the native pipelines
# ---------------------------------------------------------------------------


def test_model_trackers_are_the_single_model_configs_of_the_zoo():
    zoo = {p.stem for p in (config_dir() / "model").glob("*.yaml")}
    assert {"dlib_resnet", "facenet_vggface2", "facenet_casia"} <= set(model_trackers()) <= zoo
    assert "ensemble" not in model_trackers()  # it lists members: not one model
    assert set(tracker_names()) == set(model_trackers()) | set(NATIVE_TRACKERS)


def test_relation_of_tracker_to_cloak_models():
    assert relation("dlib_resnet", ["dlib_resnet"]) == "same"
    assert relation("dlib_native", ["dlib_resnet"]) == "pipeline"
    assert relation("dlib_native", ["facenet_casia", "dlib_resnet"]) == "pipeline"
    assert relation("facenet_vggface2", ["dlib_resnet"]) == "cross"
    assert relation("dlib_native", ["facenet_casia"]) == "cross"


def test_a_native_tracker_is_one_registry_line(monkeypatch):
    monkeypatch.setitem(
        NATIVE_TRACKERS, "counting", NativeTracker(f"{__name__}._CountingPipeline", weights_of="dlib_resnet")
    )
    [pipeline], skipped = build_pipelines(["counting"], detector=None, options={"counting": {"colour": "red"}})
    assert isinstance(pipeline, _CountingPipeline) and pipeline.options == {"colour": "red"} and skipped == {}
    assert relation("counting", ["dlib_resnet"]) == "pipeline"
    monkeypatch.setitem(NATIVE_TRACKERS, "missing", NativeTracker("no_such_module.Pipeline", install_hint="it"))
    _, skipped = build_pipelines(["counting", "missing"], detector=None)
    assert skipped["missing"].startswith("a library it needs is not installed") and skipped["missing"].endswith("it")
    with pytest.raises(ValueError, match=r"unknown tracker.*valid: .*dlib_resnet"):
        build_pipelines(["nonesuch"], detector=None)
    with pytest.raises(ValueError, match="none of the trackers"):
        build_pipelines(["missing"], detector=None)


def test_a_model_tracker_without_local_weights_is_skipped_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty weights cache
    monkeypatch.setitem(NATIVE_TRACKERS, "counting", NativeTracker(f"{__name__}._CountingPipeline"))
    [pipeline], skipped = build_pipelines(["facenet_vggface2", "counting"], detector=None)
    assert isinstance(pipeline, _CountingPipeline)
    assert skipped["facenet_vggface2"].startswith("weights not available locally")
    assert not any(tmp_path.rglob("*.pt"))


# ---------------------------------------------------------------------------
# Sweeps: entries of Hydra overrides
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")))
def test_every_experiment_config_composes_and_its_settings_build(experiment):
    from hydra.utils import instantiate

    from cloak.imaging.platform import parse_platform_transform

    settings = _settings(f"experiment={experiment}")
    assert settings and len({s.label for s in settings}) == len(settings)
    for s in settings:
        assert s.cfg.experiment_name == experiment
        for t in s.cfg.platform.transforms:
            parse_platform_transform(t)
        attack = instantiate(s.cfg.attack)
        assert attack.steps >= 1 and attack.eps > 0


def test_strength_sweep_settings():
    settings = _settings("experiment=strength_sweep")
    presets = {name: load_config([f"strength={name}"]).strength for name in ("low", "mid", "high")}
    assert [s.label for s in settings] == ["lowkey/low/robust", "lowkey/mid/robust", "lowkey/high/robust"] + [
        f"eps{e}" for e in (2, 4, 8, 12, 16)
    ]
    for s, name in zip(settings, presets):
        assert s.overrides == [f"strength={name}"] and s.cfg.strength == presets[name]
    for s, eps in zip(settings[3:], (2, 4, 8, 12, 16)):
        assert s.cfg.strength.eps == eps and s.cfg.strength.max_dssim is None
        assert s.cfg.strength.steps == presets["mid"].steps and s.cfg.attack.eps == eps  # through the interpolation


def test_entry_overrides_compose_after_the_runs_own():
    run = ("experiment=strength_sweep", "strength.steps=3", "attack=pgd")
    settings = _settings(*run)
    assert all(s.cfg.strength.steps == 3 and s.cfg.attack._target_.endswith("PGD") for s in settings)
    high = load_config(["strength=high"]).strength
    assert settings[2].cfg.strength.eps == high.eps  # [strength=high] swapped the group; the run's steps still apply
    assert settings[0].label == "pgd/low/robust" and settings[3].label == "eps2"
    robust = _settings("experiment=robustness_sweep", "strength=high", "transform=none")
    assert [(s.cfg.attack._target_.rsplit(".", 1)[1], s.cfg.transform.jpeg_prob > 0) for s in robust] == [
        (a, r) for a in ("LowKey", "PGD", "Fawkes") for r in (True, False)
    ]
    assert all(s.cfg.strength.eps == high.eps for s in robust)


def test_without_a_sweep_the_run_is_one_setting_labelled_by_its_choices():
    [setting] = _settings("attack=fawkes", "strength=low", "data.n_users=3")
    assert setting.label == "fawkes/low/robust" and setting.overrides == [] and setting.cfg.data.n_users == 3
    [setting] = _settings("strength.eps=5")
    assert setting.label == "lowkey/mid/robust"


def test_a_bad_sweep_entry_is_named_in_the_error():
    with pytest.raises(SweepError, match=r"sweep entry 1 \(broken: \['strength.epss=3'\]\) does not compose"):
        _settings("sweep=[['strength=low'], {label: broken, overrides: ['strength.epss=3']}]")
    with pytest.raises(SweepError, match=r"sweep entry 0 \(no label: \['strength=nonesuch'\]\).*nonesuch"):
        _settings("sweep=[['strength=nonesuch']]")
    with pytest.raises(SweepError, match=r"sweep entry 0 .*must be a list of Hydra overrides"):
        _settings("sweep=[{colour: red}]")
    with pytest.raises(SweepError, match="pass the overrides the config was composed with"):
        sweep_settings(_cfg("experiment=strength_sweep", "strength.steps=3"), ["experiment=strength_sweep"])


def test_the_command_line_composes_sweeps_inside_hydra(tmp_path):
    """Under @hydra.main the sweep composes with the running app; a broken entry stops the run (exit 2)."""
    data = _tiny_dataset(tmp_path / "faces")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            f"data.root={data}",
            "data.n_users=1",
            "sweep=[['strength=low'], ['strength.eps=4', 'strength.nonesuch=1']]",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "sweep entry 1 (no label: ['strength.eps=4', 'strength.nonesuch=1'])" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _tiny_dataset(root: Path, counts=(("Ann", 12), ("Bob", 12), ("Cid", 3))) -> Path:
    for name, n in counts:
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(root / name / f"{name}_{i:04d}.jpg")
    return root


def test_a_missing_data_root_gives_a_clear_error(tmp_path):
    from experiments.run import run

    missing = tmp_path / "no-such-faces"
    cfg = _cfg(f"data.root={missing}", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*<identity>/<image>.*data.root"):
        run(cfg)


def test_too_few_identities_gives_a_clear_error(tmp_path):
    root = _tiny_dataset(tmp_path)
    with pytest.raises(DatasetError, match="need at least 4"):
        select_photos(root, n_users=3, min_photos=10, shared_fraction=0.7, seed=0)
    with pytest.raises(DatasetError, match="only 0 of 3 identities"):
        select_photos(root, n_users=1, min_photos=13, shared_fraction=0.7, seed=0)
    photos = select_photos(root, n_users=1, min_photos=10, shared_fraction=0.7, seed=0)
    assert len(photos.shared_paths) == 8 and len(photos.probe_paths) == 4 and len(photos.distractor_paths) == 15
    capped = select_photos(root, n_users=1, min_photos=10, shared_fraction=0.7, seed=0, max_photos_per_user=5)
    assert len(capped.shared_paths) == 4 and len(capped.probe_paths) == 1
    assert set(capped.shared_paths) <= set(photos.shared_paths) and set(capped.probe_paths) <= set(photos.probe_paths)
    one = select_photos(root, n_users=1, min_photos=10, shared_fraction=0.7, seed=0, max_distractors=1)
    assert len(set(one.distractor_labels)) == 1 and set(one.distractor_labels) < set(photos.distractor_labels)
    assert [len(one.rows(part)) for part in ("shared", "probes", "distractors")] == [8, 4, len(one.distractor_paths)]


def test_command_line_reports_a_missing_data_root(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            f"data.root={tmp_path / 'nothing'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# Reports on fake numbers
# ---------------------------------------------------------------------------


def _fake_results() -> ExperimentResults:
    res = ExperimentResults(
        experiment="fake",
        data={"root": "/x", "users": ["u"], "n_shared": 7, "n_probes": 3},
        cloak_models=["dlib_resnet"],
        trackers=["dlib_resnet"],
        skipped_trackers={"facenet_casia": "no weights"},
        transforms=["none", "jpeg75", "down0.5"],
        tracker_side_transforms=[],
        metrics=["knn1", "rank1"],
        noise="sign",
    )
    values = {"cloak": 0.9, "none": 0.1, "noise": 0.2}
    for label, eps, drop in (("a", 4.0, 0.0), ("b", 8.0, 0.05)):
        res.settings.append(Setting(label, "lowkey", eps, 10, 0.02, True, seconds=14.0, n_cloaked=7))
        res.quality.append(
            QualityRow(
                label, "cloak", 0.99 - drop, (0.01 + drop) / 2, 40.0, 0.98, 7, face_ssim=0.95 - drop, face_ssim_p5=0.85
            )
        )
        res.quality.append(QualityRow(label, "noise", 0.95, 0.025, 36.0, 0.9, 7))
        for k, transform in enumerate(res.transforms):
            for condition, v in values.items():
                for metric in res.metrics:
                    p = v - 0.1 * k if condition == "cloak" else v
                    res.protection.append(
                        ProtectionRow(
                            label,
                            "dlib_resnet",
                            "same",
                            transform,
                            False,
                            condition,
                            metric,
                            p + drop,
                            {"u": p + drop},
                            3,
                            0,
                            0,
                        )
                    )
    return res


def test_relation_is_per_setting_in_a_sweep_over_models():
    res = _fake_results()
    for row in res.protection:
        if row.setting == "b":
            row.relation = "cross"  # setting b's cloak was made with another model
    assert res.relation_of("dlib_resnet", "a") == "same" and res.relation_of("dlib_resnet", "b") == "cross"
    assert res.relation_of("dlib_resnet") == ""  # no one relation for the whole run
    assert headline_rows(res, "b")[1][0][0] == "dlib_resnet (cross)"
    assert headline_rows(res, "a")[1][0][0] == "dlib_resnet (same)"


def test_headline_table_on_fake_numbers():
    header, rows = headline_rows(_fake_results(), "a")
    assert header[:5] == ["tracker", "transform", "cloak 1-NN", "cloak rank-1", "no cloak 1-NN"]
    assert header[-3:] == ["face SSIM", "face p5 SSIM", "photo SSIM"]
    assert rows[0] == [
        "dlib_resnet (same)",
        "none",
        "90%",
        "90%",
        "10%",
        "10%",
        "20%",
        "20%",
        "0.950",
        "0.850",
        "0.990",
    ]
    assert rows[2][:4] == ["dlib_resnet (same)", "down0.5", "70%", "70%"]
    assert len(rows) == 3


def test_matrix_table_and_markdown_format():
    header, rows = matrix_rows(_fake_results(), "dlib_resnet", "knn1")
    assert header == ["setting", "none", "jpeg75", "down0.5"]
    assert rows == [
        ["a", "90%", "80%", "70%"],
        ["b", "95%", "85%", "75%"],
        ["no cloak", "10%", "10%", "10%"],
        ["sign noise eps 4", "20%", "20%", "20%"],
        ["sign noise eps 8", "25%", "25%", "25%"],
    ]
    assert markdown_table(["x", "y"], [[1, "2%"]]) == "| x | y |\n|:---|---:|\n| 1 | 2% |\n"
    assert pct(0.834) == "83%" and pct(None) == "-"


def test_plot_axes():
    assert jpeg_axis("none") == 100 and jpeg_axis("jpeg75") == 75 and jpeg_axis("down0.5") is None
    assert (
        downscale_axis("none") == 1 and downscale_axis("down0.25") == 0.25 and downscale_axis("jpeg75+down0.5") is None
    )


def test_write_report_writes_every_file(tmp_path):
    res = _fake_results()
    res.quality[0].psnr = float("inf")
    files = write_report(res, tmp_path)
    for key in (
        "json",
        "protection_csv",
        "quality_csv",
        "markdown",
        "protection_png",
        "tradeoff_png",
        "robustness_png",
    ):
        assert files[key].is_file() and files[key].stat().st_size > 0, key
    data = json.loads(files["json"].read_text())
    assert data["quality"][0]["psnr"] is None
    assert len(data["protection"]) == 2 * 3 * 3 * 2
    lines = files["protection_csv"].read_text().splitlines()
    assert lines[0].startswith("setting,tracker,relation,transform") and len(lines) == 1 + 36
    md = files["markdown"].read_text()
    assert "## Protection: a" in md and "Skipped tracker `facenet_casia`" in md
    back = load_results(files["json"])
    assert back.to_dict() == res.to_dict()


def test_report_imports_without_torch_or_hydra():
    code = (
        "import cloak.evaluation.protocol.report, sys; assert 'torch' not in sys.modules and 'hydra' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------
# On lfw-dev
# ---------------------------------------------------------------------------


def test_dlib_pipeline_agrees_with_our_dlib_resnet(lfw_dev):
    pytest.importorskip("dlib")
    from cloak.detection import FaceDetector
    from cloak.evaluation.trackers.pipelines import DlibPipeline, ModelPipeline
    from cloak.models.dlib_resnet import load_dlib_resnet
    from cloak.photos import load_photo

    paths = [sorted(p.glob("*.jpg"))[0] for p in sorted(lfw_dev.iterdir())[:4]]
    photos = [load_photo(p).rgb for p in paths] + [np.full((120, 120, 3), 128, np.uint8)]
    theirs = DlibPipeline().embed(photos)["dlib_native"]
    ours = ModelPipeline(FaceDetector(device="cpu"), {"dlib_resnet": load_dlib_resnet()}).embed(photos)["dlib_resnet"]
    assert theirs.found.tolist() == [True] * 4 + [False] and ours.found.tolist() == [True] * 4 + [False]
    sims = (theirs.emb[:4] * ours.emb[:4]).sum(1)
    assert np.allclose(np.linalg.norm(theirs.emb[:4], axis=1), 1, atol=1e-5)
    assert sims.min() > 0.9, sims


def _clean_error(train: Embedded, train_labels, test: Embedded, test_labels, metric: str) -> float:
    """A tracker's error on clean photos, from its classifier alone (photos without a face: dropped / wrong)."""
    from cloak.evaluation.protocol.scoring import fit_predict

    correct = np.zeros(len(test), bool)
    correct[test.found] = (
        fit_predict(train.emb[train.found], train_labels[train.found], test.emb[test.found], metric)
        == test_labels[test.found]
    )
    return 1 - correct.mean()


def test_protection_experiment_smoke(lfw_dev, tmp_path):
    """End to end on 2 users of 6 photos, 2 attack steps, 2 distractor identities, two transforms."""
    from cloak.detection import FaceDetector
    from cloak.evaluation.trackers.pipelines import ModelPipeline
    from cloak.models.dlib_resnet import load_dlib_resnet
    from cloak.photos import load_photo
    from experiments.run import run

    overrides = [
        f"data.root={lfw_dev}",
        "data.n_users=2",
        "data.max_photos_per_user=6",
        "data.max_distractors=2",
        "strength.steps=2",
        "device=cpu",
        "trackers=[dlib_resnet]",
        "platform.transforms=[none,jpeg75]",
        f"output_dir={tmp_path}",
    ]
    res = run(_cfg(*overrides), overrides)
    for name in ("results.json", "protection.csv", "quality.csv", "report.md", "protection.png", "robustness.png"):
        assert (tmp_path / name).is_file(), name
    assert load_results(tmp_path / "results.json").to_dict() == json.loads(json.dumps(res.to_dict()))
    [setting] = res.settings
    assert setting.label == "lowkey/mid/robust" and setting.n_cloaked == res.data["n_shared"] == 2 * 4
    assert setting.mean_steps == 2  # no early stopping: every photo took every step
    assert len(res.protection) == 2 * 3 * 3  # transforms x conditions x metrics
    assert {r.n_probes for r in res.protection} == {res.data["n_probes"]}
    assert {tuple(sorted(r.per_user)) for r in res.protection} == {tuple(res.data["users"])}
    cloak_q, noise_q = res.quality
    assert cloak_q.n_photos == noise_q.n_photos == 8
    assert 0.8 < cloak_q.ssim_min <= cloak_q.ssim < 1 and cloak_q.dssim == pytest.approx((1 - cloak_q.ssim) / 2)
    assert 0.5 < noise_q.ssim < 1

    # The no-cloak baseline is the tracker's own error on clean photos, computed here from scratch.
    photos = select_photos(
        lfw_dev, n_users=2, min_photos=10, shared_fraction=0.7, seed=0, max_photos_per_user=6, max_distractors=2
    )
    pipe = ModelPipeline(FaceDetector(device="cpu"), {"dlib_resnet": load_dlib_resnet()})
    train_labels = np.concatenate([photos.shared_labels, photos.distractor_labels])
    train = pipe.embed([load_photo(p).rgb for p in photos.shared_paths + photos.distractor_paths])["dlib_resnet"]
    test = pipe.embed([load_photo(p).rgb for p in photos.probe_paths])["dlib_resnet"]
    for metric in ("knn1", "logreg"):
        want = _clean_error(train, train_labels, test, photos.probe_labels, metric)
        assert res.value(setting.label, "dlib_resnet", "none", "none", metric) == pytest.approx(want)
    # Rank-1: each user alone with the distractors.
    distractors = train.take(np.arange(len(photos.shared_paths), len(train)))
    rank1_errors = []
    for user in res.data["users"]:
        mine = np.flatnonzero(photos.shared_labels == user)
        gallery = Embedded(
            np.concatenate([train.emb[mine], distractors.emb]), np.concatenate([train.found[mine], distractors.found])
        )
        gallery_labels = np.concatenate([photos.shared_labels[mine], photos.distractor_labels])
        probes = np.flatnonzero(photos.probe_labels == user)
        rank1_errors.append(
            _clean_error(gallery, gallery_labels, test.take(probes), photos.probe_labels[probes], "knn1") * len(probes)
        )
    want = sum(rank1_errors) / len(photos.probe_paths)
    assert res.value(setting.label, "dlib_resnet", "none", "none", "rank1") == pytest.approx(want)
