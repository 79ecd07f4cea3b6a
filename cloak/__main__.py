"""``python -m cloak [PHOTOS] [overrides...]``: a thin Hydra entry around :func:`cloak.run.run`."""

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


def main() -> None:
    """Console entry point."""
    sys.argv = [sys.argv[0], *_input_as_override(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
