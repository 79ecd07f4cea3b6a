"""The attack's differentiable filters against kornia's reference implementation, and the alignment jitter."""

from dataclasses import replace

import kornia
import pytest
import torch

from cloak.transforms import Distortion, RobustTransform, separable_gaussian


@pytest.mark.parametrize("border", ["reflect", "replicate"])
@pytest.mark.parametrize(("shape", "sigma", "size"), [((2, 3, 23, 31), 1.2, 9), ((1, 9, 17, 12), 1.5, 11)])
def test_separable_gaussian_matches_kornia_values_and_gradients(border, shape, sigma, size):
    x = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = separable_gaussian(x, sigma, size, border)
    reference = kornia.filters.gaussian_blur2d(x, (size, size), (sigma, sigma), border_type=border)
    assert ours.shape == x.shape
    assert torch.allclose(ours, reference, atol=1e-12)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (g_ref,) = torch.autograd.grad((reference * weights).sum(), x)
    assert torch.allclose(g_ours, g_ref, atol=1e-12)


def test_separable_gaussian_refuses_what_it_cannot_filter():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        separable_gaussian(x[0], 1.0, 7)
    with pytest.raises(ValueError, match="odd"):
        separable_gaussian(x, 1.0, 6)
    with pytest.raises(ValueError, match="border"):
        separable_gaussian(x, 1.0, 7, "circular")
    with pytest.raises(ValueError, match="over 5 pixels"):
        separable_gaussian(x[..., :5, :], 1.5, 11, "reflect")
    # Replicated borders work for any size.
    assert separable_gaussian(x[..., :2, :], 1.5, 11, "replicate").shape == (1, 3, 2, 8)


def test_rotation_jitter_turns_the_crop_about_its_centre():
    size = (112, 96)  # (h, w)
    centre = torch.tensor([(96 - 1) / 2, (112 - 1) / 2, 1.0], dtype=torch.float64)
    crop_to_image = torch.tensor([[[2.0, 0.0, 10.0], [0.0, 2.0, 20.0]]], dtype=torch.float64)
    turned = RobustTransform.jitter(crop_to_image, Distortion(rotation=30.0, zoom=1.1), size)
    # The crop's centre still lands where it did; a step along the crop's x axis turns by 30 degrees.
    assert torch.allclose(turned[0] @ centre, crop_to_image[0] @ centre)
    step = turned[0, :, 0] / crop_to_image[0, 0, 0]
    angle = torch.rad2deg(torch.atan2(step[1], step[0]))
    assert torch.isclose(angle, torch.tensor(30.0, dtype=torch.float64))
    assert torch.isclose(step.norm(), torch.tensor(1.1, dtype=torch.float64))


def test_rotation_leaves_the_other_draws_as_they_were():
    plain, turning = RobustTransform(), RobustTransform(max_rotation=6.0)
    assert plain.sample(torch.Generator().manual_seed(3)).rotation == 0.0
    draws = [turning.sample(torch.Generator().manual_seed(s)) for s in range(20)]
    for s, draw in enumerate(draws):
        assert replace(draw, rotation=0.0) == plain.sample(torch.Generator().manual_seed(s))
        assert abs(draw.rotation) <= 6.0
    assert len({d.rotation for d in draws}) == len(draws)
    assert not RobustTransform(0, resize_prob=0, blur_prob=0, max_shift=0, max_zoom=0, max_rotation=1).is_identity
    with pytest.raises(ValueError, match="max_rotation"):
        RobustTransform(max_rotation=-1.0)
