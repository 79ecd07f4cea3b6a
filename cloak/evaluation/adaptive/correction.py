"""An adaptive tracker's embedding correction: it has ``cloak`` too and learns to undo it.

FaceCure (Radiya-Dixit, Hong, Carlini, Tramèr, ICLR 2022) showed that cloaks
are a one-shot defence: the tool is public, so a tracker can cloak photos of
people it already knows (public identities, not the users) and train against
the cloak on this *adaptation set* of (cloaked, clean) twins.
:class:`EmbeddingCorrection` (:func:`train_correction`) is a small residual MLP
on top of the tracker's frozen embeddings, trained so that a cloaked photo's
embedding lands on its clean twin's (and a clean one stays put). It then
corrects every embedding the tracker computes (:func:`correct`). The other
adaptation, fine-tuning the tracker's own model, is :mod:`cloak.evaluation.adaptive.finetune`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cloak.evaluation.adaptive.results import CorrectionFit
from cloak.evaluation.protocol.scoring import Embedded

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


def cos_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between the rows of ``pred`` and ``target``."""
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
    x_cloaked, x_clean = _unit_pairs(cloaked, clean)
    torch.manual_seed(seed)
    n_val = round(validation * len(x_cloaked)) if len(x_cloaked) >= 5 else 0
    order = torch.randperm(len(x_cloaked), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    model = EmbeddingCorrection(x_cloaked.shape[1], hidden)
    with torch.no_grad():
        before = float(cos_loss(x_cloaked, x_clean))

    def val_loss() -> float:
        with torch.no_grad():
            return float(cos_loss(model(x_cloaked[val]), x_clean[val]) + cos_loss(model(x_clean[val]), x_clean[val]))

    inputs, targets = torch.cat([x_cloaked[train], x_clean[train]]), torch.cat([x_clean[train], x_clean[train]])
    best_step = _fit_correction(model, inputs, targets, val_loss if n_val else None, epochs, lr, weight_decay)
    model.eval()
    fit = _correction_fit(model, x_cloaked, x_clean, val if n_val else None, before, best_step, tracker)
    return model, fit


def _unit_pairs(cloaked: np.ndarray, clean: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The (cloaked, clean) embedding pairs as unit ``[N, D]`` tensors.

    Raises:
        ValueError: on mismatched shapes or no pairs.
    """
    cloaked = np.asarray(cloaked, dtype=np.float32)
    clean = np.asarray(clean, dtype=np.float32)
    if cloaked.ndim != 2 or cloaked.shape != clean.shape or len(cloaked) == 0:
        raise ValueError(
            f"cloaked and clean must be matching [N, D] arrays with N >= 1, got {cloaked.shape} and {clean.shape}"
        )
    return F.normalize(torch.from_numpy(cloaked), dim=-1), F.normalize(torch.from_numpy(clean), dim=-1)


def _fit_correction(
    model: EmbeddingCorrection,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    val_loss: Callable[[], float] | None,
    epochs: int,
    lr: float,
    weight_decay: float,
) -> int:
    """Full-batch Adam on ``1 - cos(model(inputs), targets)``; returns the step whose weights ``model`` keeps.

    With ``val_loss`` (the held-out loss, measured every 10 steps and at the last), ``model``
    ends with the weights of the step where it was lowest; without, with the last step's.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_step, best_state = val_loss() if val_loss else 0.0, 0, copy.deepcopy(model.state_dict())
    for step in range(1, int(epochs) + 1):
        opt.zero_grad()
        loss = cos_loss(model(inputs), targets)
        loss.backward()
        opt.step()
        if val_loss and (step % 10 == 0 or step == epochs):
            current = val_loss()
            if current < best:
                best, best_step, best_state = current, step, copy.deepcopy(model.state_dict())
    if not val_loss:
        return int(epochs)
    model.load_state_dict(best_state)
    return best_step


@torch.no_grad()
def _correction_fit(
    model: EmbeddingCorrection,
    x_cloaked: torch.Tensor,
    x_clean: torch.Tensor,
    val: torch.Tensor | None,
    before: float,
    best_step: int,
    tracker: str,
) -> CorrectionFit:
    """The record of a trained correction: ``1 - cos`` of the pairs before and after, on all and held out."""
    after = float(cos_loss(model(x_cloaked), x_clean))
    held_out = float(cos_loss(model(x_cloaked[val]), x_clean[val])) if val is not None else None
    held_before = float(cos_loss(x_cloaked[val], x_clean[val])) if val is not None else None
    log.info(
        "Correction %s: 1 - cos(cloaked, clean) %.4f -> %.4f on %d pairs (held out: %s -> %s, kept step %d)",
        tracker,
        before,
        after,
        len(x_cloaked),
        "-" if held_before is None else f"{held_before:.4f}",
        "-" if held_out is None else f"{held_out:.4f}",
        best_step,
    )
    n_val = 0 if val is None else len(val)
    fit = CorrectionFit(tracker, len(x_cloaked), best_step, before, after, n_validation=n_val)
    fit.validation_before, fit.validation_after = held_before, held_out
    return fit


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
