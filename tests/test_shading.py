"""The shading figure (cloak/shading.py): CIEDE2000 after a blur, per face, and the budget that holds a cloak to it."""

import math

import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000

from cloak.attacks.budget import FaceBudget, quantise
from cloak.shading import SHADING_GROWTH, ciede2000, shading, shading_box, shading_map, shading_peak
from cloak.transforms import smooth


def _lab(values: np.ndarray) -> torch.Tensor:
    """``[N, 3]`` Lab values as a ``[3, 1, N]`` image."""
    return torch.from_numpy(values.T.copy()).reshape(3, 1, -1)


def test_ciede2000_matches_scikit_image_on_random_colours_greys_and_equal_pairs():
    rng = np.random.default_rng(0)
    n = 2000
    a = np.stack([rng.uniform(0, 100, n), rng.uniform(-90, 90, n), rng.uniform(-90, 90, n)], -1)
    b = a + rng.normal(0, 4, a.shape)
    b[:100] = a[:100]  # equal pairs
    b[100:300, 1:] = 0  # grey against colour
    a[200:300, 1:] = 0  # grey against grey
    b[300:400, 1] = -a[300:400, 2]  # hues turned by about a quarter
    b[300:400, 2] = a[300:400, 1]
    expected = deltaE_ciede2000(a, b)
    got = ciede2000(_lab(a), _lab(b)).numpy().ravel()
    # float64 throughout; the eps that keeps square roots differentiable moves values by < 1e-9.
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_ciede2000_has_finite_gradients_on_grey_and_equal_colours():
    grey = torch.zeros(3, 2, 2, dtype=torch.float64)
    grey[0] = 40
    moved = grey.clone().requires_grad_(True)
    ciede2000(grey, moved).sum().backward()  # equal: the difference is 0 and so is its gradient
    assert torch.isfinite(moved.grad).all()
    lighter = (grey + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(3, 1, 1)).requires_grad_(True)
    ciede2000(grey, lighter).sum().backward()
    assert torch.isfinite(lighter.grad).all() and lighter.grad[0].abs().min() > 0


def test_a_uniform_lightness_shift_of_grey_scores_its_ciede2000_value():
    """Synthetic shading of known size: mid grey lightened by 3/255 everywhere scores dL* / S_L."""
    photo = torch.full((3, 120, 100), 118 / 255, dtype=torch.float64)
    lighter = photo + 3 / 255
    box = torch.tensor([[20.0, 30.0, 80.0, 100.0]], dtype=torch.float64)

    def lightness(v: float) -> float:  # sRGB grey -> L*
        lin = ((v + 0.055) / 1.055) ** 2.4
        f = lin ** (1 / 3) if lin > (6 / 29) ** 3 else lin / (3 * (6 / 29) ** 2) + 4 / 29
        return 116 * f - 16

    l1, l2 = lightness(118 / 255), lightness(121 / 255)
    mean = (l1 + l2) / 2
    s_l = 1 + 0.015 * (mean - 50) ** 2 / math.sqrt(20 + (mean - 50) ** 2)
    assert float(shading(photo, lighter, box)[0]) == pytest.approx((l2 - l1) / s_l, rel=1e-4)


def test_the_figure_sees_shading_and_not_texture():
    """A smooth darkening of one cheek scores far more than a fine texture of the same amplitude."""
    photo = torch.full((3, 150, 120), 0.55, dtype=torch.float64)
    box = torch.tensor([[20.0, 30.0, 100.0, 130.0]], dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(150.0), torch.arange(120.0), indexing="ij")
    cheek = torch.exp(-((xx - 45) ** 2 + (yy - 90) ** 2) / (2 * 20.0**2)).double()
    shaded = photo - 4 / 255 * cheek
    checker = ((xx + yy) % 2 * 2 - 1).double()
    textured = photo + 4 / 255 * checker * cheek
    smooth_score = float(shading(photo, shaded, box)[0])
    texture_score = float(shading(photo, textured, box)[0])
    assert smooth_score > 1.0  # about 1.5 L* units at the cheek's centre
    assert texture_score < smooth_score / 20


def test_the_region_is_the_box_grown_as_the_issue_defines_it():
    left, right, top, bottom = SHADING_GROWTH
    assert shading_box((100, 100, 200, 220), (1000, 1000)) == (
        100 - 100 * left,
        100 - 120 * top,
        200 + 100 * right,
        220 + 120 * bottom,
    )
    assert shading_box((0, 0, 50, 50), (40, 40)) == (0, 0, 40, 40)
    with pytest.raises(ValueError, match="no pixel inside"):
        shading_box((100, 100, 150, 150), (40, 40))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        shading_map(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9), 8.0)


def test_a_cloak_beyond_the_shading_limit_is_shrunk_to_it():
    """FaceBudget.shrink: a smooth cloak that scores above 2 is scaled until the face's figure is <= 1."""
    torch.manual_seed(0)
    clean = (0.5 + 0.05 * smooth(torch.rand(1, 3, 140, 120, dtype=torch.float64), 3.0)).mul(255).round() / 255
    # A grey cloak of smooth blotches, as the default remodels a face.
    delta = 6 / 255 * smooth(smooth(torch.randn(1, 1, 140, 120, dtype=torch.float64), 8.0).sign(), 2.0)
    delta = delta.expand(1, 3, -1, -1)
    bound = torch.full((1, 1, 140, 120), 6 / 255, dtype=torch.float64)
    boxes = torch.tensor([[25.0, 35.0, 95.0, 125.0]], dtype=torch.float64)
    budget = FaceBudget(boxes, (140, 120), None, None, max_shading=1.0)
    full = (clean + delta).clamp(0, 1)
    assert float(shading(clean[0], full[0], boxes)[0]) > 2.0, "the test cloak does not exceed the limit"
    shrunk = budget.shrink(clean, delta, bound)
    figure = float(shading(clean[0], shrunk[0], boxes)[0])
    assert figure <= 1.0
    assert figure > 0.7, "shrunk far below the limit"
    assert budget.within(shrunk, clean)


def _spot_photo() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A flat grey photo, one face box, and a smooth dark spot covering about 2% of its shading region."""
    clean = torch.full((1, 3, 140, 120), 128 / 255, dtype=torch.float64)
    boxes = torch.tensor([[25.0, 35.0, 95.0, 125.0]], dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(140.0), torch.arange(120.0), indexing="ij")
    spot = torch.exp(-((yy - 60) ** 2 + (xx - 45) ** 2) / (2 * 4.0**2)).to(torch.float64)
    return clean, boxes, spot


def test_shading_peak_sees_a_spot_the_figure_leaves_out():
    """A dark spot on 2% of the region (an eye socket): the 95th percentile stays near 0, the peak does not."""
    clean, boxes, spot = _spot_photo()
    cloaked = (clean - 8 / 255 * spot).clamp(0, 1)
    figure, peak = float(shading(clean[0], cloaked[0], boxes)[0]), float(shading_peak(clean[0], cloaked[0], boxes)[0])
    assert figure < 0.5
    assert peak > 2.0
    # The peak is the map's maximum over the same region.
    x0, y0, x1, y1 = shading_box(boxes[0], (140, 120))
    region = shading_map(clean[0, :, y0:y1, x0:x1], cloaked[0, :, y0:y1, x0:x1], float(boxes[0, 2] - boxes[0, 0]))
    assert peak == pytest.approx(float(region.max()), rel=1e-12)


def test_peak_limit_shrinks_a_spot_the_figure_lets_through():
    """FaceBudget with max_shading_peak: the spot is scaled until its worst pixel is at the limit."""
    clean, boxes, spot = _spot_photo()
    delta = (-8 / 255 * spot).reshape(1, 1, 140, 120).expand(1, 3, -1, -1)
    bound = torch.full((1, 1, 140, 120), 8 / 255, dtype=torch.float64)
    figure_only = FaceBudget(boxes, (140, 120), None, None, max_shading=1.0)
    assert torch.equal(figure_only.shrink(clean, delta, bound), quantise(clean, delta, bound)), "the figure shrank it"
    both = FaceBudget(boxes, (140, 120), None, None, max_shading=1.0, max_shading_peak=1.0)
    shrunk = both.shrink(clean, delta, bound)
    peak = float(shading_peak(clean[0], shrunk[0], boxes)[0])
    assert 0.7 < peak <= 1.0
    assert both.within(shrunk, clean)


def test_peak_penalty_pulls_only_beyond_the_peak():
    """The peak's penalty is 0 below it and has a gradient on the spot above it."""
    clean, boxes, spot = _spot_photo()
    budget = FaceBudget(boxes, (140, 120), None, None, max_shading_peak=1.0, shading_peak_weight=1.0)
    small = (clean - 1 / 255 * spot).clamp(0, 1)
    assert float(budget.penalty(small, clean)) == 0.0
    big = (clean - 8 / 255 * spot).clamp(0, 1).requires_grad_(True)
    penalty = budget.penalty(big, clean)
    (grad,) = torch.autograd.grad(penalty, big)
    assert float(penalty) > 0
    assert torch.isfinite(grad).all()
    assert float(grad[0, 0, 60, 45]) < 0, "descending the penalty does not lighten the spot back"
    assert budget.last_peak > 2.0


def test_gradient_is_finite_where_both_colours_are_grey():
    """Exact greys (a* = b* = 0) on both sides: CIEDE2000's chroma weights have slope 0 there, not NaN."""
    lab_a = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    lab_a[:, 0] = 50.0
    lab_b = lab_a.clone()
    lab_b[:, 0] += torch.linspace(0, 2, 16, dtype=torch.float64).reshape(4, 4)  # lighter, still grey
    lab_b.requires_grad_(True)
    ciede2000(lab_a, lab_b).sum().backward()
    assert torch.isfinite(lab_b.grad).all(), "a grey pixel gave a NaN gradient"
    assert lab_b.grad[:, 0].abs().sum() > 0, "the lightness change lost its gradient"


def test_gradient_is_finite_for_nearly_grey_colours_in_float32():
    """A hint of colour too small for float32's chroma (a photo's greys after a blur): no NaN, however small."""
    lab_a = torch.zeros(1, 3, 2, 3, dtype=torch.float32)
    lab_a[:, 0] = 60.0
    lab_b = lab_a.clone()
    lab_b[:, 0] += 1.0
    lab_b[:, 1] = torch.tensor([[0.0, 1e-12, -3e-11], [2e-13, 0.0, 1e-6]])
    lab_b[:, 2] = torch.tensor([[1e-12, 0.0, 0.0], [0.0, -1e-12, 1e-6]])
    lab_b.requires_grad_(True)
    ciede2000(lab_a, lab_b).sum().backward()
    assert torch.isfinite(lab_b.grad).all(), "a nearly grey pixel gave a NaN gradient"


def test_shading_of_a_grey_photo_has_a_finite_gradient():
    """A grey photo cloaked with a grey change: the figure's gradient reaches the pixels, finite (lfw-dev is grey)."""
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(1, 48, 40, generator=g, dtype=torch.float64)
    grey[:, 10:20, 10:20], grey[:, 30:40, 20:30] = 1.0, 0.0  # white and black: exactly a* = b* = 0 in CIELAB
    grey = grey.expand(3, 48, 40)
    change = (torch.rand(1, 48, 40, generator=g, dtype=torch.float64) - 0.5) * 0.04
    cloaked = (grey + change.expand(3, 48, 40)).clamp(0, 1).requires_grad_(True)
    value = shading(grey, cloaked, torch.tensor([[8.0, 8.0, 32.0, 40.0]], dtype=torch.float64))
    value.sum().backward()
    assert torch.isfinite(cloaked.grad).all(), "a grey photo's shading gradient has NaNs"
    assert cloaked.grad.abs().sum() > 0
