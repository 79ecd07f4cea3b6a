"""Differentiable face alignment: five landmarks -> a model's input crop.

A similarity transform (rotation, uniform scale, translation) maps the detected
landmarks onto a model's template; the crop is then *sampled* from the
full-resolution photo with ``grid_sample``, so gradients reach the photo's own
pixels and a perturbation optimised through this warp can be added to the photo
at its original resolution.

Coordinates are pixel coordinates with pixel centres on integers, ``(x, y)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` (Umeyama, no reflection).

    Args:
        src: ``[B, N, 2]`` or ``[N, 2]`` source points.
        dst: ``[B, N, 2]`` or ``[N, 2]`` destination points (broadcast over the batch).

    Returns:
        ``[B, 2, 3]`` matrices ``M`` with ``dst ≈ M @ [x, y, 1]``.

    Shape:
        - src: :math:`(B, N, 2)` with :math:`N \\ge 2`
        - Output: :math:`(B, 2, 3)`
    """
    if src.ndim == 2:
        src = src.unsqueeze(0)
    if src.ndim != 3 or src.shape[-1] != 2 or src.shape[1] < 2:
        raise ValueError(f"src must be [B, N>=2, 2], got {list(src.shape)}")
    dst = torch.as_tensor(dst, dtype=src.dtype, device=src.device).expand_as(src)
    src_mean, dst_mean = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    src_c, dst_c = src - src_mean, dst - dst_mean
    # With complex numbers z = x + iy a similarity is dst = a * src + t, a = s * e^{i theta}.
    zs = torch.complex(src_c[..., 0], src_c[..., 1])
    zd = torch.complex(dst_c[..., 0], dst_c[..., 1])
    a = (zs.conj() * zd).sum(1) / (zs.abs() ** 2).sum(1).clamp_min(1e-12)
    rot = torch.stack([torch.stack([a.real, -a.imag], -1), torch.stack([a.imag, a.real], -1)], -2)
    shift = dst_mean.transpose(1, 2) - rot @ src_mean.transpose(1, 2)
    return torch.cat([rot, shift], dim=2)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of ``[B, 2, 3]`` affine matrices."""
    linear, shift = matrix[:, :, :2], matrix[:, :, 2:]
    inv = torch.linalg.inv(linear)
    return torch.cat([inv, -inv @ shift], dim=2)


def apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Maps ``[B, N, 2]`` points through ``[B, 2, 3]`` matrices."""
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, :, 2].unsqueeze(1)


def crop_to_image_matrix(landmarks: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Matrices mapping crop pixels to photo pixels for faces with these landmarks.

    Args:
        landmarks: ``[B, 5, 2]`` landmarks in the photo.
        template: ``[5, 2]`` where the landmarks go in the crop.
    """
    return invert_affine(similarity_transform(landmarks, template))


def crop_footprint(crop_to_image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Axis-aligned box ``[B, 4]`` ``(x1, y1, x2, y2)`` in the photo that the crops read from."""
    h, w = size
    corners = torch.tensor(
        [[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]],
        dtype=crop_to_image.dtype,
        device=crop_to_image.device,
    ).expand(crop_to_image.shape[0], 4, 2)
    pts = apply_affine(crop_to_image, corners)
    return torch.cat([pts.amin(1), pts.amax(1)], dim=1)


def _area_reduce(images: torch.Tensor, crop_to_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-filters the photo when a crop shrinks it >= 2x, so sampling does not alias.

    ``grid_sample`` reads 4 pixels per output pixel; a face 600 px wide squeezed
    into 150 px would otherwise see a quarter of its pixels (and an attack would
    only perturb those). Uses the largest integer factor below the scale.
    """
    scale = torch.linalg.det(crop_to_image[:, :, :2]).abs().sqrt().min().item()
    k = math.floor(scale)
    if k < 2:
        return images, crop_to_image
    pooled = F.avg_pool2d(images, kernel_size=k, stride=k, ceil_mode=True, count_include_pad=False)
    # Pooled pixel i covers pixels [k i, k i + k - 1], centred on k i + (k - 1) / 2.
    to_pooled = crop_to_image.new_tensor([[1.0 / k, 0.0, -(k - 1) / (2.0 * k)], [0.0, 1.0 / k, -(k - 1) / (2.0 * k)]])
    matrix = to_pooled[:, :2] @ crop_to_image
    matrix[:, :, 2] += to_pooled[:, 2]
    return pooled, matrix


def warp_crops(
    images: torch.Tensor,
    crop_to_image: torch.Tensor,
    size: tuple[int, int],
    antialias: bool = True,
) -> torch.Tensor:
    """Samples crops from photos through affine maps, differentiably (bilinear, zeros outside).

    Args:
        images: ``[B, C, H, W]`` photos (use ``expand`` to take several faces from one photo).
        crop_to_image: ``[B, 2, 3]`` maps from crop pixel ``(u, v)`` to photo pixel ``(x, y)``.
        size: ``(h, w)`` of the crops.
        antialias: box-filter the photo first when the crop shrinks it 2x or more.

    Returns:
        ``[B, C, h, w]`` crops, same dtype and device as ``images``.

    Shape:
        - images: :math:`(B, C, H, W)`
        - crop_to_image: :math:`(B, 2, 3)`
        - Output: :math:`(B, C, h, w)`
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got {list(images.shape)}")
    if crop_to_image.shape != (images.shape[0], 2, 3):
        raise ValueError(
            f"crop_to_image must be [{images.shape[0]}, 2, 3] to match images, got {list(crop_to_image.shape)}"
        )
    crop_to_image = crop_to_image.to(images)
    if antialias:
        images, crop_to_image = _area_reduce(images, crop_to_image)
    h, w = size
    H, W = images.shape[-2:]
    vs, us = torch.meshgrid(
        torch.arange(h, dtype=images.dtype, device=images.device),
        torch.arange(w, dtype=images.dtype, device=images.device),
        indexing="ij",
    )
    grid_uv = torch.stack([us, vs], dim=-1).reshape(1, h * w, 2).expand(images.shape[0], -1, -1)
    xy = apply_affine(crop_to_image, grid_uv)
    # grid_sample (align_corners=False) puts -1 and 1 on the outer edges of the border pixels.
    norm = torch.stack([(2 * xy[..., 0] + 1) / W - 1, (2 * xy[..., 1] + 1) / H - 1], dim=-1)
    return F.grid_sample(images, norm.reshape(-1, h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False)


def align_faces(
    photo: torch.Tensor,
    landmarks: torch.Tensor,
    template: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Aligned crops of all faces of one photo.

    Args:
        photo: ``[3, H, W]`` RGB in ``[0, 1]``.
        landmarks: ``[F, 5, 2]`` landmarks of the ``F`` faces in the photo.
        template: ``[5, 2]`` the model's template.
        size: the model's ``(h, w)`` input size.

    Returns:
        ``[F, 3, h, w]`` crops.
    """
    if photo.ndim != 3:
        raise ValueError(f"photo must be [3, H, W], got {list(photo.shape)}")
    landmarks = torch.as_tensor(landmarks, dtype=photo.dtype, device=photo.device).reshape(-1, 5, 2)
    matrix = crop_to_image_matrix(landmarks, template.to(photo))
    return warp_crops(photo.unsqueeze(0).expand(len(landmarks), -1, -1, -1), matrix, size)
