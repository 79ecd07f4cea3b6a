"""What a face's report means, in plain words for the page.

A cloaked face protects its owner when a face-recognition model no longer
matches it to the original, i.e. when the distance between their descriptors
exceeds the model's own same-person threshold, and still does after the JPEG
re-encoding platforms apply (the report's ``distance_jpeg75``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cloak.measurement import FaceReport

#: How the page names each model.
MODEL_LABELS = {
    "dlib_resnet": "dlib's face model",
    "sface": "OpenCV's SFace",
    "edgeface": "EdgeFace (Idiap)",
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


#: What a verdict says, by kind; ``{models}`` is one or more model labels, ``{advice}`` what to do.
_SENTENCES = {
    "protected": "not matched to your original photo by {models}, also after JPEG compression",
    "lost_after_jpeg": "not matched to your original photo by {models}, but matched again after JPEG compression — {advice}",
    "matched": "still matched to your original photo by {models} — {advice}",
    "no_threshold": "moved away from your original photo for {models}, which has no same-person threshold",
}


def _advice(strength: str) -> str:
    if strength == "high":
        return "even at strength high, so this cloak does not protect this face: share the photo with care"
    return "try strength high"


def _kind(distance: float, after_jpeg: float, threshold: float | None) -> str:
    if threshold is None:
        return "no_threshold"
    if after_jpeg > threshold:
        return "protected"
    return "lost_after_jpeg" if distance > threshold else "matched"


def face_verdicts(face: FaceReport, strength: str) -> list[ModelVerdict]:
    """One plain-words verdict per model for a cloaked face.

    Args:
        face: the face's report from :func:`cloak.measurement.measure`.
        strength: the preset it was cloaked with; the advice to try a stronger
            one is given only when there is one.
    """
    verdicts = []
    for name, distance in face.distance.items():
        kind = _kind(distance, face.distance_jpeg75.get(name, distance), face.threshold.get(name))
        protected = None if kind == "no_threshold" else kind == "protected"
        text = _SENTENCES[kind].format(models=model_label(name), advice=_advice(strength))
        verdicts.append(ModelVerdict(name, protected, text))
    return verdicts


def face_sentence(face: FaceReport, strength: str) -> str:
    """All models' verdicts on a face in one sentence, models with the same verdict named together.

    E.g. "not matched to your original photo by dlib's face model or OpenCV's SFace,
    also after JPEG compression".
    """
    groups: dict[str, list[str]] = {}
    for name, distance in face.distance.items():
        kind = _kind(distance, face.distance_jpeg75.get(name, distance), face.threshold.get(name))
        groups.setdefault(kind, []).append(model_label(name))
    parts = []
    for kind, labels in groups.items():
        joiner = " or " if kind == "protected" else " and "
        models = ", ".join(labels[:-1]) + joiner + labels[-1] if len(labels) > 1 else labels[0]
        parts.append(_SENTENCES[kind].format(models=models, advice=_advice(strength)))
    return "; ".join(parts)


def face_summary(face: FaceReport, strength: str) -> dict:
    """A face's report for the page: the verdicts in words, and the numbers behind them."""
    verdicts = face_verdicts(face, strength)
    known = [v.protected for v in verdicts if v.protected is not None]
    return {
        "protected": all(known) if known else None,
        "text": face_sentence(face, strength),
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
            for key in ("shading", "ssim", "ssim_p5", "psnr", "perceptual")
            if (value := getattr(face, key, None)) is not None
        },
        "box": [round(v, 1) for v in face.box],
        "score": round(face.score, 4),
    }
