"""Where a cloak may live in a photo: a region around its faces, in the photo's own pixels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cloak.alignment import crop_footprint, crop_to_image_matrix
from cloak.models.base import FaceEmbedder

# JPEG works on 16x16 macroblocks (8x8 with 2x chroma subsampling); aligning the region to
# them makes the differentiable JPEG see the same blocks as a real encoder of the photo.
BLOCK = 16


@dataclass
class PhotoFaces:
    """One photo and the faces in it to cloak.

    Attributes:
        photo: ``[3, H, W]`` RGB in ``[0, 1]``.
        landmarks: ``[F, 5, 2]`` MTCNN landmarks in photo pixels.
        seed: seeds this photo's random draws, so a photo gets the same cloak
            alone or in any batch (see :func:`photo_seed`).
        boxes: optional ``[F, 4]`` detector boxes ``(x0, y0, x1, y1)`` in photo pixels,
            where the attacks' per-face perceptual budget is measured.
        start: optional ``[C, H, W]``: where the attack's optimised variable starts, in photo
            pixels (C: 3, or 1 for a luma cloak); a photo with a start is *warm*: it takes the
            attack's ``warm_steps`` (:mod:`cloak.cloaking.reuse` carries a person's cloak over).
    """

    photo: torch.Tensor
    landmarks: torch.Tensor
    seed: int = 0
    boxes: torch.Tensor | None = None
    start: torch.Tensor | None = None


def photo_seed(seed: int, photo: torch.Tensor) -> int:
    """A per-photo seed derived from the run's seed and the photo's pixels (not its batch position)."""
    digest = hashlib.blake2b(photo.detach().cpu().contiguous().numpy().tobytes(), digest_size=8)
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little") & ((1 << 62) - 1)


@dataclass
class Region:
    """The part of a photo one cloak covers.

    Attributes:
        box: ``(x0, y0, x1, y1)`` integer pixel bounds (``x1``, ``y1`` exclusive).
        mask: ``[1, h, w]`` in ``[0, 1]``: how much of the cloak each pixel takes (1 around
            the faces, 0 away from them, feathered in between).
        matrices: model name -> ``[F, 2, 3]`` maps from crop pixels to *region* pixels.
    """

    box: tuple[int, int, int, int]
    mask: torch.Tensor
    matrices: dict[str, torch.Tensor]

    @property
    def model_pixel_scale(self) -> float:
        """Region pixels per model-input pixel of its smallest face in any model's crop.

        Each matrix maps model pixels to region pixels; its scale is ``sqrt(|det|)``.
        """
        return float(torch.cat([m[:, :, :2].det().abs().sqrt() for m in self.matrices.values()]).min())

    def crop(self, photo: torch.Tensor) -> torch.Tensor:
        """The region's pixels of a ``[3, H, W]`` photo."""
        x0, y0, x1, y1 = self.box
        return photo[:, y0:y1, x0:x1]

    def paste(self, photo: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """A copy of ``photo`` with this region replaced by ``region``."""
        x0, y0, x1, y1 = self.box
        out = photo.clone()
        out[:, y0:y1, x0:x1] = region
        return out

    def face_mask(self, boxes: torch.Tensor, growth: float) -> torch.Tensor:
        """``[1, h, w]`` in ``[0, 1]``: 1 inside the face ``boxes`` grown by ``growth`` of their size, feathered.

        ``boxes``: ``[F, 4]`` ``(x0, y0, x1, y1)`` in *photo* pixels (as :class:`PhotoFaces` holds them).
        """
        boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).cpu()
        grow = (boxes[:, 2:] - boxes[:, :2]) * growth / 2
        grown = torch.cat([boxes[:, :2] - grow, boxes[:, 2:] + grow], dim=1)
        return feathered_boxes(grown, self.box[:2], tuple(self.mask.shape[-2:]), self.mask)


def feathered_boxes(
    boxes: torch.Tensor, origin: tuple[int, int], size: tuple[int, int], like: torch.Tensor
) -> torch.Tensor:
    """``[1, h, w]``: 1 inside ``boxes``, 0 away from them, the edges feathered.

    Args:
        boxes: ``[F, 4]`` ``(x0, y0, x1, y1)`` in photo pixels.
        origin: ``(x0, y0)`` of the ``size`` ``(h, w)`` window, in photo pixels.
        like: takes the mask's dtype and device.
    """
    x0, y0 = origin
    h, w = size
    mask = torch.zeros(1, h, w, dtype=like.dtype, device=like.device)
    for bx0, by0, bx1, by1 in boxes.tolist():
        ys, ye = max(0, int(by0) - y0), max(0, min(y0 + h, int(by1) + 1) - y0)
        xs, xe = max(0, int(bx0) - x0), max(0, min(x0 + w, int(bx1) + 1) - x0)
        mask[:, ys:ye, xs:xe] = 1
    # Feather the edges (a box filter about 6% of a face wide): a hard-edged patch of
    # noise shows as a rectangle on smooth backgrounds.
    face_size = float((boxes[:, 2:] - boxes[:, :2]).amin())
    k = max(3, int(0.06 * face_size) | 1)
    return F.avg_pool2d(mask.unsqueeze(0), k, stride=1, padding=k // 2, count_include_pad=True)[0]


def face_region(
    faces: PhotoFaces,
    models: dict[str, FaceEmbedder],
    margin: float = 0.08,
) -> Region:
    """The region covering every model's crop of every face, grown by ``margin`` of its size.

    The margin leaves room for the alignment jitter of robust attacks.
    """
    photo = faces.photo
    H, W = photo.shape[-2:]
    landmarks = faces.landmarks.to(photo)
    matrices, boxes = {}, []
    for name, model in models.items():
        m = crop_to_image_matrix(landmarks, model.template.to(photo))
        box = crop_footprint(m, model.input_size)
        grow = (box[:, 2:] - box[:, :2]) * margin / 2
        boxes.append(torch.cat([box[:, :2] - grow, box[:, 2:] + grow], dim=1))
        matrices[name] = m
    face_boxes = torch.cat(boxes).detach()
    lo = face_boxes[:, :2].amin(0).floor().clamp_min(0)
    hi = face_boxes[:, 2:].amax(0).ceil()
    x0, y0 = (int(v) // BLOCK * BLOCK for v in lo.tolist())
    x1, y1 = min(W, int(hi[0]) + 1), min(H, int(hi[1]) + 1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"faces lie outside the photo of size {W}x{H}: landmarks {faces.landmarks.tolist()}")
    mask = feathered_boxes(face_boxes, (x0, y0), (y1 - y0, x1 - x0), photo)
    shift = torch.tensor([x0, y0], dtype=photo.dtype, device=photo.device)
    for name in matrices:
        m = matrices[name].clone()
        m[:, :, 2] -= shift
        matrices[name] = m
    return Region(box=(x0, y0, x1, y1), mask=mask, matrices=matrices)


@dataclass
class CloakResult:
    """What an attack returns for one photo.

    Attributes:
        photo: ``[3, H, W]`` cloaked photo in ``[0, 1]``, full resolution.
        box: ``(x0, y0, x1, y1)`` of the region the cloak covers.
        dssim: the region's DSSIM against the original.
        loss: the attack's final loss per face (lower is better for the attack).
        bound: ``[1, h, w]``: the most each pixel of the region may move (``eps`` times
            the visual-masking map and the region's feathered mask), in ``[0, 1]`` units.
        steps: the optimisation steps this photo took (fewer than asked when it stopped early).
        variable: ``[1, C, h, w]``: the optimised variable at the end, in region pixels
            (before the final shrink): what a later face of the same person may start from
            (:mod:`cloak.cloaking.reuse`).
        warm: whether the photo started from a given start (:attr:`PhotoFaces.start`).
    """

    photo: torch.Tensor
    box: tuple[int, int, int, int]
    dssim: float
    loss: list[float]
    bound: torch.Tensor | None = None
    steps: int = 0
    variable: torch.Tensor | None = None
    warm: bool = False
