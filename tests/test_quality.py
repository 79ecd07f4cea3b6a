"""SSIM, DSSIM and PSNR on known answers."""

import math
from itertools import pairwise

import kornia
import pytest
import torch

from cloak.quality import LocalSSIM, dssim, face_quality, haarpsi, psnr, ssim, ssim_map, ssim_percentile
from cloak.shading import color_shift


def _image(seed: int = 0, size: tuple[int, int] = (32, 40)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, *size, generator=g, dtype=torch.float64)


def test_identical_images():
    x = torch.stack([_image(0), _image(1)])
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert dssim(x, x).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()


def test_unbatched_gives_batch_of_one():
    x, y = _image(0), _image(1)
    assert ssim(x, y).shape == (1,)
    assert dssim(x, y).shape == (1,)
    assert psnr(x, y).shape == (1,)
    assert torch.equal(ssim(x, y), ssim(x[None], y[None]))


def test_psnr_of_constant_offset():
    a = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    offsets = torch.tensor([0.1, 0.01], dtype=torch.float64).view(2, 1, 1, 1)
    b = a + offsets
    mse = ((b - a) ** 2).mean(dim=(1, 2, 3))
    expected = [10 * math.log10(1.0 / m) for m in mse.tolist()]
    assert psnr(a, b).tolist() == pytest.approx(expected, rel=1e-12)
    assert psnr(a, b).tolist() == pytest.approx([20.0, 40.0], rel=1e-9)
    assert psnr(a * 255, b * 255, max_val=255.0).tolist() == pytest.approx(expected, rel=1e-9)


def test_ssim_decreases_with_noise():
    x = _image(0, (48, 48))
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
    scores = [float(ssim(x, (x + s * noise).clamp(0, 1))[0]) for s in (0.0, 0.01, 0.05, 0.1, 0.3)]
    assert scores[0] == pytest.approx(1.0)
    assert all(a > b for a, b in pairwise(scores))
    d = [float(dssim(x, (x + s * noise).clamp(0, 1))[0]) for s in (0.01, 0.1)]
    assert 0 < d[0] < d[1] <= 1


def test_dssim_is_differentiable():
    x = _image(0)
    delta = (0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)).requires_grad_()
    loss = dssim((x + delta).clamp(0, 1), x).sum()
    (grad,) = torch.autograd.grad(loss, delta)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # A small step against the gradient lowers the DSSIM.
    with torch.no_grad():
        lower = dssim((x + delta - 1e-3 * grad.sign()).clamp(0, 1), x)
    assert lower.item() < loss.item()


def test_matches_scikit_image_closely():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    x = _image(0, (64, 64))
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)).clamp(0, 1)
    ref = skimage_metrics.structural_similarity(
        x.permute(1, 2, 0).numpy(),
        y.permute(1, 2, 0).numpy(),
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )
    assert float(ssim(x, y)[0]) == pytest.approx(ref, abs=2e-2)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.rand(3, 16, 16), torch.rand(3, 16, 17), "same shape"),
        (torch.rand(16, 16), torch.rand(16, 16), r"\[3, H, W\]"),
        (torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), "3 \\(RGB\\) channels"),
        (torch.rand(3, 4, 16), torch.rand(3, 4, 16), "at least 6x6"),
    ],
)
def test_shape_errors(a, b, match):
    with pytest.raises(ValueError, match=match):
        ssim(a, b)


def test_psnr_shape_error():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8))


# ---- face-region quality ------------------------------------------------------------------


def _textured_on_flat(seed: int = 0, size: int = 48, amplitude: float = 0.04) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat grey patch and a copy with high-frequency noise on its left half only."""
    flat = torch.full((3, size, size), 0.6, dtype=torch.float64)
    noise = torch.randn(flat.shape, generator=torch.Generator().manual_seed(seed), dtype=flat.dtype)
    noise[..., size // 2 :] = 0
    return flat, (flat + amplitude * noise).clamp(0, 1)


def test_ssim_map_averages_to_ssim():
    x, y = _image(0, (24, 30)), _image(1, (24, 30))
    local = ssim_map(x, y)
    assert local.shape == (1, 1, 24, 30)
    assert float(local.mean()) == pytest.approx(float(ssim(x, y)[0]), abs=1e-12)


@pytest.mark.parametrize("shape", [(3, 24, 30), (2, 3, 17, 40)])
def test_ssim_map_is_kornias_map(shape):
    a = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = (a + 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).clamp(0, 1)
    batched = (a, b) if a.ndim == 4 else (a[None], b[None])
    reference = kornia.metrics.ssim(*batched, 11, max_val=1.0, eps=0.0, padding="same").mean(dim=1, keepdim=True)
    torch.testing.assert_close(ssim_map(a, b), reference, atol=1e-12, rtol=0)


def test_local_ssim_against_a_fixed_reference_equals_ssim_map_and_its_gradient():
    reference = _image(0, (40, 52))
    images = torch.stack([_image(1, (40, 52)), (reference + 0.05 * _image(2, (40, 52))).clamp(0, 1)])
    images.requires_grad_(True)
    fast = LocalSSIM(reference)(images)
    slow = torch.cat([ssim_map(x, reference) for x in images])
    assert fast.shape == (2, 1, 40, 52)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=0)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), images)
    images2 = images.detach().clone().requires_grad_(True)
    (g_slow,) = torch.autograd.grad(torch.cat([ssim_map(x, reference) for x in images2]).square().sum(), images2)
    torch.testing.assert_close(g_fast, g_slow, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="must have shape"):
        LocalSSIM(reference)(images[:, :, :20])


def test_colour_shift_sees_a_tint_that_ssim_barely_sees():
    """A smooth green-magenta tint moves the colour measure far more than a grey change of the same size."""
    x = 0.2 + 0.6 * _image(0, (48, 48))
    y, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    wave = 0.03 * torch.sin(xx / 6.0) * torch.cos(y / 7.0)
    tint = (x + wave * torch.tensor([1.0, -1.0, 1.0], dtype=x.dtype).view(3, 1, 1)).clamp(0, 1)
    grey = (x + wave).clamp(0, 1)
    assert float(color_shift(x, x)[0]) == 0.0
    assert float(color_shift(x, tint)[0]) > 5 * float(color_shift(x, grey)[0])
    assert float(ssim(x, tint)[0]) > 0.97, "SSIM barely moves under the tint"
    q = face_quality(x, tint, torch.tensor([[0.0, 0.0, 48.0, 48.0]]))
    assert float(q.color_shift[0]) == pytest.approx(float(color_shift(x, tint)[0]))


def test_percentile_is_below_the_mean_on_a_textured_cloak_on_flat_skin():
    flat, cloaked = _textured_on_flat()
    p5, mean = float(ssim_percentile(flat, cloaked)[0]), float(ssim(flat, cloaked)[0])
    assert p5 < mean - 0.2, f"p5 {p5:.3f} should show the textured half the mean {mean:.3f} averages away"
    assert float(ssim_percentile(flat, flat)[0]) == pytest.approx(1.0)
    assert float(ssim_percentile(flat, cloaked, q=100)[0]) == pytest.approx(float(ssim_map(flat, cloaked).max()))


def test_face_quality_of_a_whole_image_box_equals_the_whole_image_metrics():
    x = _image(0, (40, 36))
    y = (x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)).clamp(0, 1)
    whole = torch.tensor([[0.0, 0.0, 36.0, 40.0]])
    for growth in (0.0, 0.1):  # growing a whole-image box is clipped back to the image
        q = face_quality(x, y, whole, growth=growth)
        assert q.ssim.tolist() == pytest.approx(ssim(x, y).tolist(), abs=1e-12)
        assert q.ssim_p5.tolist() == pytest.approx(ssim_percentile(x, y).tolist(), abs=1e-12)
        assert q.psnr.tolist() == pytest.approx(psnr(x, y).tolist(), abs=1e-9)
        assert q.perceptual.tolist() == pytest.approx(haarpsi(x, y).tolist(), abs=1e-6)


def test_face_quality_measures_each_face_on_its_own_box():
    flat, cloaked = _textured_on_flat(size=64)
    boxes = torch.tensor([[2.0, 2.0, 26.0, 40.0], [36.0, 10.0, 60.0, 50.0]])  # textured half, clean half
    q = face_quality(flat, cloaked, boxes)
    assert all(v.shape == (2,) for v in q)
    assert q.ssim[0] < 0.9 and q.ssim_p5[0] < q.ssim[0]
    assert q.ssim[1] == pytest.approx(1.0) and torch.isinf(q.psnr[1])
    assert q.perceptual[0] < q.perceptual[1] == pytest.approx(1.0)


def test_face_quality_follows_device_and_dtype():
    x = _image(0, (32, 32)).float()
    q = face_quality(x, x.flip(-1), torch.tensor([[0, 0, 20, 20]]))
    assert all(v.dtype == torch.float32 and v.device == x.device for v in q)
    small = face_quality(x, x.flip(-1), torch.tensor([[0, 0, 10, 10]]), growth=0.0)
    assert torch.isnan(small.perceptual).all(), "HaarPSI is undefined under 16x16 pixels"


@pytest.mark.parametrize(
    ("original", "cloaked", "boxes", "match"),
    [
        (torch.rand(3, 16, 16), torch.rand(3, 16, 17), torch.tensor([[0, 0, 8, 8]]), "same shape"),
        (torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), torch.tensor([[0, 0, 8, 8]]), "one photo"),
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16), torch.tensor([0, 0, 8, 8]), r"\[F, 4\]"),
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16), torch.tensor([[20, 20, 30, 30]]), "no pixel inside"),
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16), torch.tensor([[0, 0, 4, 16]]), "at least 6x6"),
    ],
)
def test_face_quality_shape_errors(original, cloaked, boxes, match):
    with pytest.raises(ValueError, match=match):
        face_quality(original, cloaked, boxes, growth=0.0)


def test_percentile_and_haarpsi_errors():
    x = torch.rand(3, 12, 12)
    with pytest.raises(ValueError, match="percentile"):
        ssim_percentile(x, x, q=150)
    with pytest.raises(ValueError, match="at least 16x16"):
        haarpsi(x, x)


def test_measure_reports_each_faces_region_quality(tiny_embedder):
    import numpy as np

    from cloak.detection import Face
    from cloak.measurement import measure

    g = np.random.default_rng(0)
    original = np.full((80, 96, 3), 150, np.uint8)
    cloaked = original.copy()
    cloaked[10:40, 10:40] = np.clip(150 + g.normal(0, 6, (30, 30, 3)), 0, 255).astype(np.uint8)
    landmarks = np.array([[18.0, 20], [30, 20], [24, 26], [19, 32], [29, 32]])
    faces = [
        Face(box=np.array([10.0, 10, 40, 40]), score=0.99, landmarks=landmarks),
        Face(box=np.array([55.0, 30, 85, 70]), score=0.98, landmarks=landmarks + np.array([45.0, 20.0])),
    ]
    report = measure(original, cloaked, faces, tiny_embedder(dtype=torch.float32))
    expected = face_quality(
        torch.from_numpy(original).permute(2, 0, 1) / 255.0,
        torch.from_numpy(cloaked).permute(2, 0, 1) / 255.0,
        torch.tensor(np.stack([f.box for f in faces])),
    )
    noisy, clean = report.faces
    assert noisy.ssim == pytest.approx(float(expected.ssim[0]), abs=1e-5)
    assert noisy.ssim_p5 < noisy.ssim < 0.99 and noisy.perceptual < 1
    assert clean.ssim == pytest.approx(1.0) and clean.psnr == math.inf
    assert report.face_ssim == noisy.ssim and report.face_ssim_p5 == noisy.ssim_p5
    assert report.face_ssim < report.ssim, "the whole photo's SSIM hides the face's"
