"""The shared projected-gradient loop every attack runs.

An attack only says what to optimise (:meth:`Attack.references`,
:meth:`Attack.face_loss`, optionally :meth:`Attack.views`); this loop owns the
rest: one perturbation per photo over the region around its faces, in the
photo's own pixels, optimised through the differentiable alignment into every
model's input, averaged over random platform distortions, kept inside an L-inf
bound (a per-pixel map with visual masking) and a perceptual budget (the
region's DSSIM, each face's 5th-percentile local SSIM; see
:mod:`cloak.attacks.budget`), and pasted back at full resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from cloak.alignment import warp_crops
from cloak.attacks.budget import CloakShape, FaceBudget, check_limits, check_shape, require
from cloak.attacks.masking import VisualMasking, chroma_map
from cloak.attacks.regions import CloakResult, PhotoFaces, Region, face_region
from cloak.attacks.steps import EarlyStop, check_steps, frozen, settled_sign, step_sizes
from cloak.device import bfloat16_autocast
from cloak.models.base import FaceEmbedder
from cloak.models.ensemble import Ensemble, as_ensemble
from cloak.quality import FACE_BOX_GROWTH, dssim
from cloak.transforms import Distortion, RobustTransform

log = logging.getLogger(__name__)

#: Steps between full checks of every photo's perceptual budget (see :meth:`Attack._run`).
BUDGET_CHECK_EVERY = 5

#: A view of the ensemble: name -> (embedder, weight). Attacks may add views (smoothed copies).
Views = dict[str, tuple[FaceEmbedder, float]]

#: Visual masking of the background's cap (``background_eps``): full in hair and texture,
#: a quarter on flat walls and sky.
BACKGROUND_MASKING = VisualMasking()


class Attack:
    """Base of all attacks: a signed-gradient (L-inf PGD) loop with EOT and a perceptual budget.

    Args:
        eps: L-inf bound of the cloak, in 0-255 pixel units (where ``masking`` allows
            all of it; elsewhere ``eps`` times the masking map).
        steps: gradient steps.
        step_size: mean step in 0-255 pixel units; default ``2.5 * eps / steps``.
        step_schedule: how the step size changes over the steps, ``constant`` or
            ``cosine`` (from twice ``step_size`` down to near 0; see :func:`step_sizes`).
        max_dssim: perceptual budget on the cloak's region (DSSIM = (1 - SSIM) / 2,
            mean over the region); ``None`` for none. Enforced by a penalty while
            optimising and by shrinking the cloak at the end.
        dssim_weight: weight of the penalty for exceeding ``max_dssim``.
        min_face_ssim_p5: budget on each face: the 5th percentile of the local SSIM
            map over its box grown 10% (where texture on flat skin shows) may not fall
            below this; ``None`` for none. Needs the faces' ``boxes``
            (:class:`~cloak.attacks.regions.PhotoFaces`); without them the whole
            region counts as the face. Enforced like ``max_dssim``, on the 8-bit pixels.
        ssim_p5_weight: weight of the penalties for face SSIM below ``min_face_ssim`` and
            local SSIM below ``min_face_ssim_p5``.
        min_face_ssim: budget on each face: the mean SSIM over its box grown 10% may not
            fall below this; ``None`` for none. Enforced like ``min_face_ssim_p5``.
        masking: visual masking (:class:`~cloak.attacks.masking.VisualMasking`): scales
            the L-inf bound per pixel, full in texture and edges, down to its ``floor``
            on flat skin. ``True`` for the default settings; ``None``/``False`` for a
            uniform bound.
        perturbation_sigma: Gaussian smoothing of the cloak, in model-input pixels
            (converted to each photo's pixels through its faces' alignment); 0 for none.
        color: ``"rgb"``; ``"luma"`` for a grey cloak (the same change on R, G, B),
            which survives JPEG's chroma subsampling whole; or ``"auto"``: colour only as
            far as the photo is coloured there (:func:`~cloak.attacks.masking.chroma_map`),
            so a grey or black-and-white face gets a grey cloak.
        max_chroma: under ``color="auto"``, the most of the cloak's colour (its difference
            from grey) any pixel keeps, however coloured the photo is there; 1 for all of it.
        transform: random platform distortions averaged over; ``None`` for none.
        random_start: start from uniform noise in half the L-inf ball.
        seed: seeds everything random, together with each photo's pixels.
        stop_margin: early stopping: a photo stops once every face is past every model's
            same-person threshold by this margin (in units of the model's loss scale, see
            :meth:`face_margin`), averaged over the recent random distortions; ``None``
            runs every step. Attacks without a margin (targeted ones) never stop early.
        min_steps: the fewest steps a photo takes before it may stop early.
        work_scale: faces larger than this many photo pixels per model-input pixel are
            cloaked on a copy shrunk to that scale and the cloak enlarged back
            (:mod:`cloak.cloaking.working_scale`, used by :func:`~cloak.cloaking.groups.cloak_photos`);
            ``None`` cloaks every face on the photo's own pixels.
        background_eps: L-inf bound (0-255) outside the faces' boxes grown 10%, where the
            face budget does not look (background, hair, neck, in the models' crops), times
            the visual masking map there (full in hair and texture, a quarter on a flat
            wall); ``None`` for ``eps`` everywhere. Needs the faces' ``boxes``; no effect at or
            above ``eps``.
        bfloat16_members: ensemble members whose forward and backward run under bfloat16
            autocast during the optimisation, where the device computes bfloat16 natively
            (:func:`~cloak.device.native_bfloat16`); elsewhere, and for the clean references
            and the final losses, float32. Names the model does not have are ignored.
        max_shading: budget on each face: its shading figure (:mod:`cloak.shading`,
            CIEDE2000 after a blur of 3% of the face's width, 95th percentile) may not exceed
            this; ``None`` for none. Enforced like ``min_face_ssim``. Needs the faces' ``boxes``.
        shading_weight: weight of the penalty for shading beyond ``max_shading``.
        max_shading_peak: budget on each face's shading map at its worst pixel (the
            figure's 95th percentile leaves the worst 5% of the region free, room enough for
            darker eye sockets); ``None`` for none. Enforced like ``max_shading``.
        shading_peak_weight: weight of the penalty for shading beyond ``max_shading_peak``.
        warm_steps: steps of a photo that starts from a given start (:attr:`PhotoFaces.start`,
            a cloak of the same person carried over), instead of ``steps``.
        warm_step_size: their mean step, 0-255 pixel units, on the same schedule; default
            ``step_size``.
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
        min_face_ssim_p5: float | None = None,
        ssim_p5_weight: float = 50.0,
        min_face_ssim: float | None = None,
        masking: VisualMasking | bool | None = None,
        perturbation_sigma: float = 0.0,
        color: str = "rgb",
        stop_margin: float | None = None,
        min_steps: int = 10,
        work_scale: float | None = None,
        background_eps: float | None = None,
        max_chroma: float = 1.0,
        step_schedule: str = "constant",
        bfloat16_members: Sequence[str] = (),
        max_shading: float | None = None,
        shading_weight: float = 1.0,
        max_shading_peak: float | None = None,
        shading_peak_weight: float = 1.0,
        warm_steps: int = 15,
        warm_step_size: float | None = None,
    ) -> None:
        require(eps > 0, f"eps must be positive (0-255 pixel units), got {eps}")
        check_steps(steps, step_schedule, min_steps, warm_steps, work_scale)
        check_limits(max_dssim, min_face_ssim, min_face_ssim_p5, max_shading, max_shading_peak)
        check_shape(perturbation_sigma, color, max_chroma, background_eps)
        self.eps = float(eps) / 255.0
        self.steps = int(steps)
        self.step_size = (float(step_size) / 255.0) if step_size else 2.5 * self.eps / max(1, self.steps)
        self.max_dssim = max_dssim
        self.dssim_weight = float(dssim_weight)
        # An identity transform (transform=none) costs nothing and draws no random numbers.
        self.transform = transform if transform is not None and not transform.is_identity else None
        self.random_start = bool(random_start)
        self.seed = int(seed)
        self.min_face_ssim_p5 = min_face_ssim_p5
        self.ssim_p5_weight = float(ssim_p5_weight)
        self.min_face_ssim = min_face_ssim
        self.masking = VisualMasking() if masking is True else (masking or None)
        self.perturbation_sigma = float(perturbation_sigma)
        self.color = color
        self.stop_margin = None if stop_margin is None else float(stop_margin)
        self.min_steps = int(min_steps)
        self.work_scale = None if work_scale is None else float(work_scale)
        self.max_chroma = float(max_chroma)
        self.step_schedule = step_schedule
        self.background_eps = None if background_eps is None else float(background_eps) / 255.0
        self.bfloat16_members = frozenset(str(m) for m in bfloat16_members)
        self.max_shading = None if max_shading is None else float(max_shading)
        self.shading_weight = float(shading_weight)
        self.max_shading_peak = None if max_shading_peak is None else float(max_shading_peak)
        self.shading_peak_weight = float(shading_peak_weight)
        self.warm_steps = int(warm_steps)
        self.warm_step_size = float(warm_step_size) / 255.0 if warm_step_size else self.step_size

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

    def face_margin(self, loss: torch.Tensor, model: FaceEmbedder) -> torch.Tensor | None:
        """``[F]`` how far past ``model``'s same-person threshold each face is (> 0: no match), or None.

        ``loss`` is :meth:`face_loss` of the faces for that model. Early stopping
        (``stop_margin``) needs it; attacks that cannot tell return None.
        """
        return None

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
        with frozen(ensemble):
            return self._run(views, list(photos), progress)

    def _run(self, views: Views, photos: list[PhotoFaces], progress: Callable[[int], None] | None) -> list[CloakResult]:
        regions = [face_region(p, {n: m for n, (m, _) in views.items()}) for p in photos]
        clean = [r.crop(p.photo).unsqueeze(0) for p, r in zip(photos, regions)]
        gens = [torch.Generator().manual_seed(p.seed) for p in photos]
        step_gen = torch.Generator().manual_seed(self.seed)
        clean_crops = self._crops(views, clean, regions, None)
        refs = self.references(views, clean_crops)

        shapes = [self._shape(c, r, p.boxes) for c, r, p in zip(clean, regions, photos)]
        budgets = [self._budget(p, r) for p, r in zip(photos, regions)]
        # The optimised variables: |u| <= eps; each photo's pixel change is shape.delta(u).
        deltas = [
            self._start(p, r, s, c, g).requires_grad_(True)
            for p, r, s, c, g in zip(photos, regions, shapes, clean, gens)
        ]
        # A photo that starts from a given start (a warm one) takes warm_steps of their own size.
        cold = step_sizes(self.step_size, self.steps, self.step_schedule)
        warm = step_sizes(self.warm_step_size, self.warm_steps, self.step_schedule)
        sizes = [warm if p.start is not None else cold for p in photos]
        stopping = EarlyStop(self, [len(p.landmarks) for p in photos], [len(s) for s in sizes])
        # Every view's weight: views an attack leaves out of a step do not raise the others' share.
        total_weight = sum(w for _, w in views.values())

        for step in range(max(map(len, sizes), default=0)):
            active = self.active_views(views, step_gen)
            live = stopping.live()
            if not live:
                break
            draws = {i: self._draw(gens[i]) for i in live}
            adv = {i: (clean[i] + shapes[i].delta(deltas[i])).clamp(0, 1) for i in live}
            per_view = self._view_losses(
                active,
                [adv[i] for i in live],
                [regions[i] for i in live],
                [draws[i] for i in live],
                refs,
                stopping.face_rows(live),
                optimising=True,
            )
            loss = self._weigh(active, per_view, total=total_weight).sum()
            for i in live:
                # SSIM costs a third of a step: measure every photo every few steps, and in
                # between only those that were close to the budget.
                if budgets[i].active and (step % BUDGET_CHECK_EVERY == 0 or budgets[i].near()):
                    loss = loss + budgets[i].penalty(adv[i], clean[i])
            grads = torch.autograd.grad(loss, [deltas[i] for i in live])
            taken = [stopping.steps_taken[i] for i in live]
            stopping.update(live, active, per_view, step)
            with torch.no_grad():
                for i, t, g in zip(live, taken, grads):
                    deltas[i] -= sizes[i][t] * settled_sign(g)
                    deltas[i].clamp_(-self.eps, self.eps)
            if progress is not None:
                progress(1)
        if progress is not None and self.steps > stopping.steps_run:
            progress(self.steps - stopping.steps_run)  # the steps no photo needed

        return self._finish(views, photos, regions, clean, shapes, budgets, deltas, refs, stopping.steps_taken)

    @torch.no_grad()
    def _finish(
        self,
        views: Views,
        photos: list[PhotoFaces],
        regions: list[Region],
        clean: list[torch.Tensor],
        shapes: list[CloakShape],
        budgets: list[FaceBudget],
        deltas: list[torch.Tensor],
        refs: dict[str, torch.Tensor],
        steps_taken: list[int],
    ) -> list[CloakResult]:
        """Each photo's cloak shrunk into its budget, pasted back at full resolution, with its final loss."""
        final = [b.shrink(c, s.delta(d), s.bound(self.eps)) for b, s, c, d in zip(budgets, shapes, clean, deltas)]
        losses = self._loss(views, final, regions, [Distortion()] * len(final), refs)
        per_photo = losses.split([len(p.landmarks) for p in photos])
        return [
            CloakResult(
                photo=r.paste(p.photo, a[0]),
                box=r.box,
                dssim=float(dssim(a, c)[0]),
                loss=fl.tolist(),
                bound=s.bound(self.eps)[0],
                steps=n,
                variable=d.detach(),
                warm=p.start is not None,
            )
            for p, r, a, c, s, fl, d, n in zip(photos, regions, final, clean, shapes, per_photo, deltas, steps_taken)
        ]

    def _start(
        self, photo: PhotoFaces, region: Region, shape: CloakShape, clean: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """One photo's optimised variable at the first step: its given start, else zeros or noise."""
        if photo.start is None:
            return shape.start(clean, self.eps, gen if self.random_start else None)
        start = region.crop(photo.start).unsqueeze(0).to(clean)
        if start.shape[1] != shape.channels:
            raise ValueError(
                f"a photo's start must have {shape.channels} channel(s) for color={self.color!r}, got {start.shape[1]}"
            )
        return start.clamp(-self.eps, self.eps).contiguous()

    def _draw(self, generator: torch.Generator) -> Distortion:
        """One step's random platform distortion of one photo."""
        return self.transform.sample(generator) if self.transform is not None else Distortion()

    def _crops(
        self, views: Views, images: list[torch.Tensor], regions: list[Region], draws: list[Distortion] | None
    ) -> dict[str, torch.Tensor]:
        """Per view, the ``[F_total, 3, h, w]`` crops of all faces of all photos."""
        crops: dict[str, list[torch.Tensor]] = {name: [] for name in views}
        # Models with one template and input size (SFace and EdgeFace: ArcFace's 112x112) see
        # the same crop of a photo under the same draw: it is warped once for all of them.
        layouts = {
            name: (model.input_size, tuple(model.template.flatten().tolist())) for name, (model, _) in views.items()
        }
        for i, (img, region) in enumerate(zip(images, regions)):
            draw = draws[i] if draws is not None else Distortion()
            if self.transform is not None and draws is not None:
                img = self.transform.distort(img, draw)
            warped: dict[tuple, torch.Tensor] = {}
            for name, (model, _) in views.items():
                if layouts[name] not in warped:
                    m = region.matrices[name]
                    if draws is not None:
                        m = RobustTransform.jitter(m, draw, model.input_size)
                    warped[layouts[name]] = warp_crops(img.expand(len(m), -1, -1, -1), m, model.input_size)
                crops[name].append(warped[layouts[name]])
        return {name: torch.cat(c) for name, c in crops.items()}

    def _view_losses(
        self,
        views: Views,
        images: list[torch.Tensor],
        regions: list[Region],
        draws: list[Distortion] | None,
        refs: dict[str, torch.Tensor],
        faces: list[int] | None = None,
        optimising: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Per view, the ``[F]`` loss of the faces of ``images``.

        ``faces`` indexes the rows of ``refs`` that belong to those images (None: all rows),
        for steps where some photos of the batch have stopped early. ``optimising``: a step
        of the loop, where :attr:`bfloat16_members` may run in bfloat16.
        """
        crops = self._crops(views, images, regions, draws)
        losses = {}
        for name, (model, _) in views.items():
            x = crops[name]
            with bfloat16_autocast(x.device, enabled=optimising and name.split("/")[0] in self.bfloat16_members):
                embedding = model(x)
            losses[name] = self.face_loss(embedding.to(x.dtype), refs[name] if faces is None else refs[name][faces])
        return losses

    @staticmethod
    def _weigh(views: Views, per_view: dict[str, torch.Tensor], total: float | None = None) -> torch.Tensor:
        """``[F]`` the views' losses averaged with their weights (divided by ``total``: default their sum)."""
        weighted = sum(weight * per_view[name] for name, (_, weight) in views.items())
        return weighted / (total if total is not None else sum(weight for _, weight in views.values()))

    def _loss(
        self,
        views: Views,
        images: list[torch.Tensor],
        regions: list[Region],
        draws: list[Distortion],
        refs: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """``[F_total]`` weighted loss over views."""
        return self._weigh(views, self._view_losses(views, images, regions, draws, refs))

    def _shape(self, clean: torch.Tensor, region: Region, boxes: torch.Tensor | None = None) -> CloakShape:
        """How one photo's optimised variable becomes its region's pixel change (masking, smoothing, colour).

        ``boxes``: the photo's ``[F, 4]`` face boxes in photo pixels (for ``background_eps``).
        """
        share = region.mask.unsqueeze(0)
        if self.background_eps is not None and self.background_eps < self.eps and boxes is not None and len(boxes):
            # The face budget measures only the faces' grown boxes, and SSIM misses smooth
            # blotches on flat areas anyway: beside the face, a cloak at the full cap shows as
            # whitish mottling on plain backgrounds (the astronaut at 2x). There it gets
            # background_eps, cut further where the background is flat (visual masking).
            faces = region.face_mask(boxes, FACE_BOX_GROWTH).unsqueeze(0)
            rest = self.background_eps / self.eps * BACKGROUND_MASKING(clean)
            share = share * (rest + (1 - rest) * faces)
        if self.masking is not None:
            share = share * self.masking(clean)
        blur = 0.0
        if self.perturbation_sigma > 0:
            # Region pixels per model-input pixel: the scale of each face's alignment; the
            # smallest face sets it, so no face loses the detail its model sees.
            blur = self.perturbation_sigma * region.model_pixel_scale
        chroma = chroma_map(clean).clamp_max(self.max_chroma) if self.color == "auto" else None
        return CloakShape(share=share, blur_sigma=blur, channels=1 if self.color == "luma" else 3, chroma=chroma)

    def _budget(self, photo: PhotoFaces, region: Region) -> FaceBudget:
        """One photo's perceptual budget, on its faces' boxes in region pixels."""
        boxes = photo.boxes
        if boxes is not None:
            x0, y0 = region.box[:2]
            boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).cpu()
            boxes = boxes - torch.tensor([x0, y0, x0, y0], dtype=torch.float64)
        return self.face_budget(boxes, tuple(region.mask.shape[-2:]))

    def face_budget(self, boxes: torch.Tensor | None, size: tuple[int, int]) -> FaceBudget:
        """This attack's perceptual budget for a region of ``size`` ``(h, w)`` with faces at ``boxes``.

        ``boxes``: ``[F, 4]`` in the region's pixels, or None to count the whole region as the face.
        """
        return FaceBudget(
            boxes,
            size,
            self.max_dssim,
            self.min_face_ssim_p5,
            self.dssim_weight,
            self.ssim_p5_weight,
            min_face_ssim=self.min_face_ssim,
            max_shading=self.max_shading,
            shading_weight=self.shading_weight,
            max_shading_peak=self.max_shading_peak,
            shading_peak_weight=self.shading_peak_weight,
        )
