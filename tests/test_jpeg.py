"""The attack's differentiable JPEG against Pillow's real codec (libjpeg)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cloak.jpeg import jpeg_round_trip, quantisation_tables


def _pillow_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)  # Pillow's default: baseline 4:2:0
    return np.asarray(Image.open(buffer).convert("RGB")).astype(np.float64)


def _as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].double() / 255


@pytest.mark.parametrize("quality", [1, 10, 37, 50, 75, 95, 100])
def test_quantisation_tables_are_libjpegs(quality):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG", quality=quality)
    pillow = Image.open(buffer).quantization
    luma, chroma = quantisation_tables(quality)
    assert np.array_equal(np.asarray(pillow[0]).reshape(8, 8), luma.numpy())
    assert np.array_equal(np.asarray(pillow[1]).reshape(8, 8), chroma.numpy())


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_round_trip_matches_pillows_codec(quality, astronaut):
    # The astronaut's face and shoulder, odd-sized so that the codec pads and crops.
    rgb = astronaut[20:221, 160:347]
    pillow = _pillow_round_trip(rgb, quality)
    ours = jpeg_round_trip(_as_tensor(rgb), quality)[0].permute(1, 2, 0).numpy() * 255
    assert ours.shape == rgb.shape
    real_change, our_change = np.abs(pillow - rgb).mean(), np.abs(ours - rgb).mean()
    assert real_change > 1.5  # the codec does change this colourful crop
    # It loses what the real codec loses...
    assert our_change == pytest.approx(real_change, rel=0.15)
    # ...in the same places: what is left apart (Pillow's 8-bit output and integer DCT) is at
    # most half of the change. (kornia's codec: 1.12 grey levels at quality 75, ours 0.96.)
    assert np.abs(ours - pillow).mean() < 0.5 * real_change


def test_round_trip_keeps_shape_dtype_and_batch_independence():
    gen = torch.Generator().manual_seed(0)
    batch = torch.rand(3, 3, 21, 35, generator=gen)
    out = jpeg_round_trip(batch, 60)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1
    alone = torch.cat([jpeg_round_trip(batch[i : i + 1], 60) for i in range(3)])
    assert torch.allclose(out, alone, atol=1e-6)
    # Grey in, grey out: a flat image survives (up to float rounding).
    grey = torch.full((1, 3, 16, 16), 128 / 255)
    assert torch.allclose(jpeg_round_trip(grey, 30), grey, atol=1e-5)


def test_gradient_reaches_every_pixel_and_channel():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.8 + 0.1
    x.requires_grad_(True)
    weights = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (grad,) = torch.autograd.grad((jpeg_round_trip(x, 75) * weights).sum(), x)
    assert torch.isfinite(grad).all()
    assert (grad.abs().sum(dim=(0, 2, 3)) > 0).all()
    assert (grad != 0).float().mean() > 0.9


def test_round_trip_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        jpeg_round_trip(torch.rand(3, 16, 16), 75)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        jpeg_round_trip(torch.rand(1, 1, 16, 16), 75)
    with pytest.raises(TypeError, match="floating-point"):
        jpeg_round_trip(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 75)
    with pytest.raises(ValueError, match="quality"):
        jpeg_round_trip(torch.rand(1, 3, 16, 16), 0)
