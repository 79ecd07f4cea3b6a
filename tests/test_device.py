"""Choosing the device, and whether it computes bfloat16 natively."""

import pytest
import torch

from cloak.device import _native_bfloat16, native_bfloat16, resolve_device


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_cuda_without_a_gpu_says_what_to_use():
    with pytest.raises(ValueError, match="device=cpu or auto"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, True),
        ({"avx512_bf16": False, "amx_bf16": True}, True),
        ({"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, False),  # AVX512 alone emulates it
        (None, False),  # a torch without the probe
    ],
)
def test_native_bfloat16_on_a_cpu_reads_its_instructions(capability, expected, monkeypatch):
    if capability is None:
        monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability")
    else:
        monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: capability)
    _native_bfloat16.cache_clear()
    try:
        assert native_bfloat16(torch.device("cpu")) is expected
    finally:
        _native_bfloat16.cache_clear()
