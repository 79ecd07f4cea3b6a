"""What the adaptive experiment's steps hand each other (:mod:`cloak.evaluation.adaptive.experiment`).

:meth:`~cloak.evaluation.adaptive.experiment.AdaptiveExperiment.load` returns the
:class:`Tools`, ``cloak`` the :class:`Cloaked` photos and ``embed`` their
:class:`Embeddings`; each later step takes what it needs of these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloak.attacks import Attack
from cloak.detection import Face
from cloak.evaluation.adaptive.adaptation import CloakCache
from cloak.evaluation.protocol.scoring import Embedded
from cloak.evaluation.protocol.steps import Trackers
from cloak.evaluation.protocol.sweep import SweepSetting
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble


@dataclass
class Tools:
    """What :meth:`AdaptiveExperiment.load` builds: the trackers and the cloak of the run's setting.

    Attributes:
        setting: the cloak's setting.
        trackers: the detector and the base trackers.
        model, attack: the cloak.
        cloak_cache: where cloaked photos are kept between runs; None: nowhere.
    """

    setting: SweepSetting
    trackers: Trackers
    model: FaceEmbedder | Ensemble
    attack: Attack
    cloak_cache: CloakCache | None


@dataclass
class Cloaked:
    """What :meth:`AdaptiveExperiment.cloak` returns: the users' shared photos and the adaptation set.

    Each as read (enlarged by ``data.upscale``), the faces the cloak's detector found
    in each, and cloaked.
    """

    shared_originals: list[np.ndarray]
    shared_faces: list[list[Face]]
    shared_cloaked: list[np.ndarray]
    adapt_originals: list[np.ndarray]
    adapt_faces: list[list[Face]]
    adapt_cloaked: list[np.ndarray]


@dataclass
class Embeddings:
    """What :meth:`AdaptiveExperiment.embed` returns: tracker -> embeddings, for each base tracker.

    Attributes:
        clean: every protocol photo, clean.
        cloaked: the users' shared photos, cloaked.
        adapt_clean, adapt_cloaked: the adaptation set, clean and cloaked.
    """

    clean: dict[str, Embedded]
    cloaked: dict[str, Embedded]
    adapt_clean: dict[str, Embedded]
    adapt_cloaked: dict[str, Embedded]
