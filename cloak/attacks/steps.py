"""The parts of the shared loop that are not the attack: step sizes, the sign step, early stopping, frozen models."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from cloak.attacks.budget import require

if TYPE_CHECKING:
    from cloak.attacks.base import Attack, Views

#: How the step size changes over the steps (see :func:`step_sizes`).
STEP_SCHEDULES = ("constant", "cosine")


def check_steps(steps: int, schedule: str, min_steps: int, warm_steps: int, work_scale: float | None) -> None:
    """Raises a clear ``ValueError`` for an option of the attack's steps out of its range."""
    require(steps >= 0, f"steps must be >= 0, got {steps}")
    require(schedule in STEP_SCHEDULES, f"step_schedule must be one of {STEP_SCHEDULES}, got {schedule!r}")
    require(min_steps >= 0, f"min_steps must be >= 0, got {min_steps}")
    require(warm_steps >= 0, f"warm_steps must be >= 0, got {warm_steps}")
    require(
        work_scale is None or work_scale >= 1,
        f"work_scale must be >= 1 (photo px per model px) or null, got {work_scale}",
    )


#: Gradient components within this many machine epsilons of the gradient's largest are
#: rounding noise: their sign depends on the order of a reduction (a batch of photos or
#: one alone, AVX2 or AVX512 kernels), so they take no step.
SIGN_NOISE_EPS = 64


def settled_sign(g: torch.Tensor) -> torch.Tensor:
    """``g.sign()``, with 0 where ``|g|`` is rounding noise (:data:`SIGN_NOISE_EPS` of ``max |g|``).

    A luma cloak's gradient is the sum of the R, G and B gradients, which often nearly
    cancel: a plain sign turns a remainder of either sign at the level of float rounding
    into a full step, so the cloak would depend on the batch it was computed in.
    """
    noise = SIGN_NOISE_EPS * torch.finfo(g.dtype).eps * g.abs().amax()
    return torch.where(g.abs() > noise, g.sign(), torch.zeros_like(g))


def step_sizes(step_size: float, steps: int, schedule: str = "constant") -> list[float]:
    """The size of each of ``steps`` sign steps; their mean is ``step_size`` for every schedule.

    ``constant``: ``step_size`` throughout. ``cosine``: ``step_size * (1 + cos(pi (t + 1/2) / steps))``
    at step ``t``, nearly twice the mean at the first step and near 0 at the last. Under a
    face budget, steps of one size keep jumping back and forth across the budget's edge
    and the cloak ends short of it (mean face SSIM 0.954 for a 0.95 budget at mid); steps
    that shrink settle on it (0.950) and protect more (experiments/log.md, "What else was tried").
    """
    if schedule not in STEP_SCHEDULES:
        raise ValueError(f"step schedule must be one of {STEP_SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return [step_size] * steps
    return [step_size * (1 + math.cos(math.pi * (t + 0.5) / steps)) for t in range(steps)]


class EarlyStop:
    """Which photos of a batch still optimise, and how many steps each took.

    A photo stops once each of its faces is past every active model's threshold by
    the attack's ``stop_margin``, in an average over the last few random distortions
    (a single lucky draw must not stop it), and it has taken ``min_steps``. Each
    photo's decision depends on its own faces only, so a photo stops at the same
    step alone or in any batch.
    """

    #: Weight of the newest step in the running average of each face's margin.
    SMOOTHING = 0.3

    def __init__(self, attack: Attack, faces_per_photo: list[int], limits: list[int] | None = None) -> None:
        self.attack = attack
        self.offsets = [0, *torch.tensor(faces_per_photo).cumsum(0).tolist()]
        #: The most steps each photo may take (warm-started photos take fewer than the attack's).
        self.limits = limits if limits is not None else [attack.steps] * len(faces_per_photo)
        self.steps_taken = [0] * len(faces_per_photo)
        self.margin: list[torch.Tensor | None] = [None] * len(faces_per_photo)
        self.stopped = [False] * len(faces_per_photo)
        self.steps_run = 0

    def live(self) -> list[int]:
        """The photos that still take steps: not stopped early and under their step limit."""
        return [i for i, done in enumerate(self.stopped) if not done and self.steps_taken[i] < self.limits[i]]

    def face_rows(self, photos: list[int]) -> torch.Tensor | None:
        """Rows of the batch's per-face tensors that belong to ``photos`` (None when that is every row)."""
        if photos == list(range(len(self.stopped))):
            return None
        return torch.cat([torch.arange(self.offsets[i], self.offsets[i + 1]) for i in photos])

    @torch.no_grad()
    def update(self, live: list[int], views: Views, per_view: dict[str, torch.Tensor], step: int) -> None:
        """Counts the step for the ``live`` photos and stops those whose faces cleared the margin."""
        self.steps_run = step + 1
        for i in live:
            self.steps_taken[i] += 1
        if self.attack.stop_margin is None:
            return
        margins = [self.attack.face_margin(per_view[name].detach(), model) for name, (model, _) in views.items()]
        if any(m is None for m in margins):
            return
        worst = torch.stack(margins).amin(0)  # every model must be fooled
        start = 0
        for i in live:
            n = self.offsets[i + 1] - self.offsets[i]
            now, start = worst[start : start + n], start + n
            old = self.margin[i]
            self.margin[i] = now if old is None else (1 - self.SMOOTHING) * old + self.SMOOTHING * now
            if self.steps_taken[i] >= self.attack.min_steps and bool((self.margin[i] >= self.attack.stop_margin).all()):
                self.stopped[i] = True


class frozen:
    """Puts models in eval mode with frozen weights; restores both afterwards."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.training = [(m, m.training) for m in self.module.modules()]
        self.requires = [p.requires_grad for p in self.module.parameters()]
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for m, training in self.training:
            m.training = training
        for p, r in zip(self.module.parameters(), self.requires):
            p.requires_grad_(r)
