"""Constructed misgenerations: real triplets broken in known ways, to check what a quality filter rejects.

Each corruption imitates a failure of a paired generator, applied to a batched triplet
``{key: (B, 1, *spatial)}`` in normalised units ([-1, 1]; the mask in {-1, 1} or {0, 1}, returned in the
same convention):

- ``shifted_mask``: the mask is moved along the first spatial axis by its own extent plus a margin, so it no
  longer covers the tumour (image/mask misalignment);
- ``tumour_removed_pet``: PET uptake in the (dilated) tumour is replaced by the median PET of a ring around
  it, so the mask marks a tumour the PET does not show;
- ``pure_noise``: every image is uniform noise in [-1, 1] and the mask is a random speckle (a diverged
  sampler);
- ``flipped_ct``: the CT is mirrored along the first spatial axis (left-right in RAS) against its PET and
  mask (modalities generated independently).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

import torch
import torch.nn.functional as F
from monai.utils import look_up_option

__all__ = ["TripletCorruption", "corrupt_triplets"]


class TripletCorruption(str, Enum):
    """The constructed misgenerations of :func:`corrupt_triplets`."""

    SHIFTED_MASK = "shifted_mask"
    TUMOUR_REMOVED_PET = "tumour_removed_pet"
    PURE_NOISE = "pure_noise"
    FLIPPED_CT = "flipped_ct"


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[mask.ndim - 2]
    return pool(mask.float(), kernel_size=2 * radius + 1, stride=1, padding=radius) > 0


def corrupt_triplets(
    batch: Mapping[str, torch.Tensor],
    corruption: TripletCorruption | str,
    ct_key: str = "ct",
    pet_key: str = "pet",
    label_key: str = "label",
    dilation: int = 2,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Return a corrupted copy of a normalised batched triplet (the input is not modified).

    Args:
        batch: ``{key: (B, 1, *spatial)}`` in [-1, 1]; other keys are copied unchanged.
        corruption: one of :class:`TripletCorruption`.
        ct_key, pet_key, label_key: the modality keys.
        dilation: voxels the tumour is dilated by before its PET uptake is removed (PET blur spreads it).
        generator: randomness of ``pure_noise``.

    Example:
        >>> import torch
        >>> label = torch.zeros(1, 1, 8, 8); label[..., 1:3, 1:3] = 1
        >>> batch = {"ct": torch.zeros(1, 1, 8, 8), "pet": label * 2 - 1, "label": label}
        >>> moved = corrupt_triplets(batch, "shifted_mask")["label"]
        >>> float((moved * label).sum()), float(moved.sum())
        (0.0, 4.0)
    """
    corruption = look_up_option(corruption, TripletCorruption)
    for key in (ct_key, pet_key, label_key):
        if key not in batch:
            raise KeyError(f"key {key!r} is missing from the batch (it has keys {sorted(batch)}).")
        if batch[key].ndim < 3:
            raise ValueError(f"key {key!r} must be (B, 1, *spatial), got shape {tuple(batch[key].shape)}.")
    out = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    label = batch[label_key]
    low = float(label.min()) if label.numel() else 0.0
    background = -1.0 if low < 0 else 0.0  # keep the mask's {-1, 1} or {0, 1} convention
    tumour = label > (0.0 if low < 0 else 0.5)
    spatial = tuple(label.shape[2:])
    if corruption == TripletCorruption.SHIFTED_MASK:
        shifted = []
        for b in range(label.shape[0]):
            rows = torch.nonzero(tumour[b, 0].flatten(1).any(1)).flatten()
            extent = int(rows.max() - rows.min() + 1) if rows.numel() else 0
            shift = min(extent + 2, spatial[0] - 1)
            # roll the way that keeps the mask inside the image (away from the nearer border)
            if rows.numel() and int(rows.max()) + shift >= spatial[0]:
                shift = -shift
            shifted.append(torch.roll(label[b], shifts=shift, dims=1))
        out[label_key] = torch.stack(shifted)
    elif corruption == TripletCorruption.TUMOUR_REMOVED_PET:
        pet = out[pet_key]
        inner = _dilate(tumour, dilation)
        ring = _dilate(tumour, dilation + 3) & ~inner
        for b in range(pet.shape[0]):
            if inner[b].any():
                values = pet[b][ring[b]] if ring[b].any() else pet[b][~inner[b]]
                pet[b][inner[b]] = values.median() if values.numel() else pet[b].min()
    elif corruption == TripletCorruption.PURE_NOISE:
        for key in (ct_key, pet_key):
            ref = batch[key]
            noise = torch.rand(ref.shape, generator=generator, device="cpu")
            out[key] = (noise * 2.0 - 1.0).to(device=ref.device, dtype=ref.dtype)
        speckle = torch.rand(label.shape, generator=generator, device="cpu") > 0.97
        out[label_key] = torch.where(speckle.to(label.device), 1.0, background).to(label.dtype)
    else:  # FLIPPED_CT
        out[ct_key] = torch.flip(batch[ct_key], dims=(2,))
    return out
