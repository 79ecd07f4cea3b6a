"""The protection experiment: how much of a cloak's protection survives platforms and trackers.

Protocol (FaceCure, Radiya-Dixit et al., ICLR 2022; LowKey, Cherepanova et al., ICLR 2021):

1. **Data.** A folder of identities (``<identity>/<image>``). ``n_users``
   identities with ``min_photos`` or more photos are drawn as *users*; each
   shares ``shared_fraction`` of their photos (*shared*, cloaked before upload)
   and keeps the rest (*clean*, what the tracker later sees, e.g. from a
   camera). Up to ``max_distractors`` other identities (seeded draw) are
   *distractors*: all their photos stay clean.
2. **Cloak.** The shared photos are cloaked with the configured attack, all
   users' photos batched together; every face the cloak's detector finds is
   cloaked (as ``python -m cloak`` does); photos where it finds none are
   uploaded unchanged.
3. **Platform.** An *upload transform* (JPEG, downscale, blur, social...) is
   applied to the shared photos the tracker scrapes. A *tracker-side*
   transform (``purify``) is the tracker's own preprocessing: it is applied to
   every photo the tracker sees, the users' clean probes and the distractors
   included.
4. **Trackers.** Each tracker embeds every photo with its own pipeline
   (:mod:`cloak.evaluation.pipelines`); a photo where it finds no face is
   dropped from its training set / gallery, and a probe where it finds no face
   counts as not recognised.

   * *Classifiers* (``knn1``, ``logreg``): trained on the users' shared photos
     (as uploaded) and all distractor photos, tested on the users' clean photos.
   * *Rank-1* (LowKey): one user at a time, the gallery holds that user's
     shared photos and all distractor photos; each of the user's clean photos
     is a probe. (Unlike the classifiers, the other users are not in the
     gallery.)

   Protection is ``1 -`` accuracy on the probes.
5. **Baselines**, under the same transform and trackers: *no cloak* (the
   shared photos uploaded clean: the tracker's own error rate) and *noise*
   (random noise of the cloak's L-inf size ``eps`` in the cloak's face region:
   ``sign`` noise, each pixel ``+-eps``, or ``uniform`` in ``[-eps, eps]``).
6. **Quality** of every cloaked (and noised) photo against its original: SSIM,
   DSSIM, PSNR over the whole photo (:mod:`cloak.quality`).

Clean photos are embedded once per tracker and per tracker-side transform and
reused by every setting of a sweep; the no-cloak and noise embeddings are
cached across settings too.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from cloak.attacks import Attack, PhotoFaces, photo_seed
from cloak.attacks.regions import face_region
from cloak.detection import Face, FaceDetector
from cloak.evaluation.dataset import UserSplit, load_identity_folder, split_users
from cloak.evaluation.pipelines import DLIB_NATIVE, MODEL_TRACKERS, Embedded, Pipeline, build_pipelines
from cloak.evaluation.platform import PlatformTransform, parse_platform_transform
from cloak.evaluation.trackers import CLASSIFIERS, fit_predict, nearest_label
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble, as_ensemble
from cloak.protect import cloak_photos, to_tensor, to_uint8
from cloak.quality import dssim, psnr, ssim

log = logging.getLogger(__name__)

#: The conditions every table compares: the cloak and its two baselines.
CONDITIONS: tuple[str, ...] = ("cloak", "none", "noise")
#: How the tables name them.
CONDITION_NAMES = {"cloak": "cloak", "none": "no cloak", "noise": "noise"}
#: Metric names: the classifiers of :mod:`cloak.evaluation.trackers` and rank-1 identification.
METRICS: tuple[str, ...] = (*CLASSIFIERS, "rank1")
METRIC_NAMES = {"knn1": "1-NN", "logreg": "logreg", "rank1": "rank-1"}


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


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
    """

    label: str
    attack: str
    eps: float
    steps: int
    max_dssim: float | None
    robust: bool
    seconds: float = 0.0
    n_cloaked: int = 0


@dataclass
class ProtectionRow:
    """The protection one tracker offers one condition of one setting after one transform.

    Attributes:
        setting: the setting's label.
        tracker: the tracker's name.
        relation: ``same`` (the tracker's model is one the cloak optimised
            against), ``pipeline`` (same weights, another detector and alignment:
            dlib's own pipeline against a cloak made on ``dlib_resnet``) or
            ``cross`` (another model).
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
    """

    setting: str
    condition: str
    ssim: float
    dssim: float
    psnr: float
    ssim_min: float
    n_photos: int


@dataclass
class ExperimentResults:
    """Everything a run measured; :mod:`cloak.evaluation.report` writes it out."""

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
        return asdict(self)

    def value(self, setting: str, tracker: str, transform: str, condition: str, metric: str) -> float | None:
        """The protection of one cell, or None when not measured."""
        index = getattr(self, "_index", None)
        if index is None or len(index) != len(self.protection):
            index = {(r.setting, r.tracker, r.transform, r.condition, r.metric): r.protection for r in self.protection}
            if len(index) == len(self.protection):  # duplicate cells: fall back to a scan
                self._index = index
            else:
                return next(
                    (
                        r.protection
                        for r in self.protection
                        if (r.setting, r.tracker, r.transform, r.condition, r.metric)
                        == (setting, tracker, transform, condition, metric)
                    ),
                    None,
                )
        return index.get((setting, tracker, transform, condition, metric))


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


def compose_transform(name: str) -> PlatformTransform:
    """A platform transform by name; ``"a+b"`` applies ``a`` then ``b`` (e.g. ``"jpeg75+down0.5"``).

    Raises:
        ValueError: if a part is unknown (the message lists the valid names).
    """
    parts = [parse_platform_transform(p) for p in str(name).split("+")]
    if len(parts) == 1:
        return parts[0]

    def composed(img: Image.Image) -> Image.Image:
        for part in parts:
            img = part(img)
        return img

    return composed


def apply_transform(photos: Sequence[np.ndarray], transform: PlatformTransform) -> list[np.ndarray]:
    """``transform`` on each ``[H, W, 3]`` uint8 photo."""
    return [np.asarray(transform(Image.fromarray(p)), dtype=np.uint8) for p in photos]


def read_photo(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def random_noise(
    photo: np.ndarray,
    faces: Sequence[Face],
    models: dict[str, FaceEmbedder],
    eps: float,
    seed: int,
    kind: str = "sign",
) -> np.ndarray:
    """Random noise of L-inf size ``eps`` over the region a cloak of ``faces`` would cover.

    The region and its mask are the attacks' (:func:`cloak.attacks.regions.face_region`
    over ``models``' crops; the noise is scaled by the mask, like the cloak).
    ``sign`` noise sets each pixel to ``+eps`` or ``-eps`` (the most energy an
    L-inf budget allows); ``uniform`` draws from ``[-eps, eps]``. The photo's own seed (from its pixels and ``seed``) makes
    the draw reproducible.

    Args:
        photo: ``[H, W, 3]`` uint8 RGB.
        faces: the faces to cover; none returns a copy.
        models: name -> embedder whose crops define the region.
        eps: L-inf size in 0-255 pixel units.
        seed: the run's seed.
        kind: ``"sign"`` or ``"uniform"``.

    Returns:
        The noised photo, ``[H, W, 3]`` uint8.
    """
    if kind not in ("sign", "uniform"):
        raise ValueError(f"noise must be 'sign' or 'uniform', got {kind!r}")
    if not faces:
        return np.array(photo, copy=True)
    x = to_tensor(photo)
    landmarks = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=x.dtype)
    region = face_region(PhotoFaces(x, landmarks), models)
    crop = region.crop(x)
    g = torch.Generator().manual_seed(photo_seed(seed, x) ^ 0x5EED)
    u = torch.rand(crop.shape, generator=g, dtype=torch.float64).to(x.dtype) * 2 - 1
    noise = torch.sign(u) if kind == "sign" else u
    return to_uint8(region.paste(x, (crop + noise * (eps / 255.0) * region.mask).clamp(0, 1)))


def photo_quality(originals: Sequence[np.ndarray], changed: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-photo SSIM, DSSIM and PSNR (dB, ``inf`` when unchanged) of ``changed`` against ``originals``."""
    out: dict[str, list[float]] = {"ssim": [], "dssim": [], "psnr": []}
    for a, b in zip(originals, changed):
        ta, tb = to_tensor(a).unsqueeze(0), to_tensor(b).unsqueeze(0)
        out["ssim"].append(float(ssim(ta, tb)[0]))
        out["dssim"].append(float(dssim(ta, tb)[0]))
        out["psnr"].append(float(psnr(ta, tb)[0]))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def quality_row(
    setting: str, condition: str, originals: Sequence[np.ndarray], changed: Sequence[np.ndarray]
) -> QualityRow:
    """Mean quality over the photos that ``changed`` (unchanged ones, e.g. without a face, are left out)."""
    idx = [i for i, (a, b) in enumerate(zip(originals, changed)) if not np.array_equal(a, b)]
    if not idx:
        return QualityRow(setting, condition, 1.0, 0.0, float("inf"), 1.0, 0)
    q = photo_quality([originals[i] for i in idx], [changed[i] for i in idx])
    finite = q["psnr"][np.isfinite(q["psnr"])]
    return QualityRow(
        setting=setting,
        condition=condition,
        ssim=float(q["ssim"].mean()),
        dssim=float(q["dssim"].mean()),
        psnr=float(finite.mean()) if len(finite) else float("inf"),
        ssim_min=float(q["ssim"].min()),
        n_photos=len(idx),
    )


@dataclass
class Score:
    """One metric's outcome on the probes."""

    protection: float
    per_user: dict[str, float]
    n_probes: int
    n_probes_no_face: int


def _score(correct: np.ndarray, labels: np.ndarray, found: np.ndarray) -> Score:
    per_user = {str(u): float(1.0 - correct[labels == u].mean()) for u in np.unique(labels)}
    return Score(float(1.0 - correct.mean()), per_user, len(labels), int((~found).sum()))


def tracker_protection(
    shared: Embedded,
    shared_labels: Sequence[str] | np.ndarray,
    distractors: Embedded,
    distractor_labels: Sequence[str] | np.ndarray,
    probes: Embedded,
    probe_labels: Sequence[str] | np.ndarray,
    metrics: Sequence[str] = METRICS,
) -> dict[str, Score]:
    """Protection of the users against one tracker, per metric.

    Photos without a face (``found`` False) are dropped from the training set
    and gallery; such probes count as not recognised.

    Args:
        shared: the users' shared photos as the tracker embedded them (cloaked, clean or noised).
        shared_labels: their users.
        distractors: the distractor identities' photos.
        distractor_labels: their identities.
        probes: the users' clean photos.
        probe_labels: their users.
        metrics: any of ``knn1``, ``logreg`` (a classifier trained on shared +
            distractor photos) and ``rank1`` (per user, a gallery of that user's
            shared photos and the distractors).

    Returns:
        Metric -> :class:`Score`.

    Raises:
        ValueError: on an unknown metric, mismatched lengths, no probes, or no
            training photo with a face.
    """
    shared_labels, distractor_labels, probe_labels = (
        np.asarray(shared_labels).astype(str),
        np.asarray(distractor_labels).astype(str),
        np.asarray(probe_labels).astype(str),
    )
    for emb, labels, what in (
        (shared, shared_labels, "shared"),
        (distractors, distractor_labels, "distractor"),
        (probes, probe_labels, "probe"),
    ):
        if len(emb) != len(labels):
            raise ValueError(f"{what} embeddings and labels differ in length: {len(emb)} vs {len(labels)}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(METRICS)}")
    if len(probes) == 0:
        raise ValueError("no probe photos to evaluate")
    train_emb = np.concatenate([shared.emb[shared.found], distractors.emb[distractors.found]])
    train_labels = np.concatenate([shared_labels[shared.found], distractor_labels[distractors.found]])
    if len(train_emb) == 0:
        raise ValueError("the tracker found no face in any training photo")
    found = probes.found
    out: dict[str, Score] = {}
    for metric in metrics:
        correct = np.zeros(len(probes), dtype=bool)
        if metric in CLASSIFIERS and found.any():
            pred = fit_predict(train_emb, train_labels, probes.emb[found], metric)
            correct[found] = pred == probe_labels[found]
        elif metric == "rank1":
            d_emb, d_labels = distractors.emb[distractors.found], distractor_labels[distractors.found]
            for user in np.unique(probe_labels):
                rows = np.flatnonzero((probe_labels == user) & found)
                mine = shared.found & (shared_labels == user)
                gallery = np.concatenate([shared.emb[mine], d_emb])
                if len(rows) == 0 or len(gallery) == 0:
                    continue
                labels = np.concatenate([shared_labels[mine], d_labels])
                correct[rows] = nearest_label(gallery, labels, probes.emb[rows]) == user
        out[metric] = _score(correct, probe_labels, found)
    return out


def model_names(model: FaceEmbedder | Ensemble, model_cfg: DictConfig | None = None) -> list[str]:
    """Tracker names of the model(s) a cloak is optimised against (for same/cross labels)."""
    if isinstance(model, Ensemble):
        return [name for name, _, _ in model.items()]
    from cloak.models.dlib_resnet import DlibResNet
    from cloak.models.facenet import FacenetEmbedder

    if isinstance(model, DlibResNet):
        return ["dlib_resnet"]
    if isinstance(model, FacenetEmbedder) and model_cfg is not None:
        pretrained = str(model_cfg.get("pretrained", ""))
        return [n for n, p in MODEL_TRACKERS.items() if p == pretrained]
    return [type(model).__name__]


def relation(tracker: str, cloak_models: Sequence[str]) -> str:
    """``same``, ``pipeline`` or ``cross`` (see :class:`ProtectionRow`)."""
    if tracker in cloak_models:
        return "same"
    if tracker == DLIB_NATIVE and "dlib_resnet" in cloak_models:
        return "pipeline"
    return "cross"


# ---------------------------------------------------------------------------
# Sweep settings
# ---------------------------------------------------------------------------


def _hydra_choices() -> dict[str, str]:
    """The config-group choices of the running Hydra app, or {} outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except (ValueError, ImportError):
        return {}


@dataclass
class SweepEntry:
    """One setting of ``cfg.sweep``: its label (None: automatic), swapped groups, set keys and config."""

    label: str | None
    groups: dict[str, str]
    overrides: dict[str, Any]
    cfg: DictConfig


def setting_configs(cfg: DictConfig, config_root: Path) -> list[SweepEntry]:
    """The settings of ``cfg.sweep``, each with the config it runs with.

    Each sweep entry may swap config groups (``groups: {attack: pgd, transform:
    none, strength: high}``, read from ``config_root/<group>/<name>.yaml``) and
    set dotted keys (``set: {strength.eps: 4, strength.max_dssim: null}``) on a
    copy of ``cfg``; an empty or missing sweep is one setting: ``cfg`` itself.
    """
    entries = list(cfg.get("sweep") or [{}])
    out = []
    for entry in entries:
        entry = OmegaConf.to_container(OmegaConf.create(entry), resolve=True) if entry else {}
        unknown = set(entry) - {"label", "groups", "set"}
        if unknown:
            raise ValueError(f"sweep entries take label, groups and set; got {sorted(unknown)} in {entry}")
        c = copy.deepcopy(cfg)
        OmegaConf.set_struct(c, False)
        groups = {str(k): str(v) for k, v in (entry.get("groups") or {}).items()}
        for group, choice in groups.items():
            path = config_root / group / f"{choice}.yaml"
            if not path.is_file():
                raise ValueError(f"sweep entry {entry}: no config {path} for {group}={choice}")
            c[group] = OmegaConf.load(path)
        overrides = {str(k): v for k, v in (entry.get("set") or {}).items()}
        for key, value in overrides.items():
            OmegaConf.update(c, key, value, merge=False)
        label = entry.get("label")
        out.append(SweepEntry(None if label is None else str(label), groups, overrides, c))
    return out


def auto_label(choices: dict[str, str], attack: Attack, groups: dict[str, str], overridden: bool) -> str:
    """``attack/strength/transform`` from the group choices; ``eps<N>`` for the strength when keys were set."""
    robust = "robust" if attack.transform is not None else "none"
    attack_name = groups.get("attack", choices.get("attack", attack.name))
    transform = groups.get("transform", choices.get("transform", robust))
    strength = groups.get("strength", choices.get("strength"))
    if strength is None or overridden:
        strength = f"eps{attack.eps * 255:g}"
    return f"{attack_name}/{strength}/{transform}"


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class _Photos:
    """The photos of the run, in one order: users' shared, users' clean (probes), distractors."""

    split: UserSplit
    shared_paths: list[Path]
    shared_labels: np.ndarray
    probe_paths: list[Path]
    probe_labels: np.ndarray
    distractor_paths: list[Path]
    distractor_labels: np.ndarray

    @property
    def all_paths(self) -> list[Path]:
        return [*self.shared_paths, *self.probe_paths, *self.distractor_paths]

    def rows(self, part: str) -> np.ndarray:
        n_s, n_p, n_d = len(self.shared_paths), len(self.probe_paths), len(self.distractor_paths)
        start, n = {"shared": (0, n_s), "probes": (n_s, n_p), "distractors": (n_s + n_p, n_d)}[part]
        return np.arange(start, start + n)


class DatasetError(ValueError):
    """The data folder holds too few identities (or users) for the protocol."""


def load_photos(cfg: DictConfig, root: Path) -> _Photos:
    """The users, their shared/clean photos and the distractors of ``cfg.data`` in ``root``.

    Raises:
        FileNotFoundError / NotADirectoryError: if ``root`` is missing or not a folder.
        DatasetError: if it holds too few identities, or too few with ``min_photos`` photos.
    """
    data = cfg.data
    n_users = int(data.n_users)
    hint = "; point data.root=<folder> (or $CLOAK_LFW_DEV) at a folder of <identity>/<image> photos"
    try:
        identities = load_identity_folder(root, min_images=1, min_identities=n_users + 1)
        split = split_users(identities, n_users, int(data.min_photos), float(data.shared_fraction), int(cfg.seed))
    except (FileNotFoundError, NotADirectoryError) as err:
        raise type(err)(f"{err}{hint}") from err
    except ValueError as err:
        raise DatasetError(f"{err}{hint}; the protocol needs {n_users} users and at least one other identity") from err
    per_user = data.get("max_photos_per_user")
    if per_user is not None:
        # Keep the split's proportions: the first shared and clean photos of each user.
        per_user = int(per_user)
        if per_user < 2:
            raise DatasetError(f"data.max_photos_per_user must be >= 2 (a shared and a clean photo), got {per_user}")
        n_shared = min(per_user - 1, max(1, int(np.floor(float(data.shared_fraction) * per_user + 0.5))))
        split = UserSplit(
            users=split.users,
            shared={u: split.shared[u][:n_shared] for u in split.users},
            clean={u: split.clean[u][: per_user - n_shared] for u in split.users},
            others=split.others,
        )
    others = sorted(split.others)
    cap = data.get("max_distractors")
    if cap is not None and len(others) > int(cap):
        rng = np.random.default_rng(int(cfg.seed) + 1)
        others = sorted(others[i] for i in rng.choice(len(others), size=int(cap), replace=False))
    shared_paths = [p for u in split.users for p in split.shared[u]]
    probe_paths = [p for u in split.users for p in split.clean[u]]
    distractor_paths = [p for name in others for p in split.others[name]]
    return _Photos(
        split=split,
        shared_paths=shared_paths,
        shared_labels=np.array([u for u in split.users for _ in split.shared[u]], dtype=str),
        probe_paths=probe_paths,
        probe_labels=np.array([u for u in split.users for _ in split.clean[u]], dtype=str),
        distractor_paths=distractor_paths,
        distractor_labels=np.array([name for name in others for _ in split.others[name]], dtype=str),
    )


def _photo_key(path: Path) -> str:
    """A photo's cache key: its absolute path, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


class EmbeddingCache:
    """Clean photos' embeddings on disk, one ``.npz`` per tracker, view and tracker settings.

    A photo is keyed by its absolute path, size and modification time, so an
    edited photo is embedded again. ``fingerprint`` (the tracker's detector
    settings, device...) is part of the file name: changing it starts a new file.

    Args:
        folder: where the files live (created when first written).
        fingerprint: anything that changes the embeddings besides the photo.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        import hashlib

        self.folder = Path(folder)
        self.tag = hashlib.sha1(fingerprint.encode()).hexdigest()[:12]

    def _file(self, tracker: str, view: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{tracker}-{view}")
        return self.folder / f"{safe}-{self.tag}.npz"

    def load(self, tracker: str, view: str) -> dict[str, tuple[np.ndarray, bool]]:
        """Key -> ``(embedding, found)`` of every photo cached for ``tracker`` and ``view``."""
        path = self._file(tracker, view)
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as z:
            return {str(k): (e, bool(f)) for k, e, f in zip(z["keys"], z["emb"], z["found"])}

    def save(self, tracker: str, view: str, entries: dict[str, tuple[np.ndarray, bool]]) -> None:
        """Writes ``entries`` (atomically: a temporary file renamed over the old one)."""
        if not entries:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._file(tracker, view)
        tmp = path.with_suffix(".tmp.npz")
        keys = list(entries)
        np.savez(
            tmp,
            keys=np.array(keys, dtype=str),
            emb=np.stack([entries[k][0] for k in keys]).astype(np.float32),
            found=np.array([entries[k][1] for k in keys], dtype=bool),
        )
        tmp.replace(path)


class PhotoEmbedder:
    """Runs every tracker's pipeline on lists of photos (with a progress bar)."""

    def __init__(self, pipelines: Sequence[Pipeline], cache: EmbeddingCache | None = None) -> None:
        self.pipelines = list(pipelines)
        self.trackers = [t for p in self.pipelines for t in p.trackers]
        self.cache = cache

    def __call__(self, photos: Sequence[np.ndarray], desc: str) -> dict[str, Embedded]:
        out: dict[str, Embedded] = {}
        with tqdm(total=len(photos) * len(self.pipelines), desc=desc, unit="photo", leave=False, disable=None) as bar:
            for pipeline in self.pipelines:
                out.update(pipeline.embed(photos, progress=bar.update))
        return out

    def paths(
        self, paths: Sequence[Path], transform: PlatformTransform | None, view: str, desc: str, chunk: int = 64
    ) -> dict[str, Embedded]:
        """Embeds photos read from ``paths`` (``transform`` applied first), a chunk in memory at a time.

        With a cache, only photos it lacks are embedded, and they are added to it.
        """
        keys = [_photo_key(p) for p in paths]
        out: dict[str, Embedded] = {}
        for pipeline in self.pipelines:
            cached = {t: self.cache.load(t, view) if self.cache else {} for t in pipeline.trackers}
            todo = [i for i, k in enumerate(keys) if any(k not in cached[t] for t in pipeline.trackers)]
            if self.cache is not None and len(todo) < len(paths):
                log.info(
                    "Cache %s: %d of %d photos [%s] already embedded",
                    self.cache.folder,
                    len(paths) - len(todo),
                    len(paths),
                    view,
                )
            with tqdm(
                total=len(todo), desc=f"{desc} {'+'.join(pipeline.trackers)}", unit="photo", leave=False, disable=None
            ) as bar:
                for start in range(0, len(todo), chunk):
                    rows = todo[start : start + chunk]
                    photos = [read_photo(paths[i]) for i in rows]
                    if transform is not None:
                        photos = apply_transform(photos, transform)
                    for t, e in pipeline.embed(photos, progress=bar.update).items():
                        for j, i in enumerate(rows):
                            cached[t][keys[i]] = (e.emb[j], bool(e.found[j]))
                    if self.cache is not None:
                        for t in pipeline.trackers:
                            self.cache.save(t, view, cached[t])
            for t in pipeline.trackers:
                out[t] = Embedded(np.stack([cached[t][k][0] for k in keys]), np.array([cached[t][k][1] for k in keys]))
        return out


def cloak_shared(
    photos: Sequence[np.ndarray],
    faces: Sequence[Sequence[Face]],
    attack: Attack,
    model: FaceEmbedder | Ensemble,
    device: torch.device,
    batch_size: int,
    desc: str = "cloaking",
) -> list[np.ndarray]:
    """Cloaks ``photos`` in batches of ``batch_size`` (photos without faces come back unchanged)."""
    out: list[np.ndarray] = []
    n_batches = -(-len(photos) // batch_size)
    with tqdm(total=n_batches * attack.steps, desc=desc, unit="step", leave=False, disable=None) as bar:
        for start in range(0, len(photos), batch_size):
            out += cloak_photos(
                photos[start : start + batch_size],
                faces[start : start + batch_size],
                attack,
                model,
                device,
                progress=bar.update,
            )
    return out


def run_experiment(
    cfg: DictConfig,
    data_root: Path,
    config_root: Path,
    cache_dir: Path | None = None,
    on_setting: Callable[[ExperimentResults], None] | None = None,
) -> ExperimentResults:
    """Runs the protection experiment of ``cfg`` (see the module docstring) on the photos in ``data_root``.

    Args:
        cfg: a composed ``evaluate`` config.
        data_root: the identity folder (absolute, or relative to the current directory).
        config_root: the ``configs/`` folder sweep entries read config groups from.
        cache_dir: a folder to keep the clean photos' embeddings in between runs
            (:class:`EmbeddingCache`); None keeps them in memory only.
        on_setting: called with the results so far after each transform of each setting (to save partial results).

    Returns:
        The measurements.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: on missing or too small data (before any model loads).
    """
    from cloak.device import resolve_device

    started = time.perf_counter()
    photos = load_photos(cfg, data_root)
    split = photos.split
    log.info(
        "Data %s: %d users (%s), %d shared and %d clean photos; %d distractor identities, %d photos",
        data_root,
        len(split.users),
        ", ".join(split.users),
        len(photos.shared_paths),
        len(photos.probe_paths),
        len(set(photos.distractor_labels)),
        len(photos.distractor_paths),
    )
    transforms = [str(t) for t in cfg.platform.transforms]
    tracker_side = {str(t) for t in cfg.platform.get("tracker_side") or []}
    resolved = {t: compose_transform(t) for t in transforms}  # fails early on unknown names
    metrics = [str(m) for m in cfg.metrics]
    noise_kind = str(cfg.baselines.noise)
    settings = setting_configs(cfg, config_root)

    device = resolve_device(cfg.device)
    detector: FaceDetector = instantiate(cfg.detector)
    pipelines, skipped = build_pipelines(list(cfg.trackers), detector, device, int(cfg.get("dlib_upsample", 1)))
    cache = None
    if cache_dir is not None:
        detector_cfg = OmegaConf.to_container(cfg.detector, resolve=True)
        fingerprint = repr((detector_cfg, int(cfg.get("dlib_upsample", 1)), device.type))
        cache = EmbeddingCache(cache_dir, fingerprint)
    embed = PhotoEmbedder(pipelines, cache)
    log.info("Trackers: %s", ", ".join(embed.trackers))

    results = ExperimentResults(
        experiment=str(cfg.get("experiment_name", "protection")),
        data={
            "root": str(data_root),
            "users": split.users,
            "n_shared": len(photos.shared_paths),
            "n_probes": len(photos.probe_paths),
            "n_distractor_identities": len(set(photos.distractor_labels)),
            "n_distractor_photos": len(photos.distractor_paths),
            "shared_fraction": float(cfg.data.shared_fraction),
            "min_photos": int(cfg.data.min_photos),
            "seed": int(cfg.seed),
        },
        cloak_models=[],
        trackers=embed.trackers,
        skipped_trackers=skipped,
        transforms=transforms,
        tracker_side_transforms=sorted(tracker_side & set(transforms)),
        metrics=metrics,
        noise=noise_kind,
    )

    # Clean photos, embedded once per tracker and per tracker-side transform ("view").
    all_paths = photos.all_paths
    views = ["none", *sorted(tracker_side & set(transforms) - {"none"})]
    clean: dict[str, dict[str, Embedded]] = {}
    for view in views:
        t0 = time.perf_counter()
        clean[view] = embed.paths(all_paths, None if view == "none" else resolved[view], view, desc=f"clean [{view}]")
        misses = {t: int((~e.found).sum()) for t, e in clean[view].items()}
        log.info(
            "Embedded %d clean photos [%s] in %.0f s; no face found: %s",
            len(all_paths),
            view,
            time.perf_counter() - t0,
            misses,
        )

    shared_rows, probe_rows, distractor_rows = photos.rows("shared"), photos.rows("probes"), photos.rows("distractors")
    originals = [read_photo(p) for p in photos.shared_paths]
    cloak_faces = detector.detect_many(originals)
    log.info("Cloak detector: faces in %d of %d shared photos", sum(bool(f) for f in cloak_faces), len(originals))

    # Embeddings of the shared photos under a condition and transform; clean and noise ones are reused across settings.
    shared_cache: dict[tuple[str, str], dict[str, Embedded]] = {}

    def shared_embeddings(key: str, images: Sequence[np.ndarray], transform: str) -> dict[str, Embedded]:
        if (key, transform) not in shared_cache:
            if key == "none" and (transform == "none" or transform in tracker_side):
                shared_cache[(key, transform)] = {
                    t: e.take(shared_rows) for t, e in clean["none" if transform == "none" else transform].items()
                }
            else:
                seen = images if transform == "none" else apply_transform(images, resolved[transform])
                shared_cache[(key, transform)] = embed(seen, desc=f"{key} [{transform}]")
        return shared_cache[(key, transform)]

    models_cache: dict[str, FaceEmbedder | Ensemble] = {}
    noise_cache: dict[float, list[np.ndarray]] = {}
    choices = _hydra_choices()
    for entry in settings:
        scfg = entry.cfg
        model_key = OmegaConf.to_yaml(scfg.model)
        if model_key not in models_cache:
            model = instantiate(scfg.model)
            models_cache[model_key] = model.to(device).eval()
        model = models_cache[model_key]
        cloak_models = model_names(model, scfg.model)
        for name in cloak_models:
            if name not in results.cloak_models:
                results.cloak_models.append(name)
        attack: Attack = instantiate(scfg.attack)
        label = entry.label or auto_label(choices, attack, entry.groups, overridden=bool(entry.overrides))
        setting = Setting(
            label=label,
            attack=attack.name,
            eps=round(attack.eps * 255.0, 6),
            steps=attack.steps,
            max_dssim=attack.max_dssim,
            robust=attack.transform is not None,
        )
        log.info(
            "Setting %s: %s eps %g steps %d max_dssim %s %s",
            label,
            attack.name,
            setting.eps,
            attack.steps,
            attack.max_dssim,
            "robust" if setting.robust else "no transform",
        )
        t0 = time.perf_counter()
        cloaked = cloak_shared(
            originals, cloak_faces, attack, model, device, int(cfg.cloak_batch_size), desc=f"cloaking [{label}]"
        )
        setting.seconds = time.perf_counter() - t0
        setting.n_cloaked = sum(bool(f) for f in cloak_faces)
        log.info("Cloaked %d photos in %.0f s", setting.n_cloaked, setting.seconds)
        if setting.eps not in noise_cache:
            members = {n: m for n, m, _ in as_ensemble(model).items()}
            noise_cache[setting.eps] = [
                random_noise(p, f, members, setting.eps, int(cfg.seed), noise_kind)
                for p, f in zip(originals, cloak_faces)
            ]
        noised = noise_cache[setting.eps]
        results.settings.append(setting)
        for condition, images in (("cloak", cloaked), ("noise", noised)):
            q = quality_row(label, condition, originals, images)
            results.quality.append(q)
            log.info(
                "  %s quality: SSIM %.4f (min %.4f), DSSIM %.4f, PSNR %.2f dB",
                condition,
                q.ssim,
                q.ssim_min,
                q.dssim,
                q.psnr,
            )

        conditions = {
            "cloak": (f"cloak:{label}", cloaked),
            "none": ("none", originals),
            "noise": (f"noise:{setting.eps:g}", noised),
        }
        for transform in transforms:
            side = transform in tracker_side
            view = transform if side else "none"
            for condition in CONDITIONS:
                key, images = conditions[condition]
                if condition == "cloak":
                    shared_cache.pop((key, transform), None)  # a setting's cloak is used once
                shared = shared_embeddings(key, images, transform)
                for tracker in embed.trackers:
                    c = clean[view][tracker]
                    scores = tracker_protection(
                        shared[tracker],
                        photos.shared_labels,
                        c.take(distractor_rows),
                        photos.distractor_labels,
                        c.take(probe_rows),
                        photos.probe_labels,
                        metrics,
                    )
                    for metric, s in scores.items():
                        results.protection.append(
                            ProtectionRow(
                                setting=label,
                                tracker=tracker,
                                relation=relation(tracker, cloak_models),
                                transform=transform,
                                tracker_side=side,
                                condition=condition,
                                metric=metric,
                                protection=s.protection,
                                per_user=s.per_user,
                                n_probes=s.n_probes,
                                n_probes_no_face=s.n_probes_no_face,
                                n_shared_no_face=int((~shared[tracker].found).sum()),
                            )
                        )
            line = "  ".join(
                f"{t}: "
                + "/".join(f"{results.value(label, t, transform, cond, metrics[0]):.2f}" for cond in CONDITIONS)
                for t in embed.trackers
            )
            log.info(
                "  [%s] %s protection (cloak/none/noise) %s", transform, METRIC_NAMES.get(metrics[0], metrics[0]), line
            )
            if on_setting is not None:
                results.seconds = time.perf_counter() - started
                on_setting(results)
        for k in [k for k in shared_cache if k[0].startswith("cloak:")]:
            del shared_cache[k]
    results.seconds = time.perf_counter() - started
    return results
