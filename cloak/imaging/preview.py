"""Side-by-side previews: original | cloaked | the cloak amplified, so users can see what changed."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def side_by_side(
    original: np.ndarray, cloaked: np.ndarray, amplify: float = 10.0, gap: int = 8, label: str | None = None
) -> np.ndarray:
    """One ``[H, 3W + 2 gap, 3]`` uint8 image: original, cloaked, and ``amplify`` x the difference around grey.

    Args:
        original: ``[H, W, 3]`` uint8.
        cloaked: ``[H, W, 3]`` uint8, same shape.
        amplify: gain on the difference (the cloak is a few grey levels; x10 makes it visible).
        gap: white pixels between panels.
        label: optional text (e.g. the face SSIM) written in the top-left corner of
            the amplified panel (the only panel it may cover).
    """
    if original.shape != cloaked.shape or original.ndim != 3:
        raise ValueError(
            f"original and cloaked must be the same [H, W, 3] shape, got {original.shape} and {cloaked.shape}"
        )
    amplified = amplified_difference(original, cloaked, amplify)
    spacer = np.full((original.shape[0], gap, 3), 255, np.uint8)
    if label:
        amplified = _write_label(amplified, label)
    return np.concatenate([original, spacer, cloaked, spacer, amplified], axis=1)


def _write_label(panel: np.ndarray, text: str) -> np.ndarray:
    """``panel`` with ``text`` in black on a white box in its top-left corner, sized to the panel."""
    image = Image.fromarray(panel)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, panel.shape[0] // 32))
    x0, y0, x1, y1 = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((x0 - 3, y0 - 3, x1 + 3, y1 + 3), fill=(255, 255, 255))
    draw.text((4, 4), text, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def amplified_difference(original: np.ndarray, cloaked: np.ndarray, amplify: float = 10.0) -> np.ndarray:
    """The cloak made visible: ``amplify`` x (cloaked - original) around mid grey, ``[H, W, 3]`` uint8.

    Args:
        original: ``[H, W, 3]`` uint8.
        cloaked: ``[H, W, 3]`` uint8, same shape.
        amplify: gain on the difference.
    """
    if original.shape != cloaked.shape:
        raise ValueError(f"original and cloaked must have the same shape, got {original.shape} and {cloaked.shape}")
    diff = cloaked.astype(np.float32) - original.astype(np.float32)
    return np.clip(127.5 + amplify * diff, 0, 255).round().astype(np.uint8)
