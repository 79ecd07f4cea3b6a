"""Choosing the torch device: CUDA when present, CPU otherwise, overridable."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turns ``"auto"``/``None`` into CUDA when available else CPU; checks explicit choices.

    Raises:
        ValueError: when CUDA is asked for but not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} was requested but CUDA is not available here; use device=cpu or auto")
    return resolved
