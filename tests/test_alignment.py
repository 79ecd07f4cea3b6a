import math

import torch

from cloak.alignment import (
    align_faces,
    apply_affine,
    crop_footprint,
    crop_to_image_matrix,
    invert_affine,
    similarity_transform,
    warp_crops,
)


def _rotation(theta: float, scale: float, tx: float, ty: float) -> torch.Tensor:
    c, s = scale * math.cos(theta), scale * math.sin(theta)
    return torch.tensor([[[c, -s, tx], [s, c, ty]]], dtype=torch.float64)


def test_similarity_transform_recovers_a_known_similarity():
    src = torch.rand(1, 5, 2, dtype=torch.float64) * 100
    true = _rotation(0.3, 1.7, 12.0, -4.0)
    dst = apply_affine(true, src)
    assert torch.allclose(similarity_transform(src, dst[0]), true, atol=1e-9)


def test_invert_affine_roundtrips_points():
    m = _rotation(-0.8, 0.5, 3.0, 7.0)
    pts = torch.rand(1, 7, 2, dtype=torch.float64)
    assert torch.allclose(apply_affine(invert_affine(m), apply_affine(m, pts)), pts, atol=1e-12)


def test_identity_warp_returns_the_image():
    img = torch.rand(2, 3, 16, 20)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    assert torch.allclose(warp_crops(img, eye, (16, 20)), img, atol=1e-5)


def test_integer_shift_moves_pixels():
    img = torch.rand(1, 3, 10, 10)
    shift = torch.tensor([[[1.0, 0, 2.0], [0, 1.0, 3.0]]])
    out = warp_crops(img, shift, (5, 6))
    assert torch.allclose(out, img[:, :, 3:8, 2:8], atol=1e-5)


def test_antialiased_downscale_matches_box_filter():
    img = torch.rand(1, 3, 40, 40)
    half = torch.tensor([[[2.0, 0, 0.5], [0, 2.0, 0.5]]])  # crop pixel u -> image 2u + 0.5
    out = warp_crops(img, half, (20, 20))
    assert torch.allclose(out, torch.nn.functional.avg_pool2d(img, 2), atol=1e-5)


def test_landmarks_land_on_template():
    template = torch.tensor([[30.0, 40], [70, 40], [50, 60], [35, 80], [65, 80]])
    # A photo whose face is the template rotated, scaled and moved.
    true = _rotation(0.2, 1.5, 40.0, 10.0).float()
    landmarks = apply_affine(true, template.unsqueeze(0))
    m = crop_to_image_matrix(landmarks, template)
    assert torch.allclose(apply_affine(m, template.unsqueeze(0)), landmarks, atol=1e-3)
    box = crop_footprint(m, (100, 100))
    assert box.shape == (1, 4) and bool((box[:, 2:] > box[:, :2]).all())


def test_gradient_reaches_photo_pixels_under_the_face_only():
    photo = torch.rand(3, 64, 64, requires_grad=True)
    template = torch.tensor([[6.0, 8], [14, 8], [10, 12], [7, 16], [13, 16]])
    landmarks = (template + 20).unsqueeze(0)
    crops = align_faces(photo, landmarks, template, (24, 20))
    crops.sum().backward()
    grad = photo.grad.abs().sum(0)
    assert grad[20:44, 20:40].sum() > 0
    assert grad[:15].sum() == 0 and grad[50:].sum() == 0
