"""What a face's report means, in plain words for the page.

A cloaked face protects its owner when a face-recognition model no longer
matches it to the original, i.e. when the distance between their descriptors
exceeds the model's own same-person threshold, and still does after the JPEG
re-encoding platforms apply (the report's ``distance_jpeg75``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cloak.protect import FaceReport

#: How the page names each model.
MODEL_LABELS = {
    "dlib_resnet": "dlib's face model",
    "facenet_vggface2": "FaceNet (VGGFace2)",
    "facenet_casia": "FaceNet (CASIA-WebFace)",
}


@dataclass(frozen=True)
class ModelVerdict:
    """One model's verdict on one cloaked face.

    Attributes:
        model: the model's config name (``"dlib_resnet"``).
        protected: the model does not match the cloaked face to the original, also
            after JPEG compression; ``None`` when the model has no threshold.
        text: the verdict in one sentence.
    """

    model: str
    protected: bool | None
    text: str


def model_label(name: str) -> str:
    """The page's name for a model."""
    return MODEL_LABELS.get(name, name)


def face_verdicts(face: FaceReport, strength: str) -> list[ModelVerdict]:
    """One plain-words verdict per model for a cloaked face.

    Args:
        face: the face's report from :func:`cloak.protect.measure`.
        strength: the preset it was cloaked with; the advice to try a stronger
            one is given only when there is one.
    """
    if strength == "high":
        advice = "even at strength high, so this cloak does not protect this face: share the photo with care"
    else:
        advice = "try strength high"
    verdicts = []
    for name, distance in face.distance.items():
        label = model_label(name)
        threshold = face.threshold.get(name)
        after_jpeg = face.distance_jpeg75.get(name, distance)
        if threshold is None:
            verdicts.append(
                ModelVerdict(
                    name,
                    None,
                    f"moved {distance:.2f} away from your original photo for {label}, which has no same-person threshold",
                )
            )
        elif after_jpeg > threshold:
            verdicts.append(
                ModelVerdict(name, True, f"not matched to your original photo by {label}, also after JPEG compression")
            )
        elif distance > threshold:
            verdicts.append(
                ModelVerdict(
                    name,
                    False,
                    f"not matched to your original photo by {label}, but matched again after JPEG compression — {advice}",
                )
            )
        else:
            verdicts.append(ModelVerdict(name, False, f"still matched to your original photo by {label} — {advice}"))
    return verdicts


def face_summary(face: FaceReport, strength: str) -> dict:
    """A face's report for the page: the verdicts in words, and the numbers behind them."""
    verdicts = face_verdicts(face, strength)
    known = [v.protected for v in verdicts if v.protected is not None]
    return {
        "protected": all(known) if known else None,
        "verdicts": [asdict(v) for v in verdicts],
        "numbers": [
            {
                "model": model_label(name),
                "distance": round(face.distance[name], 4),
                "distance_jpeg75": round(face.distance_jpeg75.get(name, float("nan")), 4),
                "threshold": face.threshold.get(name),
            }
            for name in face.distance
        ],
        "quality": {
            key: round(value, 4)
            for key in ("ssim", "psnr", "perceptual")
            if (value := getattr(face, key, None)) is not None
        },
        "box": [round(v, 1) for v in face.box],
        "score": round(face.score, 4),
    }
