"""The shared projected-gradient loop every attack runs.

An attack only says what to optimise (:meth:`Attack.references`,
:meth:`Attack.face_loss`, optionally :meth:`Attack.views`); this loop owns the
rest: one perturbation per photo over the region around its faces, in the
photo's own pixels, optimised through the differentiable alignment into every
model's input, averaged over random platform distortions, kept inside an L-inf
ball and a perceptual (DSSIM) budget, and pasted back at full resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from cloak.alignment import warp_crops
from cloak.attacks.regions import PhotoFaces, Region, face_region
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble, as_ensemble
from cloak.quality import dssim
from cloak.transforms import Distortion, RobustTransform, shrink_crop

log = logging.getLogger(__name__)

#: Steps between full checks of every photo's DSSIM (see :meth:`Attack._run`).
BUDGET_CHECK_EVERY = 5

#: A view of the ensemble: name -> (embedder, weight). Attacks may add views (smoothed copies).
Views = dict[str, tuple[FaceEmbedder, float]]


@dataclass
class CloakResult:
    """What an attack returns for one photo.

    Attributes:
        photo: ``[3, H, W]`` cloaked photo in ``[0, 1]``, full resolution.
        box: ``(x0, y0, x1, y1)`` of the region the cloak covers.
        dssim: the region's DSSIM against the original.
        loss: the attack's final loss per face (lower is better for the attack).
    """

    photo: torch.Tensor
    box: tuple[int, int, int, int]
    dssim: float
    loss: list[float]


class Attack:
    """Base of all attacks: a signed-gradient (L-inf PGD) loop with EOT and a DSSIM budget.

    Args:
        eps: L-inf bound of the cloak, in 0-255 pixel units.
        steps: gradient steps.
        step_size: step in 0-255 pixel units; default ``2.5 * eps / steps``.
        max_dssim: perceptual budget on the face region (DSSIM = (1 - SSIM) / 2);
            ``None`` for none. Enforced by a penalty while optimising and by
            shrinking the cloak at the end.
        dssim_weight: weight of the penalty for exceeding ``max_dssim``.
        transform: random platform distortions averaged over; ``None`` for none.
        random_start: start from uniform noise in half the L-inf ball.
        seed: seeds everything random, together with each photo's pixels.
        momentum: decay of the accumulated gradient direction (MI-FGSM, Dong et al. 2018);
            0 for plain sign steps. Momentum steadies the direction across the random
            distortions, which helps the cloak transfer to models it never saw.
        input_diversity: probability, per step and face, of shrinking each model's crop by a
            random factor in ``[diversity_scale, 1)`` and padding it back at a random offset
            (DI-FGSM, Xie et al. 2019); 0 for none.
        diversity_scale: the smallest shrink factor of ``input_diversity``.
    """

    name = "attack"

    def __init__(
        self,
        eps: float = 8.0,
        steps: int = 40,
        step_size: float | None = None,
        max_dssim: float | None = 0.02,
        dssim_weight: float = 50.0,
        transform: RobustTransform | None = None,
        random_start: bool = True,
        seed: int = 0,
        momentum: float = 0.0,
        input_diversity: float = 0.0,
        diversity_scale: float = 0.85,
    ) -> None:
        if eps <= 0:
            raise ValueError(f"eps must be positive (0-255 pixel units), got {eps}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if max_dssim is not None and not 0 < max_dssim < 1:
            raise ValueError(f"max_dssim must be in (0, 1) or null, got {max_dssim}")
        self.eps = float(eps) / 255.0
        self.steps = int(steps)
        self.step_size = (float(step_size) / 255.0) if step_size else 2.5 * self.eps / max(1, self.steps)
        self.max_dssim = max_dssim
        self.dssim_weight = float(dssim_weight)
        # An identity transform (transform=none) costs nothing and draws no random numbers.
        self.transform = transform if transform is not None and not transform.is_identity else None
        self.random_start = bool(random_start)
        self.seed = int(seed)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0 <= input_diversity <= 1:
            raise ValueError(f"input_diversity must be in [0, 1], got {input_diversity}")
        if not 0 < diversity_scale <= 1:
            raise ValueError(f"diversity_scale must be in (0, 1], got {diversity_scale}")
        self.momentum = float(momentum)
        self.input_diversity = float(input_diversity)
        self.diversity_scale = float(diversity_scale)

    # ---- what subclasses define -------------------------------------------------
    def views(self, ensemble: Ensemble) -> Views:
        """The embedders the loss is computed with; default: the ensemble's members."""
        return {name: (model, weight) for name, model, weight in ensemble.items()}

    def active_views(self, views: Views, generator: torch.Generator) -> Views:
        """The views used at one step; default: all of them."""
        return views

    def references(self, views: Views, clean_crops: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per view, ``[F, D]`` embeddings the loss compares against (clean ones by default)."""
        with torch.no_grad():
            return {name: model(clean_crops[name]) for name, (model, _) in views.items()}

    def face_loss(self, embedding: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``[F]`` loss to *minimise* per face; subclasses define it."""
        raise NotImplementedError

    # ---- the shared loop --------------------------------------------------------
    def __call__(
        self,
        model: FaceEmbedder | Ensemble,
        photos: Sequence[PhotoFaces],
        progress: Callable[[int], None] | None = None,
    ) -> list[CloakResult]:
        """Cloaks every face of every photo; photos are optimised together in one batch.

        Args:
            model: an embedder or an ensemble.
            photos: the photos and their faces; photos may differ in size.
            progress: called with 1 after each step (for a progress bar).
        """
        ensemble = as_ensemble(model)
        views = self.views(ensemble)
        if not photos:
            return []
        with _frozen(ensemble):
            return self._run(views, list(photos), progress)

    def _run(self, views: Views, photos: list[PhotoFaces], progress: Callable[[int], None] | None) -> list[CloakResult]:
        regions = [face_region(p, {n: m for n, (m, _) in views.items()}) for p in photos]
        clean = [r.crop(p.photo).unsqueeze(0) for p, r in zip(photos, regions)]
        gens = [torch.Generator().manual_seed(p.seed) for p in photos]
        step_gen = torch.Generator().manual_seed(self.seed)
        clean_crops = self._crops(views, clean, regions, None)
        refs = self.references(views, clean_crops)

        deltas = []
        for c, g, r in zip(clean, gens, regions):
            d = torch.zeros_like(c)
            if self.random_start:
                noise = torch.rand(c.shape, generator=g, dtype=torch.float64).to(c) * 2 - 1
                d = noise * (self.eps / 2) * r.mask
            deltas.append(((c + d).clamp(0, 1) - c).requires_grad_(True))
        velocity = [torch.zeros_like(d) for d in deltas]

        last_dssim = [0.0] * len(photos)
        for step in range(self.steps):
            active = self.active_views(views, step_gen)
            draws = [self._draw(g) for g in gens]
            adv = [(c + d * r.mask).clamp(0, 1) for c, d, r in zip(clean, deltas, regions)]
            loss = self._loss(active, adv, regions, draws, refs).sum()
            if self.max_dssim is not None and self.dssim_weight > 0:
                # SSIM costs a third of a step: measure every photo every few steps, and in
                # between only those that were close to the budget.
                checked = [
                    i for i in range(len(adv)) if step % BUDGET_CHECK_EVERY == 0 or last_dssim[i] > 0.8 * self.max_dssim
                ]
                for i in checked:
                    value = dssim(adv[i], clean[i])[0]
                    last_dssim[i] = float(value.detach())
                    loss = loss + self.dssim_weight * (value - self.max_dssim).clamp_min(0)
            grads = torch.autograd.grad(loss, deltas)
            with torch.no_grad():
                for c, d, g, v in zip(clean, deltas, grads, velocity):
                    if self.momentum > 0:
                        # MI-FGSM: accumulate L1-normalised gradients, step along their sign.
                        v.mul_(self.momentum).add_(g / g.abs().mean().clamp_min(1e-12))
                        g = v
                    d -= self.step_size * g.sign()
                    d.clamp_(-self.eps, self.eps)
                    d.copy_((c + d).clamp(0, 1) - c)
            if progress is not None:
                progress(1)

        results = []
        with torch.no_grad():
            final = [(c + d * r.mask).clamp(0, 1) for c, d, r in zip(clean, deltas, regions)]
            final = [self._within_budget(a, c) for a, c in zip(final, clean)]
            losses = self._loss(views, final, regions, [Distortion()] * len(final), refs)
            sizes = [len(p.landmarks) for p in photos]
            for p, r, a, c, fl in zip(photos, regions, final, clean, losses.split(sizes)):
                results.append(
                    CloakResult(
                        photo=r.paste(p.photo, a[0]),
                        box=r.box,
                        dssim=float(dssim(a, c)[0]),
                        loss=fl.tolist(),
                    )
                )
        return results

    def _draw(self, generator: torch.Generator) -> Distortion:
        """One step's random distortion of one photo (platform transform and input diversity)."""
        draw = self.transform.sample(generator) if self.transform is not None else Distortion()
        if self.input_diversity > 0 and float(torch.rand((), generator=generator)) < self.input_diversity:
            scale, dx, dy = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
            draw = replace(draw, diversity=(self.diversity_scale + (1 - self.diversity_scale) * scale, dx, dy))
        return draw

    def _crops(
        self, views: Views, images: list[torch.Tensor], regions: list[Region], draws: list[Distortion] | None
    ) -> dict[str, torch.Tensor]:
        """Per view, the ``[F_total, 3, h, w]`` crops of all faces of all photos."""
        crops: dict[str, list[torch.Tensor]] = {name: [] for name in views}
        for i, (img, region) in enumerate(zip(images, regions)):
            draw = draws[i] if draws is not None else Distortion()
            if self.transform is not None and draws is not None:
                img = self.transform.distort(img, draw)
            for name, (model, _) in views.items():
                m = region.matrices[name]
                if draws is not None:
                    m = RobustTransform.jitter(m, draw, model.input_size)
                if draws is not None and draw.diversity is not None:
                    m = shrink_crop(m, draw.diversity, model.input_size)
                crops[name].append(warp_crops(img.expand(len(m), -1, -1, -1), m, model.input_size))
        return {name: torch.cat(c) for name, c in crops.items()}

    def _loss(
        self,
        views: Views,
        images: list[torch.Tensor],
        regions: list[Region],
        draws: list[Distortion],
        refs: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """``[F_total]`` weighted loss over views."""
        crops = self._crops(views, images, regions, draws)
        total = sum(weight * self.face_loss(model(crops[name]), refs[name]) for name, (model, weight) in views.items())
        norm = sum(weight for _, weight in views.values())
        return total / norm

    def _within_budget(self, adv: torch.Tensor, clean: torch.Tensor, iters: int = 12) -> torch.Tensor:
        """Shrinks the cloak (bisection on its scale) until the region's DSSIM is within budget."""
        if self.max_dssim is None or float(dssim(adv, clean)[0]) <= self.max_dssim:
            return adv
        delta, lo, hi = adv - clean, 0.0, 1.0
        for _ in range(iters):
            mid = (lo + hi) / 2
            if float(dssim(clean + mid * delta, clean)[0]) <= self.max_dssim:
                lo = mid
            else:
                hi = mid
        return clean + lo * delta


class _frozen:
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
