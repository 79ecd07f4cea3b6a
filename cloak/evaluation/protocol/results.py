"""What an evaluation run measured: settings, protection and quality rows, and the names tables use.

Plain dataclasses, importable without torch or Hydra (reports and plots are
drawn from a ``results.json`` on any machine). :mod:`cloak.evaluation.protocol.experiment`
fills them in; :mod:`cloak.evaluation.protocol.report` writes them out and reads them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: The conditions every table compares: the cloak and its two baselines.
CONDITIONS: tuple[str, ...] = ("cloak", "none", "noise")
#: How the tables name them.
CONDITION_NAMES = {"cloak": "cloak", "none": "no cloak", "noise": "noise"}
#: The trackers' metrics (see :func:`cloak.evaluation.protocol.scoring.tracker_protection`).
METRICS: tuple[str, ...] = ("knn1", "logreg", "rank1")
#: How the tables name them.
METRIC_NAMES = {"knn1": "1-NN", "logreg": "logreg", "rank1": "rank-1"}


@dataclass
class Setting:
    """One cloak configuration of a run (a point of a sweep).

    Attributes:
        label: its name in tables and plots.
        attack: the attack's name (``lowkey``, ``pgd``, ``fawkes``).
        eps: L-inf bound, 0-255 pixel units.
        steps: attack steps.
        max_dssim: the attack's DSSIM budget, or None.
        robust: whether the attack optimised through random platform distortions.
        seconds: wall time spent cloaking the shared photos.
        n_cloaked: shared photos in which a face was cloaked.
        mean_steps: the optimisation steps a cloaked photo took, on average (fewer than
            ``steps`` when photos stopped early; 0 before the photos are cloaked).
    """

    label: str
    attack: str
    eps: float
    steps: int
    max_dssim: float | None
    robust: bool
    seconds: float = 0.0
    n_cloaked: int = 0
    mean_steps: float = 0.0


@dataclass
class ProtectionRow:
    """The protection one tracker offers one condition of one setting after one transform.

    Attributes:
        setting: the setting's label.
        tracker: the tracker's name.
        relation: ``same`` (the tracker's model is one the cloak optimised
            against), ``pipeline`` (the same weights behind another detector and
            alignment, e.g. dlib's own pipeline against a cloak made on
            ``dlib_resnet``) or ``cross`` (another model).
        transform: the platform transform's name.
        tracker_side: whether the transform applies to every photo the tracker sees.
        condition: ``cloak``, ``none`` (no cloak) or ``noise``.
        metric: ``knn1``, ``logreg`` or ``rank1``.
        protection: ``1 -`` accuracy on the users' clean photos, in ``[0, 1]``.
        per_user: user -> protection on their photos.
        n_probes: the users' clean photos tested.
        n_probes_no_face: of these, photos where the tracker found no face (counted as not recognised).
        n_shared_no_face: users' shared photos the tracker found no face in (dropped from training).
    """

    setting: str
    tracker: str
    relation: str
    transform: str
    tracker_side: bool
    condition: str
    metric: str
    protection: float
    per_user: dict[str, float]
    n_probes: int
    n_probes_no_face: int
    n_shared_no_face: int


@dataclass
class QualityRow:
    """Mean image quality of one setting's cloaked (or noised) photos against the originals.

    Attributes:
        setting: the setting's label.
        condition: ``cloak`` or ``noise``.
        ssim, dssim, psnr: means over the photos that were changed (PSNR over finite values).
        ssim_min: the worst photo's SSIM.
        n_photos: photos averaged over.
        face_ssim, face_ssim_p5, face_psnr, face_haarpsi: means over the faces of those
            photos, each measured on its box grown 10% (:func:`cloak.quality.face_quality`):
            what people see, where the whole-photo figures dilute the cloak with untouched
            background. ``face_ssim_p5`` is the 5th percentile of the local SSIM map
            (texture on flat skin shows there first). None when no face was measured.
        face_ssim_min, face_ssim_p5_min: the worst face's.
        face_color_shift: mean over the faces of their change of colour
            (:func:`cloak.shading.color_shift`; 0 on grey photos with a grey cloak).
        face_shading, face_shading_max: mean and largest shading figure of the faces
            (:func:`cloak.shading.shading`; about 1 starts to show side by side).
        face_shading_peak_max: the largest of the faces' shading maps at their worst
            pixel (:func:`cloak.shading.shading_peak`).
    """

    setting: str
    condition: str
    ssim: float
    dssim: float
    psnr: float
    ssim_min: float
    n_photos: int
    face_ssim: float | None = None
    face_ssim_p5: float | None = None
    face_psnr: float | None = None
    face_haarpsi: float | None = None
    face_ssim_min: float | None = None
    face_ssim_p5_min: float | None = None
    n_faces: int = 0
    face_color_shift: float | None = None
    face_shading: float | None = None
    face_shading_max: float | None = None
    face_shading_peak_max: float | None = None


@dataclass
class ExperimentResults:
    """Everything a run measured; :mod:`cloak.evaluation.protocol.report` writes it out.

    Attributes:
        experiment: the experiment's name (``experiment_name``).
        data: the data folder and the split (users, photo counts, seed).
        cloak_models: names of the models the cloaks were optimised against.
        trackers: the trackers that ran.
        skipped_trackers: tracker -> why it did not run.
        transforms: the platform transforms, in order.
        tracker_side_transforms: those the tracker applies to every photo it sees.
        metrics: the trackers' metrics.
        noise: the noise baseline's kind (``sign`` or ``uniform``).
        settings, protection, quality: the measurements.
        seconds: the run's wall time so far.
        config: the run's composed config (resolved).
    """

    experiment: str
    data: dict[str, Any]
    cloak_models: list[str]
    trackers: list[str]
    skipped_trackers: dict[str, str]
    transforms: list[str]
    tracker_side_transforms: list[str]
    metrics: list[str]
    noise: str
    settings: list[Setting] = field(default_factory=list)
    protection: list[ProtectionRow] = field(default_factory=list)
    quality: list[QualityRow] = field(default_factory=list)
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain Python values (for JSON)."""
        return asdict(self)

    def value(self, setting: str, tracker: str, transform: str, condition: str, metric: str) -> float | None:
        """The protection of one cell, or None when not measured (the first row, if measured twice)."""
        index = getattr(self, "_index", None)
        if index is None or index[0] != len(self.protection):
            cells: dict[tuple[str, str, str, str, str], float] = {}
            for r in self.protection:
                cells.setdefault((r.setting, r.tracker, r.transform, r.condition, r.metric), r.protection)
            index = self._index = (len(self.protection), cells)
        return index[1].get((setting, tracker, transform, condition, metric))

    def quality_of(self, setting: str, condition: str) -> QualityRow | None:
        """The quality row of one setting's ``cloak`` or ``noise`` photos, or None."""
        return next((q for q in self.quality if q.setting == setting and q.condition == condition), None)

    def measured_trackers(self) -> list[str]:
        """The trackers with measurements (all trackers before any), in order."""
        return list(dict.fromkeys(r.tracker for r in self.protection)) or list(self.trackers)

    def measured_transforms(self) -> list[str]:
        """The transforms with measurements, in the run's order."""
        seen = {r.transform for r in self.protection}
        return [t for t in self.transforms if t in seen]

    def relation_of(self, tracker: str, setting: str | None = None) -> str:
        """``same``, ``pipeline`` or ``cross`` (see :class:`ProtectionRow`) in ``setting``.

        Without a setting: the relation every setting shares, or ``""`` where settings
        differ (a sweep over ``model=``: one family is ``same`` for one cloak and
        ``cross`` for another). ``""`` before any measurement.
        """
        found = {r.relation for r in self.protection if r.tracker == tracker and setting in (None, r.setting)}
        return found.pop() if len(found) == 1 else ""

    def chosen_metrics(self, metrics: Sequence[str] | None) -> list[str]:
        """Those of ``metrics`` the run measured (default: all it measured); at least its first."""
        return [m for m in (metrics or self.metrics) if m in self.metrics] or self.metrics[:1]
