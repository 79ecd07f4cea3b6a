"""The photos the benchmarks cloak: LFW faces (or the astronaut without lfw-dev), and larger
photos made by pasting upscaled faces onto a photo-like canvas (1024 px, 12 megapixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: The canvas of the 12-megapixel photos.
BIG_CANVAS = (3000, 4000)


def lfw_photos(lfw: Path | None, n: int, offset: int = 0) -> list[np.ndarray]:
    """``n`` 250x250 LFW photos (the first of each identity), or the astronaut repeated without lfw-dev."""
    if lfw is None:
        return [astronaut()] * n
    folders = sorted(p for p in lfw.iterdir() if p.is_dir())
    files = [sorted(f.glob("*.jpg"))[0] for f in folders]
    picked = [files[(offset + i) % len(files)] for i in range(n)]
    return [np.asarray(Image.open(f).convert("RGB")) for f in picked]


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def face_patch(lfw: Path | None, index: int, side: int) -> np.ndarray:
    """A face photo upscaled to ``side`` x ``side`` pixels (an LFW photo, or the astronaut's head)."""
    if lfw is None:
        source = Image.fromarray(astronaut()).crop((96, 0, 352, 256))
    else:
        source = Image.fromarray(lfw_photos(lfw, 1, offset=index)[0])
    return np.asarray(source.resize((side, side), Image.Resampling.BICUBIC))


def canvas(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like background: a smooth colour gradient with mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([90 + 60 * x / width, 110 + 40 * y / height, 140 - 50 * x / width], axis=-1)
    return np.clip(base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)


def place(background: np.ndarray, patches: list[np.ndarray], spots: list[tuple[int, int]]) -> np.ndarray:
    out = background.copy()
    for patch, (x, y) in zip(patches, spots):
        h, w = patch.shape[:2]
        out[y : y + h, x : x + w] = patch
    return out


def big_photo(lfw: Path | None, faces: int) -> np.ndarray:
    """A 4000x3000 photo with ``faces`` faces about 350 px wide (750 px patches), side by side."""
    h, w = BIG_CANVAS
    side = 750
    patches = [face_patch(lfw, i, side) for i in range(faces)]
    gap = (w - faces * side) // (faces + 1)
    spots = [(gap + i * (side + gap), (h - side) // 2 + (150 if i % 2 else -150)) for i in range(faces)]
    return place(canvas(h, w), patches, spots)


def medium_photo(lfw: Path | None) -> np.ndarray:
    """A 1024x768 photo with one face about 240 px wide (a 500 px patch)."""
    return place(canvas(768, 1024), [face_patch(lfw, 0, 500)], [(300, 140)])
