"""Face detection on photos of every size: large photos are searched on a shrunk copy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cloak.detection import Face, FaceDetector


@pytest.fixture(scope="module")
def detectors() -> dict[str, FaceDetector]:
    """One detector that searches every photo at full size, one that shrinks photos above 512 px."""
    full = FaceDetector(device="cpu", max_side=None)
    shrinking = FaceDetector(device="cpu", max_side=512)
    return {"full": full, "shrinking": shrinking}


def _upscaled(photo: np.ndarray, factor: int) -> np.ndarray:
    h, w = photo.shape[:2]
    return np.asarray(Image.fromarray(photo).resize((w * factor, h * factor), Image.Resampling.BICUBIC))


def test_scaled_face_maps_pixel_centres():
    face = Face(box=np.array([9.5, 19.5, 29.5, 39.5]), score=0.99, landmarks=np.array([[9.5, 19.5]] * 5))
    big = face.scaled(2.0, 3.0)
    # The edge between pixels 9 and 10 is the edge between pixels 19 and 20 of a 2x copy, 29 and 30 of a 3x one.
    np.testing.assert_allclose(big.box, [19.5, 59.5, 59.5, 119.5])
    np.testing.assert_allclose(big.landmarks[0], [19.5, 59.5])
    np.testing.assert_allclose(big.scaled(0.5, 1 / 3).box, face.box)


def test_photos_up_to_max_side_are_searched_as_they_are(detectors, astronaut):
    assert detectors["shrinking"].search_copy(astronaut) is astronaut
    copy = detectors["shrinking"].search_copy(_upscaled(astronaut, 2))
    assert copy.shape == (512, 512, 3)


def test_big_photo_finds_the_same_faces_as_at_full_size(detectors, astronaut):
    """On a 3x photo, the shrunk search finds the full-size search's face, within a few pixels of the copy.

    MTCNN's own jitter between scales sets the tolerance: searched on the original
    photo and scaled up 3x, the astronaut's landmarks move 4.6 px and the box's top 9 px
    from those of the full-size search; box edges are MTCNN's least stable output.
    """
    factor = 3
    big = _upscaled(astronaut, factor)
    [full] = detectors["full"].detect(big)
    [shrunk] = detectors["shrinking"].detect(big)
    np.testing.assert_allclose(shrunk.landmarks, full.landmarks, atol=2.5 * factor)
    np.testing.assert_allclose(shrunk.box, full.box, atol=5 * factor)
    # And on the original photo: the same face, in its own pixels.
    [small] = detectors["full"].detect(astronaut)
    np.testing.assert_allclose(shrunk.scaled(1 / factor, 1 / factor).landmarks, small.landmarks, atol=2.5)


def test_min_face_size_counts_in_the_photos_own_pixels(astronaut):
    """On a photo searched at half size, a face is kept by its size in the photo, not in the copy."""
    big = _upscaled(astronaut, 2)
    [face] = FaceDetector(device="cpu", max_side=512).detect(big)
    # Larger than the face in the half-size copy, smaller than the face in the photo: kept.
    between = int(0.75 * face.size)
    assert len(FaceDetector(device="cpu", max_side=512, min_face_size=between).detect(big)) == 1
    too_big = int(face.size) + 20
    assert FaceDetector(device="cpu", max_side=512, min_face_size=too_big).detect(big) == []


def test_max_side_must_leave_room_to_search():
    with pytest.raises(ValueError, match="max_side"):
        FaceDetector(device="cpu", max_side=20)
