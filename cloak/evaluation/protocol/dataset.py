"""Face-identity folders and the user/tracker split of the evaluation.

A dataset is a folder of identities, one sub-folder of photos each:
``<root>/<identity>/<image>``, e.g. LFW as ``lfw-dev/<Name>/<Name>_NNNN.jpg``
(the layout scikit-learn's ``fetch_lfw_people`` stores under
``~/scikit_learn_data/lfw_home/lfw_funneled``).

The protocol (FaceCure, Radiya-Dixit et al. 2022; LowKey, Cherepanova et al.
2021): a few identities are the *users*; each shares most of their photos
cloaked (the *shared* photos) and the tracker later tries to recognise them in
the rest (the *clean* photos). Everyone else's photos stay clean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cloak.photos.listing import PHOTO_EXTENSIONS

IMAGE_SUFFIXES = PHOTO_EXTENSIONS  # the one list of photo suffixes, cloak.photos.listing

_LAYOUT = (
    "expected one folder per identity holding its photos, <root>/<identity>/<image> "
    "(e.g. LFW: lfw-dev/<Name>/<Name>_NNNN.jpg, as scikit-learn's fetch_lfw_people stores it "
    "under ~/scikit_learn_data/lfw_home/lfw_funneled)"
)


def enlarge(photo: np.ndarray, factor: float) -> np.ndarray:
    """A ``[H, W, 3]`` uint8 photo resized by ``factor`` with Lanczos (the photo itself at 1).

    Experiments enlarge small LFW photos this way to stand in for phone portraits.
    """
    if factor == 1:
        return photo
    h, w = photo.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


def load_identity_folder(root: str | Path, min_images: int = 1, min_identities: int = 1) -> dict[str, list[Path]]:
    """Lists the photos of every identity in ``<root>/<identity>/<image>``.

    Hidden files and folders (names starting with ``.``) and files whose suffix
    is not in :data:`IMAGE_SUFFIXES` are ignored. Files directly in ``root`` are
    ignored too.

    Args:
        root: the dataset folder.
        min_images: keep only identities with at least this many photos.
        min_identities: fewest identities (after ``min_images``) accepted.

    Returns:
        Identity name -> its photo paths, identities and paths sorted by name.

    Raises:
        FileNotFoundError: if ``root`` does not exist.
        NotADirectoryError: if ``root`` is not a folder.
        ValueError: if fewer than ``min_identities`` identities have
            ``min_images`` photos, or an argument is below 1.
    """
    if min_images < 1 or min_identities < 1:
        raise ValueError(f"min_images and min_identities must be >= 1, got {min_images} and {min_identities}")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"face dataset folder {root} does not exist; {_LAYOUT}")
    if not root.is_dir():
        raise NotADirectoryError(f"face dataset path {root} is not a folder; {_LAYOUT}")
    identities: dict[str, list[Path]] = {}
    n_found = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        n_found += bool(photos)
        if len(photos) >= min_images:
            identities[folder.name] = photos
    if len(identities) < min_identities:
        raise ValueError(
            f"face dataset folder {root} has {len(identities)} identities with >= {min_images} photos "
            f"({n_found} with any), need at least {min_identities}; {_LAYOUT}"
        )
    return identities


@dataclass(frozen=True)
class UserSplit:
    """Who the users are and which of their photos are shared cloaked or kept for the tracker.

    Attributes:
        users: the chosen user identities, sorted.
        shared: user -> photos they share, to be cloaked (the tracker trains on them).
        clean: user -> their other photos, which the tracker later sees clean.
        others: every non-user identity -> all its photos, always clean.
    """

    users: list[str]
    shared: dict[str, list[Path]] = field(default_factory=dict)
    clean: dict[str, list[Path]] = field(default_factory=dict)
    others: dict[str, list[Path]] = field(default_factory=dict)


def split_users(
    identities: Mapping[str, Sequence[Path]],
    n_users: int,
    min_photos: int = 10,
    shared_fraction: float = 0.7,
    seed: int = 0,
) -> UserSplit:
    """Picks ``n_users`` users at random and splits each one's photos into shared and clean.

    Users are drawn among identities with at least ``min_photos`` photos. Each
    user's photos are shuffled and the first ``round(shared_fraction * n)``
    (halves rounded up, kept between 1 and ``n - 1``) are shared; the rest are
    clean. The result depends only on ``seed`` and the contents of
    ``identities``, not on its order.

    Args:
        identities: identity -> photo paths, e.g. from :func:`load_identity_folder`.
        n_users: how many users to pick, ``>= 1``.
        min_photos: fewest photos a user may have, ``>= 2``.
        shared_fraction: fraction of each user's photos shared cloaked, in ``(0, 1)``.
        seed: seed of the draw.

    Returns:
        The split.

    Raises:
        ValueError: if fewer identities than ``n_users`` have ``min_photos``
            photos (the message says how many do), or an argument is out of range.
    """
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    if min_photos < 2:
        raise ValueError(f"min_photos must be >= 2 so each user has shared and clean photos, got {min_photos}")
    if not 0 < shared_fraction < 1:
        raise ValueError(f"shared_fraction must be in (0, 1), got {shared_fraction}")
    eligible = sorted(name for name, photos in identities.items() if len(photos) >= min_photos)
    if len(eligible) < n_users:
        raise ValueError(
            f"asked for {n_users} users with >= {min_photos} photos each, but only {len(eligible)} of "
            f"{len(identities)} identities have that many; lower n_users or min_photos"
        )
    rng = np.random.default_rng(seed)
    users = sorted(eligible[i] for i in rng.choice(len(eligible), size=n_users, replace=False))
    shared: dict[str, list[Path]] = {}
    clean: dict[str, list[Path]] = {}
    for user in users:
        photos = sorted(identities[user])
        order = rng.permutation(len(photos))
        n_shared = min(len(photos) - 1, max(1, int(np.floor(shared_fraction * len(photos) + 0.5))))
        shared[user] = sorted(photos[i] for i in order[:n_shared])
        clean[user] = sorted(photos[i] for i in order[n_shared:])
    others = {name: sorted(identities[name]) for name in sorted(identities) if name not in shared}
    return UserSplit(users=users, shared=shared, clean=clean, others=others)


class DatasetError(ValueError):
    """The data folder holds too few identities (or users) for the protocol."""


@dataclass
class ExperimentPhotos:
    """The photos of a run, in one order: users' shared, users' clean (probes), distractors.

    Attributes:
        split: the users and their shared and clean photos.
        shared_paths, shared_labels: the users' shared photos and their users.
        probe_paths, probe_labels: the users' clean photos and their users.
        distractor_paths, distractor_labels: the distractor identities' photos and identities.
    """

    split: UserSplit
    shared_paths: list[Path]
    shared_labels: np.ndarray
    probe_paths: list[Path]
    probe_labels: np.ndarray
    distractor_paths: list[Path]
    distractor_labels: np.ndarray

    @property
    def all_paths(self) -> list[Path]:
        """Every photo: shared, then probes, then distractors."""
        return [*self.shared_paths, *self.probe_paths, *self.distractor_paths]

    def summary(self, root: Path | str, shared_fraction: float, min_photos: int, seed: int) -> dict:
        """What a results file records about the run's data: where, who, how many."""
        return {
            "root": str(root),
            "users": self.split.users,
            "n_shared": len(self.shared_paths),
            "n_probes": len(self.probe_paths),
            "n_distractor_identities": len(set(self.distractor_labels)),
            "n_distractor_photos": len(self.distractor_paths),
            "shared_fraction": float(shared_fraction),
            "min_photos": int(min_photos),
            "seed": int(seed),
        }

    def rows(self, part: str) -> np.ndarray:
        """Indices of ``part`` (``shared``, ``probes`` or ``distractors``) in :attr:`all_paths`."""
        n_s, n_p, n_d = len(self.shared_paths), len(self.probe_paths), len(self.distractor_paths)
        start, n = {"shared": (0, n_s), "probes": (n_s, n_p), "distractors": (n_s + n_p, n_d)}[part]
        return np.arange(start, start + n)


def _cap_photos_per_user(split: UserSplit, per_user: int, shared_fraction: float) -> UserSplit:
    """Each user's first shared and clean photos, ``per_user`` in all, in the split's proportions."""
    if per_user < 2:
        raise DatasetError(f"data.max_photos_per_user must be >= 2 (a shared and a clean photo), got {per_user}")
    n_shared = min(per_user - 1, max(1, int(np.floor(shared_fraction * per_user + 0.5))))
    return UserSplit(
        users=split.users,
        shared={u: split.shared[u][:n_shared] for u in split.users},
        clean={u: split.clean[u][: per_user - n_shared] for u in split.users},
        others=split.others,
    )


def select_photos(
    root: Path,
    n_users: int,
    min_photos: int,
    shared_fraction: float,
    seed: int,
    max_photos_per_user: int | None = None,
    max_distractors: int | None = None,
) -> ExperimentPhotos:
    """The users, their shared and clean photos, and the distractors of a run, from the photos in ``root``.

    Args:
        root: the identity folder.
        n_users, min_photos, shared_fraction, seed: as :func:`split_users`.
        max_photos_per_user: each user keeps this many photos (shared and clean in proportion); None: all.
        max_distractors: distractor identities kept (a draw seeded with ``seed + 1``); None: all.

    Raises:
        FileNotFoundError / NotADirectoryError: if ``root`` is missing or not a folder.
        DatasetError: if it holds too few identities, or too few with ``min_photos`` photos.
    """
    hint = "; point data.root=<folder> (or $CLOAK_LFW_DEV) at a folder of <identity>/<image> photos"
    try:
        identities = load_identity_folder(root, min_images=1, min_identities=n_users + 1)
        split = split_users(identities, n_users, min_photos, shared_fraction, seed)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise type(err)(f"{err}{hint}") from err
    except ValueError as err:
        raise DatasetError(f"{err}{hint}; the protocol needs {n_users} users and at least one other identity") from err
    if max_photos_per_user is not None:
        split = _cap_photos_per_user(split, int(max_photos_per_user), shared_fraction)
    others = sorted(split.others)
    if max_distractors is not None and len(others) > int(max_distractors):
        rng = np.random.default_rng(seed + 1)
        others = sorted(others[i] for i in rng.choice(len(others), size=int(max_distractors), replace=False))
    return ExperimentPhotos(
        split=split,
        shared_paths=[p for u in split.users for p in split.shared[u]],
        shared_labels=np.array([u for u in split.users for _ in split.shared[u]], dtype=str),
        probe_paths=[p for u in split.users for p in split.clean[u]],
        probe_labels=np.array([u for u in split.users for _ in split.clean[u]], dtype=str),
        distractor_paths=[p for name in others for p in split.others[name]],
        distractor_labels=np.array([name for name in others for _ in split.others[name]], dtype=str),
    )
