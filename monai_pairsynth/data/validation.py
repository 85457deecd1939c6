"""The package's one input-validation layer: every entry point that takes images calls these checks.

What is checked, and where (docs/data.md, "What the package checks", lists the same):

- **finiteness**: NaN/Inf in a loaded CT/PET/mask (:class:`ValidateCased`), in a pool file
  (:func:`check_pool_state`), in generated triplets (:func:`finite_rows`, the pool drops them) and in the quality
  filter's features (:func:`check_finite_features`);
- **dtype**: real numbers only (:func:`check_dtype`);
- **geometry of a case**: all files 2D or all 3D, a mask on its reference image's grid (same shape and affine),
  every other image physically overlapping the reference (:func:`check_case_geometry`, from NIfTI headers at
  datalist time and from the loaded ``MetaTensor`` in the preprocessing pipeline);
- **label values**: a mask holds only the allowed values (:func:`check_label_values`);
- **empty masks**: a case without a tumour slice is logged, naming it, and counted (:func:`log_empty_mask`);
- **bounded resources**: the mixing ratio (:data:`MAX_SYNTHETIC_RATIO`, :func:`check_ratio`) and allocations
  a user sets the size of (:func:`check_allocation`) are refused before work starts, naming the setting;
- **distinct real samples**: exact duplicates that would zero the memorisation guard are reported
  (:func:`distinct_samples`).

Errors about data are :class:`DatasetError` (a ``ValueError``) and name the case, file, key, shape or value.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

__all__ = [
    "MAX_SYNTHETIC_RATIO",
    "DatasetError",
    "ValidateCased",
    "available_memory_bytes",
    "check_allocation",
    "check_case_geometry",
    "check_dtype",
    "check_finite",
    "check_finite_features",
    "check_label_map",
    "check_label_values",
    "check_matching_shapes",
    "check_pool_state",
    "check_ratio",
    "describe_key",
    "distinct_samples",
    "finite_rows",
    "log_empty_mask",
    "physical_extent",
    "shared_memory_free_bytes",
]

logger = logging.getLogger(__name__)

#: Largest synthetic mixing ratio ``r = N_synthetic / N_real`` accepted by ``MixedDataset`` and the bundle.
#: The method's best ratio is 0.5 and synthetic pretraining uses a few; 100 synthetic items per real one
#: already makes the real data 1 % of an epoch. Larger values are refused before anything is built (a ratio
#: of 1e9 would ask for an epoch of billions of items and a pool to match).
MAX_SYNTHETIC_RATIO = 100.0

#: An allocation a user sets the size of may take at most this share of the memory available now.
MEMORY_FRACTION = 0.8

#: Pool file fields :meth:`SynthesisPool.load` needs.
POOL_STATE_FIELDS = (
    "format",
    "version",
    "keys",
    "spatial_shape",
    "capacity",
    "storage",
    "specs",
    "spacing",
    "seed",
    "size",
    "data",
    "stamps",
    "stats",
)
_POOL_STATS_FIELDS = ("generated", "accepted", "surplus", "generation_seconds", "rejected", "failures")
_MAX_LISTED = 5


class DatasetError(ValueError):
    """A dataset on disk (or a datalist) is missing, inconsistent or unreadable; the message names the file or case."""


# ---------------------------------------------------------------------------------------------- naming
def describe_key(d: Mapping[Hashable, Any], key: Hashable) -> str:
    """``"label file /x/CHUM-001.nii.gz (case CHUM-001)"`` for error messages.

    Example:
        >>> describe_key({"pet": 0, "case_id": "CHUM-001"}, "pet")
        'pet (case CHUM-001)'
    """
    img = d.get(key)
    src = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
    case = d.get("case_id")
    parts = [f"{key!s}"] + ([f"file {src}"] if src else []) + ([f"(case {case})"] if case is not None else [])
    return " ".join(parts)


def _listed(values: Sequence[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED])
    return shown + (f" ... ({len(values)} in all)" if len(values) > _MAX_LISTED else "")


# ---------------------------------------------------------------------------------------------- values
def check_dtype(value: Any, name: str) -> None:
    """Refuse anything but real numbers (float, int, bool): complex, object or string arrays.

    Example:
        >>> check_dtype(torch.zeros(2, dtype=torch.complex64), "ct (case A)")
        Traceback (most recent call last):
        ...
        monai_pairsynth.data.validation.DatasetError: ct (case A) has dtype torch.complex64; expected real numbers (float, int or bool).
    """
    if isinstance(value, torch.Tensor):
        ok = not value.is_complex()
        dtype: Any = value.dtype
    else:
        arr = np.asarray(value)
        ok = arr.dtype.kind in "biuf"
        dtype = arr.dtype
    if not ok:
        raise DatasetError(f"{name} has dtype {dtype}; expected real numbers (float, int or bool).")


def check_finite(value: Any, name: str) -> None:
    """Raise :class:`DatasetError` naming ``name`` and how many NaN / +Inf / -Inf values ``value`` holds.

    Example:
        >>> check_finite(torch.tensor([1.0, float("nan"), float("inf")]), "pet file P.nii.gz (case A)")
        Traceback (most recent call last):
        ...
        monai_pairsynth.data.validation.DatasetError: pet file P.nii.gz (case A) holds non-finite values: 1 NaN, 1 +Inf, 0 -Inf of 3 (first at index (1,)); fix or exclude the file.
    """
    t = convert_to_tensor(value, track_meta=False)
    if not t.is_floating_point() or bool(torch.isfinite(t).all()):
        return
    nan, pos, neg = int(torch.isnan(t).sum()), int(torch.isposinf(t).sum()), int(torch.isneginf(t).sum())
    first = tuple(int(i) for i in torch.nonzero(~torch.isfinite(t))[0].tolist())
    raise DatasetError(
        f"{name} holds non-finite values: {nan} NaN, {pos} +Inf, {neg} -Inf of {t.numel()} "
        f"(first at index {first}); fix or exclude the file."
    )


def finite_rows(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``(B,)`` bool: which rows of a batch ``{key: (B, ...)}`` are finite in every key.

    Example:
        >>> finite_rows({"ct": torch.tensor([[0.0], [float("nan")]]), "pet": torch.zeros(2, 1)}).tolist()
        [True, False]
    """
    values = list(batch.values())
    n = int(values[0].shape[0])
    ok = torch.ones(n, dtype=torch.bool)
    for v in values:
        ok &= torch.isfinite(torch.as_tensor(v).reshape(n, -1)).all(dim=1).cpu()
    return ok


def check_label_values(value: Any, allowed: set[float], name: str) -> None:
    """Raise :class:`DatasetError` if ``value`` holds anything outside ``allowed``, listing the values found.

    Example:
        >>> check_label_values(torch.tensor([0.0, 1.0, 4.0]), {0.0, 1.0}, "label (case A)")
        Traceback (most recent call last):
        ...
        monai_pairsynth.data.validation.DatasetError: label (case A) is not a binary mask: values 4 outside {0, 1}.
    """
    t = convert_to_tensor(value, track_meta=False)
    if allowed == {0.0, 1.0} and bool(((t == 0) | (t == 1)).all()):
        return  # the common case without sorting the whole volume (torch.unique: seconds on a CT-size mask)
    bad = [v for v in torch.unique(t).tolist() if v not in allowed]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        allowed_text = "{" + ", ".join(f"{v:g}" for v in sorted(allowed)) + "}"
        raise DatasetError(f"{name} is not a binary mask: values {shown} outside {allowed_text}.")


def check_label_map(value: Any, name: str) -> None:
    """Raise :class:`DatasetError` if ``value`` holds anything but non-negative integers (a label map's values).

    Example:
        >>> check_label_map(torch.tensor([0.0, 1.0, 2.0]), "label (case A)")
        >>> check_label_map(torch.tensor([0.0, 0.5, -1.0]), "label (case A)")
        Traceback (most recent call last):
        ...
        monai_pairsynth.data.validation.DatasetError: label (case A) is not a label map: values -1, 0.5 are not non-negative integers.
    """
    t = convert_to_tensor(value, track_meta=False)
    ok = (t >= 0) & (t == t.round()) if t.is_floating_point() else t >= 0
    if bool(ok.all()):
        return
    bad = [v for v in torch.unique(t).tolist() if not (v >= 0 and float(v).is_integer())]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise DatasetError(f"{name} is not a label map: values {shown} are not non-negative integers.")


def log_empty_mask(name: str, min_voxels: int) -> None:
    """Log that a case gave no tumour slice (nothing is dropped silently)."""
    logger.warning(
        "%s: the mask has no slice with >= %d tumour voxel(s); the case gives no training sample.",
        name,
        min_voxels,
    )


# ---------------------------------------------------------------------------------------------- geometry
def _affine4(affine: Any, spatial_dims: int) -> np.ndarray:
    a = np.asarray(convert_to_tensor(affine, track_meta=False).double().cpu(), dtype=np.float64)
    if a.shape == (4, 4):
        return a
    r = a.shape[0] - 1
    if a.shape != (r + 1, r + 1) or r > 3:
        raise DatasetError(f"affine of shape {a.shape} for a {spatial_dims}D image; expected 4x4.")
    out = np.eye(4)
    out[:r, :r], out[:r, 3] = a[:r, :r], a[:r, r]
    return out


def physical_extent(spatial_shape: Sequence[int], affine: Any) -> tuple[np.ndarray, np.ndarray]:
    """World-space bounding box ``(low, high)`` (mm, 3 values each) of an image's voxels (voxel edges included).

    Example:
        >>> lo, hi = physical_extent((4, 2), torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])))
        >>> lo.tolist(), hi.tolist()
        ([-1.0, -1.0, -0.5], [7.0, 3.0, 0.5])
    """
    shape = [int(s) for s in spatial_shape]
    a = _affine4(affine, len(shape))
    ranges = [(-0.5, n - 0.5) for n in shape] + [(-0.5, 0.5)] * (3 - len(shape))
    corners = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1)
    world = a[:3, :3] @ corners + a[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def _overlap_fraction(ref: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> float:
    """Share of ``ref``'s box covered by ``other``'s (axes where both are flat count as covered if they meet)."""
    fraction = 1.0
    for lo_r, hi_r, lo_o, hi_o in zip(ref[0], ref[1], other[0], other[1]):
        inter = min(hi_r, hi_o) - max(lo_r, lo_o)
        extent = hi_r - lo_r
        if extent <= 1e-6:
            if inter < -1e-3:
                return 0.0
            continue
        if inter <= 0:
            return 0.0
        fraction *= min(inter / extent, 1.0)
    return fraction


def check_case_geometry(
    images: Mapping[str, tuple[Sequence[int], Any]],
    reference_key: str,
    mask_keys: Sequence[str] = (),
    names: Mapping[str, str] | None = None,
    min_overlap: float = 0.5,
) -> None:
    """Check the files of one case against each other before anything is resampled.

    Args:
        images: ``{key: (spatial_shape, affine)}`` (shape without the channel).
        reference_key: the grid everything is resampled onto (the CT).
        mask_keys: keys that must lie on the reference grid: same shape and affine (a mask on another
            grid would be resampled with the wrong geometry and come out shifted).
        names: ``{key: "pet file /x/P.nii.gz (case A)"}`` for the messages (default: the key).
        min_overlap: another image covering less than this share of the reference's box is logged.

    Raises:
        DatasetError: a 2D file beside a 3D one, a mask of another shape or affine than the reference, an
            image that does not overlap the reference physically; naming both files, shapes and extents.

    Example:
        >>> eye = torch.eye(4)
        >>> check_case_geometry({"ct": ((8, 8), eye), "label": ((8, 8, 2), eye)}, "ct", ["label"])
        Traceback (most recent call last):
        ...
        monai_pairsynth.data.validation.DatasetError: label has 3 spatial dims (shape (8, 8, 2)) but ct has 2 (shape (8, 8)); all files of a case must be 2D or all 3D.
    """
    names = {k: (names or {}).get(k, str(k)) for k in images}
    ref_shape, ref_affine = images[reference_key]
    ref_shape = tuple(int(s) for s in ref_shape)
    ref_a = _affine4(ref_affine, len(ref_shape))
    ref_box = physical_extent(ref_shape, ref_a)
    for key, (shape, affine) in images.items():
        if key == reference_key:
            continue
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(ref_shape):
            raise DatasetError(
                f"{names[key]} has {len(shape)} spatial dims (shape {shape}) but {names[reference_key]} has "
                f"{len(ref_shape)} (shape {ref_shape}); all files of a case must be 2D or all 3D."
            )
        a = _affine4(affine, len(shape))
        if key in mask_keys:
            if shape != ref_shape:
                raise DatasetError(
                    f"{names[key]} has shape {shape} but {names[reference_key]} has {ref_shape}; a mask must be "
                    "on its reference image's grid (same shape and affine), resample it there first."
                )
            voxel = float(np.min(np.linalg.norm(ref_a[:3, : len(shape)], axis=0))) or 1.0
            if not (
                np.allclose(a[:3, :3], ref_a[:3, :3], rtol=1e-3, atol=1e-4 * voxel)
                and np.allclose(a[:3, 3], ref_a[:3, 3], atol=0.1 * voxel)
            ):
                raise DatasetError(
                    f"{names[key]} has the affine {np.round(a, 3).tolist()} but {names[reference_key]} has "
                    f"{np.round(ref_a, 3).tolist()}; a mask must be on its reference image's grid."
                )
            continue
        box = physical_extent(shape, a)
        fraction = _overlap_fraction(ref_box, box)
        if fraction <= 0.0:
            raise DatasetError(
                f"{names[key]} does not overlap {names[reference_key]} physically: it covers "
                f"{np.round(box[0], 1).tolist()} to {np.round(box[1], 1).tolist()} mm, the reference "
                f"{np.round(ref_box[0], 1).tolist()} to {np.round(ref_box[1], 1).tolist()} mm (check the affines)."
            )
        if fraction < min_overlap:
            logger.warning(
                "%s covers only %.0f%% of %s; the rest is filled with zeros after resampling.",
                names[key],
                100 * fraction,
                names[reference_key],
            )


class ValidateCased(MapTransform):
    """Check a freshly loaded case (``(C, *spatial)`` per key): dtype, finiteness and the geometry of its files.

    Put it right after loading (``LoadImaged`` + ``EnsureChannelFirstd``) and before any resampling;
    :func:`~monai_pairsynth.data.preprocessing.preprocessing_transforms` does. The data is returned unchanged.

    Args:
        keys: modality keys of the case.
        reference_key: the grid the others are resampled onto (the CT).
        mask_keys: keys that must be on the reference grid.
        allow_missing_keys: don't raise if a key is missing.

    Example:
        >>> ct = MetaTensor(torch.zeros(1, 4, 4)); pet = MetaTensor(torch.full((1, 4, 4), float("nan")))
        >>> ValidateCased(["ct", "pet"], "ct")({"ct": ct, "pet": pet, "case_id": "A"})
        Traceback (most recent call last):
        ...
        monai_pairsynth.data.validation.DatasetError: pet (case A) holds non-finite values: 16 NaN, 0 +Inf, 0 -Inf of 16 (first at index (0, 0, 0)); fix or exclude the file.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str,
        mask_keys: Sequence[str] = (),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.mask_keys = tuple(mask_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        geometry: dict[str, tuple[Sequence[int], Any]] = {}
        names: dict[str, str] = {}
        for key in self.key_iterator(dict(data)):
            value = data[key]
            names[str(key)] = describe_key(data, key)
            check_dtype(value, names[str(key)])
            check_finite(value, names[str(key)])
            shape = tuple(value.shape[1:])
            affine = value.affine if isinstance(value, MetaTensor) else torch.eye(4)
            geometry[str(key)] = (shape, affine)
        if self.reference_key in geometry:
            check_case_geometry(geometry, self.reference_key, self.mask_keys, names)
        return data


# ---------------------------------------------------------------------------------------------- mixing
def check_matching_shapes(
    synthetic: Mapping[str, Any], reference: Mapping[Hashable, Any] | None, pool_shape: Any = None
) -> None:
    """Raise ``ValueError`` where a synthetic triplet's modality has another shape than the real sample's.

    What :class:`~monai_pairsynth.mixing.SynthesizePairedd` checks before it replaces a sample: the message names
    the key, both shapes and the pool's ``spatial_shape``.

    Example:
        >>> import torch
        >>> check_matching_shapes({"ct": torch.zeros(1, 8, 8)}, {"ct": torch.zeros(1, 8, 8)})
        >>> check_matching_shapes({"ct": torch.zeros(1, 8, 8)}, {"ct": torch.zeros(1, 4, 4)}, (8, 8))
        Traceback (most recent call last):
        ...
        ValueError: the synthetic 'ct' has shape (1, 8, 8) (pool spatial_shape (8, 8)) but the sample's 'ct' has shape (1, 4, 4); build the pool with the pipeline's spatial size and one channel, or place the transform where the sample has the pool's shape.
    """
    if not reference:
        return
    for key, value in reference.items():
        if key not in synthetic:
            continue
        got = tuple(int(s) for s in synthetic[key].shape)
        want = tuple(int(s) for s in value.shape)
        if got != want:
            raise ValueError(
                f"the synthetic {key!r} has shape {got} (pool spatial_shape {pool_shape}) but the sample's {key!r} "
                f"has shape {want}; build the pool with the pipeline's spatial size and one channel, or place the "
                "transform where the sample has the pool's shape."
            )


# ---------------------------------------------------------------------------------------------- pool files
def check_pool_state(
    state: Mapping[str, Any], path: str | os.PathLike, mask_values: Mapping[str, set]
) -> None:
    """Check a loaded pool file's fields, shapes and values; every error names the file.

    Args:
        state: what ``torch.load`` returned (format and version already checked).
        path: the file, for the messages.
        mask_values: ``{mask key: allowed values}`` in the file's storage units.

    Raises:
        DatasetError: a missing field, a stored tensor of the wrong shape, non-finite rows (listed by index) or
            mask values outside the allowed set.
    """
    where = repr(os.fspath(path))
    missing = [f for f in POOL_STATE_FIELDS if f not in state]
    if missing:
        raise DatasetError(
            f"SynthesisPool file {where} has no field(s) {missing} (it has {sorted(map(str, state))}); it was not "
            "written by SynthesisPool.save, or was damaged."
        )
    stats = state["stats"]
    missing = [f for f in _POOL_STATS_FIELDS if not isinstance(stats, Mapping) or f not in stats]
    if missing:
        raise DatasetError(f"SynthesisPool file {where}: 'stats' has no {missing}.")
    n = int(state["size"])
    keys = list(state["keys"])
    data = state["data"]
    absent = [k for k in keys if not isinstance(data, Mapping) or k not in data]
    if absent:
        raise DatasetError(f"SynthesisPool file {where}: 'data' has no entry for the keys {absent}.")
    expected = (n, 1, *(int(s) for s in state["spatial_shape"]))
    for k in keys:
        rows = data[k]
        if not isinstance(rows, torch.Tensor) or tuple(rows.shape) != expected:
            shape = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
            raise DatasetError(
                f"SynthesisPool file {where}: data[{k!r}] has shape {shape}, expected {expected}."
            )
        check_dtype(rows, f"SynthesisPool file {where}: data[{k!r}]")
    if n:
        finite = finite_rows({k: data[k] for k in keys})
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            bad_keys = [k for k in keys if not bool(torch.isfinite(data[k]).all())]
            raise DatasetError(
                f"SynthesisPool file {where} holds {len(bad)} triplet(s) with NaN/Inf (rows {_listed(bad)}; keys "
                f"{bad_keys}); it would serve them to training. Regenerate the pool."
            )
    for k, allowed in mask_values.items():
        if k in keys and n:
            check_label_values(data[k], allowed, f"SynthesisPool file {where}: data[{k!r}]")
    stamps = state["stamps"]
    if not isinstance(stamps, torch.Tensor) or tuple(stamps.shape) != (n,):
        shape = tuple(stamps.shape) if isinstance(stamps, torch.Tensor) else type(stamps).__name__
        raise DatasetError(f"SynthesisPool file {where}: 'stamps' has shape {shape}, expected ({n},).")


# ---------------------------------------------------------------------------------------------- features
def check_finite_features(value: torch.Tensor, what: str, network: Any, layers: Sequence[str] = ()) -> None:
    """Raise ``ValueError`` naming the feature network if ``value`` (features computed from finite real data)
    holds NaN/Inf: the network, not the data or the generator, is broken."""
    t = torch.as_tensor(value)
    if bool(torch.isfinite(t).all()):
        return
    bad = int((~torch.isfinite(t)).sum())
    layer_text = f" (layers {list(layers)})" if layers else ""
    raise ValueError(
        f"the feature network {type(network).__name__}{layer_text} produced {bad} non-finite value(s) in the "
        f"{what} of finite real data; check its weights (NaN after training?) before fitting the filter."
    )


def distinct_samples(nearest_sq: torch.Tensor, what: str = "real samples", atol: float = 0.0) -> torch.Tensor:
    """``(N,)`` bool: samples whose nearest other sample is not an exact copy (distance > ``atol``).

    Logs a warning naming the copies: a duplicated real sample has a leave-one-out nearest-neighbour distance
    of 0, and a memorisation threshold calibrated on it would be 0, which lets every copy through.

    Raises:
        ValueError: every sample has an exact copy (no distance to calibrate on).
    """
    d = torch.as_tensor(nearest_sq)
    keep = d > atol
    if bool(keep.all()):
        return keep
    copies = torch.nonzero(~keep).flatten().tolist()
    if not bool(keep.any()):
        raise ValueError(
            f"all {d.numel()} {what} are exact copies of another one (nearest-neighbour distance 0); the "
            "memorisation guard cannot be calibrated. Remove the duplicates."
        )
    logger.warning(
        "%d of %d %s have an exact copy among the others (indices %s); they are left out of the memorisation "
        "guard's calibration (a threshold of 0 would let every copy through). Remove the duplicates.",
        len(copies),
        d.numel(),
        what,
        _listed(copies),
    )
    return keep


# ---------------------------------------------------------------------------------------------- resources
def check_ratio(ratio: Any, name: str = "ratio", bound: float = MAX_SYNTHETIC_RATIO) -> float:
    """A synthetic mixing ratio as a float in ``[0, bound]``; otherwise ``ValueError`` naming ``name``.

    Example:
        >>> check_ratio(1e9, "synthetic_ratio")
        Traceback (most recent call last):
        ...
        ValueError: synthetic_ratio=1e+09 is above the bound 100 (N_synthetic / N_real): the real data would be less than 1 % of an epoch; such a ratio is refused before any memory is allocated. Use at most 100.
    """
    if isinstance(ratio, bool):
        raise ValueError(f"{name} must be a number >= 0, got {ratio!r}.")
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {ratio!r}.") from None
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 = real only), got {ratio!r}.")
    if r > bound:
        raise ValueError(
            f"{name}={r:g} is above the bound {bound:g} (N_synthetic / N_real): the real data would be less than "
            f"{100 / bound:g} % of an epoch; such a ratio is refused before any memory is allocated. Use at most "
            f"{bound:g}."
        )
    return r


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation now (``MemAvailable`` on Linux), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def shared_memory_free_bytes() -> int | None:
    """Free space of ``/dev/shm``, where ``Tensor.share_memory_`` puts CPU tensors on Linux (containers often
    give it only 64 MB), or ``None`` where there is none."""
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def check_allocation(
    num_bytes: int, setting: str, value: Any, detail: str = "", shared: bool = False
) -> None:
    """Refuse an allocation of ``num_bytes`` that would not fit in memory, naming the setting that sized it.

    Args:
        num_bytes: the size of the allocation.
        setting, value: the user setting that sized it (named in the message).
        detail: how the size comes about.
        shared: the allocation goes to shared memory (``share_memory_``): ``/dev/shm`` must hold it too.

    Raises:
        ValueError: ``num_bytes`` exceeds :data:`MEMORY_FRACTION` of the memory (and shared memory) available now.
    """
    limits = [("memory", available_memory_bytes())]
    if shared:
        limits.append(("shared memory (/dev/shm)", shared_memory_free_bytes()))
    gib = 1024**3
    for what, available in limits:
        if available is None or num_bytes <= MEMORY_FRACTION * available:
            continue
        raise ValueError(
            f"{setting}={value!r} needs {num_bytes / gib:.2f} GiB of {what}{f' ({detail})' if detail else ''}, "
            f"more than {MEMORY_FRACTION:.0%} of the {available / gib:.2f} GiB available; lower {setting}."
        )
