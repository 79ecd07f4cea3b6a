"""Building the run's objects (model, detector, attack) from a composed config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cloak.attacks import Attack
from cloak.config import load_config
from cloak.detection import FaceDetector
from cloak.device import resolve_device
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """What a cloaking run needs; parts not asked for are ``None``."""

    device: torch.device
    model: FaceEmbedder | Ensemble | None = None
    detector: FaceDetector | None = None
    attack: Attack | None = None


def build_from_config(
    cfg: DictConfig, need_model: bool = True, need_detector: bool = True, need_attack: bool = True
) -> Parts:
    """Instantiates the model (on the run's device, eval mode), detector and attack of ``cfg``."""
    device = resolve_device(cfg.device)
    parts = Parts(device=device)
    if need_model:
        model: Any = instantiate(cfg.model)
        if not isinstance(model, (FaceEmbedder, Ensemble)):
            raise TypeError(f"model config built a {type(model).__name__}, not a FaceEmbedder or Ensemble")
        parts.model = model.to(device).eval()
    if need_detector or (need_attack and cfg.attack.get("target_dir")):
        parts.detector = instantiate(cfg.detector)
    if need_attack:
        # Attacks that read photos of their own (fawkes' target_dir) use the run's detector.
        extra = {"detector": parts.detector} if "detector" in cfg.attack else {}
        parts.attack = instantiate(cfg.attack, **extra)
    return parts


def build(overrides: list[str] | None = None, **need: bool) -> Parts:
    """:func:`build_from_config` on the default config with Hydra ``overrides``."""
    return build_from_config(load_config(overrides), **need)
