"""LowKey (Cherepanova et al., ICLR 2021): untargeted, against an ensemble with Gaussian-smoothed members."""

from __future__ import annotations

import torch

from cloak.attacks.base import Views
from cloak.attacks.pgd import PGD
from cloak.models.ensemble import Ensemble, GaussianSmoothed


class LowKey(PGD):
    """Pushes embeddings away from the clean ones for each member *and* a blurred copy of it.

    A cloak that also fools the blurred model lives in lower frequencies, which
    survive JPEG and resizing. To keep the cost of a step that of the plain
    ensemble, each step draws, per member, the sharp or the smoothed view
    (``smooth_prob``): the loss matches the full ensemble's in expectation.

    Args:
        smoothing_sigma: Gaussian sigma of the smoothed copies, in model-input pixels.
        smooth_prob: probability of using the smoothed view of a member at a step.
        **kwargs: see :class:`~cloak.attacks.base.Attack`.
    """

    name = "lowkey"

    def __init__(self, smoothing_sigma: float = 1.5, smooth_prob: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 <= smooth_prob <= 1:
            raise ValueError(f"smooth_prob must be in [0, 1], got {smooth_prob}")
        self.smoothing_sigma = float(smoothing_sigma)
        self.smooth_prob = float(smooth_prob)

    def views(self, ensemble: Ensemble) -> Views:
        views: Views = {}
        for name, model, weight in ensemble.items():
            views[name] = (model, weight * (1 - self.smooth_prob))
            views[f"{name}/smoothed"] = (GaussianSmoothed(model, self.smoothing_sigma), weight * self.smooth_prob)
        return {k: v for k, v in views.items() if v[1] > 0}

    def active_views(self, views: Views, generator: torch.Generator) -> Views:
        members = sorted({name.split("/")[0] for name in views})
        coins = torch.rand(len(members), generator=generator).tolist()
        active: Views = {}
        for name, coin in zip(members, coins):
            pick = f"{name}/smoothed" if coin < self.smooth_prob else name
            if pick not in views:  # smooth_prob of exactly 0 or 1 leaves one view per member
                pick = next(v for v in views if v.split("/")[0] == name)
            # The member keeps its ensemble weight, whichever of its views is drawn.
            weight = sum(w for view, (_, w) in views.items() if view.split("/")[0] == name)
            active[pick] = (views[pick][0], weight)
        return active
