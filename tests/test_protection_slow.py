"""Full-strength protection on real faces (slow: run with `uv run pytest -m slow`)."""

import numpy as np
import pytest
from PIL import Image

from cloak.builders import build_from_config
from cloak.cloaking.groups import cloak_photos
from cloak.config import load_config
from cloak.imaging.platform import downscale, jpeg
from cloak.measurement import measure

pytestmark = pytest.mark.slow


def test_default_strength_beats_dlib_after_jpeg_and_downscale(lfw_dev):
    parts = build_from_config(load_config(["device=cpu"]))
    folders = sorted(p for p in lfw_dev.iterdir() if p.is_dir())[:12]
    photos = [np.asarray(Image.open(sorted(f.glob("*.jpg"))[0]).convert("RGB")) for f in folders]
    faces = [parts.detector.detect(p)[:1] for p in photos]
    photos, faces = zip(*[(p, f) for p, f in zip(photos, faces) if f])
    cloaked = cloak_photos(list(photos), list(faces), parts.attack, parts.model, parts.device)
    beyond, ssims = [], []
    for p, c, f in zip(photos, cloaked, faces):
        for platform in (lambda im: jpeg(im, 75), lambda im: downscale(im, 0.5)):
            seen = np.asarray(platform(Image.fromarray(c)))
            beyond.append(measure(p, seen, f, parts.model).faces[0].distance["dlib_resnet"] > 0.6)
        ssims.append(measure(p, c, f, parts.model).ssim)
    assert np.mean(beyond) >= 0.9, f"only {np.mean(beyond):.0%} of cloaked faces beyond dlib's threshold"
    assert np.mean(ssims) >= 0.95
