"""cloak: adversarial face cloaks for shared photos, with honest measurements of how well they work."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloak.api import Protected, protect
    from cloak.measurement import PhotoReport

__all__ = ["PhotoReport", "Protected", "protect"]

#: Where each API name lives; imported (with torch) on first use, so the torch-free
#: parts (e.g. :mod:`cloak.evaluation.protocol.report`) import without torch.
_API = {"protect": "cloak.api", "Protected": "cloak.api", "PhotoReport": "cloak.measurement"}


def __getattr__(name: str) -> Any:
    """``cloak.protect`` and the other API names, imported on first use (PEP 562)."""
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cloak' has no attribute {name!r}")
