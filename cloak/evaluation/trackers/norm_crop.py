"""InsightFace's ``norm_crop``: five landmarks onto the ArcFace 112x112 template, as today's trackers align faces.

A similarity transform fitted to the template by least squares (Umeyama, as
scikit-image's ``SimilarityTransform`` estimates it), then ``cv2.warpAffine``:
the recipe of InsightFace's recognizers and of EdgeFace's own ``face_alignment``.
It is written here once for the native trackers that use it; the cloak aligns
faces with its own differentiable warp (:mod:`cloak.alignment`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ARCFACE_112", "norm_crop"]

#: InsightFace's 112x112 five-point template (the subject's right eye, left eye, nose, right
#: and left mouth corner), as its ``norm_crop`` warps faces onto it.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def norm_crop(photo: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """The 112x112 crop of ``photo`` (``[H, W, 3]``) with ``points`` (``[5, 2]``) warped onto :data:`ARCFACE_112`.

    Returns ``None`` when no similarity transform fits the points (they coincide).
    Needs ``cv2`` and scikit-image.
    """
    import cv2
    from skimage.transform import SimilarityTransform

    points = np.asarray(points, np.float64).reshape(5, 2)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        transform = SimilarityTransform.from_estimate(points, ARCFACE_112)
        if not transform:
            return None
    else:
        transform = SimilarityTransform()
        if not transform.estimate(points, ARCFACE_112):
            return None
    return cv2.warpAffine(np.ascontiguousarray(photo), transform.params[:2], (112, 112), borderValue=0.0)
