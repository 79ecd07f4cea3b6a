"""Windows of a photo: the parts around its faces that cloaking and measuring need to touch.

A 12-megapixel photo with three faces has most of its pixels far from any face.
Cloaking and measuring work on windows around groups of faces instead, cut so
that the result is what the whole photo would give: a window's top-left corner
lies on a multiple of :data:`JPEG_BLOCK` (JPEG encodes 16x16 blocks with 4:2:0
chroma, so a window re-encodes to the same pixels as the photo inside it) and of
any other grid asked for (e.g. the pooling of an antialiased alignment), and it
keeps a margin around what is read, so effects reaching across its edges
(chroma upsampling, SSIM windows) are the photo's own.
"""

from __future__ import annotations

import math

import numpy as np

#: JPEG's macroblock with 4:2:0 chroma subsampling, in pixels.
JPEG_BLOCK = 16

#: ``(x0, y0, x1, y1)`` integer pixel bounds, ``x1`` and ``y1`` exclusive.
Box = tuple[int, int, int, int]

#: Pixels kept around what a window is cut for: JPEG's chroma upsampling, the bilinear
#: sampling of the alignment and the robust attacks' jitter reach a little beyond it.
WINDOW_MARGIN = 2 * JPEG_BLOCK


def overlap(a: Box, b: Box) -> bool:
    """Whether two boxes share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def union(a: Box, b: Box) -> Box:
    """The smallest box holding both."""
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def merge_overlapping(boxes: list[Box]) -> list[tuple[Box, list[int]]]:
    """Groups boxes whose unions overlap: each group's bounding box and its members' indices.

    Groups are merged until no two group boxes overlap, so the groups' boxes are
    disjoint; members keep their order, groups are ordered by their first member.

    Args:
        boxes: integer boxes ``(x0, y0, x1, y1)``.

    Returns:
        ``[(box, [index, ...]), ...]``.
    """
    groups = [(box, [i]) for i, box in enumerate(boxes)]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if overlap(groups[i][0], groups[j][0]):
                    groups[i] = (union(groups[i][0], groups[j][0]), sorted(groups[i][1] + groups[j][1]))
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(groups, key=lambda g: g[1][0])


def window_around(box: Box, size: tuple[int, int], margin: int, align: int = JPEG_BLOCK) -> Box:
    """``box`` grown by ``margin`` pixels, its top-left corner moved down to a multiple of ``align``, clipped.

    Args:
        box: the pixels that must be inside, ``(x0, y0, x1, y1)``; may reach outside the photo.
        size: ``(H, W)`` of the photo.
        margin: pixels added on every side before aligning.
        align: the grid the top-left corner lies on (e.g. :data:`JPEG_BLOCK`).

    Raises:
        ValueError: if ``margin`` is negative, ``align`` is not positive, or the box
            has no pixel inside the photo.
    """
    if margin < 0 or align <= 0:
        raise ValueError(f"margin must be >= 0 and align > 0, got {margin} and {align}")
    h, w = size
    x0, y0 = max(0, box[0] - margin), max(0, box[1] - margin)
    x1, y1 = min(w, box[2] + margin), min(h, box[3] + margin)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box} has no pixel inside the {w}x{h} photo")
    return (x0 // align * align, y0 // align * align, x1, y1)


def common_grid(*grids: int) -> int:
    """The smallest grid that lies on all the given grids (their least common multiple)."""
    out = 1
    for g in grids:
        out = math.lcm(out, max(1, int(g)))
    return out


def changed_boxes(a: np.ndarray, b: np.ndarray, min_gap: int = 1) -> list[Box]:
    """Boxes holding every pixel where two ``[H, W, C]`` arrays differ, split where they lie apart.

    The bounding box of the changed pixels is cut along any run of at least ``min_gap``
    unchanged rows or columns, and each part again (an XY cut), so faces far apart in
    a large photo give a box each instead of one box spanning the photo. Any two boxes
    returned are at least ``min_gap`` pixels apart in x or in y.

    Args:
        a: first array, ``[H, W]`` or ``[H, W, C]``.
        b: second array, same shape.
        min_gap: the fewest unchanged rows or columns that separate two boxes (>= 1).

    Returns:
        ``[(x0, y0, x1, y1), ...]`` (``x1``, ``y1`` exclusive); empty when the arrays are equal.

    Raises:
        ValueError: if the shapes differ or ``min_gap`` is below 1.
    """
    if a.shape != b.shape:
        raise ValueError(f"the photos must have one shape, got {a.shape} and {b.shape}")
    if min_gap < 1:
        raise ValueError(f"min_gap must be >= 1, got {min_gap}")
    diff = (a != b).any(axis=2) if a.ndim == 3 else a != b
    return _xy_cut(diff, 0, 0, min_gap)


def _xy_cut(mask: np.ndarray, x: int, y: int, min_gap: int) -> list[Box]:
    """The boxes of :func:`changed_boxes` for ``mask``, whose top-left pixel is ``(x, y)`` in the photo."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    for axis, hits in ((0, rows), (1, cols)):
        breaks = np.flatnonzero(np.diff(hits) > min_gap)
        if breaks.size:
            starts = np.concatenate([[hits[0]], hits[breaks + 1]])
            ends = np.concatenate([hits[breaks], [hits[-1]]]) + 1
            boxes = []
            for s, e in zip(starts.tolist(), ends.tolist()):
                part = mask[s:e] if axis == 0 else mask[:, s:e]
                boxes += _xy_cut(part, x + s * axis, y + s * (1 - axis), min_gap)
            return boxes
    return [(x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1)]


def cut(photo: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of ``box`` of a ``[H, W, ...]`` array (a view)."""
    x0, y0, x1, y1 = box
    return photo[y0:y1, x0:x1]
