"""Choosing the torch device: CUDA when present, CPU otherwise, overridable."""

from __future__ import annotations

import functools

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


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively, so that autocast to it saves time.

    A CUDA GPU with bfloat16 support, or a CPU with AVX512-BF16 or AMX (elsewhere a CPU
    emulates bfloat16, more slowly than float32).
    """
    return _native_bfloat16(device.type, device.index)


def bfloat16_autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bfloat16 autocast on ``device`` where it computes bfloat16 natively; elsewhere (or not ``enabled``) a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and native_bfloat16(device))


@functools.cache
def _native_bfloat16(kind: str, index: int | None) -> bool:
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "cpu":
        try:
            capability = torch._C._cpu._get_cpu_capability()
        except AttributeError:  # a torch without the probe: assume no
            return False
        return bool(capability.get("avx512_bf16") or capability.get("amx_bf16"))
    return False
