"""Pixels in and out of the cloak: real platform codecs (PIL JPEG, WebP, resizing, blur),
the windows big photos are cut into, and side-by-side previews."""
