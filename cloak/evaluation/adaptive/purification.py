"""Purification: what a tracker that suspects cloaks does to every photo before embedding it.

FaceCure (Radiya-Dixit et al., ICLR 2022) tried removing cloaks with image
filters; each filter here has a *ladder* of settings, gentlest first:

=============  ==============================================  ===================================
purifier       operation                                       levels (gentlest first)
=============  ==============================================  ===================================
``jpeg_blur``  JPEG (PIL, 4:2:0) then Gaussian blur            q75 r0.5, q50 r1 (``purify``), q30 r1.5, q20 r2
``downscale``  shrink (Lanczos), upsample back (bicubic)       0.75, 0.5, 0.35, 0.25
``median``     median filter (OpenCV), kernel size             3, 5, 7, 9
``bilateral``  bilateral filter (OpenCV), colour sigma         25, 50, 75, 100 (space sigma 3)
``nlm``        non-local means (OpenCV), strength ``h``        3, 6, 10, 15
=============  ==============================================  ===================================

A stronger filter removes more of a cloak but also more of the face, so the
tracker uses, per purifier, the strongest level whose clean recognition
accuracy stays within a tolerance (2 points by default) of the unfiltered one:
:func:`calibrate` picks it from a clean-accuracy function, such as
:func:`clean_accuracy` (leave-one-out nearest neighbour with the protocol's own
classifier). Every purifier is a
:data:`~cloak.imaging.platform.PlatformTransform` (RGB PIL image in, RGB
PIL image of the same size out), so :func:`~cloak.imaging.platform.apply_transform`
runs it on arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
from PIL import Image

from cloak.evaluation.protocol.scoring import Embedded, Labels, fit_predict
from cloak.imaging.platform import PlatformTransform, downscale, gaussian_blur, jpeg

log = logging.getLogger(__name__)


def _rgb_array(img: Image.Image) -> np.ndarray:
    if not isinstance(img, Image.Image):
        raise TypeError(f"purifiers take PIL images, got {type(img).__name__}; use Image.fromarray")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def jpeg_blur(img: Image.Image, quality: int = 50, radius: float = 1.0) -> Image.Image:
    """JPEG at ``quality``, then Gaussian blur of ``radius`` pixels (``platform.purify`` at its defaults)."""
    return gaussian_blur(jpeg(img, quality), radius)


def median(img: Image.Image, size: int = 5) -> Image.Image:
    """Median filter over a ``size`` x ``size`` window (odd, >= 3), each channel.

    Raises:
        ValueError: if ``size`` is not an odd integer >= 3.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"median filter size must be an odd integer >= 3, got {size}")
    return Image.fromarray(cv2.medianBlur(_rgb_array(img), int(size)))


def bilateral(img: Image.Image, sigma_color: float = 50.0, sigma_space: float = 3.0) -> Image.Image:
    """Bilateral filter: smooths differences below about ``sigma_color`` (0-255 units), keeps edges.

    Raises:
        ValueError: if a sigma is not positive.
    """
    if sigma_color <= 0 or sigma_space <= 0:
        raise ValueError(f"bilateral sigmas must be > 0, got {sigma_color} and {sigma_space}")
    return Image.fromarray(cv2.bilateralFilter(_rgb_array(img), 0, float(sigma_color), float(sigma_space)))


def non_local_means(img: Image.Image, h: float = 6.0) -> Image.Image:
    """OpenCV's non-local-means denoising of colour photos (7x7 patches, 11x11 search) with strength ``h``.

    Raises:
        ValueError: if ``h`` is not positive.
    """
    if h <= 0:
        raise ValueError(f"non-local-means strength h must be > 0, got {h}")
    rgb = _rgb_array(img)
    # OpenCV denoises in its own luma/chroma space; it expects BGR.
    out = cv2.fastNlMeansDenoisingColored(rgb[..., ::-1].copy(), None, float(h), float(h), 7, 11)
    return Image.fromarray(np.ascontiguousarray(out[..., ::-1]))


@dataclass(frozen=True)
class Purifier:
    """A purifying filter and its ladder of settings.

    Attributes:
        name: the purifier's name (a key of :data:`PURIFIERS`).
        levels: the settings, gentlest first, each the keyword arguments of ``apply``.
        apply: the filter, ``apply(img, **level)``.
        label: names a level, e.g. ``median5``.
    """

    name: str
    levels: tuple[dict[str, float], ...]
    apply: Callable[..., Image.Image]
    label: Callable[[dict[str, float]], str]

    def transform(self, level: int) -> PlatformTransform:
        """The filter at ladder level ``level`` (0 = gentlest) as a platform transform."""
        return partial(self.apply, **self.levels[level])

    def level_label(self, level: int) -> str:
        """The name of ladder level ``level``."""
        return self.label(self.levels[level])


#: The purifiers, by name; ladders gentlest first (see the module docstring).
PURIFIERS: dict[str, Purifier] = {
    "jpeg_blur": Purifier(
        "jpeg_blur",
        (
            {"quality": 75, "radius": 0.5},
            {"quality": 50, "radius": 1.0},
            {"quality": 30, "radius": 1.5},
            {"quality": 20, "radius": 2.0},
        ),
        jpeg_blur,
        lambda p: f"jpeg{p['quality']:g}+blur{p['radius']:g}",
    ),
    "downscale": Purifier(
        "downscale",
        tuple({"factor": f} for f in (0.75, 0.5, 0.35, 0.25)),
        downscale,
        lambda p: f"down{p['factor']:g}",
    ),
    "median": Purifier("median", tuple({"size": s} for s in (3, 5, 7, 9)), median, lambda p: f"median{p['size']:g}"),
    "bilateral": Purifier(
        "bilateral",
        tuple({"sigma_color": s} for s in (25.0, 50.0, 75.0, 100.0)),
        bilateral,
        lambda p: f"bilateral{p['sigma_color']:g}",
    ),
    "nlm": Purifier(
        "nlm", tuple({"h": h} for h in (3.0, 6.0, 10.0, 15.0)), non_local_means, lambda p: f"nlm{p['h']:g}"
    ),
}


def purifier(name: str) -> Purifier:
    """The purifier called ``name``.

    Raises:
        ValueError: on an unknown name (the message lists the valid ones).
    """
    if name not in PURIFIERS:
        raise ValueError(f"unknown purifier {name!r}; valid: {', '.join(PURIFIERS)}")
    return PURIFIERS[name]


def clean_accuracy(embedded: Embedded, labels: Labels) -> float:
    """Leave-one-out nearest-neighbour (cosine) accuracy of a tracker on clean photos.

    Each photo is classified by the protocol's own ``knn1`` classifier
    (:func:`cloak.evaluation.protocol.scoring.fit_predict`) trained on every other photo;
    a photo without a face, or whose identity has no other photo with a face,
    counts as an error.

    Args:
        embedded: the tracker's embeddings of the photos.
        labels: their identities.

    Returns:
        The fraction recognised, in ``[0, 1]``.

    Raises:
        ValueError: on mismatched lengths or fewer than two photos.
    """
    labels = np.asarray(labels).astype(str)
    if len(labels) != len(embedded) or len(labels) < 2:
        raise ValueError(f"need one label per embedding and >= 2 photos, got {len(labels)} and {len(embedded)}")
    correct = 0
    for i in np.flatnonzero(embedded.found):
        others = np.flatnonzero(embedded.found & (np.arange(len(labels)) != i))
        if len(others) and (labels[others] == labels[i]).any():
            correct += int(
                fit_predict(embedded.emb[others], labels[others], embedded.emb[i : i + 1], "knn1")[0] == labels[i]
            )
    return correct / len(labels)


@dataclass
class Calibration:
    """The level of one purifier a tracker can afford, and how it was chosen.

    Attributes:
        purifier: the purifier's name.
        baseline: clean accuracy without purification.
        tolerance: the largest accuracy drop accepted (a fraction, 0.02 = 2 points).
        levels: the labels of the levels measured, gentlest first.
        accuracy: their clean accuracies.
        chosen: the index of the level used: the strongest within tolerance
            (the gentlest when none is).
        within_tolerance: whether the chosen level is within tolerance.
    """

    purifier: str
    baseline: float
    tolerance: float
    levels: list[str] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    chosen: int = 0
    within_tolerance: bool = True

    @property
    def chosen_label(self) -> str:
        """The label of the chosen level."""
        return self.levels[self.chosen]


def calibrate(
    purifier: Purifier,
    accuracy_at: Callable[[PlatformTransform, str], float],
    baseline: float,
    tolerance: float = 0.02,
    max_levels: int | None = None,
) -> Calibration:
    """The strongest level of ``purifier`` that keeps clean accuracy within ``tolerance`` of ``baseline``.

    Levels are measured gentlest first; the first one that drops accuracy by
    more than ``tolerance`` ends the climb (stronger filters remove more).

    Args:
        purifier: the purifier.
        accuracy_at: clean accuracy with a transform applied to every photo
            (the transform and its label are passed).
        baseline: clean accuracy without purification.
        tolerance: the largest accepted drop, a fraction.
        max_levels: measure at most this many levels (None: the whole ladder).

    Returns:
        The measurements and the chosen level.
    """
    cal = Calibration(purifier.name, float(baseline), float(tolerance))
    n = len(purifier.levels) if max_levels is None else max(1, min(int(max_levels), len(purifier.levels)))
    for level in range(n):
        label = purifier.level_label(level)
        acc = float(accuracy_at(purifier.transform(level), label))
        cal.levels.append(label)
        cal.accuracy.append(acc)
        ok = baseline - acc <= tolerance + 1e-9
        log.info("Purifier %s: clean accuracy %.3f (baseline %.3f)%s", label, acc, baseline, "" if ok else ", too low")
        if not ok:
            break
        cal.chosen = level
    cal.within_tolerance = baseline - cal.accuracy[cal.chosen] <= tolerance + 1e-9
    return cal
