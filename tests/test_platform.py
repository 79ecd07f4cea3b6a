"""Platform transforms: real JPEG, resizing and blur on PIL images, and their registry."""

import numpy as np
import pytest
from PIL import Image

from cloak.imaging.platform import (
    PLATFORM_TRANSFORMS,
    apply_transform,
    downscale,
    gaussian_blur,
    identity,
    jpeg,
    parse_platform_transform,
    purify,
    social,
    webp,
)

NAMES = [
    "none",
    "jpeg95",
    "jpeg85",
    "jpeg75",
    "jpeg50",
    "webp90",
    "webp75",
    "webp50",
    "down0.75",
    "down0.5",
    "down0.25",
    "blur",
    "social",
    "purify",
]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A smooth-plus-texture 61x47 RGB image (odd sizes to exercise rounding)."""
    h, w = 47, 61
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 200
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _mse(a: Image.Image, b: Image.Image) -> float:
    return float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))


def test_jpeg_quality_orders_error(photo):
    errors = [_mse(photo, jpeg(photo, q)) for q in (95, 75, 50)]
    assert 0 < errors[0] < errors[1] < errors[2]


def test_jpeg_is_a_real_codec(photo):
    out = jpeg(photo, 85)
    assert out.mode == "RGB" and out.size == photo.size
    assert jpeg(photo, 85).tobytes() == out.tobytes()  # deterministic
    with pytest.raises(ValueError, match=r"\[1, 100\]"):
        jpeg(photo, 0)


def test_webp_is_a_real_codec_unlike_jpeg(photo):
    errors = [_mse(photo, webp(photo, q)) for q in (90, 75, 50)]
    assert 0 < errors[0] < errors[1] < errors[2]
    out = webp(photo, 75)
    assert out.mode == "RGB" and out.size == photo.size
    assert webp(photo, 75).tobytes() == out.tobytes()  # deterministic
    assert out.tobytes() != jpeg(photo, 75).tobytes()
    with pytest.raises(ValueError, match=r"\[1, 100\]"):
        webp(photo, 101)


@pytest.mark.parametrize("factor", [1.0, 0.75, 0.5, 0.25, 0.01])
def test_downscale_returns_original_size(photo, factor):
    out = downscale(photo, factor)
    assert out.size == photo.size and out.mode == "RGB"


def test_downscale_loses_more_detail_when_smaller(photo):
    errors = [_mse(photo, downscale(photo, f)) for f in (0.75, 0.5, 0.25)]
    assert errors[0] < errors[1] < errors[2]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        downscale(photo, 1.5)


def test_blur_smooths(photo):
    assert _mse(photo, gaussian_blur(photo, 0)) == 0
    assert 0 < _mse(photo, gaussian_blur(photo, 0.5)) < _mse(photo, gaussian_blur(photo, 2.0))


def test_social_and_purify(photo):
    assert social(photo).size == photo.size
    assert social(photo, factor=0.25, quality=50).size == photo.size
    assert _mse(photo, social(photo, factor=1.0, quality=85)) == _mse(photo, jpeg(photo, 85))
    assert purify(photo).tobytes() == gaussian_blur(jpeg(photo, 50), 1.0).tobytes()


def test_input_not_modified_and_converted_to_rgb(photo):
    before = photo.tobytes()
    rgba = photo.convert("RGBA")
    for name in NAMES:
        out = PLATFORM_TRANSFORMS[name](rgba)
        assert out.mode == "RGB"
    identity(photo).paste((0, 0, 0), (0, 0, 10, 10))
    assert photo.tobytes() == before


def test_registry_names(photo):
    assert list(PLATFORM_TRANSFORMS) == NAMES
    for name in NAMES:
        out = parse_platform_transform(name)(photo)
        assert isinstance(out, Image.Image) and out.size == photo.size
    assert _mse(photo, parse_platform_transform("none")(photo)) == 0
    assert parse_platform_transform(" JPEG95 ") is PLATFORM_TRANSFORMS["jpeg95"]


def test_bad_name_lists_valid_names():
    with pytest.raises(ValueError, match="jpeg42") as info:
        parse_platform_transform("jpeg42")
    assert all(name in str(info.value) for name in NAMES)


def test_rejects_numpy_input(photo):
    with pytest.raises(TypeError, match="fromarray"):
        jpeg(np.asarray(photo), 90)


def test_joined_names_apply_their_parts_in_order(photo):
    got = parse_platform_transform("jpeg75+down0.5")(photo)
    assert got.tobytes() == downscale(jpeg(photo, 75), 0.5).tobytes()
    with pytest.raises(ValueError, match="sepia"):
        parse_platform_transform("jpeg75+sepia")


def test_apply_transform_on_arrays(photo):
    arrays = [np.asarray(photo), np.asarray(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    out = apply_transform(arrays, PLATFORM_TRANSFORMS["jpeg50"])
    assert [o.dtype for o in out] == [np.uint8, np.uint8]
    assert np.array_equal(out[0], np.asarray(jpeg(photo, 50)))
    assert np.array_equal(arrays[0], np.asarray(photo))  # inputs untouched
