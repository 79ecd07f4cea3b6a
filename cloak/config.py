"""Where the Hydra configs live, in a source checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The ``configs/`` folder: shipped inside the wheel, or at the root of a checkout."""
    for candidate in (PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs"):
        if (candidate / "cloak.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"cloak's configs were not found in {PACKAGE_DIR / 'configs'} or {PACKAGE_DIR.parent / 'configs'}; "
        "the installation is incomplete, reinstall cloak"
    )


def load_config(overrides: list[str] | None = None, config_name: str = "cloak") -> DictConfig:
    """Composes a config: for the Python API and tests, and inside a running ``@hydra.main`` app."""
    if GlobalHydra.instance().is_initialized():  # inside an app: its Hydra already searches config_dir()
        return compose(config_name=config_name, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def config_choices(overrides: list[str] | None = None, config_name: str = "cloak") -> dict[str, str]:
    """The option Hydra picks in each config group (``{"model": "ensemble", "strength": "mid", ...}``).

    Composed with the overrides as on the command line, so a preset's own choices (``strength=high``
    selects ``model=ensemble_all``) and explicit ones (``model=sface``) count as Hydra counts them.
    """
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    else:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    return {str(k): str(v) for k, v in cfg.hydra.runtime.choices.items() if v is not None}
