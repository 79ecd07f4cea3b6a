"""Weighted sets of face embedders, and Gaussian-smoothed members (as LowKey uses)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cloak.models.base import FaceEmbedder
from cloak.transforms import gaussian_blur

log = logging.getLogger(__name__)


class GaussianSmoothed(FaceEmbedder):
    """An embedder that sees its input through a Gaussian blur.

    LowKey adds such copies of each model to its ensemble: a cloak that fools the
    smoothed model too lives in lower frequencies, which survive JPEG and resizing.

    Args:
        inner: the embedder to wrap; its input size and template are kept.
        sigma: blur standard deviation in pixels of the model's input.
    """

    def __init__(self, inner: FaceEmbedder, sigma: float = 1.0) -> None:
        super().__init__(inner.input_size, inner.template, inner.embedding_dim)
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.inner = inner
        self.sigma = float(sigma)
        self.name = f"{inner.name}/smoothed"
        self.cosine_threshold = inner.cosine_threshold

    @property
    def match_threshold(self) -> float | None:
        """The wrapped model's (its descriptor may not be the unit embedding)."""
        return self.inner.match_threshold

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        blurred = gaussian_blur(faces, self.sigma)
        return self.inner.embed(blurred)


class Ensemble(nn.Module):
    """A named, weighted set of face embedders.

    Attacks align each face once per member (members may differ in input size and
    template) and add the members' losses with these weights. A single model is
    an ensemble of one (see :func:`as_ensemble`).

    Args:
        members: name -> embedder.
        weights: name -> weight; missing names weigh 1.
        normalise: divide each member's weight by its loss scale, ``1 - cosine_threshold``
            (see :attr:`FaceEmbedder.cosine_threshold`), so that a step moves every member
            by a similar share of the way to its own same-person threshold. Members
            without a threshold keep scale 1. The weights then sum to 1.
    """

    def __init__(
        self,
        members: Mapping[str, FaceEmbedder],
        weights: Mapping[str, float] | None = None,
        normalise: bool = True,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        for name, member in members.items():
            if not isinstance(member, FaceEmbedder):
                raise TypeError(f"ensemble member {name!r} is a {type(member).__name__}, not a FaceEmbedder")
        weights = dict(weights or {})
        unknown = set(weights) - set(members)
        if unknown:
            raise ValueError(f"weights given for unknown members {sorted(unknown)}; members are {sorted(members)}")
        raw = [float(weights.get(name, 1.0)) for name in members]
        if any(w < 0 for w in raw) or sum(raw) <= 0:
            raise ValueError(f"ensemble weights must be >= 0 with a positive sum, got {raw}")
        if normalise:
            raw = [w / loss_scale(members[name]) for name, w in zip(members, raw)]
        self.members = nn.ModuleDict(dict(members))
        self.weights = {name: w / sum(raw) for name, w in zip(members, raw)}

    def items(self) -> list[tuple[str, FaceEmbedder, float]]:
        """``(name, embedder, weight)`` for each member."""
        return [(name, member, self.weights[name]) for name, member in self.members.items()]

    def __len__(self) -> int:
        return len(self.members)


def build_ensemble(
    members: Mapping[str, Any],
    weights: Mapping[str, float] | None = None,
    optional: Sequence[str] = (),
    normalise: bool = True,
) -> Ensemble:
    """An :class:`Ensemble` from member configs; ``optional`` members join only when their weights are here.

    Args:
        members: name -> a Hydra config of a :class:`FaceEmbedder` (a ``_target_`` node),
            or an embedder already built.
        weights: name -> weight (see :class:`Ensemble`).
        optional: members left out, with a log line, when loading them raises
            :class:`~cloak.models.weights.WeightsUnavailableError` (e.g. facenet weights
            that were never downloaded); any other member's failure is an error.
        normalise: see :class:`Ensemble`.
    """
    from hydra.utils import instantiate

    from cloak.models.weights import WeightsUnavailableError

    unknown = set(optional) - set(members)
    if unknown:
        raise ValueError(f"optional names unknown members {sorted(unknown)}; members are {sorted(members)}")
    built: dict[str, FaceEmbedder] = {}
    for name, spec in members.items():
        try:
            built[name] = spec if isinstance(spec, FaceEmbedder) else instantiate(spec)
        except Exception as err:
            # Hydra wraps the loader's error; look for the missing-weights one in the chain.
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, WeightsUnavailableError):
                cause = cause.__cause__
            if cause is None or name not in optional:
                raise
            log.info("Ensemble member %s left out: %s", name, str(cause).split(". ")[0])
    weights = {k: v for k, v in (weights or {}).items() if k in built}
    return Ensemble(built, weights, normalise=normalise)


def loss_scale(model: FaceEmbedder) -> float:
    """How far a model's cosine similarity must fall for a face to stop matching itself."""
    if model.cosine_threshold is None:
        return 1.0
    if not -1 < model.cosine_threshold < 1:
        raise ValueError(f"{model.name}: cosine_threshold must be in (-1, 1), got {model.cosine_threshold}")
    return 1.0 - model.cosine_threshold


def as_ensemble(model: FaceEmbedder | Ensemble) -> Ensemble:
    """Wraps a single embedder as an ensemble of one (member named ``model.name``); passes ensembles through."""
    if isinstance(model, Ensemble):
        return model
    return Ensemble({model.name: model})
