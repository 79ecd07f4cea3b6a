"""Phone photos: HEIC/HEIF (pillow-heif) and AVIF (Pillow) are read upright and written back in kind."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms

from cloak.photos import UnreadablePhotoError, copy_unchanged, decoding, find_photos, load_photo, save_photo
from cloak.photos.decoding import enable_heif

GPS = ExifTags.IFD.GPSInfo
ORIENTATION = ExifTags.Base.Orientation
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'


def _encode_problem(fmt: str) -> str | None:
    """Why this machine cannot write ``fmt`` (a skip reason), or ``None`` when it can."""
    if fmt == "HEIF" and not enable_heif():
        return "pillow-heif is not installed, so HEIC/HEIF cannot be written here"
    try:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(io.BytesIO(), format=fmt)
    except Exception as exc:  # KeyError (no plugin), OSError (no encoder), ...
        return f"this machine cannot encode {fmt} ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(params=[(".heic", "HEIF"), (".HEIF", "HEIF"), (".avif", "AVIF")], ids=["heic", "HEIF", "avif"])
def phone_format(request) -> tuple[str, str]:
    """A phone photo suffix and its Pillow format; skips when the format cannot be encoded here."""
    suffix, fmt = request.param
    problem = _encode_problem(fmt)
    if problem:
        pytest.skip(problem)
    return suffix, fmt


def smooth_rgb(height: int = 25, width: int = 33, seed: int = 0) -> np.ndarray:
    """A smooth colour image with a little noise, odd-sized (encoders pad to even sizes)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height) + 60], axis=2)
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


def gps_exif(orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneCam"
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif[GPS] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.0),
        ExifTags.GPS.GPSLongitudeRef: "E",
        ExifTags.GPS.GPSLongitude: (13.0, 24.0, 36.0),
    }
    return exif.tobytes()


@functools.cache
def srgb_icc() -> bytes:
    """An sRGB ICC profile, made once (its header holds the time it was made)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def reopen(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def test_phone_photos_are_listed(tmp_path):
    for name in ("a.heic", "b.HEIC", "c.heif", "d.avif", "e.AVIF", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    listing = find_photos(tmp_path)
    assert [p.name for p in listing.photos] == ["a.heic", "b.HEIC", "c.heif", "d.avif", "e.AVIF"]
    assert [p.name for p in listing.skipped] == ["notes.txt"]


def test_orientation_is_honoured_on_read(tmp_path, phone_format):
    suffix, fmt = phone_format
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    src = tmp_path / f"rotated{suffix}"
    Image.fromarray(stored).save(src, format=fmt, exif=gps_exif(orientation=6))  # display turned 90 degrees clockwise

    loaded = load_photo(src)
    assert loaded.format == fmt and loaded.orientation == 6
    assert loaded.size == (20, 40)  # upright: 20 wide, 40 high
    assert loaded.rgb[5, 10, 0] > 200 and loaded.rgb[5, 10, 2] < 60  # red on top now
    assert loaded.rgb[35, 10, 2] > 200 and loaded.rgb[35, 10, 0] < 60  # blue below

    copy = load_photo(save_photo(loaded.rgb, loaded, tmp_path / f"copy{suffix}", metadata="keep"))
    assert copy.size == (20, 40) and copy.orientation == 1  # written upright, orientation reset
    assert copy.rgb[5, 10, 0] > 200 and copy.rgb[35, 10, 2] > 200


def test_copy_keeps_format_resolution_and_pixels(tmp_path, phone_format):
    suffix, fmt = phone_format
    src = tmp_path / f"in{suffix}"
    Image.fromarray(smooth_rgb()).save(src, format=fmt, quality=90)
    loaded = load_photo(src)
    assert loaded.format == fmt and loaded.size == (33, 25) and loaded.rgb.shape == (25, 33, 3)

    dest = save_photo(loaded.rgb, loaded, tmp_path / "out" / f"out{suffix}")
    again = reopen(dest)
    assert again.format == fmt and again.size == (33, 25)
    diff = np.abs(np.asarray(again.convert("RGB")).astype(int) - loaded.rgb.astype(int))
    assert diff.mean() < 2.0, "the copy is not written at a high quality"
    if fmt == "HEIF":
        assert again.info["chroma"] == 444, "HEIC copies must keep full chroma resolution"


def test_gps_stripped_by_default_and_kept_on_request(tmp_path, phone_format):
    suffix, fmt = phone_format
    src = tmp_path / f"gps{suffix}"
    Image.fromarray(smooth_rgb()).save(src, format=fmt, exif=gps_exif(), xmp=XMP, icc_profile=srgb_icc())
    loaded = load_photo(src)
    assert loaded.metadata.has_gps and loaded.metadata.xmp and loaded.icc_profile == srgb_icc()

    stripped = reopen(save_photo(loaded.rgb, loaded, tmp_path / f"strip{suffix}"))
    assert stripped.format == fmt
    assert not stripped.getexif().get_ifd(GPS) and ExifTags.Base.Make not in stripped.getexif()
    assert not stripped.info.get("xmp")
    assert stripped.info["icc_profile"] == srgb_icc(), "the colour profile must be kept"
    assert not load_photo(tmp_path / f"strip{suffix}").metadata.has_gps

    kept = reopen(save_photo(loaded.rgb, loaded, tmp_path / f"keep{suffix}", metadata="keep"))
    gps = kept.getexif().get_ifd(GPS)
    assert gps[ExifTags.GPS.GPSLatitudeRef] == "N"
    assert [float(v) for v in gps[ExifTags.GPS.GPSLatitude]] == [52.0, 31.0, 12.0]
    assert kept.getexif()[ExifTags.Base.Make] == "PhoneCam"
    assert kept.info["xmp"].rstrip(b"\x00") == XMP
    assert kept.info["icc_profile"] == srgb_icc()


def test_photo_without_face_is_copied_stripped(tmp_path, phone_format):
    suffix, fmt = phone_format
    src = tmp_path / f"wall{suffix}"
    Image.fromarray(smooth_rgb()).save(src, format=fmt, exif=gps_exif())
    loaded = load_photo(src)
    stripped = load_photo(copy_unchanged(loaded, tmp_path / "out" / f"wall{suffix}"))
    assert stripped.format == fmt and stripped.size == loaded.size and not stripped.metadata.has_gps
    kept = copy_unchanged(loaded, tmp_path / "keep" / f"wall{suffix}", metadata="keep")
    assert kept.read_bytes() == src.read_bytes()


def test_heif_thumbnails_are_dropped_and_colour_description_kept(tmp_path):
    problem = _encode_problem("HEIF")
    if problem:
        pytest.skip(problem)
    src = tmp_path / "p3.heic"
    # An uncloaked thumbnail inside the file, and Display P3 primaries (nclx colour_primaries 12).
    Image.fromarray(smooth_rgb(64, 64)).save(
        src, format="HEIF", thumbnails=[16], color_primaries=12, transfer_characteristics=13
    )
    assert reopen(src).info["thumbnails"]
    loaded = load_photo(src)
    assert loaded.nclx_profile["color_primaries"] == 12

    for metadata in ("strip", "keep"):
        copy = reopen(save_photo(loaded.rgb, loaded, tmp_path / f"{metadata}.heic", metadata=metadata))
        assert not copy.info["thumbnails"], "a thumbnail would show the uncloaked face"
        assert copy.info["nclx_profile"]["color_primaries"] == 12


def test_cloak_run_picks_up_a_heic_photo(tmp_path, astronaut):
    problem = _encode_problem("HEIF")
    if problem:
        pytest.skip(problem)
    from cloak.config import load_config
    from cloak.run import run

    photos = tmp_path / "phone"
    photos.mkdir()
    face = Image.fromarray(astronaut).resize((256, 256))
    face.save(photos / "me.heic", format="HEIF", exif=gps_exif(), quality=90)
    (photos / "notes.txt").write_text("not a photo")

    assert run(load_config(["strength.steps=2", "device=cpu", f"input={photos}"])) == 0
    out = tmp_path / "phone_cloaked"
    copy = reopen(out / "me.heic")
    assert copy.format == "HEIF" and copy.size == (256, 256)
    assert not copy.getexif().get_ifd(GPS), "GPS leaked into the cloaked HEIC"
    report = json.loads((out / "report.json").read_text())["photos"]
    assert report["me.heic"]["status"] == "cloaked" and len(report["me.heic"]["faces"]) == 1
    original = load_photo(photos / "me.heic").rgb.astype(int)
    assert np.abs(np.asarray(copy.convert("RGB")).astype(int) - original).max() > 0


def test_unreadable_avif_says_what_to_install(tmp_path, monkeypatch):
    src = tmp_path / "phone.avif"
    src.write_bytes(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 40)  # a header and no image
    monkeypatch.setattr(decoding.features, "check", lambda feature: False)  # a Pillow without AVIF
    with pytest.raises(UnreadablePhotoError, match=r"phone\.avif.*AVIF needs Pillow 11\.3"):
        load_photo(src)
