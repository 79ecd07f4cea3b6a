"""Side-by-side previews: original | cloaked | the cloak amplified, so users can see what changed."""

from __future__ import annotations

import numpy as np


def side_by_side(original: np.ndarray, cloaked: np.ndarray, amplify: float = 10.0, gap: int = 8) -> np.ndarray:
    """One ``[H, 3W + 2 gap, 3]`` uint8 image: original, cloaked, and ``amplify`` x the difference around grey.

    Args:
        original: ``[H, W, 3]`` uint8.
        cloaked: ``[H, W, 3]`` uint8, same shape.
        amplify: gain on the difference (the cloak is a few grey levels; x10 makes it visible).
        gap: white pixels between panels.
    """
    if original.shape != cloaked.shape or original.ndim != 3:
        raise ValueError(
            f"original and cloaked must be the same [H, W, 3] shape, got {original.shape} and {cloaked.shape}"
        )
    diff = cloaked.astype(np.float32) - original.astype(np.float32)
    amplified = np.clip(127.5 + amplify * diff, 0, 255).round().astype(np.uint8)
    spacer = np.full((original.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([original, spacer, cloaked, spacer, amplified], axis=1)
