"""Visual masking: the per-pixel share of the cloak's budget a photo can hide."""

import pytest
import torch

from cloak.attacks.masking import VisualMasking, chroma_map, luma, luminance_jnd, masking_map


def _flat_and_textured(size: int = 32, level: float = 0.5) -> torch.Tensor:
    """``[1, 3, size, 2 size]``: a flat grey left half, a noisy (textured) right half of the same mean."""
    g = torch.Generator().manual_seed(0)
    image = torch.full((1, 3, size, 2 * size), level, dtype=torch.float64)
    image[..., size:] += 0.15 * torch.randn(1, 1, size, size, generator=g, dtype=torch.float64)
    return image.clamp(0, 1)


def test_more_budget_on_texture_than_on_a_flat_patch():
    image = _flat_and_textured()
    share = masking_map(image, floor=0.2, luminance=0.0)
    flat, textured = share[..., 4:-4, 4:24], share[..., 4:-4, 40:-4]
    assert flat.max() == pytest.approx(0.2), "a flat mid-grey patch gets exactly the floor"
    assert textured.min() > 0.9, "texture earns (nearly) the full budget"


def test_map_stays_in_floor_to_one_and_follows_dtype():
    image = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    for floor, luminance in ((0.1, 0.0), (0.3, 1.0), (1.0, 0.5)):
        share = masking_map(image, floor=floor, luminance=luminance)
        assert share.shape == (2, 1, 20, 24) and share.dtype == torch.float32
        assert share.min() >= floor - 1e-6 and share.max() <= 1.0
    assert torch.equal(masking_map(image, floor=1.0), torch.ones(2, 1, 20, 24))


def test_luminance_masking_allows_more_in_the_dark():
    assert float(luminance_jnd(torch.tensor(127 / 255))) == pytest.approx(3.0)
    assert float(luminance_jnd(torch.tensor(0.0))) == pytest.approx(20.0)
    dark = torch.full((1, 3, 16, 16), 0.05)
    mid = torch.full((1, 3, 16, 16), 0.5)
    assert masking_map(dark, floor=0.2, luminance=1.0).min() > 2 * masking_map(mid, floor=0.2, luminance=1.0).max()
    assert torch.equal(masking_map(dark, floor=0.2, luminance=0.0), masking_map(mid, floor=0.2, luminance=0.0))


def test_luma_weights():
    image = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert float(luma(image)) == pytest.approx(0.299)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"floor": 0.0}, "floor"),
        ({"contrast": 0.0}, "contrast"),
        ({"sigma": -1.0}, "sigma"),
        ({"luminance": -1}, "lum"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisualMasking(**kwargs)
    with pytest.raises(ValueError, match=match):
        masking_map(torch.rand(1, 3, 8, 8), **kwargs)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        masking_map(torch.rand(3, 8, 8))


def test_chroma_map_is_zero_on_grey_and_full_on_colour():
    grey = torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(2)).expand(1, 3, 24, 24)
    assert torch.allclose(chroma_map(grey), torch.zeros(1, 1, 24, 24), atol=1e-6)
    skin = torch.tensor([0.86, 0.66, 0.55]).view(1, 3, 1, 1).expand(1, 3, 24, 24)
    assert torch.allclose(chroma_map(skin), torch.ones(1, 1, 24, 24))
    faint = grey + torch.tensor([0.01, 0.0, -0.01]).view(1, 3, 1, 1)
    assert 0 < float(chroma_map(faint).mean()) < 0.5
    with pytest.raises(ValueError, match="RGB"):
        chroma_map(torch.rand(1, 1, 8, 8))
