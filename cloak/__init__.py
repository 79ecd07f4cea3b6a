"""cloak: adversarial face cloaks for shared photos, with honest measurements of how well they work."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloak.protect import PhotoReport, Protected, protect

__all__ = ["PhotoReport", "Protected", "protect"]


class _Package(types.ModuleType):
    """The ``cloak`` package: its API names import :mod:`cloak.protect` (and torch) on first use.

    So the torch-free parts (e.g. :mod:`cloak.evaluation.report`) import without
    torch. ``cloak.protect`` is the function, as before, even once the submodule
    of the same name is imported (which would otherwise rebind the name); the
    module stays available as ``sys.modules["cloak.protect"]`` and to ``from
    cloak.protect import ...``.
    """

    def __getattr__(self, name: str) -> Any:
        if name in __all__:
            return getattr(importlib.import_module("cloak.protect"), name)
        raise AttributeError(f"module 'cloak' has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "protect" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
