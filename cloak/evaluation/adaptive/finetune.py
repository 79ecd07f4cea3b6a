"""An adaptive tracker: one that has ``cloak`` too and trains against it.

FaceCure (Radiya-Dixit, Hong, Carlini, Tramèr, ICLR 2022) showed that cloaks
are a one-shot defence: the tool is public, so a tracker can cloak photos of
people it already knows (public identities, not the users) and train its
recognizer to see through cloaks. Two ways, both trained only on such an
*adaptation set* of (cloaked, clean) twins:

* :class:`~cloak.evaluation.adaptive.correction.EmbeddingCorrection`: a small residual
  MLP on top of the tracker's frozen embeddings (:mod:`cloak.evaluation.adaptive.correction`).
* :func:`finetune_dlib`: robust training of the tracker's own model, dlib's
  ResNet: its last residual block(s) and final linear layer are trained for a
  few epochs at a small learning rate to classify the adaptation identities
  from clean *and* cloaked faces (a cosine-softmax head), while an anchor term
  keeps clean embeddings where the original model put them, so the embedding
  still works for people outside the adaptation set.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cloak.alignment import align_faces
from cloak.evaluation.adaptive.correction import cos_loss
from cloak.evaluation.adaptive.results import FinetuneFit
from cloak.evaluation.trackers.pipelines import ModelPipeline
from cloak.models.base import FaceEmbedder
from cloak.models.dlib_resnet import DlibResNet
from cloak.photos import to_tensor

log = logging.getLogger(__name__)


def aligned_faces(
    photos: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray | None],
    model: FaceEmbedder,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, np.ndarray]:
    """The largest face of each photo aligned into ``model``'s input, as the tracker's pipeline aligns it.

    Args:
        photos: ``[H, W, 3]`` uint8 RGB photos.
        landmarks: ``[5, 2]`` landmarks of each photo's face, None where none was found.
        model: whose template and input size to align to.
        device: where the crops go.

    Returns:
        ``([M, 3, h, w] crops of the photos with a face, [N] bool found)``.
    """
    found = np.array([lm is not None for lm in landmarks], dtype=bool)
    h, w = model.input_size
    crops = [
        align_faces(
            to_tensor(photo).to(device),
            torch.as_tensor(lm[None], dtype=torch.float32, device=device),
            model.template.to(device),
            model.input_size,
        )
        for photo, lm in zip(photos, landmarks)
        if lm is not None
    ]
    return (torch.cat(crops) if crops else torch.zeros(0, 3, h, w, device=device)), found


def aligned_twins(
    pipeline: ModelPipeline,
    model: FaceEmbedder,
    originals: Sequence[np.ndarray],
    cloaked: Sequence[np.ndarray],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The (clean, cloaked) twins' faces aligned as ``pipeline`` aligns them for ``model``, where it finds both.

    Returns:
        ``([M, 3, h, w] clean crops, [M, 3, h, w] cloaked crops, the M rows of the twins kept)``.
    """
    clean_lm = pipeline.landmarks(originals)
    cloaked_lm = pipeline.landmarks(cloaked)
    keep = [i for i, (c, k) in enumerate(zip(clean_lm, cloaked_lm)) if c is not None and k is not None]
    clean_faces, _ = aligned_faces([originals[i] for i in keep], [clean_lm[i] for i in keep], model, device)
    cloaked_faces, _ = aligned_faces([cloaked[i] for i in keep], [cloaked_lm[i] for i in keep], model, device)
    return clean_faces, cloaked_faces, keep


class _TrunkFeatures:
    """Captures the input of one residual block of a :class:`DlibResNet` during a forward pass."""

    def __init__(self, model: DlibResNet, block: int) -> None:
        self.value: torch.Tensor | None = None
        self._handle = model.blocks[block].register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.value = args[0].detach()

    def remove(self) -> None:
        self._handle.remove()


@torch.no_grad()
def dlib_trunk(model: DlibResNet, faces: torch.Tensor, blocks: int, batch_size: int = 64) -> torch.Tensor:
    """The activations entering the last ``blocks`` residual blocks of ``model`` for ``faces``."""
    if not 1 <= blocks <= len(model.blocks):
        raise ValueError(f"blocks must be in [1, {len(model.blocks)}], got {blocks}")
    hook = _TrunkFeatures(model, len(model.blocks) - blocks)
    out = []
    try:
        for start in range(0, len(faces), batch_size):
            model.embed(faces[start : start + batch_size])
            assert hook.value is not None
            out.append(hook.value)
    finally:
        hook.remove()
    return torch.cat(out)


def dlib_head(model: DlibResNet, trunk: torch.Tensor, blocks: int) -> torch.Tensor:
    """Unit embeddings from :func:`dlib_trunk` activations: the last ``blocks`` blocks, pooling, fc."""
    x = model.blocks[len(model.blocks) - blocks :](trunk)
    return F.normalize(model.fc(x.mean(dim=(2, 3))), dim=-1)


def finetune_dlib(
    model: DlibResNet,
    clean_faces: torch.Tensor,
    cloaked_faces: torch.Tensor,
    labels: Sequence[str] | np.ndarray,
    blocks: int = 2,
    epochs: int = 10,
    lr: float = 1e-4,
    batch_size: int = 32,
    anchor_weight: float = 1.0,
    scale: float = 16.0,
    seed: int = 0,
    tracker: str = "dlib_resnet",
) -> tuple[DlibResNet, FinetuneFit]:
    """A copy of ``model`` with its last ``blocks`` residual blocks and fc trained against cloaks.

    Per batch of (clean, cloaked) twins, the loss is the cross-entropy of a
    cosine-softmax identity head (``scale * cos(embedding, class weight)``,
    class weights starting at each identity's mean clean embedding) on both
    twins (training on cloaked photos with their true identities, as FaceCure's
    robust training does), plus ``anchor_weight`` times ``1 - cos`` between
    each twin's new embedding and the original model's embedding of the
    *clean* face: clean faces stay where they were (so the embedding still
    works for people outside the adaptation set) and cloaked ones are pulled
    there. Only the trained layers run per step: the frozen trunk's
    activations are computed once.

    Args:
        model: the tracker's model (left unchanged).
        clean_faces, cloaked_faces: ``[N, 3, 150, 150]`` aligned twins (same order).
        labels: ``[N]`` their identities.
        blocks: how many of the last residual blocks to train (with the fc).
        epochs, lr, batch_size: Adam's schedule.
        anchor_weight: weight of the pull towards the original clean embeddings.
        scale: the cosine-softmax scale.
        seed: seeds the batches.
        tracker: the tracker's name, for the fit's record.

    Returns:
        The fine-tuned copy (eval mode, frozen) and its fit.

    Raises:
        TypeError: if ``model`` is not a :class:`DlibResNet`.
        ValueError: on mismatched inputs or fewer than two identities.
    """
    classes, y = _identities(model, clean_faces, cloaked_faces, labels)
    tuned = copy.deepcopy(model).eval().requires_grad_(False)
    trained = [*tuned.blocks[len(tuned.blocks) - blocks :], tuned.fc]
    for module in trained:
        module.requires_grad_(True)
    data = _twin_features(tuned, clean_faces, cloaked_faces, y, len(classes), blocks)
    head = nn.Parameter(F.normalize(data.centres, dim=-1).clone())
    opt = torch.optim.Adam([p for m in trained for p in m.parameters()] + [head], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    fit = FinetuneFit(tracker, blocks, int(epochs), float(lr), int(batch_size), len(classes), 2 * len(y))
    for epoch in range(int(epochs)):
        fit.losses.append(_finetune_epoch(tuned, head, opt, data, blocks, batch_size, anchor_weight, scale, gen))
        log.info("Fine-tuning %s: epoch %d/%d, loss %.4f", tracker, epoch + 1, epochs, fit.losses[-1])
    tuned.eval().requires_grad_(False)
    _evaluate_finetune(tuned, head, data, blocks, scale, fit)
    return tuned, fit


def _identities(
    model: DlibResNet, clean_faces: torch.Tensor, cloaked_faces: torch.Tensor, labels: Sequence[str] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The identities of the twins and each twin's class index, after checking the inputs of :func:`finetune_dlib`."""
    if not isinstance(model, DlibResNet):
        raise TypeError(f"fine-tuning needs dlib's ResNet (DlibResNet), got {type(model).__name__}")
    labels = np.asarray(labels).astype(str)
    if clean_faces.shape != cloaked_faces.shape or len(clean_faces) != len(labels):
        raise ValueError(
            f"need matching clean and cloaked faces and one label each, got {list(clean_faces.shape)}, "
            f"{list(cloaked_faces.shape)} and {len(labels)} labels"
        )
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"fine-tuning needs faces of at least two identities, got {len(classes)}")
    return classes, y


@dataclass
class _TwinFeatures:
    """What fine-tuning trains on, computed once with the frozen trunk.

    Attributes:
        trunk_clean, trunk_cloaked: the twins' activations entering the trained blocks.
        anchor, anchor_cloaked: the original model's unit embeddings of the clean and cloaked twins.
        targets: each twin's class index.
        centres: each class's mean clean embedding (the head's starting weights, not normalised).
    """

    trunk_clean: torch.Tensor
    trunk_cloaked: torch.Tensor
    anchor: torch.Tensor
    anchor_cloaked: torch.Tensor
    targets: torch.Tensor
    centres: torch.Tensor


def _twin_features(
    tuned: DlibResNet,
    clean_faces: torch.Tensor,
    cloaked_faces: torch.Tensor,
    y: np.ndarray,
    n_classes: int,
    blocks: int,
) -> _TwinFeatures:
    """The frozen trunk's activations of the twins, their original embeddings and the classes' centres."""
    device = next(tuned.parameters()).device
    trunk_clean = dlib_trunk(tuned, clean_faces.to(device), blocks)
    trunk_cloaked = dlib_trunk(tuned, cloaked_faces.to(device), blocks)
    with torch.no_grad():
        anchor = dlib_head(tuned, trunk_clean, blocks)
        anchor_cloaked = dlib_head(tuned, trunk_cloaked, blocks)
        targets = torch.as_tensor(y, device=device)
        centres = torch.stack([anchor[targets == c].mean(0) for c in range(n_classes)])
    return _TwinFeatures(trunk_clean, trunk_cloaked, anchor, anchor_cloaked, targets, centres)


def _logits(emb: torch.Tensor, head: torch.Tensor, scale: float) -> torch.Tensor:
    """The cosine-softmax head's logits: ``scale * cos(embedding, class weight)``."""
    return scale * emb @ F.normalize(head, dim=-1).T


def _finetune_epoch(
    tuned: DlibResNet,
    head: nn.Parameter,
    opt: torch.optim.Optimizer,
    data: _TwinFeatures,
    blocks: int,
    batch_size: int,
    anchor_weight: float,
    scale: float,
    gen: torch.Generator,
) -> float:
    """One epoch over the twins in batches drawn with ``gen``; returns the mean loss per twin pair."""
    n = len(data.targets)
    order = torch.randperm(n, generator=gen).to(data.targets.device)
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        emb_clean = dlib_head(tuned, data.trunk_clean[idx], blocks)
        emb_cloaked = dlib_head(tuned, data.trunk_cloaked[idx], blocks)
        anchor, targets = data.anchor[idx], data.targets[idx]
        loss = (
            F.cross_entropy(_logits(emb_clean, head, scale), targets)
            + F.cross_entropy(_logits(emb_cloaked, head, scale), targets)
            + anchor_weight * (cos_loss(emb_clean, anchor) + cos_loss(emb_cloaked, anchor))
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / n


@torch.no_grad()
def _evaluate_finetune(
    tuned: DlibResNet, head: torch.Tensor, data: _TwinFeatures, blocks: int, scale: float, fit: FinetuneFit
) -> None:
    """Records the fine-tuned model's identity accuracy on the twins and how close it brings them, in ``fit``."""
    emb_clean = dlib_head(tuned, data.trunk_clean, blocks)
    emb_cloaked = dlib_head(tuned, data.trunk_cloaked, blocks)
    fit.train_accuracy_clean = float((_logits(emb_clean, head, scale).argmax(1) == data.targets).float().mean())
    fit.train_accuracy_cloaked = float((_logits(emb_cloaked, head, scale).argmax(1) == data.targets).float().mean())
    before = float(F.cosine_similarity(data.anchor, data.anchor_cloaked, dim=-1).mean())
    after = float(F.cosine_similarity(emb_clean, emb_cloaked).mean())
    log.info(
        "Fine-tuned %s: identity accuracy clean %.2f, cloaked %.2f; cos(cloaked, clean) %.3f -> %.3f",
        fit.tracker,
        fit.train_accuracy_clean,
        fit.train_accuracy_cloaked,
        before,
        after,
    )
