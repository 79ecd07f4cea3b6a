"""The attack's differentiable filters against kornia's reference implementation."""

import kornia
import pytest
import torch

from cloak.transforms import separable_gaussian


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
