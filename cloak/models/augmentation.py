"""Model augmentation for transfer: change how gradients flow, never what the model computes.

A cloak optimised against a few models should also fool models it never saw.
Attacks that backpropagate mostly through the residual shortcuts of ResNet-like
networks (skip-gradient, Wu et al., ICLR 2020) find directions that carry over
to other networks better than the plain gradient does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` that support a scaled residual gradient (a ``residual_gradient`` attribute)."""
    return [m for m in model.modules() if hasattr(type(m), "residual_gradient")]


@contextmanager
def skip_gradient(model: nn.Module, gamma: float) -> Iterator[int]:
    """Scales the gradient through every residual branch of ``model`` by ``gamma`` while inside.

    The forward pass is unchanged; the previous values are restored on exit.

    Args:
        model: any module; blocks without support are left alone.
        gamma: in ``(0, 1]``; 1 leaves the gradient as it is.

    Yields:
        How many blocks were changed.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"skip-gradient gamma must be in (0, 1], got {gamma}")
    blocks = residual_blocks(model) if gamma != 1 else []
    saved = [b.__dict__.get("residual_gradient") for b in blocks]
    for b in blocks:
        b.residual_gradient = gamma
    try:
        yield len(blocks)
    finally:
        for b, old in zip(blocks, saved):
            if old is None:
                del b.residual_gradient
            else:
                b.residual_gradient = old
