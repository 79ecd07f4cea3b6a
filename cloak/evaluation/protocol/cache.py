"""Embedding photos with every tracker, and keeping the clean photos' embeddings between runs.

The clean photos (the users' probes and every distractor) are the bulk of a
run and never change between its settings, or between runs on the same data:
:class:`PhotoEmbedder` embeds them once, and with an :class:`EmbeddingCache`
only photos a previous run did not embed.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cloak.evaluation.protocol.dataset import enlarge
from cloak.evaluation.protocol.scoring import Embedded
from cloak.evaluation.trackers.pipelines import Pipeline
from cloak.imaging.platform import PlatformTransform, apply_transform
from cloak.photos import load_photo, write_bytes

log = logging.getLogger(__name__)

#: ``(embedding, found)`` of one photo for one tracker.
CachedEmbedding = tuple[np.ndarray, bool]


def photo_key(path: Path) -> str:
    """A photo's cache key: its absolute path, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


class EmbeddingCache:
    """Clean photos' embeddings on disk, one ``.npz`` per tracker, view and tracker settings.

    A photo is keyed by :func:`photo_key`, so an edited photo is embedded
    again. ``fingerprint`` (the trackers' detector settings and options, the
    device...) is part of the file name: changing it starts a new file.

    Args:
        folder: where the files live (created when first written).
        fingerprint: anything that changes the embeddings besides the photo.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.tag = hashlib.sha1(fingerprint.encode()).hexdigest()[:12]

    def _file(self, tracker: str, view: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{tracker}-{view}")
        return self.folder / f"{safe}-{self.tag}.npz"

    def load(self, tracker: str, view: str) -> dict[str, CachedEmbedding]:
        """Key -> ``(embedding, found)`` of every photo cached for ``tracker`` and ``view``."""
        path = self._file(tracker, view)
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as z:
            return {str(k): (e, bool(f)) for k, e, f in zip(z["keys"], z["emb"], z["found"])}

    def save(self, tracker: str, view: str, entries: dict[str, CachedEmbedding]) -> None:
        """Writes ``entries`` atomically over the file of ``tracker`` and ``view``."""
        if not entries:
            return
        keys = list(entries)
        buf = io.BytesIO()
        np.savez(
            buf,
            keys=np.array(keys, dtype=str),
            emb=np.stack([entries[k][0] for k in keys]).astype(np.float32),
            found=np.array([entries[k][1] for k in keys], dtype=bool),
        )
        write_bytes(buf.getvalue(), self._file(tracker, view), overwrite=True)


class PhotoEmbedder:
    """Runs every tracker's pipeline on photos (with a progress bar).

    Args:
        pipelines: the trackers' pipelines.
        cache: where :meth:`paths` keeps the embeddings of photos read from disk; None: nowhere.
        upscale: photos read from disk are enlarged by this factor first (:func:`enlarge`).
    """

    def __init__(
        self, pipelines: Sequence[Pipeline], cache: EmbeddingCache | None = None, upscale: float = 1.0
    ) -> None:
        self.pipelines = list(pipelines)
        self.upscale = float(upscale)
        self.trackers = [t for p in self.pipelines for t in p.trackers]
        self.cache = cache

    def __call__(self, photos: Sequence[np.ndarray], desc: str) -> dict[str, Embedded]:
        """Tracker -> embeddings of ``photos`` (``[H, W, 3]`` uint8 RGB each)."""
        out: dict[str, Embedded] = {}
        with tqdm(total=len(photos) * len(self.pipelines), desc=desc, unit="photo", leave=False, disable=None) as bar:
            for pipeline in self.pipelines:
                out.update(pipeline.embed(photos, progress=bar.update))
        return out

    def paths(
        self, paths: Sequence[Path], transform: PlatformTransform | None, view: str, desc: str, chunk: int = 64
    ) -> dict[str, Embedded]:
        """Tracker -> embeddings of the photos at ``paths``, ``transform`` applied first.

        Photos are read (upright, :func:`cloak.photos.load_photo`) a chunk at a
        time. With a cache, only photos it lacks for ``view`` (the transform's
        name) are embedded, and they are added to it.
        """
        keys = [photo_key(p) for p in paths]
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
            desc_here = f"{desc} {'+'.join(pipeline.trackers)}"
            with tqdm(total=len(todo), desc=desc_here, unit="photo", leave=False, disable=None) as bar:
                for start in range(0, len(todo), chunk):
                    rows = todo[start : start + chunk]
                    photos = [enlarge(load_photo(paths[i]).rgb, self.upscale) for i in rows]
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
