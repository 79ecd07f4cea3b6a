"""What a benchmark's numbers were measured on: CPU model and capability, cores, threads, GPU."""

from __future__ import annotations

import os
import platform
import subprocess

import torch

from cloak.device import native_bfloat16


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        # The same CPU model name covers machines with and without AVX512 (2.3-2.6x apart here).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bfloat16": native_bfloat16(torch.device("cpu")),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def describe(m: dict) -> str:
    """One line naming the machine of :func:`machine`."""
    bf16 = "native bfloat16" if m["native_bfloat16"] else "no native bfloat16"
    gpu = f", GPU {m['cuda']}" if m["cuda"] else ""
    return f"{m['cpu']} ({m['cpu_capability']}, {bf16}), {m['cores']} cores, torch {m['torch']}{gpu}"
