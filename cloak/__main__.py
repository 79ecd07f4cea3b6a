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

    # Each preset is composed from the command line's overrides with its own strength=, so it
    # cloaks with the model Hydra picks for it (high: ensemble_all, unless model= was given).
    serve(cfg, overrides=list(HydraConfig.get().overrides.task))


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
