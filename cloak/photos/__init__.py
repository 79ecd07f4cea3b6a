"""The photo file layer: find users' photos, load them faithfully, write cloaked copies safely.

``python -m cloak photos/`` writes cloaked copies to ``photos_cloaked/`` with the
same relative paths, names and formats. This package is everything that touches
the files; the cloaking and the command line live elsewhere. A typical run::

    out_dir = resolve_output_dir(input_dir, output_dir)
    listing = find_photos(input_dir, output_dir=out_dir)
    for photo in listing.photos:
        loaded = load_photo(photo)                    # CloakIOError: skip and report
        dest = destination_for(photo, input_dir, out_dir)
        cloaked = cloak(to_tensor(loaded.rgb))        # [3, H, W] float in [0, 1]
        save_photo(to_uint8(cloaked), loaded, dest)   # or copy_unchanged(loaded, dest)

Decisions, in one place:

* **Pixels.** :func:`load_photo` returns upright (EXIF orientation applied with
  :func:`PIL.ImageOps.exif_transpose`) 8-bit RGB, whatever the file's mode.
  16-bit data (``I;16*``, ``I``) is scaled by 255/65535 with rounding, never
  clipped at 255; float data (``F``) in ``[0, 1]`` is scaled by 255, otherwise it
  is read on Pillow's 0-255 scale. CMYK is converted to sRGB through the file's
  own ICC profile when it has one (the copy then carries an sRGB profile),
  otherwise with Pillow's plain formula.
* **Formats.** A copy is written in the format of the original's *content*
  (JPEG, PNG, WEBP, TIFF, BMP, HEIC/HEIF or AVIF; an MPO is written as a plain
  JPEG holding its first picture). JPEG is re-encoded at quality 95 without
  chroma subsampling (4:4:4) by default, keeping progressive encoding; PNG, BMP
  and lossless WEBP are lossless; lossy WEBP uses quality 95; TIFF keeps a
  lossless compression (LZW, Deflate, PackBits, none) and turns a lossy one into
  LZW. Phone photos: HEIC/HEIF (read and written with pillow-heif) and AVIF
  (Pillow's own plugin) are re-encoded at quality 95 with 4:4:4 chroma, at full
  resolution; their embedded thumbnails, depth maps and other auxiliary images
  are not carried over.
* **Bit depth and mode.** Copies are 8 bits per channel: a 16-bit or float
  original is written at 8 bits. Grayscale originals (``1``, ``L``, ``LA``,
  ``I;16*``, ``I``, ``F``) are written as grayscale (``L``/``LA``), so the colour
  part of the cloak is lost for them; everything else, palette images included
  (re-quantising would destroy the cloak), is written as RGB. Alpha is
  re-attached for every format that can store it (all but JPEG).
* **Multi-frame files.** Only the first frame of an animated WEBP or PNG or a
  multi-page TIFF is read and written (a warning is logged).
* **Metadata.** ``metadata="strip"`` (the default) writes no EXIF (GPS
  included), XMP, comments or PNG text; it keeps only what rendering needs:
  the ICC profile and the resolution (dpi). ``metadata="keep"`` means keep:
  EXIF *including GPS*, XMP, the JPEG comment and PNG text chunks are carried
  over, with the EXIF orientation reset to 1 because the pixels are written
  upright. Never carried, in either mode: embedded thumbnails and previews
  (EXIF IFD1, JFIF thumbnails, Photoshop/IPTC blocks, HEIF thumbnail items),
  which would show the uncloaked face.
* **Photos without a face.** :func:`copy_unchanged` copies them with the same
  metadata policy: stripped by default (losslessly for JPEG, PNG and WEBP, by
  removing the metadata blocks), byte for byte with ``metadata="keep"``.
* **Output folder.** :func:`resolve_output_dir` defaults to ``<input>_cloaked``
  beside the input folder (for a single photo: beside the photo's folder) and
  refuses an output that is, contains or lies inside the input.
* **Writing.** Every write goes to a hidden temporary file in the destination
  folder, is flushed and fsynced, then moved into place (``os.replace``, or a
  hard link that cannot clobber a file when not overwriting); an error or
  interruption leaves neither a half-written photo nor a temporary file. An
  existing destination is never replaced unless ``overwrite=True``, and the
  original photo is never replaced at all. Missing folders are created.
* **Limits.** Photos above :data:`MAX_PIXELS` (100 megapixels by default) are
  refused before decoding, as a guard against decompression bombs.

One module per concern: :mod:`~cloak.photos.listing` (which files, where the
copies go), :mod:`~cloak.photos.decoding` (reading), :mod:`~cloak.photos.metadata`
(what is kept), :mod:`~cloak.photos.pixels` (arrays and tensors),
:mod:`~cloak.photos.encoding` (writing copies), :mod:`~cloak.photos.atomic`
(safe writes), :mod:`~cloak.photos.stripping` (lossless metadata removal) and
:mod:`~cloak.photos.errors`.
"""

from cloak.photos.atomic import write_bytes
from cloak.photos.decoding import MAX_PIXELS, LoadedPhoto, load_photo
from cloak.photos.encoding import (
    AVIF_QUALITY,
    HEIF_QUALITY,
    JPEG_QUALITY,
    WEBP_QUALITY,
    check_save_options,
    copy_unchanged,
    save_photo,
    write_png,
)
from cloak.photos.errors import CloakIOError, OutputLocationError, PhotoTooLargeError, UnreadablePhotoError
from cloak.photos.listing import (
    OUTPUT_SUFFIX,
    PHOTO_EXTENSIONS,
    PhotoListing,
    destination_for,
    find_photos,
    is_photo_path,
    resolve_output_dir,
)
from cloak.photos.metadata import MetadataPolicy, PhotoMetadata
from cloak.photos.pixels import to_tensor, to_uint8

__all__ = [
    "AVIF_QUALITY",
    "HEIF_QUALITY",
    "JPEG_QUALITY",
    "MAX_PIXELS",
    "OUTPUT_SUFFIX",
    "PHOTO_EXTENSIONS",
    "WEBP_QUALITY",
    "CloakIOError",
    "LoadedPhoto",
    "MetadataPolicy",
    "OutputLocationError",
    "PhotoListing",
    "PhotoMetadata",
    "PhotoTooLargeError",
    "UnreadablePhotoError",
    "check_save_options",
    "copy_unchanged",
    "destination_for",
    "find_photos",
    "is_photo_path",
    "load_photo",
    "resolve_output_dir",
    "save_photo",
    "to_tensor",
    "to_uint8",
    "write_bytes",
    "write_png",
]
