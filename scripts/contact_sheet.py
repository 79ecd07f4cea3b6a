"""A contact sheet of cloaked faces at 1:1 and 2x, so anyone can look at what a cloak does to skin.

One row per photo (its first face): the original and the cloaked face at the
photo's own resolution (1:1, the central ``--panel`` pixels of the face box grown
10%), then the middle of that crop at 2x (nearest neighbour, every pixel a 2x2
block), original and cloaked; above the row, the photo's name and its face
SSIM and 5th-percentile local SSIM. Written as PNG (lossless: the cloak's detail
stays).

Usage:
    # cloak the photos (a folder, or photo files) with the configured cloak and overrides
    uv run python scripts/contact_sheet.py ../shared/data/lfw-dev --first 6 --upscale 3 --astronaut \\
        --out sheet.png strength=high
    # or compare originals with cloaked copies made earlier (same file names)
    uv run python scripts/contact_sheet.py originals/ --cloaked originals_cloaked/ --out sheet.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cloak.builders import build_from_config
from cloak.cloaking.groups import cloak_photos
from cloak.config import load_config
from cloak.photos import find_photos, load_photo
from cloak.photos.pixels import to_tensor
from cloak.quality import FACE_BOX_GROWTH, face_quality, grow_boxes

log = logging.getLogger("contact_sheet")

GAP = 6
LABEL_HEIGHT = 18


def gather(inputs: list[Path], first: int) -> list[Path]:
    """Photo files of ``inputs`` (files, folders searched recursively, or folders of identity folders)."""
    photos: list[Path] = []
    for path in inputs:
        if path.is_dir():
            subfolders = sorted(p for p in path.iterdir() if p.is_dir())
            if subfolders and not any(p.is_file() for p in path.iterdir()):
                # A folder of identities (lfw-dev): the first photo of each.
                photos += [find_photos(p).photos[0] for p in subfolders if find_photos(p).photos]
            else:
                photos += find_photos(path).photos
        else:
            photos.append(path)
    return photos[:first] if first > 0 else photos


def upscaled(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` resized by ``factor`` with Lanczos (as a camera's bigger photo of the same face)."""
    if factor == 1:
        return rgb
    img = Image.fromarray(rgb)
    return np.asarray(img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.LANCZOS))


def face_panels(original: np.ndarray, cloaked: np.ndarray, box: np.ndarray, panel: int) -> list[np.ndarray]:
    """The four panels of one row: original and cloaked at 1:1, then their middles at 2x."""
    h, w = original.shape[:2]
    x0, y0, x1, y1 = grow_boxes(torch.as_tensor(box[None], dtype=torch.float64), FACE_BOX_GROWTH, (h, w))[0].tolist()
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    half = min(panel, x1 - x0, y1 - y0) // 2
    one = [a[cy - half : cy + half, cx - half : cx + half] for a in (original, cloaked)]
    quarter = half // 2
    two = [
        np.kron(a[cy - quarter : cy + quarter, cx - quarter : cx + quarter], np.ones((2, 2, 1), np.uint8))
        for a in (original, cloaked)
    ]
    return one + two


def row_image(panels: list[np.ndarray], label: str, panel: int, font) -> np.ndarray:
    """Panels side by side on white, each padded to ``panel`` square, under a one-line label."""
    width = len(panels) * panel + (len(panels) - 1) * GAP
    row = np.full((LABEL_HEIGHT + panel, width, 3), 255, np.uint8)
    for i, p in enumerate(panels):
        x = i * (panel + GAP)
        row[LABEL_HEIGHT : LABEL_HEIGHT + p.shape[0], x : x + p.shape[1]] = p
    img = Image.fromarray(row)
    ImageDraw.Draw(img).text((2, 2), label, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="photos or folders, then Hydra overrides (key=value)")
    parser.add_argument("--cloaked", type=Path, default=None, help="folder of cloaked copies (no cloaking here)")
    parser.add_argument("--upscale", type=float, default=1.0, help="Lanczos upscale of the photos before cloaking")
    parser.add_argument("--first", type=int, default=0, help="only the first N photos (0 = all)")
    parser.add_argument("--astronaut", action="store_true", help="add the public-domain astronaut photo")
    parser.add_argument("--panel", type=int, default=192, help="side of each panel in pixels")
    parser.add_argument("--out", type=Path, default=Path("contact-sheet.png"))
    args = parser.parse_intermixed_args()  # overrides may follow the options, as in the usage above
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = [a for a in args.inputs if "=" in a and not Path(a).exists()]
    paths = gather([Path(a) for a in args.inputs if a not in overrides], args.first)

    names = [p.stem for p in paths]
    photos = [upscaled(load_photo(p).rgb, args.upscale) for p in paths]
    if args.astronaut:
        from skimage import data

        names.append("astronaut")
        photos.append(data.astronaut())
    parts = build_from_config(load_config(overrides), need_attack=args.cloaked is None, need_model=args.cloaked is None)
    faces = [parts.detector.detect(p)[:1] for p in photos]
    if args.cloaked is not None:
        by_stem = {p.stem: p for p in find_photos(args.cloaked).photos}
        cloaked = [load_photo(by_stem[n]).rgb if n in by_stem else p for n, p in zip(names, photos)]
    else:
        cloaked = cloak_photos(photos, faces, parts.attack, parts.model, parts.device)

    font = ImageFont.load_default(size=13)
    rows = []
    for name, original, c, f in zip(names, photos, cloaked, faces):
        if not f:
            log.info("%s: no face found, left out", name)
            continue
        q = face_quality(to_tensor(original), to_tensor(c), torch.as_tensor(f[0].box[None], dtype=torch.float64))
        label = (
            f"{name} ({original.shape[1]}x{original.shape[0]}): shading {float(q.shading[0]):.2f}, "
            f"face SSIM {float(q.ssim[0]):.3f}, p5 local SSIM {float(q.ssim_p5[0]):.3f}"
            "   |   original, cloaked 1:1   |   original, cloaked 2x"
        )
        rows.append(row_image(face_panels(original, c, f[0].box, args.panel), label, args.panel, font))
        log.info("%s", label)
    spacer = np.full((GAP, rows[0].shape[1], 3), 255, np.uint8)
    sheet = np.concatenate([x for r in rows for x in (r, spacer)][:-1], axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out, optimize=True)
    log.info("Wrote %s (%dx%d, %.1f MB)", args.out, sheet.shape[1], sheet.shape[0], args.out.stat().st_size / 1e6)


if __name__ == "__main__":
    main()
