"""The evaluation experiments: protocol pieces on known answers, reports on fake numbers, an lfw-dev smoke run."""

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
from cloak.evaluation.experiment import (
    DatasetError,
    EmbeddingCache,
    ExperimentResults,
    PhotoEmbedder,
    ProtectionRow,
    QualityRow,
    Setting,
    auto_label,
    compose_transform,
    load_photos,
    quality_row,
    random_noise,
    relation,
    setting_configs,
    tracker_protection,
)
from cloak.evaluation.pipelines import Embedded
from cloak.evaluation.platform import downscale, jpeg
from cloak.evaluation.report import (
    downscale_axis,
    headline_rows,
    jpeg_axis,
    load_results,
    markdown_table,
    matrix_rows,
    pct,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]


def _cfg(*overrides: str):
    return load_config(list(overrides), config_name="evaluate")


# ---------------------------------------------------------------------------
# Protocol pieces
# ---------------------------------------------------------------------------


def test_composed_transform_applies_its_parts_in_order():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    got = np.asarray(compose_transform("jpeg75+down0.5")(img))
    want = np.asarray(downscale(jpeg(img, 75), 0.5))
    assert np.array_equal(got, want)
    assert np.array_equal(np.asarray(compose_transform("jpeg75")(img)), np.asarray(jpeg(img, 75)))
    with pytest.raises(ValueError, match="unknown platform transform"):
        compose_transform("jpeg75+sepia")


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


def _emb(rows, found=None) -> Embedded:
    rows = np.asarray(rows, dtype=np.float32)
    return Embedded(rows, np.ones(len(rows), bool) if found is None else np.asarray(found))


def test_tracker_protection_on_known_embeddings():
    e = np.eye(4)
    # u1's shared photos sit at e0; u2's at e1, one of them with no face found (dropped).
    shared = _emb([e[0], e[0], e[1], e[3]], found=[True, True, True, False])
    shared_labels = ["u1", "u1", "u2", "u2"]
    distractors = _emb([e[2], e[2] * 0.9 + e[3] * 0.1])
    distractor_labels = ["d", "d"]
    # u1's probes: one near e0 (right), one near e2 (a distractor: wrong). u2's: one near e1 (right),
    # one near e0 (u1 in the classifier: wrong; alone in its rank-1 gallery u2 is nearer than d), one without a face.
    probes = _emb(
        [e[0] + 0.1 * e[1], e[2] + 0.1 * e[0], e[1] + 0.1 * e[2], e[0] + 0.6 * e[1], e[3]],
        found=[True, True, True, True, False],
    )
    probe_labels = ["u1", "u1", "u2", "u2", "u2"]
    scores = tracker_protection(shared, shared_labels, distractors, distractor_labels, probes, probe_labels)
    knn = scores["knn1"]
    assert knn.protection == pytest.approx(3 / 5)
    assert knn.per_user == {"u1": 0.5, "u2": pytest.approx(2 / 3)}
    assert knn.n_probes == 5 and knn.n_probes_no_face == 1
    assert scores["rank1"].protection == pytest.approx(2 / 5)
    assert scores["rank1"].per_user == {"u1": 0.5, "u2": pytest.approx(1 / 3)}
    assert 0 <= scores["logreg"].protection <= 1


def test_tracker_protection_counts_a_user_with_no_training_face_as_protected():
    e = np.eye(3)
    shared = _emb([e[0]], found=[False])
    scores = tracker_protection(shared, ["u"], _emb([e[1], e[2]]), ["a", "b"], _emb([e[0]]), ["u"], ["knn1", "rank1"])
    assert scores["knn1"].protection == 1.0 and scores["rank1"].protection == 1.0


def test_tracker_protection_rejects_bad_input():
    e = np.eye(2)
    with pytest.raises(ValueError, match="length"):
        tracker_protection(_emb([e[0]]), ["u", "u"], _emb([e[1]]), ["d"], _emb([e[0]]), ["u"])
    with pytest.raises(ValueError, match="metric"):
        tracker_protection(_emb([e[0]]), ["u"], _emb([e[1]]), ["d"], _emb([e[0]]), ["u"], ["svm"])


class _CountingPipeline:
    """A fake tracker whose embedding of a photo is its mean grey level; counts the photos it embeds."""

    trackers = ["fake"]

    def __init__(self) -> None:
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
    again = _CountingPipeline()
    got = PhotoEmbedder([again], EmbeddingCache(tmp_path / "cache", "fp")).paths(paths, None, "none", "clean")["fake"]
    assert again.seen == 1
    assert got.emb[:, 0].tolist() == [0.0, 50.0, 100.0] and got.found.tolist() == [False, True, True]
    other = _CountingPipeline()
    PhotoEmbedder([other], EmbeddingCache(tmp_path / "cache", "other settings")).paths(paths, None, "none", "clean")
    PhotoEmbedder([other], EmbeddingCache(tmp_path / "cache", "fp")).paths(paths, None, "purify", "clean")
    assert other.seen == 6


def test_relation_of_tracker_to_cloak_models():
    assert relation("dlib_resnet", ["dlib_resnet"]) == "same"
    assert relation("dlib_native", ["dlib_resnet"]) == "pipeline"
    assert relation("facenet_vggface2", ["dlib_resnet"]) == "cross"
    assert relation("dlib_native", ["facenet_casia"]) == "cross"


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")))
def test_every_experiment_config_composes_and_its_settings_build(experiment):
    from hydra.utils import instantiate

    cfg = _cfg(f"experiment={experiment}")
    assert cfg.experiment_name == experiment
    for t in cfg.platform.transforms:
        compose_transform(t)
    for entry in setting_configs(cfg, config_dir()):
        attack = instantiate(entry.cfg.attack)
        assert attack.steps >= 1 and attack.eps > 0


def test_strength_sweep_settings():
    from hydra.utils import instantiate

    entries = setting_configs(_cfg("experiment=strength_sweep"), config_dir())
    presets = [load_config([f"strength={s}"]).strength for s in ("low", "mid", "high")]
    attacks = [instantiate(e.cfg.attack) for e in entries]
    for attack, preset in zip(attacks[:3], presets):
        assert attack.eps * 255 == pytest.approx(preset.eps) and attack.steps == preset.steps
    eps_entries = [(e, a) for e, a in zip(entries, attacks) if e.overrides]
    assert [round(a.eps * 255) for _, a in eps_entries] == [2, 4, 8, 12, 16]
    assert all(a.max_dssim is None for _, a in eps_entries)
    assert auto_label({}, attacks[0], entries[0].groups, overridden=False) == "lowkey/low/robust"
    assert auto_label({"attack": "pgd"}, attacks[3], {}, overridden=True) == "pgd/eps2/robust"


def test_robustness_sweep_covers_every_attack_with_and_without_the_robust_transform():
    from hydra.utils import instantiate

    entries = setting_configs(_cfg("experiment=robustness_sweep"), config_dir())
    got = {(instantiate(e.cfg.attack).name, instantiate(e.cfg.attack).transform is not None) for e in entries}
    assert got == {(a, r) for a in ("lowkey", "pgd", "fawkes") for r in (True, False)}


def test_sweep_entries_are_checked(tmp_path):
    cfg = _cfg("sweep=[{colour: red}]")
    with pytest.raises(ValueError, match="label, groups and set"):
        setting_configs(cfg, config_dir())
    with pytest.raises(ValueError, match="no config"):
        setting_configs(_cfg("sweep=[{groups: {attack: nonesuch}}]"), config_dir())


def test_a_missing_data_root_gives_a_clear_error(tmp_path):
    from experiments.run import run

    missing = tmp_path / "no-such-faces"
    cfg = _cfg(f"data.root={missing}", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*<identity>/<image>.*data.root"):
        run(cfg)


def test_too_few_identities_gives_a_clear_error(tmp_path):
    for name, n in (("Ann", 12), ("Bob", 12), ("Cid", 3)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{name}_{i:04d}.jpg")
    with pytest.raises(DatasetError, match="need at least 4"):
        load_photos(_cfg(f"data.root={tmp_path}", "data.n_users=3"), tmp_path)
    with pytest.raises(DatasetError, match="only 0 of 3 identities"):
        load_photos(_cfg(f"data.root={tmp_path}", "data.n_users=1", "data.min_photos=13"), tmp_path)
    photos = load_photos(_cfg(f"data.root={tmp_path}", "data.n_users=1"), tmp_path)
    assert len(photos.shared_paths) == 8 and len(photos.probe_paths) == 4 and len(photos.distractor_paths) == 15
    capped = load_photos(_cfg(f"data.root={tmp_path}", "data.n_users=1", "data.max_photos_per_user=5"), tmp_path)
    assert len(capped.shared_paths) == 4 and len(capped.probe_paths) == 1
    assert set(capped.shared_paths) <= set(photos.shared_paths) and set(capped.probe_paths) <= set(photos.probe_paths)


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
        res.quality.append(QualityRow(label, "cloak", 0.99 - drop, (0.01 + drop) / 2, 40.0, 0.98, 7))
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


def test_headline_table_on_fake_numbers():
    header, rows = headline_rows(_fake_results(), "a")
    assert header[:5] == ["tracker", "transform", "cloak 1-NN", "cloak rank-1", "no cloak 1-NN"]
    assert header[-3:] == ["SSIM", "DSSIM", "PSNR (dB)"]
    assert rows[0] == [
        "dlib_resnet (same)",
        "none",
        "90%",
        "90%",
        "10%",
        "10%",
        "20%",
        "20%",
        "0.990",
        "0.0050",
        "40.0",
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


# ---------------------------------------------------------------------------
# On lfw-dev
# ---------------------------------------------------------------------------


def test_dlib_pipeline_agrees_with_our_dlib_resnet(lfw_dev):
    pytest.importorskip("dlib")
    from cloak.detection import FaceDetector
    from cloak.evaluation.experiment import read_photo
    from cloak.evaluation.pipelines import DlibPipeline, ModelPipeline
    from cloak.models.dlib_resnet import load_dlib_resnet

    paths = [sorted(p.glob("*.jpg"))[0] for p in sorted(lfw_dev.iterdir())[:4]]
    photos = [read_photo(p) for p in paths] + [np.full((120, 120, 3), 128, np.uint8)]
    theirs = DlibPipeline().embed(photos)["dlib_native"]
    ours = ModelPipeline(FaceDetector(device="cpu"), {"dlib_resnet": load_dlib_resnet()}).embed(photos)["dlib_resnet"]
    assert theirs.found.tolist() == [True] * 4 + [False] and ours.found.tolist() == [True] * 4 + [False]
    sims = (theirs.emb[:4] * ours.emb[:4]).sum(1)
    assert np.allclose(np.linalg.norm(theirs.emb[:4], axis=1), 1, atol=1e-5)
    assert sims.min() > 0.9, sims


def test_protection_experiment_smoke(lfw_dev, tmp_path):
    """End to end on 2 users of 6 photos, 2 attack steps, 2 distractor identities, two transforms."""
    from cloak.detection import FaceDetector
    from cloak.evaluation.experiment import read_photo
    from cloak.evaluation.pipelines import ModelPipeline
    from cloak.evaluation.trackers import fit_predict
    from cloak.models.dlib_resnet import load_dlib_resnet
    from experiments.run import run

    cfg = _cfg(
        f"data.root={lfw_dev}",
        "data.n_users=2",
        "data.max_photos_per_user=6",
        "data.max_distractors=2",
        "strength.steps=2",
        "device=cpu",
        "trackers=[dlib_resnet]",
        "platform.transforms=[none,jpeg75]",
        f"output_dir={tmp_path}",
    )
    res = run(cfg)
    for name in ("results.json", "protection.csv", "quality.csv", "report.md", "protection.png", "robustness.png"):
        assert (tmp_path / name).is_file(), name
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["protection"]) == 2 * 3 * 3  # transforms x conditions x metrics
    assert all(0 <= r["protection"] <= 1 for r in data["protection"])
    assert all(0 <= q["ssim"] <= 1 and 0 <= q["dssim"] <= 1 for q in data["quality"])
    assert data["settings"][0]["n_cloaked"] > 0 and data["quality"][0]["ssim"] < 1

    # The no-cloak baseline is the tracker's clean error rate, computed here from scratch.
    photos = load_photos(cfg, lfw_dev)
    pipe = ModelPipeline(FaceDetector(device="cpu"), {"dlib_resnet": load_dlib_resnet()})
    train_paths = photos.shared_paths + photos.distractor_paths
    train_labels = np.concatenate([photos.shared_labels, photos.distractor_labels])
    train = pipe.embed([read_photo(p) for p in train_paths])["dlib_resnet"]
    test = pipe.embed([read_photo(p) for p in photos.probe_paths])["dlib_resnet"]
    for metric in ("knn1", "logreg"):
        correct = np.zeros(len(test), bool)
        correct[test.found] = (
            fit_predict(train.emb[train.found], train_labels[train.found], test.emb[test.found], metric)
            == photos.probe_labels[test.found]
        )
        clean_error = 1 - correct.mean()
        setting = res.settings[0].label
        assert res.value(setting, "dlib_resnet", "none", "none", metric) == pytest.approx(clean_error)
