"""The bare-compute limit of a benchmark case: the models' own forward and backward on the
case's aligned face crops, times the steps the attack took."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cloak.alignment import align_faces
from cloak.builders import Parts
from cloak.device import bfloat16_autocast
from cloak.models.ensemble import as_ensemble
from cloak.photos import load_photo
from cloak.photos.pixels import to_tensor


def time_forward_backward(
    parts: Parts, crops: dict[str, torch.Tensor], device: torch.device, bfloat16: frozenset[str] = frozenset()
) -> tuple[float, float]:
    """Wall and CPU seconds of one forward+backward of every member on its crops (each member's fastest of 3).

    Members named in ``bfloat16`` run under bfloat16 autocast where the device computes it
    natively, as the attack runs them (``attack.bfloat16_members``).
    """
    members = {name: member for name, member, _ in as_ensemble(parts.model).items()}
    wall = cpu = 0.0
    for name, member in members.items():
        best_wall, best_cpu = float("inf"), float("inf")
        for _ in range(3):
            w, c = time.perf_counter(), time.process_time()
            x = crops[name].clone().requires_grad_(True)
            with bfloat16_autocast(device, enabled=name in bfloat16):
                out = member(x)
            out.float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best_wall = min(best_wall, time.perf_counter() - w)
            best_cpu = min(best_cpu, time.process_time() - c)
        wall, cpu = wall + best_wall, cpu + best_cpu
    return wall, cpu


def limit_seconds(
    parts: Parts, folder: Path, batch_size: int, steps_per_face: float, bfloat16: frozenset[str] = frozenset()
) -> tuple[float, float]:
    """The bare-compute limit of a case: forward+backward on each batch's crops times the steps taken.

    ``bfloat16``: the members the attack runs in bfloat16 (:func:`time_forward_backward`).
    """
    members = {name: member for name, member, _ in as_ensemble(parts.model).items()}
    for p in parts.model.parameters():
        p.requires_grad_(False)
    batches: list[dict[str, list[torch.Tensor]]] = []
    current: dict[str, list[torch.Tensor]] = {name: [] for name in members}
    photos = 0
    for path in sorted(folder.iterdir()):
        rgb = load_photo(path).rgb
        faces = parts.detector.detect(rgb)
        if not faces:
            continue
        image = to_tensor(rgb).to(parts.device)
        lm = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=image.dtype, device=parts.device)
        for name, member in members.items():
            current[name].append(align_faces(image, lm, member.template, member.input_size))
        photos += 1
        if photos % batch_size == 0:
            batches.append(current)
            current = {name: [] for name in members}
    if any(current.values()):
        batches.append(current)
    wall = cpu = 0.0
    for batch in batches:
        w, c = time_forward_backward(parts, {k: torch.cat(v) for k, v in batch.items()}, parts.device, bfloat16)
        wall, cpu = wall + w * steps_per_face, cpu + c * steps_per_face
    return wall, cpu
