"""The protection / visibility frontier of cloak settings, on a few faces.

For each setting (a label and Hydra overrides of the cloak config), cloaks the
same photos (the first photo of the first ``--photos`` identities of a face
folder, upscaled ``--upscale`` times with Lanczos so that faces are the size
they are in today's photos, plus the astronaut with ``--astronaut``) and prints
one row: face-region quality (each face's detector box grown 10%: SSIM, the 5th
percentile of its local SSIM map, HaarPSI; means over faces and the worst face)
and protection as each judge model sees it (``--judges``, configs of
``configs/model/``): the descriptor distance of the cloaked face from the clean
one after a real JPEG q75 re-encode of a 0.5x downscale, upsampled back, in
units of the judge's own same-person threshold (1 = on it), and the share of
faces beyond it. A judge left out of the cloak's models measures transfer.

Usage:
    uv run python scripts/frontier.py --photos 12 --upscale 3 --astronaut \\
        --setting "today:" --setting "high:strength=high" --setting "eps8:strength.eps=8" \\
        --judges dlib_resnet sface

A setting is ``label:override override ...`` (overrides separated by spaces).
``--save DIR`` also writes each setting's cloaked photos to ``DIR/<label>/`` and
the originals to ``DIR/original/`` (PNG), for ``scripts/contact_sheet.py``.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image

from cloak.builders import build_from_config
from cloak.cloaking.groups import cloak_photos
from cloak.config import load_config
from cloak.imaging.platform import downscale, jpeg
from cloak.measurement import measure
from cloak.models.ensemble import Ensemble
from cloak.photos.pixels import to_tensor
from cloak.quality import face_quality, ssim

log = logging.getLogger("frontier")


@dataclass
class Row:
    """One setting's results, averaged over the faces."""

    label: str
    faces: int
    seconds_per_face: float
    face_ssim: float
    face_ssim_min: float
    face_p5: float
    face_p5_min: float
    haarpsi: float
    photo_ssim: float
    #: judge -> mean distance after the platform, in units of the judge's threshold
    movement: dict[str, float]
    #: judge -> share of faces beyond the judge's threshold after the platform
    beyond: dict[str, float]


def load_photos(data: Path, n: int, upscale: float, astronaut: bool) -> tuple[list[str], list[np.ndarray]]:
    """The first photo of the first ``n`` identities of ``data``, upscaled with Lanczos, and the astronaut."""
    names, photos = [], []
    folders = sorted(p for p in data.iterdir() if p.is_dir())[:n] if n > 0 else []
    for folder in folders:
        img = Image.open(sorted(folder.glob("*.jpg"))[0]).convert("RGB")
        if upscale != 1:
            img = img.resize((round(img.width * upscale), round(img.height * upscale)), Image.Resampling.LANCZOS)
        names.append(folder.name)
        photos.append(np.asarray(img))
    if astronaut:
        from skimage import data as skdata

        names.append("astronaut")
        photos.append(skdata.astronaut())
    return names, photos


def evaluate(
    label: str, overrides: list[str], photos, faces, batch: int, save: Path | None, names, judges: Ensemble
) -> Row:
    """Cloaks ``photos`` with the config plus ``overrides`` and measures quality and protection."""
    parts = build_from_config(load_config(overrides), need_detector=False)
    start = time.perf_counter()
    cloaked = []
    for i in range(0, len(photos), batch):
        cloaked += cloak_photos(photos[i : i + batch], faces[i : i + batch], parts.attack, parts.model, parts.device)
    seconds = time.perf_counter() - start
    judges = judges.to(parts.device)
    ssims, p5s, haar, photo_ssims = [], [], [], []
    moved: dict[str, list[float]] = {}
    for name, p, c, f in zip(names, photos, cloaked, faces):
        boxes = torch.as_tensor(np.stack([x.box for x in f]), dtype=torch.float64)
        q = face_quality(to_tensor(p), to_tensor(c), boxes)
        ssims += q.ssim.tolist()
        p5s += q.ssim_p5.tolist()
        haar += q.perceptual.tolist()
        photo_ssims.append(float(ssim(to_tensor(p), to_tensor(c))[0]))
        platform = np.asarray(jpeg(downscale(Image.fromarray(c), 0.5), 75))
        for r in measure(p, platform, f, judges, parts.device).faces:
            for judge, dist in r.distance.items():
                moved.setdefault(judge, []).append(dist / r.threshold[judge])
        if save is not None:
            (save / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(c).save(save / label / f"{name}.png")
    return Row(
        label=label,
        faces=len(ssims),
        seconds_per_face=seconds / max(1, len(ssims)),
        face_ssim=float(np.mean(ssims)),
        face_ssim_min=float(np.min(ssims)),
        face_p5=float(np.mean(p5s)),
        face_p5_min=float(np.min(p5s)),
        haarpsi=float(np.nanmean(haar)),
        photo_ssim=float(np.mean(photo_ssims)),
        movement={j: float(np.mean(v)) for j, v in moved.items()},
        beyond={j: float((np.array(v) > 1).mean()) for j, v in moved.items()},
    )


def print_header(judges: list[str]) -> None:
    """The head of the frontier's Markdown table."""
    cols = "".join(f" | {j} beyond (movement)" for j in judges)
    print(f"| setting | faces | s/face | face SSIM (min) | p5 local SSIM (min) | HaarPSI | photo SSIM{cols} |")
    print("|:--|--:|--:|--:|--:|--:|--:|" + "--:|" * len(judges), flush=True)


def print_row(r: Row) -> None:
    """One setting's row of the frontier's Markdown table."""
    cols = "".join(f" | {100 * r.beyond[j]:.0f}% ({r.movement[j]:.2f})" for j in r.beyond)
    print(
        f"| {r.label} | {r.faces} | {r.seconds_per_face:.1f} | {r.face_ssim:.3f} ({r.face_ssim_min:.3f}) "
        f"| {r.face_p5:.3f} ({r.face_p5_min:.3f}) | {r.haarpsi:.3f} | {r.photo_ssim:.3f}{cols} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lfw-dev"))
    parser.add_argument("--photos", type=int, default=12, help="identities of --data (first photo of each)")
    parser.add_argument("--upscale", type=float, default=3.0, help="Lanczos upscale of the --data photos")
    parser.add_argument("--astronaut", action="store_true", help="also the astronaut (512x512, not upscaled)")
    parser.add_argument("--setting", action="append", default=[], help='"label:override override ..."')
    parser.add_argument("--batch", type=int, default=4, help="photos cloaked together")
    parser.add_argument("--save", type=Path, default=None, help="write the cloaked photos under this folder")
    parser.add_argument("--judges", nargs="+", default=["dlib_resnet", "sface"], help="model configs that judge")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    names, photos = load_photos(args.data, args.photos, args.upscale, args.astronaut)
    detector = build_from_config(load_config([]), need_model=False, need_attack=False).detector
    faces = [detector.detect(p)[:1] for p in photos]
    keep = [i for i, f in enumerate(faces) if f]
    names, photos, faces = [names[i] for i in keep], [photos[i] for i in keep], [faces[i] for i in keep]
    if args.save is not None:
        (args.save / "original").mkdir(parents=True, exist_ok=True)
        for name, p in zip(names, photos):
            Image.fromarray(p).save(args.save / "original" / f"{name}.png")
    judges = Ensemble({j: instantiate(load_config([f"model={j}"]).model) for j in args.judges})
    print_header(args.judges)
    for setting in args.setting or ["default:"]:
        label, _, rest = setting.partition(":")
        print_row(evaluate(label, rest.split(), photos, faces, args.batch, args.save, names, judges))


if __name__ == "__main__":
    main()
