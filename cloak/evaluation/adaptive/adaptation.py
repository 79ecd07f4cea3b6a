"""The tracker's adaptation set: public identities it cloaks with the tool and trains against, and a cache of cloaks.

:func:`adaptation_photos` draws the identities (neither users nor distractors);
:class:`CloakCache` keeps cloaked photos on disk between runs of
:mod:`cloak.evaluation.adaptive.experiment`, and :func:`cloak_cached` cloaks
only the photos it lacks.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from cloak.attacks import Attack
from cloak.detection import Face
from cloak.evaluation.protocol.cache import photo_key
from cloak.evaluation.protocol.dataset import DatasetError, UserSplit
from cloak.evaluation.protocol.steps import cloak_in_batches
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble
from cloak.photos import write_bytes

log = logging.getLogger(__name__)


def adaptation_photos(
    split: UserSplit,
    distractor_labels: Sequence[str],
    n_identities: int,
    photos_per_identity: int,
    seed: int,
) -> tuple[list[Path], np.ndarray]:
    """The adaptive tracker's own photos: identities that are neither users nor distractors.

    Identities with at least two photos are drawn with ``seed + 2``; each keeps
    its first ``photos_per_identity`` photos (sorted by name).

    Returns:
        ``(paths, labels)``.

    Raises:
        DatasetError: if fewer than two such identities exist (the message says what to lower).
    """
    if photos_per_identity < 2:
        raise DatasetError(f"adaptive.photos_per_identity must be >= 2, got {photos_per_identity}")
    taken = set(distractor_labels)
    free = sorted(name for name, photos in split.others.items() if name not in taken and len(photos) >= 2)
    if len(free) < 2:
        raise DatasetError(
            f"only {len(free)} identities with >= 2 photos are left for the tracker's adaptation set after the "
            f"users and {len(taken)} distractor identities; lower data.max_distractors or use a larger data.root"
        )
    rng = np.random.default_rng(seed + 2)
    n = min(int(n_identities), len(free))
    if n < int(n_identities):
        log.warning("Adaptation set: only %d of the %d identities asked for are free", n, n_identities)
    names = sorted(free[i] for i in rng.choice(len(free), size=n, replace=False))
    paths = [p for name in names for p in split.others[name][:photos_per_identity]]
    labels = np.array([name for name in names for _ in split.others[name][:photos_per_identity]], dtype=str)
    return paths, labels


class CloakCache:
    """Cloaked photos on disk (PNG), keyed by the photo (path, size, time) and the cloak's whole config.

    Cloaks are seeded per photo (the same photo gets the same cloak alone or in a
    batch), so a cached copy is what cloaking again would give.

    Args:
        folder: the cache folder (a ``cloaked-<tag>`` sub-folder is used).
        fingerprint: everything besides the photo that changes the cloak.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = Path(folder) / f"cloaked-{hashlib.sha1(fingerprint.encode()).hexdigest()[:12]}"

    @classmethod
    def of(cls, folder: Path, cfg: DictConfig, device: torch.device, upscale: float = 1.0) -> CloakCache:
        """The cache in ``folder`` of the cloak of a setting's ``cfg`` (its model, attack and detector)."""
        cloak_cfg = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "attack", "detector")}
        fingerprint = (cloak_cfg, device.type)
        return cls(folder, repr(fingerprint if upscale == 1 else (*fingerprint, upscale)))

    def _file(self, path: Path) -> Path:
        return self.folder / f"{hashlib.sha1(photo_key(path).encode()).hexdigest()[:20]}.png"

    def load(self, path: Path) -> np.ndarray | None:
        """The cloaked copy of the photo at ``path``, or None."""
        file = self._file(path)
        if not file.is_file():
            return None
        with Image.open(file) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)

    def save(self, path: Path, cloaked: np.ndarray) -> None:
        """Keeps ``cloaked``, the cloaked copy of the photo at ``path`` (lossless PNG, written atomically)."""
        buf = io.BytesIO()
        Image.fromarray(cloaked).save(buf, format="PNG")
        write_bytes(buf.getvalue(), self._file(path), overwrite=True)


def cloak_cached(
    paths: Sequence[Path],
    photos: Sequence[np.ndarray],
    faces: Sequence[list[Face]],
    cache: CloakCache | None,
    attack: Attack,
    model: FaceEmbedder | Ensemble,
    device: torch.device,
    batch_size: int,
    desc: str,
) -> list[np.ndarray]:
    """The photos (read from ``paths``) cloaked: from ``cache`` where it has them, else cloaked in batches and kept."""
    t0 = time.perf_counter()
    cached = [cache.load(path) if cache else None for path in paths]
    todo = [i for i, c in enumerate(cached) if c is None or c.shape != photos[i].shape]
    if len(todo) < len(paths):
        log.info("Cloak cache: %d of %d photos already cloaked", len(paths) - len(todo), len(paths))
    n_batches = -(-len(todo) // batch_size)

    def keep(start: int, fresh: list[np.ndarray]) -> None:
        for i, image in zip(todo[start : start + batch_size], fresh):
            cached[i] = image
            if cache is not None:
                cache.save(paths[i], image)
        k = start // batch_size + 1
        log.info("Cloaked batch %d of %d (%.0f s so far)", k, n_batches, time.perf_counter() - t0)

    todo_photos, todo_faces = [photos[i] for i in todo], [faces[i] for i in todo]
    cloak_in_batches(todo_photos, todo_faces, attack, model, device, batch_size, desc, on_batch=keep)
    return [np.asarray(c) for c in cached]
