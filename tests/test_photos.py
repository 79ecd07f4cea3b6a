"""The photo file layer: listing, loading every mode, faithful and atomic saving."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, JpegImagePlugin, PngImagePlugin

from cloak.photos import (
    MAX_PIXELS,
    CloakIOError,
    OutputLocationError,
    PhotoTooLargeError,
    UnreadablePhotoError,
    copy_unchanged,
    destination_for,
    find_photos,
    load_photo,
    resolve_output_dir,
    save_photo,
    to_tensor,
    to_uint8,
)

GPS = ExifTags.IFD.GPSInfo
ORIENTATION = ExifTags.Base.Orientation


def smooth_rgb(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    """A smooth colour image with a little noise: realistic for lossy codecs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height) + 60], axis=2)
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


def gps_exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif[GPS] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.0),
        ExifTags.GPS.GPSLongitudeRef: "E",
        ExifTags.GPS.GPSLongitude: (13.0, 24.0, 36.0),
    }
    return exif


def reopen(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("suffix", "fmt", "options", "tolerance"),
    [
        (".jpg", "JPEG", {"quality": 95}, 2.0),
        (".png", "PNG", {}, 0.0),
        (".webp", "WEBP", {"lossless": True}, 0.0),
        (".webp", "WEBP", {"quality": 90}, 4.0),
        (".tif", "TIFF", {}, 0.0),
        (".tiff", "TIFF", {"compression": "tiff_lzw"}, 0.0),
        (".bmp", "BMP", {}, 0.0),
    ],
)
def test_round_trip_keeps_format_size_and_pixels(tmp_path, suffix, fmt, options, tolerance):
    src = tmp_path / f"in{suffix}"
    Image.fromarray(smooth_rgb()).save(src, format=fmt, **options)
    loaded = load_photo(src)
    assert loaded.format == fmt and loaded.mode == "RGB" and loaded.size == (32, 24)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (24, 32, 3)

    dest = save_photo(loaded.rgb, loaded, tmp_path / "out" / f"out{suffix}")
    again = reopen(dest)
    assert again.format == fmt and again.size == (32, 24) and again.mode == "RGB"
    diff = np.abs(np.asarray(again).astype(int) - loaded.rgb.astype(int))
    if tolerance == 0:
        assert diff.max() == 0
    else:
        assert diff.mean() < tolerance
    if fmt == "WEBP":
        assert load_photo(dest).webp_lossless == loaded.webp_lossless == options.get("lossless", False)
    if fmt == "TIFF":
        assert again.info["compression"] in ("raw", "tiff_lzw")


def test_jpeg_saved_without_chroma_subsampling_by_default(tmp_path):
    src = tmp_path / "in.jpg"
    Image.fromarray(smooth_rgb()).save(src, quality=75)  # Pillow's default is 4:2:0
    loaded = load_photo(src)
    assert JpegImagePlugin.get_sampling(reopen(src)) == 2
    assert JpegImagePlugin.get_sampling(reopen(save_photo(loaded.rgb, loaded, tmp_path / "a.jpg"))) == 0
    subsampled = save_photo(loaded.rgb, loaded, tmp_path / "b.jpg", jpeg_subsampling="4:2:0")
    assert JpegImagePlugin.get_sampling(reopen(subsampled)) == 2


def test_save_accepts_a_tensor(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(smooth_rgb()).save(src)
    loaded = load_photo(src)
    dest = save_photo(to_tensor(loaded.rgb), loaded, tmp_path / "out.png")
    assert np.array_equal(np.asarray(reopen(dest)), loaded.rgb)


# --------------------------------------------------------------------------- orientation


def test_exif_orientation_is_applied_and_reset(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    src = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(stored).save(src, exif=exif, quality=95)

    loaded = load_photo(src)
    assert loaded.orientation == 6
    assert loaded.rgb.shape == (40, 20, 3)  # upright: 20 wide, 40 high
    expected = np.asarray(reopen(src).transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(loaded.rgb, expected)
    assert loaded.rgb[5, 10, 0] > 200 and loaded.rgb[35, 10, 2] > 200  # red on top now

    for metadata in ("strip", "keep"):
        dest = save_photo(loaded.rgb, loaded, tmp_path / f"{metadata}.jpg", metadata=metadata)
        again = reopen(dest)
        assert again.size == (20, 40)
        assert again.getexif().get(ORIENTATION, 1) == 1
        upright = load_photo(dest)
        assert upright.orientation == 1
        assert np.abs(upright.rgb.astype(int) - loaded.rgb.astype(int)).mean() < 2


# --------------------------------------------------------------------------- modes


def _mode_image(mode: str) -> tuple[Image.Image, np.ndarray, np.ndarray | None]:
    """An image in ``mode`` (2 pixels wide) and the RGB and alpha it should load as."""
    if mode == "1":
        image = Image.new("1", (2, 1))
        image.putpixel((1, 0), 1)
        return image, np.array([[[0] * 3, [255] * 3]], np.uint8), None
    if mode == "L":
        image = Image.fromarray(np.array([[0, 100]], np.uint8))
        return image, np.array([[[0] * 3, [100] * 3]], np.uint8), None
    if mode == "LA":
        image = Image.new("LA", (2, 1))
        image.putdata([(10, 255), (200, 40)])
        return image, np.array([[[10] * 3, [200] * 3]], np.uint8), np.array([[255, 40]], np.uint8)
    if mode in ("P", "PA"):
        image = Image.new(mode, (2, 1))
        image.putpalette([0, 0, 0, 250, 20, 30] + [0] * 762)
        image.putpixel((1, 0), 1 if mode == "P" else (1, 90))
        if mode == "P":
            return image, np.array([[[0, 0, 0], [250, 20, 30]]], np.uint8), None
        return (
            image,
            np.array([[[0, 0, 0], [250, 20, 30]]], np.uint8),
            np.array([[0, 90]], np.uint8),
        )
    if mode == "RGB":
        image = Image.fromarray(np.array([[[1, 2, 3], [250, 128, 7]]], np.uint8))
        return image, np.array([[[1, 2, 3], [250, 128, 7]]], np.uint8), None
    if mode == "RGBA":
        image = Image.fromarray(np.array([[[1, 2, 3, 4], [250, 128, 7, 255]]], np.uint8))
        return (
            image,
            np.array([[[1, 2, 3], [250, 128, 7]]], np.uint8),
            np.array([[4, 255]], np.uint8),
        )
    if mode == "CMYK":
        image = Image.new("CMYK", (2, 1))
        image.putdata([(0, 0, 0, 0), (0, 255, 255, 0)])
        return image, np.array([[[255, 255, 255], [255, 0, 0]]], np.uint8), None
    if mode in ("I;16", "I;16B", "I"):
        image = Image.new(mode, (2, 1))
        image.putpixel((0, 0), 65535)
        image.putpixel((1, 0), 128 * 257)
        return image, np.array([[[255] * 3, [128] * 3]], np.uint8), None
    if mode == "F":
        image = Image.fromarray(np.array([[1.0, 0.5]], np.float32))
        return image, np.array([[[255] * 3, [128] * 3]], np.uint8), None
    raise AssertionError(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("1", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("PA", "TIFF"),
        ("RGB", "TIFF"),
        ("RGBA", "PNG"),
        ("CMYK", "TIFF"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("I;16B", "TIFF"),
        ("I", "TIFF"),
        ("F", "TIFF"),
    ],
)
def test_every_mode_loads_as_rgb(tmp_path, mode, fmt):
    image, rgb, alpha = _mode_image(mode)
    src = tmp_path / f"{mode.replace(';', '_')}.{fmt.lower()}"
    image.save(src, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    assert reopen(src).mode == mode
    loaded = load_photo(src)
    assert loaded.mode == mode and loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (1, 2, 3)
    tolerance = 3 if fmt == "JPEG" else 0
    assert np.abs(loaded.rgb.astype(int) - rgb.astype(int)).max() <= tolerance
    if alpha is None:
        assert loaded.alpha is None
    else:
        assert np.array_equal(loaded.alpha, alpha)
    # every mode can be written back in its format
    again = reopen(save_photo(loaded.rgb, loaded, tmp_path / "out" / src.name))
    assert again.format == fmt and again.size == (2, 1)


def test_sixteen_bit_scales_not_clips(tmp_path):
    values = np.array([[0, 128, 129, 256, 257, 32896, 65535]], np.uint16)
    src = tmp_path / "deep.png"
    Image.fromarray(values).save(src)  # a 16-bit grayscale PNG
    loaded = load_photo(src)
    assert loaded.high_bit_depth and loaded.is_grayscale
    assert loaded.rgb[0, :, 0].tolist() == [0, 0, 1, 1, 1, 128, 255]
    assert to_tensor(loaded.rgb)[:, 0, -1].tolist() == [1.0, 1.0, 1.0]
    # written back at 8 bits, as grayscale
    again = reopen(save_photo(loaded.rgb, loaded, tmp_path / "out.png"))
    assert again.mode == "L" and np.asarray(again)[0].tolist() == [0, 0, 1, 1, 1, 128, 255]


def test_palette_transparency_is_kept_as_alpha(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 250, 20, 30] + [0] * 762)
    image.putpixel((1, 0), 1)
    src = tmp_path / "trns.png"
    image.save(src, transparency=0)
    loaded = load_photo(src)
    assert loaded.alpha.tolist() == [[0, 255]]
    again = reopen(save_photo(loaded.rgb, loaded, tmp_path / "out.png"))
    assert again.mode == "RGBA" and np.asarray(again)[..., 3].tolist() == [[0, 255]]


def test_rgba_alpha_preserved_on_png_save(tmp_path):
    rgba = np.dstack([smooth_rgb(), np.linspace(0, 255, 24 * 32).reshape(24, 32).astype(np.uint8)])
    src = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(src)
    loaded = load_photo(src)
    cloaked = loaded.rgb.copy()
    cloaked[::2] ^= 1  # stands in for a cloak
    again = reopen(save_photo(cloaked, loaded, tmp_path / "out.png"))
    assert again.mode == "RGBA"
    assert np.array_equal(np.asarray(again)[..., 3], rgba[..., 3])
    assert np.array_equal(np.asarray(again)[..., :3], cloaked)


def test_grayscale_original_written_as_grayscale(tmp_path):
    src = tmp_path / "gray.jpg"
    Image.fromarray(smooth_rgb()[..., 0]).save(src, quality=95)
    loaded = load_photo(src)
    assert loaded.is_grayscale and loaded.rgb.shape == (24, 32, 3)
    assert reopen(save_photo(loaded.rgb, loaded, tmp_path / "out.jpg")).mode == "L"


def test_cmyk_icc_profile_handling(tmp_path, monkeypatch):
    from PIL import ImageCms

    # No CMYK profile is at hand: an sRGB profile cannot convert CMYK, so this
    # photo falls back to Pillow's formula and its copy carries no CMYK profile.
    image, rgb, _ = _mode_image("CMYK")
    src = tmp_path / "cmyk.jpg"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(src, quality=100, icc_profile=srgb)
    loaded = load_photo(src)
    assert np.abs(loaded.rgb.astype(int) - rgb.astype(int)).max() <= 3
    assert loaded.icc_profile is None
    again = reopen(save_photo(loaded.rgb, loaded, tmp_path / "out.jpg"))
    assert again.mode == "RGB" and "icc_profile" not in again.info

    # With a usable profile the pixels go through it and the copy is tagged sRGB.
    converted = []

    def fake_profile_to_profile(im, *args, **kwargs):
        converted.append(im.mode)
        return im.convert("RGB")

    monkeypatch.setattr(ImageCms, "profileToProfile", fake_profile_to_profile)
    loaded = load_photo(src)
    assert converted == ["CMYK"] and loaded.icc_profile[16:20] == b"RGB "
    again = reopen(save_photo(loaded.rgb, loaded, tmp_path / "out2.jpg"))
    assert again.info["icc_profile"] == loaded.icc_profile


# --------------------------------------------------------------------------- metadata


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'


def _jpeg_with_gps(path: Path, orientation: int | None = None) -> None:
    Image.fromarray(smooth_rgb()).save(path, exif=gps_exif(orientation), quality=95, comment=b"secret comment", xmp=XMP)


def test_gps_stripped_by_default_and_kept_on_request(tmp_path):
    src = tmp_path / "gps.jpg"
    _jpeg_with_gps(src)
    assert reopen(src).getexif().get_ifd(GPS)
    loaded = load_photo(src)
    assert loaded.metadata.has_gps

    stripped = reopen(save_photo(loaded.rgb, loaded, tmp_path / "strip.jpg"))
    assert not stripped.getexif().get_ifd(GPS)
    for key in ("exif", "comment", "xmp"):
        assert key not in stripped.info
    assert not load_photo(tmp_path / "strip.jpg").metadata.has_gps

    kept = reopen(save_photo(loaded.rgb, loaded, tmp_path / "keep.jpg", metadata="keep"))
    gps = kept.getexif().get_ifd(GPS)
    assert gps[ExifTags.GPS.GPSLatitudeRef] == "N"
    assert [float(v) for v in gps[ExifTags.GPS.GPSLatitude]] == [52.0, 31.0, 12.0]
    assert kept.getexif()[ExifTags.Base.Make] == "TestCam"
    assert kept.getexif()[ORIENTATION] == 1
    assert kept.info["comment"] == b"secret comment"
    assert kept.info["xmp"] == XMP


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".webp", "WEBP"), (".tif", "TIFF")])
def test_gps_policy_in_other_formats(tmp_path, suffix, fmt):
    src = tmp_path / f"gps{suffix}"
    Image.fromarray(smooth_rgb()).save(src, format=fmt, exif=gps_exif().tobytes())
    loaded = load_photo(src)
    assert loaded.metadata.has_gps
    stripped = load_photo(save_photo(loaded.rgb, loaded, tmp_path / f"strip{suffix}"))
    assert not stripped.metadata.has_gps
    kept = reopen(save_photo(loaded.rgb, loaded, tmp_path / f"keep{suffix}", metadata="keep"))
    assert kept.getexif().get_ifd(GPS)[ExifTags.GPS.GPSLongitudeRef] == "E"


def test_png_text_stripped_by_default_and_kept_on_request(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken at home")
    src = tmp_path / "text.png"
    Image.fromarray(smooth_rgb()).save(src, pnginfo=info)
    loaded = load_photo(src)
    assert "Comment" not in reopen(save_photo(loaded.rgb, loaded, tmp_path / "a.png")).info
    kept = reopen(save_photo(loaded.rgb, loaded, tmp_path / "b.png", metadata="keep"))
    assert kept.info["Comment"] == "taken at home"


def test_icc_profile_kept_when_stripping(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "icc.jpg"
    Image.fromarray(smooth_rgb()).save(src, icc_profile=icc, exif=gps_exif())
    loaded = load_photo(src)
    assert reopen(save_photo(loaded.rgb, loaded, tmp_path / "out.jpg")).info["icc_profile"] == icc


# --------------------------------------------------------------------------- copies without a cloak


def test_copy_unchanged_strips_jpeg_losslessly(tmp_path):
    src = tmp_path / "noface.jpg"
    _jpeg_with_gps(src, orientation=6)
    loaded = load_photo(src)

    dest = copy_unchanged(loaded, tmp_path / "out" / "noface.jpg")
    copied = reopen(dest)
    assert not copied.getexif().get_ifd(GPS) and "comment" not in copied.info
    assert copied.getexif()[ORIENTATION] == 6  # still displays upright
    assert b"TestCam" not in dest.read_bytes()
    again = load_photo(dest)
    assert np.array_equal(again.rgb, loaded.rgb)  # not re-encoded

    kept = copy_unchanged(loaded, tmp_path / "out" / "kept.jpg", metadata="keep")
    assert kept.read_bytes() == src.read_bytes()


def test_copy_unchanged_png_and_tiff(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken at home")
    png = tmp_path / "a.png"
    Image.fromarray(smooth_rgb()).save(png, pnginfo=info, exif=gps_exif())
    loaded = load_photo(png)
    out = copy_unchanged(loaded, tmp_path / "out" / "a.png")
    assert "Comment" not in reopen(out).info and not load_photo(out).metadata.exif
    assert np.array_equal(load_photo(out).rgb, loaded.rgb)

    tif = tmp_path / "b.tif"
    Image.fromarray(smooth_rgb()).save(tif, exif=gps_exif().tobytes())
    loaded = load_photo(tif)
    out = copy_unchanged(loaded, tmp_path / "out" / "b.tif")
    assert not load_photo(out).metadata.has_gps
    assert np.array_equal(load_photo(out).rgb, loaded.rgb)


def test_copy_unchanged_strips_webp_losslessly(tmp_path):
    src = tmp_path / "noface.webp"
    Image.fromarray(smooth_rgb()).save(src, exif=gps_exif().tobytes(), xmp=XMP, quality=80)
    loaded = load_photo(src)
    dest = copy_unchanged(loaded, tmp_path / "out" / "noface.webp")
    copied = reopen(dest)
    assert "exif" not in copied.info and "xmp" not in copied.info
    assert np.array_equal(load_photo(dest).rgb, loaded.rgb)  # lossy data not re-encoded
    assert dest.stat().st_size < src.stat().st_size


# --------------------------------------------------------------------------- bad input


def test_decompression_bomb_refused(tmp_path):
    src = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(src)
    with pytest.raises(PhotoTooLargeError) as info:
        load_photo(src, max_pixels=100)
    message = str(info.value)
    assert str(src) in message and "20x20" in message and "100" in message and "max_pixels" in message
    assert isinstance(info.value, CloakIOError) and info.value.pixels == 400
    assert load_photo(src, max_pixels=400).size == (20, 20)
    assert load_photo(src, max_pixels=None).size == (20, 20)
    assert MAX_PIXELS == 100_000_000


def test_pixel_limit_independent_of_pillows(tmp_path, monkeypatch):
    src = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(src)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above 200
    assert load_photo(src, max_pixels=1000).size == (20, 20)  # ours is higher: Pillow's lifted
    assert Image.MAX_IMAGE_PIXELS == 100  # and restored
    with pytest.raises(PhotoTooLargeError, match="20x20"):
        load_photo(src, max_pixels=150)  # Pillow's error fires first, reported as ours


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(smooth_rgb(64, 64)).save(buffer, format="JPEG")
    src = tmp_path / "truncated.jpg"
    src.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UnreadablePhotoError) as info:
        load_photo(src)
    assert str(src) in str(info.value) and isinstance(info.value, CloakIOError)


def test_non_image_with_jpg_name_is_a_clear_error(tmp_path):
    src = tmp_path / "notes.jpg"
    src.write_text("not a photo")
    with pytest.raises(CloakIOError, match=r"notes\.jpg"):
        load_photo(src)
    with pytest.raises(CloakIOError, match=r"missing\.jpg"):
        load_photo(tmp_path / "missing.jpg")


# --------------------------------------------------------------------------- output location


def test_output_dir_default_and_refusals(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "me.jpg").write_bytes(b"")
    assert resolve_output_dir(photos) == (tmp_path / "photos_cloaked").resolve()
    assert resolve_output_dir(photos / "me.jpg") == (tmp_path / "photos_cloaked").resolve()
    assert resolve_output_dir(photos, tmp_path / "elsewhere") == (tmp_path / "elsewhere").resolve()

    for bad in (photos, photos / "sub", photos / "new" / "deeper", tmp_path, photos / "."):
        with pytest.raises(OutputLocationError):
            resolve_output_dir(photos, bad)
    with pytest.raises(OutputLocationError):
        resolve_output_dir(photos / "me.jpg", photos)  # copies would land on the originals
    with pytest.raises(OutputLocationError):
        resolve_output_dir(photos, photos / "me.jpg")  # a file
    with pytest.raises(CloakIOError):
        resolve_output_dir(tmp_path / "nope")

    assert destination_for(photos / "sub" / "a.png", photos, tmp_path / "out") == tmp_path / "out" / "sub" / "a.png"
    assert destination_for(photos / "me.jpg", photos / "me.jpg", tmp_path / "out") == tmp_path / "out" / "me.jpg"


def test_save_never_writes_over_the_original(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(smooth_rgb()).save(src)
    loaded = load_photo(src)
    before = src.read_bytes()
    with pytest.raises(OutputLocationError):
        save_photo(loaded.rgb, loaded, src, overwrite=True)
    with pytest.raises(OutputLocationError):
        copy_unchanged(loaded, src, overwrite=True)
    assert src.read_bytes() == before


# --------------------------------------------------------------------------- safe writing


def test_no_overwrite_without_permission(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(smooth_rgb()).save(src)
    loaded = load_photo(src)
    dest = tmp_path / "out" / "in.png"
    save_photo(loaded.rgb, loaded, dest)
    first = dest.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_photo(np.zeros_like(loaded.rgb), loaded, dest)
    with pytest.raises(FileExistsError):
        copy_unchanged(loaded, dest)
    assert dest.read_bytes() == first
    save_photo(np.zeros_like(loaded.rgb), loaded, dest, overwrite=True)
    assert np.asarray(reopen(dest)).max() == 0
    assert sorted(p.name for p in dest.parent.iterdir()) == ["in.png"]


def test_failed_encode_leaves_nothing_behind(tmp_path, monkeypatch):
    src = tmp_path / "in.jpg"
    Image.fromarray(smooth_rgb()).save(src)
    loaded = load_photo(src)
    out = tmp_path / "out"
    existing = out / "existing.jpg"
    save_photo(loaded.rgb, loaded, existing)
    before = existing.read_bytes()

    real_save = Image.Image.save

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\xff\xd8 half a photo")  # the encoder had started writing
        raise OSError("disk on fire")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk on fire"):
        save_photo(loaded.rgb, loaded, out / "new.jpg")
    with pytest.raises(OSError, match="disk on fire"):
        save_photo(loaded.rgb, loaded, existing, overwrite=True)
    monkeypatch.setattr(Image.Image, "save", real_save)

    assert sorted(p.name for p in out.iterdir()) == ["existing.jpg"]  # no temp, no partial
    assert existing.read_bytes() == before


def test_write_png_and_bytes(tmp_path):
    from cloak.photos import write_bytes, write_png

    preview = smooth_rgb()
    dest = write_png(preview, tmp_path / "previews" / "a.png")
    assert np.array_equal(np.asarray(reopen(dest)), preview)
    with pytest.raises(FileExistsError):
        write_png(preview, dest)
    write_png(preview[..., 0], dest, overwrite=True)
    assert reopen(dest).mode == "L"
    report = write_bytes(b"{}", tmp_path / "report.json")
    assert report.read_bytes() == b"{}"
    write_bytes(b"[]", report, overwrite=True)
    assert report.read_bytes() == b"[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previews", "report.json"]


# --------------------------------------------------------------------------- listing


def test_find_photos_recurses_and_skips(tmp_path):
    root = tmp_path / "photos"
    for name in ("a.jpg", "b.PNG", "sub/c.jpeg", "sub/deeper/d.TIFF", "e.webp", "f.bmp", "g.tif"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    for name in ("notes.txt", "sub/raw.cr2", "noext"):
        (root / name).write_bytes(b"x")
    for name in (".hidden.jpg", ".thumbs/h.jpg", "sub/.cache/i.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "out" / "x.jpg").parent.mkdir()
    (root / "out" / "x.jpg").write_bytes(b"x")

    listing = find_photos(root, output_dir=root / "out")
    assert [p.relative_to(root).as_posix() for p in listing.photos] == [
        "a.jpg",
        "b.PNG",
        "e.webp",
        "f.bmp",
        "g.tif",
        "sub/c.jpeg",
        "sub/deeper/d.TIFF",
    ]
    assert [p.relative_to(root).as_posix() for p in listing.skipped] == [
        "noext",
        "notes.txt",
        "sub/raw.cr2",
    ]
    assert "out/x.jpg" in [p.relative_to(root).as_posix() for p in find_photos(root).photos]
    assert find_photos(root / "a.jpg").photos == [root / "a.jpg"]
    with pytest.raises(CloakIOError):
        find_photos(tmp_path / "missing")


# --------------------------------------------------------------------------- tensors


def test_tensor_conversions_round_trip_and_round():
    rgb = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    tensor = to_tensor(rgb)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    assert np.array_equal(to_uint8(tensor), rgb)
    assert np.array_equal(to_uint8(tensor[None]), rgb)

    values = torch.tensor([-0.5, 0.0, 0.49 / 255, 0.51 / 255, 1.5 / 255, 254.5 / 255, 1.0, 2.0, float("nan")])
    out = to_uint8(values.view(1, 1, -1).expand(3, 1, -1))
    assert out[0, :, 0].tolist() == [0, 0, 0, 1, 2, 255, 255, 255, 0]
    with pytest.raises(ValueError):
        to_tensor(rgb.astype(np.float32))
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(4, 2, 2))
