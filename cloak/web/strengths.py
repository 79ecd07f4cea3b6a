"""The strength presets the page offers, each with its attack built once at startup.

The presets are the ``strength`` config group (``low``, ``mid``, ``high``): they
differ in the L-inf budget, the number of steps and the perceptual budget, and
a preset may choose its model as on the command line (``high`` selects
``model=ensemble_all``): :func:`preset_models` gives each preset the model the
command line would, unless the page was started with an explicit ``model=``,
which then serves every preset. The detector is shared. ``strength=`` picks
the preset the page starts with; fields of ``cfg.strength`` that differ from that
preset's file (``strength.steps=2``) are overrides and apply to every preset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from omegaconf import DictConfig, ListConfig, OmegaConf

from cloak.attacks import Attack
from cloak.builders import build_from_config
from cloak.config import config_dir, load_config
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble

log = logging.getLogger(__name__)

#: The presets, weakest first, as the page lists them.
PRESET_NAMES = ("low", "mid", "high")


@dataclass(frozen=True)
class StrengthPreset:
    """One strength the page offers.

    Attributes:
        name: ``"low"``, ``"mid"`` or ``"high"``.
        eps: L-inf budget in 0-255 pixel units.
        steps: optimisation steps.
        max_dssim: perceptual budget of the face region.
        attack: the attack configured with this strength.
        model: the model this preset cloaks with; ``None``: the page's (``parts.model``).
    """

    name: str
    eps: float
    steps: int
    max_dssim: float | None
    attack: Attack
    model: FaceEmbedder | Ensemble | None = None


def _load(name: str) -> DictConfig:
    path = config_dir() / "strength" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"strength preset {name!r} not found at {path}; reinstall cloak")
    loaded = OmegaConf.load(path)
    assert isinstance(loaded, DictConfig)
    return loaded


def preset_file(name: str) -> DictConfig:
    """The ``strength/<name>.yaml`` budgets as written, without overrides (and without its defaults list)."""
    loaded = _load(name)
    loaded.pop("defaults", None)  # Hydra's choice of other groups (high's model), not a budget
    return loaded


def preset_model_choice(name: str, default: str) -> str:
    """The ``model`` config preset ``name`` selects in its defaults list (high: ``ensemble_all``), else ``default``."""
    entries = _load(name).get("defaults", ListConfig([]))
    for entry in entries:
        if isinstance(entry, DictConfig):
            for key, value in entry.items():
                if str(key).replace("override ", "").strip().startswith("/model"):
                    return str(value)
    return default


def preset_models(
    presets: dict[str, StrengthPreset], cfg: DictConfig, page_model: FaceEmbedder | Ensemble, page_choice: str
) -> dict[str, StrengthPreset]:
    """Gives each preset the model ``strength=<name>`` selects on the command line.

    Args:
        presets: from :func:`build_presets`.
        cfg: the page's composed config (its device; the model configs are composed anew).
        page_model: the model the page was started with, used by every preset whose choice is ``page_choice``.
        page_choice: the name of that model's config (Hydra's ``model`` choice).

    Returns:
        The presets, each with its ``model`` set; models are built once per config.
    """
    serve_defaults = OmegaConf.load(config_dir() / "serve.yaml").defaults
    default = str(next(e["model"] for e in serve_defaults if isinstance(e, DictConfig) and "model" in e))
    models: dict[str, FaceEmbedder | Ensemble] = {page_choice: page_model}
    out = {}
    for name, preset in presets.items():
        choice = preset_model_choice(name, default)
        if choice not in models:
            log.info("Loading model=%s for the %s preset", choice, name)
            run_cfg = cfg.copy()
            run_cfg.model = load_config([f"model={choice}"], config_name="serve").model
            built = build_from_config(run_cfg, need_detector=False, need_attack=False).model
            assert built is not None
            models[choice] = built
        out[name] = replace(preset, model=models[choice])
    return out


def chosen_preset(strength: DictConfig) -> str:
    """The preset ``cfg.strength`` was composed from: the one with the same budgets (else ``mid``)."""
    keys = ("eps", "max_dssim", "min_face_ssim")
    for name in PRESET_NAMES:
        preset = preset_file(name)
        if all(OmegaConf.select(preset, k) == OmegaConf.select(strength, k) for k in keys):
            return name
    log.warning("strength %s matches no preset; the page starts with mid", {k: strength.get(k) for k in keys})
    return "mid"


def build_presets(cfg: DictConfig, default: str | None = None) -> tuple[dict[str, StrengthPreset], str]:
    """Builds one attack per preset from the run's config.

    Args:
        cfg: the composed ``serve`` (or ``cloak``) config.
        default: the preset ``strength=`` chose (from Hydra's choices); ``None``
            to find it by its ``eps``.

    Returns:
        The presets by name, and the name of the page's default one.
    """
    default = default if default in PRESET_NAMES else chosen_preset(cfg.strength)
    own = preset_file(default)
    overrides = {k: v for k, v in cfg.strength.items() if k not in own or own[k] != v}
    if overrides:
        log.info("Strength overrides for every preset: %s", overrides)
    presets = {}
    for name in PRESET_NAMES:
        strength = OmegaConf.merge(preset_file(name), overrides)
        run_cfg = cfg.copy()
        run_cfg.strength = strength
        attack = build_from_config(run_cfg, need_model=False, need_detector=False).attack
        assert attack is not None
        presets[name] = StrengthPreset(
            name=name,
            eps=float(strength.eps),
            steps=int(attack.steps),
            max_dssim=strength.get("max_dssim"),
            attack=attack,
        )
    return presets, default
