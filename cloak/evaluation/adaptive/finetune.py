"""An adaptive tracker: one that has ``cloak`` too and trains against it.

FaceCure (Radiya-Dixit, Hong, Carlini, Tramèr, ICLR 2022) showed that cloaks
are a one-shot defence: the tool is public, so a tracker can cloak photos of
people it already knows (public identities, not the users) and train its
recognizer to see through cloaks. Two ways, both trained only on such an
*adaptation set* of (cloaked, clean) twins:

* :class:`EmbeddingCorrection` (:func:`train_correction`): a small residual
  MLP on top of the tracker's frozen embeddings, trained so that a cloaked
  photo's embedding lands on its clean twin's (and a clean one stays put). It
  then corrects every embedding the tracker computes (:func:`correct`).
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cloak.alignment import align_faces
from cloak.evaluation.adaptive.results import CorrectionFit, FinetuneFit
from cloak.evaluation.protocol.scoring import Embedded
from cloak.evaluation.trackers.pipelines import ModelPipeline
from cloak.models.base import FaceEmbedder
from cloak.models.dlib_resnet import DlibResNet
from cloak.photos import to_tensor

log = logging.getLogger(__name__)


class EmbeddingCorrection(nn.Module):
    """``x -> normalize(x + mlp(x))``: a residual correction of unit embeddings.

    The last layer starts at zero, so an untrained correction is the identity.

    Args:
        dim: embedding length.
        hidden: width of the hidden layer.
    """

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.out(self.net(x)), dim=-1)


def _cos_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()


def train_correction(
    cloaked: np.ndarray,
    clean: np.ndarray,
    hidden: int = 256,
    epochs: int = 500,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    validation: float = 0.2,
    seed: int = 0,
    tracker: str = "",
) -> tuple[EmbeddingCorrection, CorrectionFit]:
    """Trains an :class:`EmbeddingCorrection` mapping each cloaked embedding onto its clean twin.

    The training set is every pair ``(cloaked[i] -> clean[i])`` and every clean
    embedding onto itself (``clean[i] -> clean[i]``: the tracker cannot tell
    which photos are cloaked, so the correction must leave clean ones alone).
    Loss: mean ``1 - cos``; full-batch Adam. A ``validation`` fraction of the
    pairs (when at least 5 pairs) is held out, and the correction of the step
    with the lowest held-out loss is kept (early stopping: a few hundred pairs
    are easy to memorise).

    Args:
        cloaked: ``[N, D]`` embeddings of cloaked photos.
        clean: ``[N, D]`` embeddings of the same photos, clean.
        hidden: hidden width.
        epochs: full-batch steps (at most).
        lr, weight_decay: Adam's.
        validation: fraction of the pairs held out for early stopping (0: none).
        seed: seeds the initialisation and the held-out draw.
        tracker: the tracker's name, for the fit's record.

    Returns:
        The trained correction (eval mode, on the CPU) and its fit.

    Raises:
        ValueError: on mismatched shapes or no pairs.
    """
    cloaked = np.asarray(cloaked, dtype=np.float32)
    clean = np.asarray(clean, dtype=np.float32)
    if cloaked.ndim != 2 or cloaked.shape != clean.shape or len(cloaked) == 0:
        raise ValueError(
            f"cloaked and clean must be matching [N, D] arrays with N >= 1, got {cloaked.shape} and {clean.shape}"
        )
    torch.manual_seed(seed)
    x_cloaked, x_clean = F.normalize(torch.from_numpy(cloaked), dim=-1), F.normalize(torch.from_numpy(clean), dim=-1)
    n_val = round(validation * len(cloaked)) if len(cloaked) >= 5 else 0
    order = torch.randperm(len(cloaked), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    inputs = torch.cat([x_cloaked[train], x_clean[train]])
    targets = torch.cat([x_clean[train], x_clean[train]])
    model = EmbeddingCorrection(cloaked.shape[1], hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.no_grad():
        before = float(_cos_loss(x_cloaked, x_clean))

    def val_loss() -> float:
        with torch.no_grad():
            return float(_cos_loss(model(x_cloaked[val]), x_clean[val]) + _cos_loss(model(x_clean[val]), x_clean[val]))

    best, best_step, best_state = val_loss() if n_val else 0.0, 0, copy.deepcopy(model.state_dict())
    for step in range(1, int(epochs) + 1):
        opt.zero_grad()
        loss = _cos_loss(model(inputs), targets)
        loss.backward()
        opt.step()
        if n_val and (step % 10 == 0 or step == epochs):
            current = val_loss()
            if current < best:
                best, best_step, best_state = current, step, copy.deepcopy(model.state_dict())
    if n_val:
        model.load_state_dict(best_state)
    else:
        best_step = int(epochs)
    model.eval()
    with torch.no_grad():
        after = float(_cos_loss(model(x_cloaked), x_clean))
        held_out = float(_cos_loss(model(x_cloaked[val]), x_clean[val])) if n_val else None
        held_before = float(_cos_loss(x_cloaked[val], x_clean[val])) if n_val else None
    log.info(
        "Correction %s: 1 - cos(cloaked, clean) %.4f -> %.4f on %d pairs (held out: %s -> %s, kept step %d)",
        tracker,
        before,
        after,
        len(cloaked),
        "-" if held_before is None else f"{held_before:.4f}",
        "-" if held_out is None else f"{held_out:.4f}",
        best_step,
    )
    fit = CorrectionFit(tracker, len(cloaked), best_step, before, after, n_validation=n_val)
    fit.validation_before, fit.validation_after = held_before, held_out
    return model, fit


@torch.no_grad()
def correct(correction: EmbeddingCorrection, embedded: Embedded) -> Embedded:
    """``embedded`` with every found embedding passed through ``correction`` (rows without a face stay zero)."""
    emb = np.zeros_like(embedded.emb)
    if embedded.found.any():
        x = torch.from_numpy(embedded.emb[embedded.found])
        emb[embedded.found] = correction(x).numpy()
    return Embedded(emb, embedded.found)


def mean_pair_cosine(a: Embedded, b: Embedded) -> float | None:
    """Mean cosine between rows of ``a`` and ``b`` where both have a face; None when none do."""
    both = a.found & b.found
    if not both.any():
        return None
    x, y = a.emb[both], b.emb[both]
    cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
    return float(cos.mean())


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
    tuned = copy.deepcopy(model).eval().requires_grad_(False)
    trained = [*tuned.blocks[len(tuned.blocks) - blocks :], tuned.fc]
    for module in trained:
        module.requires_grad_(True)
    device = next(tuned.parameters()).device
    trunk_clean = dlib_trunk(tuned, clean_faces.to(device), blocks)
    trunk_cloaked = dlib_trunk(tuned, cloaked_faces.to(device), blocks)
    with torch.no_grad():
        anchor = dlib_head(tuned, trunk_clean, blocks)
        anchor_cloaked = dlib_head(tuned, trunk_cloaked, blocks)
        targets = torch.as_tensor(y, device=device)
        centres = torch.stack([anchor[targets == c].mean(0) for c in range(len(classes))])
    head = nn.Parameter(F.normalize(centres, dim=-1).clone())
    params = [p for m in trained for p in m.parameters()] + [head]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    fit = FinetuneFit(tracker, blocks, int(epochs), float(lr), int(batch_size), len(classes), 2 * len(labels))

    def logits(emb: torch.Tensor) -> torch.Tensor:
        return scale * emb @ F.normalize(head, dim=-1).T

    for epoch in range(int(epochs)):
        order = torch.randperm(len(labels), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            emb_clean = dlib_head(tuned, trunk_clean[idx], blocks)
            emb_cloaked = dlib_head(tuned, trunk_cloaked[idx], blocks)
            loss = (
                F.cross_entropy(logits(emb_clean), targets[idx])
                + F.cross_entropy(logits(emb_cloaked), targets[idx])
                + anchor_weight * (_cos_loss(emb_clean, anchor[idx]) + _cos_loss(emb_cloaked, anchor[idx]))
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        fit.losses.append(total / len(labels))
        log.info("Fine-tuning %s: epoch %d/%d, loss %.4f", tracker, epoch + 1, epochs, fit.losses[-1])
    tuned.eval().requires_grad_(False)
    with torch.no_grad():
        fit.train_accuracy_clean = float(
            (logits(dlib_head(tuned, trunk_clean, blocks)).argmax(1) == targets).float().mean()
        )
        fit.train_accuracy_cloaked = float(
            (logits(dlib_head(tuned, trunk_cloaked, blocks)).argmax(1) == targets).float().mean()
        )
        before = float(F.cosine_similarity(anchor, anchor_cloaked, dim=-1).mean())
        after = float(
            F.cosine_similarity(dlib_head(tuned, trunk_clean, blocks), dlib_head(tuned, trunk_cloaked, blocks)).mean()
        )
    log.info(
        "Fine-tuned %s: identity accuracy clean %.2f, cloaked %.2f; cos(cloaked, clean) %.3f -> %.3f",
        tracker,
        fit.train_accuracy_clean,
        fit.train_accuracy_cloaked,
        before,
        after,
    )
    return tuned, fit
