"""Pairedness of PET/CT/mask triplets: do the three modalities describe the same patient?

The headline is one score per triplet, ``score = lesion_score * structure_score`` in [0, 1]: both must hold
for a triplet to be paired. Its two terms, in physical units (HU, SUV, {0, 1}), with ``M`` the mask
(``label > 0.5``) and ``dilate(M, r)`` its dilation by a ball of radius ``r`` mm:

**Lesion term** (``lesion_score``): the mask against the PET thresholded *relative to the local background*::

    background = median PET over the shell dilate(M, 20 mm) minus dilate(M, 2 mm), body voxels only
                                                   (body: the PET body outline of the body term; all shell
                                                    voxels when fewer than 5 are in the body)
    peak       = max PET over dilate(M, 4 mm)      (the PET blur may put the peak just outside a small mask)
    T          = fill_holes({ PET >= background + 0.3 (peak - background) } ∩ dilate(M, 10 mm))
    lesion_score = 2 |M ∩ T| / (|M| + |T|),   0 when peak <= 1.1 background (no uptake above background)

The threshold sits between the tumour's own surroundings and its peak, so it follows the contrast of the
lesion rather than a fraction of SUVmax; filling holes (per axial slice) keeps a necrotic tumour whose uptake is
a ring; a flat PET has no uptake above background and scores 0. Undefined (NaN, ``mask_empty``) for an empty
mask.

**Structure term** (``structure_score``): do CT and PET edges run the same way? With ``g_CT`` and ``g_PET``
the spatial gradients of the CT (clipped to [-1000, 1000] HU) and of the PET, each smoothed by a 2 mm
Gaussian::

    c = sum (g_CT . g_PET)^2 / sum |g_CT|^2 |g_PET|^2        (magnitude-weighted squared cosine, in [0, 1])
    structure_score = max(0, 2 c - 1)                         (0 for unrelated images, whose c is about 1/2)

It sees the body outline, the field-of-view edges, bone and fat/muscle boundaries (in either direction of
contrast), so a CT of another patient, a mirrored PET or a flat PET drop it. 0 when either gradient vanishes.

Calibrated on 36 real FDG-PET/CT sarcoma patients (``benchmarks/pairedness_real.py``, ``docs/metrics.md``):
the thresholds above (shell 20 mm, fraction 0.3, 2 mm smoothing) were chosen there among a few candidates;
per patient the real triplet scores above masks swapped between patients, a flat PET, a PET flipped left-right,
a mask shifted by 2 cm and a CT of another patient.

**Earlier terms**, kept for comparison with older results:

- ``lesion_dice``: the mask against the PET thresholded at 40 % of SUVmax (over ``dilate(M, 4 mm)``) within
  ``dilate(M, 10 mm)``. On real tumours it mostly measures mask size (a flat PET scores as high as the real one).
- ``body_dice``: CT body outline (``fill_holes(largest_component(CT > -500 HU))``) against the PET body outline
  (the same on the PET smoothed by 2 mm, > 0.15 SUV). About 0.99 on phantom triplets, 0.88 for a flipped CT;
  on cropped real scans both outlines are mostly the field-of-view box.

**Field of view.** A real triplet that carries a {0, 1} field-of-view mask (``fov_key``, default ``"fov"``:
1 where every image was scanned, 0 where preprocessing padded the crop, see
:class:`~monai_pairsynth.data.FieldOfViewd`) is scored inside it only: the structure term sums over the mask
eroded by ``2 * max(ct_smoothing_mm, pet_smoothing_mm)`` mm plus one voxel (so the straight padding edge, where
CT and PET both jump, does not count as shared structure), the lesion background shell and both body outlines
are restricted to the mask. Triplets without it (the phantom, generated ones) are scored exactly as before.

Read every term against real triplets, the ceiling a perfect generator reaches (real tumours score well below
1 because a PET threshold is not the tumour's drawn border).
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


def _fill_holes_axial(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 2D, per axial slice (the last axis) for a volume."""
    if mask.ndim == 2:
        return ndimage.binary_fill_holes(mask)
    return np.stack([ndimage.binary_fill_holes(mask[..., z]) for z in range(mask.shape[-1])], axis=-1)


def _lesion_score(
    pet: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    shell_inner_mm: float,
    shell_outer_mm: float,
    background_fraction: float,
    min_peak_ratio: float,
    suvmax_margin_mm: float,
    voi_margin_mm: float,
    pet_body: np.ndarray,
    fov: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """``(lesion_score, background, peak)`` of one non-empty mask (module docstring)."""
    shell = _dilate(mask, shell_outer_mm, spacing) & ~_dilate(mask, shell_inner_mm, spacing)
    if fov is not None and int((shell & fov).sum()) >= 5:
        shell = shell & fov
    in_body = shell & pet_body
    region = in_body if int(in_body.sum()) >= 5 else shell
    background = float(np.median(pet[region])) if region.any() else 0.0
    peak = float(pet[_dilate(mask, suvmax_margin_mm, spacing)].max())
    if not peak > min_peak_ratio * max(background, 0.0) or peak <= 0.0:
        return 0.0, background, peak  # no uptake above the local background
    level = background + background_fraction * (peak - background)
    uptake = _fill_holes_axial((pet >= level) & _dilate(mask, voi_margin_mm, spacing))
    return _dice(mask, uptake), background, peak


def _structure_score(
    ct: np.ndarray,
    pet: np.ndarray,
    spacing: Sequence[float],
    ct_smoothing_mm: float,
    pet_smoothing_mm: float,
    inside: np.ndarray | None = None,
) -> float:
    """``max(0, 2 c - 1)`` with ``c`` the magnitude-weighted squared cosine of the CT and PET gradients."""

    def gradient(x: np.ndarray, sigma_mm: float) -> list[np.ndarray]:
        if sigma_mm > 0:
            x = ndimage.gaussian_filter(x, [sigma_mm / s for s in spacing], mode="nearest")
        return np.gradient(x, *spacing)

    g_ct = gradient(np.clip(ct, -1000.0, 1000.0) / 1000.0, ct_smoothing_mm)
    g_pet = gradient(pet, pet_smoothing_mm)
    dot = sum(a * b for a, b in zip(g_ct, g_pet))
    norm = sum(a * a for a in g_ct) * sum(b * b for b in g_pet)
    if inside is not None:  # only what was scanned (module docstring)
        dot, norm = dot * inside, norm * inside
    total = float(norm.sum())
    if not total > 0.0:
        return 0.0
    return max(0.0, 2.0 * float((dot * dot).sum()) / total - 1.0)


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
    shell_inner_mm: float = 2.0,
    shell_outer_mm: float = 20.0,
    background_fraction: float = 0.3,
    min_peak_ratio: float = 1.1,
    ct_smoothing_mm: float = 2.0,
    fov_key: str | None = "fov",
) -> dict[str, torch.Tensor]:
    """Per-triplet pairedness: the ``score`` (lesion term x structure term) and the earlier Dice terms.

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
        pet_smoothing_mm: Gaussian sigma (mm) applied to the PET before its body threshold and its gradient.
        shell_inner_mm, shell_outer_mm: the background shell around the mask (2 and 20 mm).
        background_fraction: the lesion threshold, ``background + fraction * (peak - background)`` (0.3).
        min_peak_ratio: a peak at most this times the background counts as no uptake (lesion term 0).
        ct_smoothing_mm: Gaussian sigma (mm) applied to the CT before its gradient.
        fov_key: the key of a field-of-view mask; where the triplets carry it, pixels outside it are left out
            (module docstring). ``None``: never read.

    Returns:
        float64 tensors ``(B,)``: ``score`` (``lesion_score * structure_score``), ``lesion_score``,
        ``structure_score``, ``background_suv`` and ``peak_suv`` (of the lesion term), ``lesion_dice``,
        ``body_dice``, ``suvmax`` (the earlier terms) and ``mask_empty`` (bool). Everything that needs a mask
        (``score``, ``lesion_*``, ``*_suv``, ``suvmax``) is NaN where the mask is empty.

    Raises:
        KeyError: a sample without one of the keys.
        ValueError: empty input, shapes that differ between the keys, non-finite values, no spacing.

    Example:
        >>> import torch
        >>> ct = torch.full((1, 1, 32, 32), -1000.0); ct[..., 4:28, 4:28] = 40.0
        >>> pet = torch.zeros(1, 1, 32, 32); pet[..., 4:28, 4:28] = 1.0; pet[..., 12:18, 12:18] = 8.0
        >>> label = torch.zeros(1, 1, 32, 32); label[..., 12:18, 12:18] = 1.0
        >>> out = pairedness({"ct": ct, "pet": pet, "label": label}, spacing=2.0)
        >>> out["lesion_score"].tolist(), out["background_suv"].tolist(), round(out["structure_score"].item(), 3)
        ([1.0], [1.0], 1.0)
        >>> out["lesion_dice"].tolist(), out["suvmax"].tolist(), round(out["body_dice"].item(), 3)
        ([1.0], [8.0], 0.923)
    """
    for name, value in (("suv_fraction", suv_fraction), ("background_fraction", background_fraction)):
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value!r}.")
    for name, value in (
        ("suvmax_margin_mm", suvmax_margin_mm),
        ("voi_margin_mm", voi_margin_mm),
        ("pet_smoothing_mm", pet_smoothing_mm),
        ("shell_inner_mm", shell_inner_mm),
        ("shell_outer_mm", shell_outer_mm),
        ("ct_smoothing_mm", ct_smoothing_mm),
    ):
        if not float(value) >= 0.0:
            raise ValueError(f"{name} must be >= 0 mm, got {value!r}.")
    if not float(shell_outer_mm) > float(shell_inner_mm):
        raise ValueError(f"shell_outer_mm ({shell_outer_mm}) must exceed shell_inner_mm ({shell_inner_mm}).")
    if not float(min_peak_ratio) >= 1.0:
        raise ValueError(f"min_peak_ratio must be >= 1, got {min_peak_ratio!r}.")
    keys = [ct_key, pet_key, label_key]
    if len(set(keys)) != 3:
        raise ValueError(f"ct_key, pet_key and label_key must differ, got {keys}.")
    data = None
    if fov_key is not None and fov_key not in keys:
        try:
            data = gather_keys(triplet_batch, [*keys, fov_key], name="triplet set")
        except KeyError:
            data = None  # no field-of-view mask: every pixel counts, as always
    if data is None:
        data = gather_keys(triplet_batch, keys, name="triplet set")
    fovs = data.get(fov_key) if fov_key is not None else None
    reference = tuple(data[ct_key].shape)
    if fovs is not None and tuple(fovs.shape) != reference:
        raise ValueError(
            f"the field-of-view mask {fov_key!r} has shape {tuple(fovs.shape)}, the triplets {reference}."
        )
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
    fov_masks = None if fovs is None else fovs[:, 0].numpy() > 0.5
    erode = math.ceil(2.0 * max(ct_smoothing_mm, pet_smoothing_mm) / min(mm)) + 1
    nan = np.full(n, np.nan)
    lesion, body, suvmax = nan.copy(), np.zeros(n), nan.copy()
    lesion_score, structure, background, peak_suv = nan.copy(), np.zeros(n), nan.copy(), nan.copy()
    for b in range(n):
        fov = None if fov_masks is None else fov_masks[b]
        pet_body = body_outline(pet[b], pet_body_threshold, pet_smoothing_mm, mm)
        ct_body = body_outline(ct[b], ct_body_threshold)
        inside = None
        if fov is not None:
            pet_body, ct_body = pet_body & fov, ct_body & fov
            inside = ndimage.binary_erosion(fov, iterations=erode, border_value=1).astype(np.float64)
        body[b] = _dice(ct_body, pet_body)
        structure[b] = _structure_score(ct[b], pet[b], mm, ct_smoothing_mm, pet_smoothing_mm, inside)
        m = masks[b]
        if not m.any():
            continue
        peak = float(pet[b][_dilate(m, suvmax_margin_mm, mm)].max())
        voi = _dilate(m, voi_margin_mm, mm)
        suvmax[b] = peak
        lesion[b] = _dice(m, (pet[b] >= suv_fraction * peak) & voi)
        lesion_score[b], background[b], peak_suv[b] = _lesion_score(
            pet[b],
            m,
            mm,
            shell_inner_mm,
            shell_outer_mm,
            background_fraction,
            min_peak_ratio,
            suvmax_margin_mm,
            voi_margin_mm,
            pet_body,
            fov,
        )
    return {
        "score": torch.from_numpy(lesion_score * structure),
        "lesion_score": torch.from_numpy(lesion_score),
        "structure_score": torch.from_numpy(structure),
        "background_suv": torch.from_numpy(background),
        "peak_suv": torch.from_numpy(peak_suv),
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
