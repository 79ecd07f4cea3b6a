"""A learned first guess of a face's cloak (issue 31): a small conv net in the aligned frame.

The net sees the face aligned into the frame :mod:`cloak.cloaking.reuse` keeps a person's
cloak in (:data:`~cloak.cloaking.reuse.FRAME_TEMPLATE`, :data:`~cloak.cloaking.reuse.FRAME_SIZE`),
at half its resolution, and returns the attack's optimised variable ``u`` in that frame
(``tanh`` times ``eps``, so ``|u| <= eps``), enlarged to the frame's size. Warped into a
photo's pixels (:func:`generator_start`), it is a :attr:`~cloak.attacks.regions.PhotoFaces.start`:
the attack then takes its ``warm_steps`` from there. Trained by ``experiment=generator``
(:mod:`experiments.generator`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cloak.alignment import invert_affine, similarity_transform, warp_crops
from cloak.cloaking.reuse import FRAME_SIZE, FRAME_TEMPLATE

#: The net works on the frame shrunk by this factor (224 -> 112): a cloak smoothed at 1.5
#: model pixels has little above that frequency, and a quarter of the pixels cost a quarter.
FRAME_SHRINK = 2


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class FrameGenerator(nn.Module):
    """A small U-Net: aligned face (``[B, 3, s, s]`` in ``[0, 1]``) -> ``u`` ``[B, 3, 2s, 2s]``, ``|u| <= eps``.

    Args:
        eps: the bound of ``u``, in ``[0, 1]`` units (the attack's :attr:`~cloak.attacks.Attack.eps`).
        width: channels of the first level (doubled at each of the three levels below).
    """

    def __init__(self, eps: float, width: int = 24) -> None:
        super().__init__()
        self.eps = float(eps)
        self.width = int(width)
        w = self.width
        self.down1 = _block(3, w, 2)  # s/2
        self.down2 = _block(w, 2 * w, 2)  # s/4
        self.down3 = _block(2 * w, 4 * w, 2)  # s/8
        self.middle = nn.Sequential(_block(4 * w, 4 * w), _block(4 * w, 4 * w))
        self.up2 = _block(4 * w + 2 * w, 2 * w)
        self.up1 = _block(2 * w + w, w)
        self.up0 = _block(w + 3, w)
        self.out = nn.Conv2d(w, 3, 3, padding=1)
        # A first guess near zero at the start of training: inside the face budget.
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        """``u`` in the frame for a batch of aligned faces (see the class)."""
        x = face * 2 - 1
        d1 = self.down1(x)
        d2 = self.down2(d1)
        m = self.middle(self.down3(d2))
        u2 = self.up2(torch.cat([F.interpolate(m, size=d2.shape[-2:], mode="bilinear"), d2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, size=d1.shape[-2:], mode="bilinear"), d1], 1))
        u0 = self.up0(torch.cat([F.interpolate(u1, size=x.shape[-2:], mode="bilinear"), x], 1))
        u = torch.tanh(self.out(u0)) * self.eps
        return F.interpolate(u, scale_factor=FRAME_SHRINK, mode="bilinear")


def frame_faces(photos: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """``[B, 3, s, s]`` (``s`` = frame size / :data:`FRAME_SHRINK`): each photo's face in the shrunk frame.

    ``photos``: ``[B, 3, H, W]``; ``landmarks``: ``[B, 5, 2]`` in photo pixels, one face per photo.
    """
    template = FRAME_TEMPLATE.to(photos) / FRAME_SHRINK
    frame_to_photo = invert_affine(similarity_transform(landmarks.to(photos), template))
    size = FRAME_SIZE // FRAME_SHRINK
    return warp_crops(photos, frame_to_photo, (size, size))


def to_photo(frame_u: torch.Tensor, landmarks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, C, H, W]``: cloaks in the frame (``[B, C, FRAME_SIZE, FRAME_SIZE]``) warped into photo pixels."""
    photo_to_frame = similarity_transform(landmarks.to(frame_u), FRAME_TEMPLATE.to(frame_u))
    return warp_crops(frame_u, photo_to_frame, size, antialias=False)


@torch.no_grad()
def generator_start(generator: FrameGenerator, photo: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """The generator's first guess for one face of ``photo`` (``[3, H, W]``), in photo pixels ``[3, H, W]``.

    ``landmarks``: ``[5, 2]`` (or ``[1, 5, 2]``) of that face. Outside the face's frame the start is 0.
    """
    lm = landmarks.reshape(1, 5, 2).to(photo)
    frame_u = generator(frame_faces(photo[None], lm))
    return to_photo(frame_u, lm, tuple(photo.shape[-2:]))[0]


def load_generator(path: str, map_location: str | torch.device = "cpu") -> FrameGenerator:
    """A :class:`FrameGenerator` from a checkpoint written by the training (``state``, ``eps``, ``width``)."""
    saved = torch.load(path, map_location=map_location, weights_only=True)
    generator = FrameGenerator(float(saved["eps"]), int(saved["width"]))
    generator.load_state_dict(saved["state"])
    return generator.eval()
