"""Pairedness of PET/CT/mask triplets: do the three modalities describe the same patient?

Two terms per triplet, both Dice overlaps in [0, 1], both computed in physical units (HU, SUV, {0, 1}):

**Lesion term** (``lesion_dice``): the mask against the PET thresholded at 40 % of the lesion's SUVmax, a
standard PET tumour delineation. With ``M`` the mask (``label > 0.5``) and ``dilate(M, r)`` its dilation by a
ball of radius ``r`` mm::

    SUVmax = max PET over dilate(M, suvmax_margin_mm)          (4 mm: the PET blur may put the peak just
                                                                 outside a small mask)
    VOI    = dilate(M, voi_margin_mm)                           (10 mm: the search region)
    T      = { PET >= suv_fraction * SUVmax } ∩ VOI             (suv_fraction = 0.4)
    lesion_dice = 2 |M ∩ T| / (|M| + |T|)

Undefined (NaN, ``mask_empty``) when the mask is empty. The VOI keeps distant physiological uptake (tonsils,
glands, brain) out of ``T``. A mask over the PET lesion scores high; a mask somewhere else (e.g. from another
patient) has a low SUVmax, so ``T`` fills most of the VOI and the Dice drops.

**Body term** (``body_dice``): the CT body outline against the PET body outline::

    body_CT  = fill_holes(largest_component(CT > ct_body_threshold))                     (-500 HU)
    body_PET = fill_holes(largest_component(gauss(PET, pet_smoothing_mm) > pet_body_threshold))
                                                                     (2 mm sigma, 0.15 SUV)
    body_dice = 2 |body_CT ∩ body_PET| / (|body_CT| + |body_PET|)

Holes are filled per axial slice (the airway is inside the body; in a volume it is open at both ends). The
PET parameters were calibrated on the phantom (``docs/metrics.md``): real triplets score about 0.99, a CT
flipped anterior-posterior against its PET about 0.88. 1 when both outlines are empty.

Read both against real triplets, the ceiling a perfect generator reaches (the lesion term of real data is
well below 1 because 40 % of SUVmax is not the tumour's true border).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ._inputs import gather_keys, spacing_of

__all__ = ["body_outline", "pairedness", "summarize"]


def _ball(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean structuring element of all voxels within ``radius_mm`` of the centre (anisotropic spacing)."""
    half = [math.floor(radius_mm / s) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def _dilate(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    if radius_mm <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=_ball(radius_mm, spacing))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (1 + int(np.argmax(sizes)))
    if largest.ndim == 2:
        return ndimage.binary_fill_holes(largest)
    return np.stack([ndimage.binary_fill_holes(largest[..., z]) for z in range(largest.shape[-1])], axis=-1)


def body_outline(
    image: np.ndarray | torch.Tensor,
    threshold: float,
    smoothing_mm: float = 0.0,
    spacing: Sequence[float] = (),
) -> np.ndarray:
    """Body mask of one image ``(H, W[, D])``: (optionally Gaussian-smoothed) ``image > threshold``, largest
    connected component, holes filled per axial slice.

    Args:
        image: one channel, physical units.
        threshold: e.g. -500 HU for CT, 0.15 SUV for PET.
        smoothing_mm: Gaussian sigma in mm (0: none).
        spacing: voxel size in mm per axis (needed when ``smoothing_mm > 0``).

    Example:
        >>> import numpy as np
        >>> ct = np.full((9, 9), -1000.0); ct[2:7, 2:7] = 40.0; ct[4, 4] = -1000.0  # a body with an airway
        >>> int(body_outline(ct, -500.0).sum())
        25
    """
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    x = x.astype(np.float32, copy=False)
    if smoothing_mm > 0:
        if len(spacing) != x.ndim:
            raise ValueError(f"spacing needs {x.ndim} entries for smoothing, got {tuple(spacing)}.")
        x = ndimage.gaussian_filter(x, [smoothing_mm / s for s in spacing], mode="nearest")
    return _largest_filled(x > threshold)


def _resolve_spacing(spacing: float | Sequence[float] | None, data: Any, keys: Sequence[str], dims: int):
    if spacing is None:
        for key in keys:
            found = spacing_of(data, key)
            if found is not None:
                spacing = found
                break
    if spacing is None:
        raise ValueError(
            "pairedness needs the voxel spacing in mm (for the margins and the PET smoothing): pass spacing=... "
            "or MONAI MetaTensors that carry an affine."
        )
    values = [float(spacing)] * dims if isinstance(spacing, (int, float)) else [float(s) for s in spacing]
    if len(values) < dims:
        raise ValueError(f"spacing {tuple(values)} has fewer entries than the {dims} spatial dimensions.")
    values = values[:dims]
    if not all(v > 0 and math.isfinite(v) for v in values):
        raise ValueError(f"spacing must be positive mm values, got {tuple(values)}.")
    return values


def pairedness(
    triplet_batch: Any,
    ct_key: str = "ct",
    pet_key: str = "pet",
    label_key: str = "label",
    spacing: float | Sequence[float] | None = None,
    suv_fraction: float = 0.4,
    suvmax_margin_mm: float = 4.0,
    voi_margin_mm: float = 10.0,
    ct_body_threshold: float = -500.0,
    pet_body_threshold: float = 0.15,
    pet_smoothing_mm: float = 2.0,
) -> dict[str, torch.Tensor]:
    """Per-triplet pairedness: lesion term (mask vs 40 % SUVmax PET) and body term (CT vs PET outline).

    See the module docstring for the exact definitions.

    Args:
        triplet_batch: triplets in physical units (HU, SUV, {0, 1} mask): a batched dict
            ``{key: (B, 1, H, W[, D])}``, a dataset / list of sample dicts ``{key: (1, H, W[, D])}`` or a
            ``DataLoader``.
        ct_key, pet_key, label_key: the keys of CT (HU), PET (SUV) and the tumour mask.
        spacing: voxel size in mm (one number or one per axis); default: read from the first sample's MONAI
            ``MetaTensor`` affine.
        suv_fraction: the PET threshold as a fraction of SUVmax (0.4).
        suvmax_margin_mm: SUVmax is taken over the mask dilated by this many mm (0: the mask itself).
        voi_margin_mm: the thresholded PET counts only within the mask dilated by this many mm.
        ct_body_threshold: CT body threshold in HU.
        pet_body_threshold: PET body threshold in SUV, after smoothing.
        pet_smoothing_mm: Gaussian sigma (mm) applied to the PET before its body threshold.

    Returns:
        ``{"lesion_dice": (B,), "body_dice": (B,), "suvmax": (B,), "mask_empty": (B,) bool}``, float64
        tensors; ``lesion_dice`` and ``suvmax`` are NaN where the mask is empty.

    Raises:
        KeyError: a sample without one of the keys.
        ValueError: empty input, shapes that differ between the keys, non-finite values, no spacing.

    Example:
        >>> import torch
        >>> ct = torch.full((1, 1, 32, 32), -1000.0); ct[..., 4:28, 4:28] = 40.0
        >>> pet = torch.zeros(1, 1, 32, 32); pet[..., 4:28, 4:28] = 1.0; pet[..., 12:18, 12:18] = 8.0
        >>> label = torch.zeros(1, 1, 32, 32); label[..., 12:18, 12:18] = 1.0
        >>> out = pairedness({"ct": ct, "pet": pet, "label": label}, spacing=2.0)
        >>> out["lesion_dice"].tolist(), out["suvmax"].tolist(), round(out["body_dice"].item(), 3)
        ([1.0], [8.0], 0.923)
    """
    for name, value in (("suv_fraction", suv_fraction),):
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value!r}.")
    for name, value in (
        ("suvmax_margin_mm", suvmax_margin_mm),
        ("voi_margin_mm", voi_margin_mm),
        ("pet_smoothing_mm", pet_smoothing_mm),
    ):
        if not float(value) >= 0.0:
            raise ValueError(f"{name} must be >= 0 mm, got {value!r}.")
    keys = [ct_key, pet_key, label_key]
    if len(set(keys)) != 3:
        raise ValueError(f"ct_key, pet_key and label_key must differ, got {keys}.")
    data = gather_keys(triplet_batch, keys, name="triplet set")
    reference = tuple(data[ct_key].shape)
    for key in keys:
        shape = tuple(data[key].shape)
        if len(shape) not in (4, 5) or shape[1] != 1:
            raise ValueError(f"key {key!r} must be (B, 1, H, W[, D]) with one channel, got shape {shape}.")
        if shape != reference:
            raise ValueError(f"key {key!r} has shape {shape} but key {ct_key!r} has {reference}.")
        if not torch.isfinite(data[key]).all():
            bad = (~torch.isfinite(data[key])).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"key {key!r} has NaN/Inf values in samples {bad[:10]}.")
    dims = len(reference) - 2
    mm = _resolve_spacing(spacing, triplet_batch, keys, dims)
    ct = data[ct_key][:, 0].double().numpy()
    pet = data[pet_key][:, 0].double().numpy()
    masks = data[label_key][:, 0].numpy() > 0.5
    n = reference[0]
    lesion, body, suvmax = np.full(n, np.nan), np.zeros(n), np.full(n, np.nan)
    for b in range(n):
        body[b] = _dice(
            body_outline(ct[b], ct_body_threshold),
            body_outline(pet[b], pet_body_threshold, pet_smoothing_mm, mm),
        )
        m = masks[b]
        if not m.any():
            continue
        peak = float(pet[b][_dilate(m, suvmax_margin_mm, mm)].max())
        voi = _dilate(m, voi_margin_mm, mm)
        suvmax[b] = peak
        lesion[b] = _dice(m, (pet[b] >= suv_fraction * peak) & voi)
    return {
        "lesion_dice": torch.from_numpy(lesion),
        "body_dice": torch.from_numpy(body),
        "suvmax": torch.from_numpy(suvmax),
        "mask_empty": torch.from_numpy(~masks.reshape(n, -1).any(1)),
    }


def summarize(values: Any) -> dict[str, float | int]:
    """``{"mean", "sd", "median", "min", "max", "n", "n_nan"}`` of a 1D set of values, NaNs left out.

    ``sd`` is the sample standard deviation (``ddof=1``; 0 for one value); all statistics are NaN when no
    value is finite.

    Example:
        >>> summarize([1.0, 2.0, 3.0, float("nan")])
        {'mean': 2.0, 'sd': 1.0, 'median': 2.0, 'min': 1.0, 'max': 3.0, 'n': 3, 'n_nan': 1}
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    v = np.asarray(values, dtype=np.float64).ravel()
    ok = v[~np.isnan(v)]
    n = int(ok.size)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "sd": nan, "median": nan, "min": nan, "max": nan, "n": 0, "n_nan": int(v.size)}
    return {
        "mean": float(ok.mean()),
        "sd": float(ok.std(ddof=1)) if n > 1 else 0.0,
        "median": float(np.median(ok)),
        "min": float(ok.min()),
        "max": float(ok.max()),
        "n": n,
        "n_nan": int(v.size - n),
    }
