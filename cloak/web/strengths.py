"""The strength presets the page offers, each with its attack built once at startup.

The presets are the ``strength`` config group (``low``, ``mid``, ``high``): they
differ in the L-inf budget, the number of steps and the perceptual budget. Each is
composed by Hydra as the command line would compose it: the page's own overrides,
then ``strength=<name>``. So overrides of the strength's fields (``strength.steps=2``)
apply to every preset, ``strength=`` picks the preset the page starts with, and a
preset's own choice of model (``high`` selects ``model=ensemble_all``) holds unless
the page was started with an explicit ``model=``, which then serves every preset.
The detector is shared.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from cloak.attacks import Attack
from cloak.builders import build_from_config
from cloak.config import config_choices, load_config
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble

log = logging.getLogger(__name__)

#: The presets, weakest first, as the page lists them.
PRESET_NAMES = ("low", "mid", "high")

#: The config the page is composed from (``configs/serve.yaml``).
CONFIG_NAME = "serve"


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
        model_choice: Hydra's ``model`` choice for this preset (high: ``ensemble_all``, unless ``model=`` was given).
    """

    name: str
    eps: float
    steps: int
    max_dssim: float | None
    attack: Attack
    model: FaceEmbedder | Ensemble | None = None
    model_choice: str | None = None


def preset_overrides(overrides: Sequence[str], name: str) -> list[str]:
    """The overrides preset ``name`` is composed with: the page's, then ``strength=<name>`` (the last choice wins)."""
    return [*overrides, f"strength={name}"]


def default_preset(overrides: Sequence[str]) -> str:
    """The preset ``strength=`` chose among the overrides (Hydra's choice; ``mid`` when it is none of the presets)."""
    choice = config_choices(list(overrides), CONFIG_NAME).get("strength", "mid")
    if choice not in PRESET_NAMES:
        log.warning("strength=%s is none of the page's presets %s; the page starts with mid", choice, PRESET_NAMES)
        return "mid"
    return choice


def _log_strength_overrides(overrides: Sequence[str], name: str) -> None:
    """Logs the strength fields the overrides change, which every preset shares."""
    own = load_config([f"strength={name}"], CONFIG_NAME).strength
    composed = load_config(preset_overrides(overrides, name), CONFIG_NAME).strength
    changed = {k: v for k, v in composed.items() if k not in own or own[k] != v}
    if changed:
        log.info("Strength overrides for every preset: %s", changed)


class _Models:
    """The models the presets cloak with, each built once per model config; the page's is reused."""

    def __init__(self, page_cfg: DictConfig, page_model: FaceEmbedder | Ensemble) -> None:
        self._built = {self._key(page_cfg): page_model}

    @staticmethod
    def _key(cfg: DictConfig) -> str:
        return OmegaConf.to_yaml(cfg.model, resolve=True)

    def get(self, cfg: DictConfig, choice: str, preset: str) -> FaceEmbedder | Ensemble:
        key = self._key(cfg)
        if key not in self._built:
            log.info("Loading model=%s for the %s preset", choice, preset)
            built = build_from_config(cfg, need_detector=False, need_attack=False).model
            assert built is not None
            self._built[key] = built
        return self._built[key]


def build_presets(
    overrides: Sequence[str] = (), page_model: FaceEmbedder | Ensemble | None = None
) -> tuple[dict[str, StrengthPreset], str]:
    """Composes each preset from the page's overrides and builds its attack (and its model).

    Args:
        overrides: the Hydra overrides the page's ``serve`` config was composed with.
        page_model: the model built from that config. Given, each preset cloaks with the
            model its composition selects (the page's when it is the same config, else one
            built once per config); ``None``: every preset cloaks with the page's model.

    Returns:
        The presets by name, and the name of the one ``strength=`` chose.
    """
    default = default_preset(overrides)
    _log_strength_overrides(overrides, default)
    models = None if page_model is None else _Models(load_config(list(overrides), CONFIG_NAME), page_model)
    presets = {}
    for name in PRESET_NAMES:
        composed = preset_overrides(overrides, name)
        cfg = load_config(composed, CONFIG_NAME)
        attack = build_from_config(cfg, need_model=False, need_detector=False).attack
        assert attack is not None
        choice = config_choices(composed, CONFIG_NAME).get("model")
        presets[name] = StrengthPreset(
            name=name,
            eps=float(cfg.strength.eps),
            steps=int(attack.steps),
            max_dssim=cfg.strength.get("max_dssim"),
            attack=attack,
            model=None if models is None else models.get(cfg, str(choice), name),
            model_choice=choice,
        )
    return presets, default
