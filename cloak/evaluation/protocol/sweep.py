"""The settings of a run: the run's config, or one config per entry of its ``sweep``.

A sweep entry is a list of Hydra overrides, optionally with a label::

    sweep:
      - [strength=low]                                      # label: automatic
      - {label: eps4, overrides: [strength.eps=4, strength.max_dssim=null]}
      - {label: pgd/none, overrides: [attack=pgd, transform=none]}

Each setting's config is the ``evaluate`` config composed by Hydra with the
run's own overrides followed by the entry's (a later override of the same key
wins), exactly what ``--multirun`` would give that setting, but inside one
process, so the clean photos' embeddings are computed once for all settings.
Composition uses the running Hydra app under ``@hydra.main`` and a fresh one
on ``configs/`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from cloak.config import config_dir

#: The config the sweep composes.
EVALUATE = "evaluate"


class SweepError(ValueError):
    """A sweep entry is malformed or does not compose; the message names it."""


@dataclass
class SweepSetting:
    """One setting of a run.

    Attributes:
        label: its name in tables and plots.
        overrides: the sweep entry's overrides (empty for the run's own config).
        cfg: the composed config it runs with.
    """

    label: str
    overrides: list[str]
    cfg: DictConfig


def compose_config(overrides: Sequence[str], config_name: str = EVALUATE) -> tuple[DictConfig, dict[str, str]]:
    """``config_name`` composed with ``overrides``, and its config-group choices (group -> option).

    Works inside a running Hydra app (``@hydra.main``: its search path is used)
    and outside one (a Hydra instance on :func:`cloak.config.config_dir`).

    Raises:
        hydra.errors.HydraException: on an override Hydra rejects.
    """
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    else:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    choices = _choices(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def _choices(runtime_choices: Mapping[str, Any]) -> dict[str, str]:
    """The config groups' choices, Hydra's own groups (``hydra/...``) left out."""
    return {str(k): str(v) for k, v in runtime_choices.items() if v is not None and "/" not in str(k)}


def sweep_entries(cfg: DictConfig) -> list[tuple[str | None, list[str]]]:
    """``(label or None, overrides)`` of each entry of ``cfg.sweep``; none (or ``[]``) is the run's config alone.

    Raises:
        SweepError: on an entry that is neither a list of overrides nor
            ``{label: ..., overrides: [...]}`` (the message names the entry).
    """
    entries = list(cfg.get("sweep") or [])
    if not entries:
        return [(None, [])]
    out = []
    for i, raw in enumerate(entries):
        entry = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else raw
        if isinstance(entry, list):
            entry = {"overrides": entry}
        if not isinstance(entry, dict) or set(entry) - {"label", "overrides"}:
            raise SweepError(
                f"sweep entry {i} ({entry!r}) must be a list of Hydra overrides, e.g. [strength=low], "
                "or {label: ..., overrides: [...]}"
            )
        overrides = entry.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise SweepError(f"sweep entry {i}: overrides must be a list of strings like strength.eps=4")
        label = entry.get("label")
        out.append((None if label is None else str(label), list(overrides)))
    return out


def auto_label(cfg: DictConfig, choices: dict[str, str], entry_overrides: Sequence[str]) -> str:
    """``attack/strength/transform`` from the group choices.

    The strength reads ``eps<N>`` when the entry sets keys rather than only
    choosing groups (``strength.eps=4``), since the preset's name no longer says it.
    """
    keys = [o.split("=", 1)[0].lstrip("+~") for o in entry_overrides]
    strength = choices.get("strength")
    if strength is None or any(k not in choices for k in keys):
        strength = f"eps{float(cfg.attack.eps):g}"
    return f"{choices.get('attack')}/{strength}/{choices.get('transform')}"


def sweep_settings(cfg: DictConfig, run_overrides: Sequence[str], config_name: str = EVALUATE) -> list[SweepSetting]:
    """The settings of ``cfg`` (composed from ``run_overrides``), each with its composed config.

    Args:
        cfg: the run's composed config.
        run_overrides: the overrides ``cfg`` was composed with (under Hydra,
            ``HydraConfig.get().overrides.task``).
        config_name: the config ``cfg`` was composed from.

    Returns:
        One setting per sweep entry, in order.

    Raises:
        SweepError: when ``cfg`` is not what ``run_overrides`` compose (pass the
            right overrides), or an entry is malformed or has an override Hydra
            rejects (the message names the entry).
    """
    entries = sweep_entries(cfg)
    if entries == [(None, [])]:
        # The run's config alone: only its group choices (for the label) are needed.
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else None
        choices = _choices(choices) if choices is not None else compose_config(run_overrides, config_name)[1]
        return [SweepSetting(auto_label(cfg, choices, []), [], cfg)]
    base, _ = compose_config(run_overrides, config_name)
    if OmegaConf.to_container(base) != OmegaConf.to_container(cfg):
        raise SweepError(
            f"the config differs from {config_name}.yaml composed with the overrides {list(run_overrides)}; "
            "pass the overrides the config was composed with, since every sweep setting is composed from them"
        )
    settings = []
    for i, (label, overrides) in enumerate(entries):
        try:
            composed, choices = compose_config([*run_overrides, *overrides], config_name)
        except HydraException as err:
            raise SweepError(
                f"sweep entry {i} ({label or 'no label'}: {overrides}) does not compose: {err}. "
                f"Fix the entry in configs/experiment/ or in the sweep= override"
            ) from err
        settings.append(SweepSetting(label or auto_label(composed, choices, overrides), overrides, composed))
    return settings
