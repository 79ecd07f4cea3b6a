"""``python -m cloak [PHOTOS] [overrides...]``: a thin Hydra entry around :func:`cloak.run.run`.

``python -m cloak serve [overrides...]`` serves the web page instead (:func:`cloak.web.server.serve`).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cloak.config import config_dir


def _input_as_override(argv: list[str]) -> list[str]:
    """Turns a leading positional PHOTOS argument into the ``input=...`` override Hydra understands."""
    out = []
    for arg in argv:
        if not out and not arg.startswith("-") and "=" not in arg:
            # Quoted, so folder names with spaces, commas or brackets survive Hydra's parser.
            escaped = arg.replace("\\", "\\\\").replace("'", "\\'")
            out.append(f"input='{escaped}'")
        else:
            out.append(arg)
    return out


@hydra.main(config_path=str(config_dir()), config_name="cloak", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from cloak.run import run

    status = run(cfg)
    if status:
        sys.exit(status)


@hydra.main(config_path=str(config_dir()), config_name="serve", version_base="1.3")
def _hydra_serve(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from cloak.web.server import serve

    hydra_cfg = HydraConfig.get()
    # Without a model= (or model.*=) override, each preset gets the model it selects (high:
    # ensemble_all); with one, that model serves every preset.
    keys = [o.lstrip("+~").split("=")[0].split("@")[0] for o in hydra_cfg.overrides.task]
    explicit = any(k == "model" or k.startswith("model.") for k in keys)
    choices = hydra_cfg.runtime.choices
    serve(cfg, default_strength=choices.get("strength"), model_choice=None if explicit else choices.get("model"))


def main() -> None:
    """Console entry point."""
    if sys.argv[1:2] == ["serve"]:  # a folder named serve: python -m cloak ./serve
        sys.argv = [sys.argv[0], *sys.argv[2:]]
        _hydra_serve()
        return
    sys.argv = [sys.argv[0], *_input_as_override(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
