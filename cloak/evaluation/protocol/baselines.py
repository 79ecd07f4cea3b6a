"""The noise baseline: random noise of a cloak's size where the cloak would be.

It tells whether a cloak's protection comes from its optimisation or merely
from changing the pixels by that much: every table compares the cloak with
this noise (and with no cloak at all) under the same transform and trackers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cloak.attacks import PhotoFaces, photo_seed
from cloak.attacks.regions import face_region
from cloak.detection import Face
from cloak.models.base import FaceEmbedder
from cloak.photos import to_tensor, to_uint8

#: The kinds of noise: each pixel ``+-eps`` (the most an L-inf budget allows), or uniform in ``[-eps, eps]``.
NOISE_KINDS: tuple[str, ...] = ("sign", "uniform")


def random_noise(
    photo: np.ndarray,
    faces: Sequence[Face],
    models: Mapping[str, FaceEmbedder],
    eps: float,
    seed: int,
    kind: str = "sign",
) -> np.ndarray:
    """Random noise of L-inf size ``eps`` over the region a cloak of ``faces`` would cover.

    The region and its mask are the attacks' (:func:`cloak.attacks.regions.face_region`
    over ``models``' crops; the noise is scaled by the feathered mask, like the
    cloak). The photo's own seed (from its pixels and ``seed``) makes the draw
    reproducible.

    Args:
        photo: ``[H, W, 3]`` uint8 RGB.
        faces: the faces to cover; none returns a copy.
        models: name -> embedder whose crops define the region.
        eps: L-inf size in 0-255 pixel units.
        seed: the run's seed.
        kind: ``"sign"`` or ``"uniform"`` (see :data:`NOISE_KINDS`).

    Returns:
        The noised photo, ``[H, W, 3]`` uint8.

    Raises:
        ValueError: on an unknown ``kind``.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    if not faces:
        return np.array(photo, copy=True)
    x = to_tensor(photo)
    landmarks = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=x.dtype)
    region = face_region(PhotoFaces(x, landmarks), dict(models))
    crop = region.crop(x)
    g = torch.Generator().manual_seed(photo_seed(seed, x) ^ 0x5EED)
    u = torch.rand(crop.shape, generator=g, dtype=torch.float64).to(x.dtype) * 2 - 1
    noise = torch.sign(u) if kind == "sign" else u
    return to_uint8(region.paste(x, (crop + noise * (eps / 255.0) * region.mask).clamp(0, 1)))
