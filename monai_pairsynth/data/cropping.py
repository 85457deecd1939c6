"""Slice extraction and body-centred cropping of the file pipeline (MONAI dictionary transforms).

Split out of :mod:`monai_pairsynth.data.preprocessing`, which re-exports every name.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    Pad,
    SpatialCrop,
    Transform,
)
from monai.transforms.traits import MultiSampleTrait
from monai.utils import TransformBackends, convert_to_tensor

from .validation import (
    describe_key,
    log_empty_mask,
)

__all__ = ["CentreOfMassCrop", "CentreOfMassCropd", "ExtractTumourSlicesd"]


class ExtractTumourSlicesd(MapTransform, MultiSampleTrait):
    """Split a volume ``(C, H, W, D)`` into the 2D axial slices ``(C, H, W)`` that contain tumour.

    A multi-sample transform (like :class:`monai.transforms.RandCropByPosNegLabeld`): it returns a list of
    dicts, one per slice whose ``label_key`` has at least ``min_tumour_voxels`` voxels above ``threshold``
    (0 works for a {0, 1} mask and for a normalised {-1, 1} one). Non-image entries are copied; each slice
    gets ``"slice_index"``. A case without such a slice gives ``[]`` and a warning naming it. A slice keeps a 4×4 affine placing it at its ``z`` position. A 2D input is
    returned as ``[data]`` if it contains tumour, else ``[]``.

    Args:
        keys: image keys to slice (the label key is sliced too if listed).
        label_key: the tumour mask.
        min_tumour_voxels: minimum tumour voxels for a slice to be kept.
        threshold: tumour where ``label > threshold``.
        allow_missing_keys: don't raise if a key is missing.

    Example:
        >>> import torch
        >>> label = torch.zeros(1, 4, 4, 5); label[0, 1, 1, 2:4] = 1
        >>> out = ExtractTumourSlicesd(["label"])({"label": label, "case_id": "x"})
        >>> [(s["slice_index"], tuple(s["label"].shape)) for s in out]
        [(2, (1, 4, 4)), (3, (1, 4, 4))]
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        min_tumour_voxels: int = 1,
        threshold: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(min_tumour_voxels) < 1:
            raise ValueError(f"min_tumour_voxels must be >= 1, got {min_tumour_voxels!r}.")
        self.label_key, self.min_tumour_voxels, self.threshold = (
            label_key,
            int(min_tumour_voxels),
            float(threshold),
        )

    @staticmethod
    def _slice(img: Any, k: int) -> Any:
        t = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        arr = t[..., k]
        if not isinstance(t, MetaTensor):
            return arr.as_tensor() if isinstance(arr, MetaTensor) else arr.clone()
        affine = t.affine.clone()
        if affine.shape[0] == 4:
            affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * k  # origin of slice k; the z column is kept
        meta = {m: v for m, v in t.meta.items() if m not in ("affine", "spatial_shape", "original_affine")}
        meta["spatial_shape"] = np.asarray(arr.shape[1:])
        out = MetaTensor(arr.as_tensor().clone(), affine=affine, meta=meta)
        if hasattr(
            out, "spatial_ndim"
        ):  # MONAI >= 1.6 caches the rank; a kept "no channel" flag would inflate it
            out.spatial_ndim = arr.ndim - 1
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        if self.label_key not in d:
            raise KeyError(f"label key {self.label_key!r} not in data (keys: {list(d)}).")
        label = convert_to_tensor(d[self.label_key], track_meta=False)
        if label.ndim == 3:  # already a 2D slice
            if int((label > self.threshold).sum()) >= self.min_tumour_voxels:
                return [d]
            log_empty_mask(describe_key(d, self.label_key), self.min_tumour_voxels)
            return []
        if label.ndim != 4:
            raise ValueError(
                f"{describe_key(d, self.label_key)} must be (C, H, W, D) or (C, H, W), got shape {tuple(label.shape)}."
            )
        counts = (label > self.threshold).sum(dim=tuple(range(label.ndim - 1)))
        keys = list(self.key_iterator(d))
        out = []
        for k in torch.nonzero(counts >= self.min_tumour_voxels).flatten().tolist():
            s = {key: v for key, v in d.items() if key not in keys}
            for key in keys:
                if convert_to_tensor(d[key], track_meta=False).shape[-1] != label.shape[-1]:
                    raise ValueError(
                        f"{describe_key(d, key)} has shape {tuple(d[key].shape)}, label {tuple(label.shape)}."
                    )
                s[key] = self._slice(d[key], k)
            s["slice_index"] = k
            out.append(s)
        if not out:
            log_empty_mask(describe_key(d, self.label_key), self.min_tumour_voxels)
        return out


class CentreOfMassCrop(Transform):
    """Crop or pad to ``spatial_size`` around the centre of mass of the non-background region.

    The foreground is ``source > threshold`` (default: a quarter of the way from the source's minimum to
    its maximum, i.e. -500 HU for a CT in [-1000, 1000] or -0.5 for a normalised one); its centre of
    mass becomes the centre of the output. Where the window leaves the image it is padded with
    ``pad_value`` (``"min"``: each image's own minimum, i.e. air, zero uptake, background). MONAI's
    :class:`~monai.transforms.Pad` and :class:`~monai.transforms.SpatialCrop` do the work, so a
    ``MetaTensor``'s affine follows. Without foreground the geometric centre is used.

    Args:
        spatial_size: output size; one entry per spatial axis, or fewer (the trailing axes, e.g. ``D`` of a
            volume given a 2D size, are kept); a non-positive entry keeps that axis.
        threshold: foreground threshold in the source's units, or None for the default above.
        pad_value: ``"min"`` or a number.

    Example:
        >>> import torch
        >>> img = torch.zeros(1, 10, 10); img[0, 6:9, 6:9] = 1.0
        >>> out = CentreOfMassCrop((4, 4))(img)
        >>> tuple(out.shape), float(out.sum())
        ((1, 4, 4), 9.0)
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        spatial_size: Sequence[int] | int = (128, 128),
        threshold: float | None = None,
        pad_value: float | str = "min",
    ) -> None:
        size = [int(spatial_size)] if isinstance(spatial_size, int) else [int(s) for s in spatial_size]
        if not 1 <= len(size) <= 3:
            raise ValueError(f"spatial_size must have 1 to 3 entries, got {spatial_size!r}.")
        if pad_value != "min" and not isinstance(pad_value, (int, float)):
            raise ValueError(f"pad_value must be 'min' or a number, got {pad_value!r}.")
        self.spatial_size, self.threshold, self.pad_value = size, threshold, pad_value

    def compute_box(self, source: Any) -> tuple[list[int], list[int]]:
        """Start index (may be negative) and size per spatial axis for a ``(C, *spatial)`` source."""
        src = convert_to_tensor(source, track_meta=False).float()
        spatial = src.shape[1:]
        if len(self.spatial_size) > len(spatial):
            raise ValueError(
                f"spatial_size {self.spatial_size} has more axes than the image's spatial shape {tuple(spatial)}."
            )
        size = [s if s > 0 else n for s, n in zip(self.spatial_size, spatial)] + list(
            spatial[len(self.spatial_size) :]
        )
        img = src.max(dim=0).values if src.shape[0] > 1 else src[0]
        thr = self.threshold
        if thr is None:
            lo, hi = float(img.min()), float(img.max())
            thr = lo + 0.25 * (hi - lo)
        fg = img > thr
        if not bool(fg.any()) or not math.isfinite(float(thr)):
            com = [(n - 1) / 2.0 for n in spatial]
        else:
            idx = torch.nonzero(fg).float()
            com = idx.mean(dim=0).tolist()
        cropped = [i < len(self.spatial_size) and self.spatial_size[i] > 0 for i in range(len(spatial))]
        # the window's centre (start + (size - 1) / 2) lands on the centre of mass (rounded to a voxel)
        start = [math.floor(c - (s - 1) / 2.0 + 0.5) if crop else 0 for c, s, crop in zip(com, size, cropped)]
        return start, size

    def apply_box(self, img: Any, start: Sequence[int], size: Sequence[int]) -> Any:
        spatial = img.shape[1:]
        to_pad = [(0, 0)] + [(max(0, -st), max(0, st + s - n)) for st, s, n in zip(start, size, spatial)]
        if any(p != (0, 0) for p in to_pad):
            value = (
                float(convert_to_tensor(img, track_meta=False).min())
                if self.pad_value == "min"
                else float(self.pad_value)
            )
            img = Pad(to_pad=to_pad, mode="constant", value=value)(img)
        roi_start = [st + p[0] for st, p in zip(start, to_pad[1:])]
        return SpatialCrop(roi_start=roi_start, roi_end=[r + s for r, s in zip(roi_start, size)])(img)

    def __call__(self, img: Any, source: Any = None) -> Any:
        start, size = self.compute_box(img if source is None else source)
        return self.apply_box(img, start, size)


class CentreOfMassCropd(MapTransform):
    """Dictionary version of :class:`CentreOfMassCrop`: one window, from ``source_key``, applied to all keys.

    Args:
        keys: keys to crop/pad (all with the same spatial shape).
        source_key: the image whose non-background region defines the centre (the CT by default).
        spatial_size, threshold, pad_value: as in :class:`CentreOfMassCrop` (``pad_value`` may also be a
            ``{key: value}`` mapping).
        allow_missing_keys: don't raise if a key is missing.

    Example:
        >>> from monai_pairsynth.data import make_phantom_case
        >>> case = make_phantom_case(0, spatial_size=(40, 40), spacing=8.0)
        >>> out = CentreOfMassCropd(["ct", "pet", "label"], spatial_size=(16, 16), threshold=-500.0)(case)
        >>> tuple(out["pet"].shape), float(out["label"].sum()) == float(case["label"].sum())
        ((1, 16, 16), True)
    """

    backend = CentreOfMassCrop.backend

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "ct",
        spatial_size: Sequence[int] | int = (128, 128),
        threshold: float | None = None,
        pad_value: float | str | Mapping[str, float | str] = "min",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        values = dict(pad_value) if isinstance(pad_value, Mapping) else {str(k): pad_value for k in self.keys}
        self.croppers = {
            str(k): CentreOfMassCrop(spatial_size, threshold, values.get(str(k), "min")) for k in self.keys
        }
        self.locator = CentreOfMassCrop(spatial_size, threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.source_key not in d:
            raise KeyError(f"source key {self.source_key!r} not in data (keys: {list(d)}).")
        start, size = self.locator.compute_box(d[self.source_key])
        ref_shape = tuple(d[self.source_key].shape[1:])
        for key in self.key_iterator(d):
            if tuple(d[key].shape[1:]) != ref_shape:
                raise ValueError(
                    f"{describe_key(d, key)} has spatial shape {tuple(d[key].shape[1:])}, {self.source_key} has {ref_shape}."
                )
            d[key] = self.croppers[str(key)].apply_box(d[key], start, size)
        return d
