"""Plausibility rules for generated triplets: the impossible cases, checked before any feature distance.

Three per-sample measurements, all vectorised over the batch (no Python loop over samples or voxels), on
physical units (CT in HU, PET in SUV, the mask binary):

- ``mask_in_body``: the fraction of mask voxels inside the body, where the body is CT above a threshold
  (default -500 HU), with the holes of every axial slice filled (the airway, sinuses and lungs are air
  *inside* the patient) and dilated by a voxel or so. A mask in the air around the patient is impossible.
  ``NaN`` for an empty mask.
- ``mask_voxels``: the number of mask voxels (an empty mask has 0).
- ``pet_uptake``: mean PET inside the mask divided by the median PET in a ring around it (the mask dilated by
  ``ring[1]`` voxels minus the mask dilated by ``ring[0]``, so that the partial-volume edge of the lesion is
  not counted as background); the median of the whole non-mask image when the ring is empty. ``NaN`` for an
  empty mask. A generated tumour whose PET is flat (ratio about 1) marks a lesion the PET does not show.

:class:`~monai_pairsynth.quality.FeatureCentroidFilter` computes them in ``score`` and applies the thresholds
in ``select``; the functions here are the measurements alone.

Example:
    >>> import torch
    >>> ct = torch.full((2, 1, 16, 16), -1000.0); ct[..., 4:12, 4:12] = 40.0     # a square body in air
    >>> pet = torch.full((2, 1, 16, 16), 1.0); pet[0, 0, 6:8, 6:8] = 8.0       # a hot lesion in sample 0 only
    >>> mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool); mask[..., 6:8, 6:8] = True
    >>> mask[1, 0, 0:2, 0:2] = True                                           # sample 1: part of it in the air
    >>> body = body_mask(ct, threshold=-500.0, dilation=0)
    >>> mask_in_body_fraction(mask, body).tolist()
    [1.0, 0.5]
    >>> [round(v, 2) for v in pet_uptake_ratio(pet, mask).tolist()]
    [8.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["body_mask", "dilate", "fill_holes_2d", "mask_in_body_fraction", "pet_uptake_ratio"]

# the denominator of the PET uptake ratio is at least this (in the PET spec's unit, SUV): a ring in air
# (SUV ~0) must not divide by zero
PET_REFERENCE_FLOOR = 0.1


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(B, 1, *spatial)`` (2D or 3D) by a cube of half-width ``radius`` voxels."""
    if radius <= 0:
        return mask.bool()
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[mask.ndim - 2]
    return pool(mask.float(), kernel_size=2 * radius + 1, stride=1, padding=radius) > 0


def fill_holes_2d(foreground: torch.Tensor, check_every: int = 8) -> torch.Tensor:
    """Fill the holes of every 2D slice: background not connected to the slice border becomes foreground.

    ``foreground`` is ``(B, 1, H, W)`` or ``(B, 1, H, W, D)`` (then each of the ``D`` slices over the first two
    spatial axes, axial in RAS, is filled on its own). The border-connected background is grown from the
    border by 4-connected steps (a diagonal gap in the foreground does not leak), all slices of the batch at
    once, until it stops changing (checked every ``check_every`` steps).
    """
    fg = foreground.bool()
    if fg.ndim == 5:
        b, c, h, w, d = fg.shape
        flat = fg.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        filled = fill_holes_2d(flat, check_every)
        return filled.reshape(b, d, c, h, w).permute(0, 2, 3, 4, 1)
    if fg.ndim != 4:
        raise ValueError(f"fill_holes_2d needs (B, 1, H, W[, D]), got shape {tuple(fg.shape)}.")
    background = ~fg
    border = torch.zeros_like(fg)
    border[..., 0, :] = border[..., -1, :] = True
    border[..., :, 0] = border[..., :, -1] = True
    outside = (background & border).float()
    allowed = background.float()
    h, w = fg.shape[-2:]
    for _ in range(0, h * w + check_every, check_every):
        before = outside
        for _ in range(check_every):
            vertical = F.max_pool2d(outside, kernel_size=(3, 1), stride=1, padding=(1, 0))
            horizontal = F.max_pool2d(outside, kernel_size=(1, 3), stride=1, padding=(0, 1))
            outside = torch.maximum(vertical, horizontal) * allowed
        if torch.equal(outside, before):
            break
    return outside == 0


def body_mask(ct: torch.Tensor, threshold: float, dilation: int = 1, fill_holes: bool = True) -> torch.Tensor:
    """The body of ``ct`` ``(B, 1, *spatial)`` in physical units: ``ct > threshold``, holes of each axial slice
    filled (:func:`fill_holes_2d`), dilated by ``dilation`` voxels. Boolean, same shape."""
    body = ct > threshold
    if fill_holes:
        body = fill_holes_2d(body)
    return dilate(body, dilation)


def mask_in_body_fraction(mask: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    """``(B,)`` fraction of the mask's voxels inside ``body`` (both boolean ``(B, 1, *spatial)``); NaN when the
    mask is empty."""
    mask = mask.bool()
    count = mask.flatten(1).sum(1)
    inside = (mask & body.bool()).flatten(1).sum(1)
    fraction = inside.float() / count.clamp_min(1).float()
    return torch.where(count > 0, fraction, torch.full_like(fraction, float("nan")))


def _masked_median(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``(B,)`` median of ``values`` over ``region`` per sample; NaN where the region is empty."""
    masked = torch.where(region, values, torch.full_like(values, float("nan")))
    return torch.nanmedian(masked.flatten(1), dim=1).values


def pet_uptake_ratio(
    pet: torch.Tensor,
    mask: torch.Tensor,
    ring: Sequence[int] = (1, 3),
    floor: float = PET_REFERENCE_FLOOR,
) -> torch.Tensor:
    """``(B,)`` mean of ``pet`` inside ``mask`` over the median of ``pet`` in a ring around it.

    Args:
        pet: ``(B, 1, *spatial)`` PET in physical units (SUV).
        mask: ``(B, 1, *spatial)`` boolean tumour mask.
        ring: ``(inner, outer)`` voxels: the ring is the mask dilated by ``outer`` minus the mask dilated by
            ``inner``. Where it is empty (a mask covering nearly everything), the non-mask image is used.
        floor: the reference is at least this (a ring in air does not divide by zero).

    Returns:
        the ratio, NaN for an empty mask (or a mask covering the whole image).
    """
    inner, outer = int(ring[0]), int(ring[1])
    mask = mask.bool()
    pet = pet.float()
    count = mask.flatten(1).sum(1)
    mean_in = (pet * mask).flatten(1).sum(1) / count.clamp_min(1)
    band = dilate(mask, outer) & ~dilate(mask, inner)
    reference = _masked_median(pet, band)
    fallback = _masked_median(pet, ~mask)
    reference = torch.where(torch.isnan(reference), fallback, reference)
    ratio = mean_in / reference.clamp_min(floor)
    return torch.where(count > 0, ratio, torch.full_like(ratio, float("nan")))
