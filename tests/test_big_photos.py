"""Big photos cost what their faces cost: windows around faces give the whole photo's numbers."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from conftest import tiny_face

from cloak.alignment import align_faces
from cloak.attacks import PGD, PhotoFaces, photo_seed
from cloak.cloaking.groups import cloak_photos, pixels_seed
from cloak.imaging.platform import apply_transform, jpeg
from cloak.imaging.windows import changed_boxes, merge_overlapping, window_around
from cloak.measurement import REPORT_JPEG_QUALITY, measure, photo_quality
from cloak.photos import to_tensor, to_uint8
from cloak.quality import face_quality, psnr, ssim


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 100 + 60 * np.sin(x / 9.0)[..., None] * np.cos(y / 13.0)[..., None] + g.normal(0, 12, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _perturb(photo: np.ndarray, boxes: list[tuple[int, int, int, int]], seed: int = 1) -> np.ndarray:
    g = np.random.default_rng(seed)
    out = photo.astype(np.int16)
    for x0, y0, x1, y1 in boxes:
        out[y0:y1, x0:x1] += g.integers(-6, 7, (y1 - y0, x1 - x0, 3)).astype(np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


@torch.no_grad()
def _whole_photo_measure(original, cloaked, faces, model):
    """What measuring read before windows: every number on the whole photos."""
    a, b = to_tensor(original), to_tensor(cloaked)
    (jpeg_copy,) = apply_transform([cloaked], partial(jpeg, quality=REPORT_JPEG_QUALITY))
    jb = to_tensor(jpeg_copy)
    lm = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=torch.float32)
    d0, d1, d2 = (model.descriptor(align_faces(x, lm, model.template, model.input_size)) for x in (a, b, jb))
    boxes = torch.as_tensor(np.stack([f.box for f in faces]))
    return {
        "distance": (d1 - d0).norm(dim=1),
        "distance_jpeg75": (d2 - d0).norm(dim=1),
        "quality": face_quality(a, b, boxes),
        "ssim": float(ssim(a, b)[0]),
        "psnr": float(psnr(a, b)[0]),
    }


# ---- windows ----------------------------------------------------------------------------


def test_merge_overlapping_groups_until_groups_are_disjoint():
    boxes = [(0, 0, 10, 10), (50, 0, 60, 10), (8, 8, 20, 20), (19, 0, 52, 3), (100, 100, 110, 110)]
    groups = merge_overlapping(boxes)
    # 0 and 2 overlap; their union reaches 3, which reaches 1: one group. 4 stays alone.
    assert groups == [((0, 0, 60, 20), [0, 1, 2, 3]), ((100, 100, 110, 110), [4])]


def test_window_is_aligned_and_clipped():
    assert window_around((37, 21, 60, 50), (100, 200), margin=4, align=16) == (32, 16, 64, 54)
    assert window_around((-5, 90, 10, 120), (100, 200), margin=4, align=16) == (0, 80, 14, 100)
    with pytest.raises(ValueError, match="no pixel inside"):
        window_around((300, 0, 310, 10), (100, 200), margin=0)


def test_changed_boxes_split_where_changes_lie_apart():
    a = np.zeros((40, 60, 3), np.uint8)
    assert changed_boxes(a, a.copy()) == []
    b = a.copy()
    b[3, 7, 1] = 1
    b[12, 4, 0] = 9
    assert changed_boxes(a, b, min_gap=20) == [(4, 3, 8, 13)]
    # rows 3 and 12 lie 8 unchanged rows apart: cut at a gap of 8, not at 9
    assert changed_boxes(a, b, min_gap=8) == [(7, 3, 8, 4), (4, 12, 5, 13)]
    assert changed_boxes(a, b, min_gap=9) == [(4, 3, 8, 13)]
    # an L of changes: the columns cut first, then each part on its own rows
    b[30:35, 40:50] = 7
    b[35:38, 55:58] = 7
    assert changed_boxes(a, b, min_gap=4) == [(7, 3, 8, 4), (4, 12, 5, 13), (40, 30, 50, 35), (55, 35, 58, 38)]
    with pytest.raises(ValueError, match="min_gap"):
        changed_boxes(a, b, min_gap=0)


# ---- measuring on windows equals measuring the whole photo -----------------------------


@pytest.mark.parametrize(
    "changed",
    [
        [(40, 30, 90, 80)],
        [(0, 0, 25, 18), (150, 95, 200, 120)],
        [(10, 10, 40, 40), (60, 12, 90, 50), (70, 70, 100, 110)],
        [(10, 10, 40, 40), (60, 15, 90, 50), (40, 20, 61, 22)],
        [(10, 10, 40, 40), (51, 10, 80, 40)],
        [(10, 10, 40, 40), (47, 10, 80, 40)],
        [(10, 10, 11, 11)],
        [],
    ],
    ids=[
        "one region",
        "two regions at the borders",
        "three apart",
        "three near",
        "just apart",
        "one window apart",
        "one pixel",
        "nothing",
    ],
)
def test_photo_quality_equals_whole_photo_ssim_and_psnr(changed):
    original = _photo(120, 200)
    cloaked = _perturb(original, changed)
    mean_ssim, value_psnr = photo_quality(original, cloaked)
    a, b = to_tensor(original), to_tensor(cloaked)
    assert mean_ssim == pytest.approx(float(ssim(a, b)[0]), abs=2e-7)
    if changed:
        assert mean_ssim < 1
        assert value_psnr == pytest.approx(float(psnr(a, b)[0]), abs=1e-4)
    else:
        assert mean_ssim == 1.0 and value_psnr == math.inf


@pytest.mark.parametrize(
    "spots",
    [[(20.0, 30.0), (383.0, 71.0)], [(41.0, 37.0), (95.0, 45.0)], [(-9.0, 150.0)]],
    ids=["far apart", "close together", "at the border"],
)
def test_measure_on_windows_equals_the_whole_photo(spots, tiny_embedder):
    model = tiny_embedder(dtype=torch.float32)
    original = _photo(240, 496, seed=3)
    faces = [tiny_face(x, y) for x, y in spots]
    boxes = [tuple(int(v) for v in np.clip(f.box, 0, None)) for f in faces]
    cloaked = _perturb(original, boxes, seed=4)
    report = measure(original, cloaked, faces, model)
    whole = _whole_photo_measure(original, cloaked, faces, model)
    for i, face in enumerate(report.faces):
        assert face.distance["model"] == pytest.approx(float(whole["distance"][i]), abs=1e-5)
        assert face.distance_jpeg75["model"] == pytest.approx(float(whole["distance_jpeg75"][i]), abs=1e-5)
        assert face.distance_jpeg75["model"] > 0
        assert face.ssim == float(whole["quality"].ssim[i])
        assert face.ssim_p5 == float(whole["quality"].ssim_p5[i])
        assert face.psnr == float(whole["quality"].psnr[i])
    assert report.ssim == pytest.approx(whole["ssim"], abs=2e-7)
    assert report.psnr == pytest.approx(whole["psnr"], abs=1e-4)


# ---- cloaking groups of faces far apart ---------------------------------------------------


def _attack(steps: int = 2) -> PGD:
    return PGD(eps=8.0, steps=steps, max_dssim=None, transform=None)


def test_faces_close_together_are_cloaked_as_before(tiny_embedder):
    """One group: the attack runs on the whole photo with all faces, exactly as without grouping."""
    model = tiny_embedder(dtype=torch.float32)
    photo = _photo(160, 200, seed=5)
    faces = [tiny_face(30.0, 30.0), tiny_face(90.0, 40.0)]
    attack = _attack()
    [cloaked] = cloak_photos([photo], [faces], attack, model)
    tensor = to_tensor(photo)
    landmarks = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=torch.float32)
    boxes = torch.as_tensor(np.stack([f.box for f in faces]))
    [direct] = attack(model, [PhotoFaces(tensor, landmarks, seed=photo_seed(attack.seed, tensor), boxes=boxes)])
    np.testing.assert_array_equal(cloaked, to_uint8(direct.photo))


def test_faces_far_apart_are_cloaked_in_separate_regions(tiny_embedder):
    """Two groups: each face gets its own region; the pixels between them are never touched."""
    model = tiny_embedder(dtype=torch.float32)
    photo = _photo(200, 640, seed=6)
    faces = [tiny_face(20.0, 40.0), tiny_face(520.0, 60.0)]
    steps: list[int] = []
    [cloaked] = cloak_photos([photo], [faces], _attack(steps=3), model, steps_taken=steps)
    assert steps == [3]
    changed = (cloaked != photo).any(axis=2)
    columns = np.flatnonzero(changed.any(axis=0))
    assert columns.size and columns.min() < 130 and columns.max() > 500
    assert not changed[:, 160:480].any(), "pixels between the two faces changed"
    for face in faces:
        x0, y0, x1, y1 = face.box.astype(int)
        assert changed[y0:y1, x0:x1].mean() > 0.5, "a face was left uncloaked"
    # The same photo gets the same cloak again.
    [again] = cloak_photos([photo], [faces], _attack(steps=3), model)
    np.testing.assert_array_equal(again, cloaked)


def test_pixels_seed_is_the_photo_seed():
    photo = _photo(1100, 1000, seed=7)
    assert pixels_seed(5, photo) == photo_seed(5, to_tensor(photo))
    assert pixels_seed(5, photo) != pixels_seed(6, photo)


def test_one_face_on_a_big_photo_is_cloaked_on_a_window_as_on_the_whole_photo(tiny_embedder):
    """A photo many times the face's region is cloaked on a window: the same cloak, to float rounding."""
    model = tiny_embedder(dtype=torch.float32)
    photo = _photo(400, 640, seed=8)
    # Real landmarks: no integer scale, where the alignment's pooling factor (its floor) is one rounding away.
    faces = [tiny_face(300.37, 150.61, scale=4.3)]
    attack = _attack(steps=3)
    [cloaked] = cloak_photos([photo], [faces], attack, model)
    tensor = to_tensor(photo)
    landmarks = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=torch.float32)
    boxes = torch.as_tensor(np.stack([f.box for f in faces]))
    [whole] = attack(model, [PhotoFaces(tensor, landmarks, seed=photo_seed(attack.seed, tensor), boxes=boxes)])
    difference = np.abs(cloaked.astype(int) - to_uint8(whole.photo).astype(int))
    assert (cloaked != photo).any()
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
