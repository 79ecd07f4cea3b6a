"""What the adaptive-tracker experiment measured (plain dataclasses, no torch needed).

:mod:`cloak.evaluation.adaptive.experiment` fills an :class:`AdaptiveResults`;
:mod:`cloak.evaluation.adaptive.report` writes it out and reads it back. The
protection numbers are ordinary :class:`~cloak.evaluation.protocol.results.ProtectionRow`
rows of an :class:`~cloak.evaluation.protocol.results.ExperimentResults`, scored by the
protocol's own :func:`~cloak.evaluation.protocol.scoring.tracker_protection`: an
adapted tracker is a tracker of its own name (``dlib_resnet+correction``,
``dlib_resnet+finetune``), a purification a tracker-side transform (``median5``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cloak.evaluation.adaptive.purification import Calibration
from cloak.evaluation.protocol.results import ExperimentResults, ProtectionRow, QualityRow, Setting

#: Suffixes of the adapted trackers' names.
CORRECTION = "correction"
FINETUNE = "finetune"


def adapted_name(tracker: str, adaptation: str) -> str:
    """The name of ``tracker`` adapted by ``adaptation`` (``correction`` or ``finetune``), e.g. ``dlib_resnet+finetune``."""
    return f"{tracker}+{adaptation}"


@dataclass
class CorrectionFit:
    """How the embedding correction of one tracker was trained, and what it did.

    Attributes:
        tracker: the tracker it corrects.
        n_pairs: (cloaked, clean) photo pairs of the adaptation set, held-out ones included.
        epochs: full-batch training steps of the correction kept (early stopping).
        loss_before, loss_after: mean ``1 - cos`` to the clean twin over all the pairs.
        users_cos_before, users_cos_after: mean cosine between each user's cloaked
            shared photo and its clean original, before and after the correction
            (photos the tracker never trained on).
        n_validation: pairs held out for early stopping.
        validation_before, validation_after: their mean ``1 - cos`` to the clean twin.
    """

    tracker: str
    n_pairs: int
    epochs: int
    loss_before: float
    loss_after: float
    users_cos_before: float | None = None
    users_cos_after: float | None = None
    n_validation: int = 0
    validation_before: float | None = None
    validation_after: float | None = None


@dataclass
class FinetuneFit:
    """How the tracker's own model was fine-tuned on cloaked and clean photos.

    Attributes:
        tracker: the tracker whose model was fine-tuned.
        blocks: residual blocks trained (the last ones), with the final linear layer.
        epochs, lr, batch_size: the training schedule (Adam).
        n_identities: identities of the adaptation set it was trained on.
        n_faces: aligned faces it was trained on (clean and cloaked).
        losses: mean training loss per epoch.
        train_accuracy_clean, train_accuracy_cloaked: accuracy of its identity
            head on the training faces after training.
        users_cos_before, users_cos_after: mean cosine between each user's cloaked
            shared photo and its clean original under the original and the fine-tuned model.
    """

    tracker: str
    blocks: int
    epochs: int
    lr: float
    batch_size: int
    n_identities: int
    n_faces: int
    losses: list[float] = field(default_factory=list)
    train_accuracy_clean: float | None = None
    train_accuracy_cloaked: float | None = None
    users_cos_before: float | None = None
    users_cos_after: float | None = None


@dataclass
class DetectionScore:
    """How well one detector tells cloaked photos from clean ones on the users' photos.

    Attributes:
        detector: its name (``residual_logreg``, ``cnn``).
        transform: the platform transform applied to every photo before detection.
        auc: ROC AUC (0.5 = chance, 1 = perfect).
        threshold: the score threshold of highest accuracy on these photos (an
            oracle choice: an upper bound on what the detector does at a fixed threshold).
        precision, recall: at that threshold, "cloaked" being the positive class.
        accuracy: at that threshold.
        n_train: photos it was trained on (the adaptation set, clean and cloaked).
        n_cloaked, n_clean: test photos of each kind.
        fpr, tpr: the ROC curve.
    """

    detector: str
    transform: str
    auc: float
    threshold: float
    precision: float
    recall: float
    accuracy: float
    n_train: int
    n_cloaked: int
    n_clean: int
    fpr: list[float] = field(default_factory=list)
    tpr: list[float] = field(default_factory=list)


@dataclass
class AdaptiveResults:
    """Everything the adaptive-tracker experiment measured.

    Attributes:
        protection: the protocol's results: settings, quality, and protection rows
            of the oblivious, adapted and purifying trackers (cloak and no cloak).
        adaptation: the tracker's adaptation set (identities, photos, faces cloaked, seconds).
        purification: the calibration of each purifier.
        correction: tracker -> its embedding correction's fit.
        finetune: the fine-tuned model's fit (None when not run).
        detection: the detectors' scores, per detector and transform.
        seconds: the run's wall time.
        command: the command line that reproduces the run (for the report).
    """

    protection: ExperimentResults
    adaptation: dict[str, Any] = field(default_factory=dict)
    purification: list[Calibration] = field(default_factory=list)
    correction: dict[str, CorrectionFit] = field(default_factory=dict)
    finetune: FinetuneFit | None = None
    detection: list[DetectionScore] = field(default_factory=list)
    seconds: float = 0.0
    command: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain Python values (for JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveResults:
        """The inverse of :meth:`to_dict` (non-finite PSNRs stored as None come back as infinity)."""
        data = dict(data)
        p = dict(data.pop("protection"))
        quality = []
        for q in p.pop("quality"):
            q = dict(q)
            q["psnr"] = float("inf") if q["psnr"] is None else q["psnr"]
            quality.append(QualityRow(**q))
        protection = ExperimentResults(
            **{k: v for k, v in p.items() if k not in ("settings", "protection")},
            settings=[Setting(**s) for s in p["settings"]],
            protection=[ProtectionRow(**r) for r in p["protection"]],
            quality=quality,
        )
        finetune = data.pop("finetune")
        return cls(
            protection=protection,
            adaptation=data.pop("adaptation"),
            purification=[Calibration(**c) for c in data.pop("purification")],
            correction={k: CorrectionFit(**v) for k, v in data.pop("correction").items()},
            finetune=None if finetune is None else FinetuneFit(**finetune),
            detection=[DetectionScore(**d) for d in data.pop("detection")],
            **data,
        )
