"""Resampling helpers of the file pipeline: Gaussian anti-aliasing before a coarser grid, and the field-of-view mask.

Split out of :mod:`monai_pairsynth.data.preprocessing`, which re-exports every name.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    ResampleToMatch,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from .validation import (
    describe_key,
)

__all__ = ["EnsureFieldOfViewd", "FieldOfViewd", "GaussianAntiAliasd", "anti_aliasing_sigma", "gaussian_blur"]


def anti_aliasing_sigma(source_spacing: Sequence[float], target_spacing: Sequence[float]) -> list[float]:
    """Gaussian sigma (in source voxels) per axis before resampling from ``source_spacing`` to ``target_spacing``.

    ``max(0, (factor - 1) / 2)`` with ``factor = target / source``, the rule of ``skimage.transform.resize``'s
    ``anti_aliasing``: 0 (no filter) where the target is as fine or finer, 0.5 voxel for a factor of 2.

    Example:
        >>> anti_aliasing_sigma([0.977, 0.977, 3.27], [2.0, 2.0, 2.0])
        [0.5235, 0.5235, 0.0]
    """
    if len(source_spacing) != len(target_spacing):
        raise ValueError(f"spacings differ in length: {list(source_spacing)} and {list(target_spacing)}.")
    return [
        round(max(0.0, (float(t) / float(s) - 1.0) / 2.0), 4) for s, t in zip(source_spacing, target_spacing)
    ]


def gaussian_blur(img: torch.Tensor, sigma: Sequence[float], truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian blur of a ``(C, *spatial)`` tensor, ``sigma`` in voxels per spatial axis (0: untouched).

    Written as shifted in-place sums of the image (edges replicated) rather than a convolution: on a 512 x 512 x 250
    CT at sigma ~0.5 voxel this is about 10x faster than MONAI's ``GaussianSmooth`` and needs one extra copy
    instead of several (docs/data.md, preprocessing cost). The kernel is cut at ``truncate`` sigma and
    normalised, so a constant image stays constant.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 5, 3); x[0, 2, 1] = 1.0
        >>> y = gaussian_blur(x, [1.0, 0.0])
        >>> [round(v, 3) for v in y[0, :, 1].tolist()], round(float(y.sum()), 3)
        ([0.054, 0.242, 0.399, 0.242, 0.054], 0.991)
    """
    out = img if img.is_floating_point() else img.float()
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        dim, n = axis + 1, out.shape[axis + 1]
        radius = max(1, int(truncate * s + 0.5))
        kernel = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / s) ** 2)
        weights = (kernel / kernel.sum()).tolist()
        src, acc = out, out * weights[radius]
        for j in range(1, radius + 1):
            w = weights[radius + j]
            if j < n:
                acc.narrow(dim, j, n - j).add_(src.narrow(dim, 0, n - j), alpha=w)
                acc.narrow(dim, 0, n - j).add_(src.narrow(dim, j, n - j), alpha=w)
            for e in range(min(j, n)):  # the taps that fall outside take the edge voxel (replicate)
                acc.narrow(dim, e, 1).add_(src.narrow(dim, 0, 1), alpha=w)
                acc.narrow(dim, n - 1 - e, 1).add_(src.narrow(dim, n - 1, 1), alpha=w)
        out = acc
    return out


class GaussianAntiAliasd(MapTransform):
    """Low-pass each image before it is resampled to a coarser grid (anti-aliasing), from its own spacing.

    :func:`gaussian_blur` (a sampled Gaussian) with sigma :func:`anti_aliasing_sigma` (file spacing ->
    ``spacing``) per axis; an image already as fine as the target (or finer) is returned unchanged. The
    spacing is read from the ``MetaTensor``'s affine (``pixdim``), so run it after ``Orientationd`` and
    before ``Spacingd`` / ``ResampleToMatchd``. Masks should not be listed (they are resampled nearest).

    Args:
        keys: image keys.
        spacing: the target voxel size in mm (one value or one per spatial axis).
        allow_missing_keys: don't raise if a key is missing.

    Example:
        >>> import torch
        >>> from monai.data import MetaTensor
        >>> img = MetaTensor(torch.zeros(1, 8, 8, 4), affine=torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0])))
        >>> img[0, 4, 4, 2] = 1.0
        >>> out = GaussianAntiAliasd("ct", spacing=2.0)({"ct": img})["ct"]
        >>> round(float(out.sum()), 3), float(out.max()) < 1.0, tuple(out.shape)
        (1.0, True, (1, 8, 8, 4))
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self, keys: KeysCollection, spacing: float | Sequence[float], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spacing = spacing

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                raise ValueError(
                    f"{describe_key(d, key)} must be a MetaTensor (its spacing is read from the affine)."
                )
            source = [float(v) for v in img.pixdim]
            target = (
                [float(self.spacing)] * len(source)
                if isinstance(self.spacing, (int, float))
                else list(self.spacing)
            )
            sigma = anti_aliasing_sigma(source, target)
            if any(v > 0 for v in sigma):
                d[key] = convert_to_dst_type(gaussian_blur(img.as_tensor(), sigma), img, dtype=torch.float32)[
                    0
                ]
        return d


class FieldOfViewd(MapTransform):
    """Add a field-of-view mask ``fov_key``: 1 where every listed image was scanned, 0 where one was not.

    On the grid of ``reference_key`` (whose own extent is all 1): each listed image's extent (a tensor of ones
    on its grid) is resampled nearest onto the reference grid, outside it is 0, and the product is stored.
    Run it after the reference is on its final grid and before the listed images are resampled onto it (e.g.
    the PET, whose scanned region can be smaller than the CT's). The mask is ``{0, 1}`` float (not
    normalised) and follows crops and slicing when its key is listed there; padding it with 0 marks what
    the crop adds as never scanned.

    Args:
        keys: images on their own grids (the PET).
        reference_key: the image on the target grid (the CT).
        fov_key: key of the new mask.
        allow_missing_keys: don't raise if a key is missing.

    Example:
        >>> import torch
        >>> from monai.data import MetaTensor
        >>> ct = MetaTensor(torch.zeros(1, 8, 8, 2))
        >>> pet = MetaTensor(torch.ones(1, 4, 8, 2))  # scanned over the first half of axis 0 only
        >>> fov = FieldOfViewd("pet", reference_key="ct")({"ct": ct, "pet": pet})["fov"]
        >>> fov[0, :, 0, 0].tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "ct",
        fov_key: str = "fov",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key, self.fov_key = reference_key, fov_key
        self.resampler = ResampleToMatch(mode="nearest", padding_mode="zeros", dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.reference_key not in d:
            raise KeyError(f"reference key {self.reference_key!r} not in data (keys: {list(d)}).")
        ref = d[self.reference_key]
        fov = torch.ones_like(convert_to_tensor(ref, track_meta=False), dtype=torch.float32)
        for key in self.key_iterator(d):
            img = d[key]
            ones = MetaTensor(
                torch.ones_like(convert_to_tensor(img, track_meta=False), dtype=torch.float32),
                affine=img.affine if isinstance(img, MetaTensor) else None,
            )
            extent = self.resampler(ones, img_dst=ref)
            fov = fov * (convert_to_tensor(extent, track_meta=False) > 0.5)
        d[self.fov_key] = convert_to_dst_type(fov, ref, dtype=torch.float32)[0]
        if isinstance(d[self.fov_key], MetaTensor):
            d[self.fov_key].applied_operations = []
        return d


class EnsureFieldOfViewd(MapTransform):
    """Give a sample without a field-of-view mask one that marks every pixel as scanned (all 1, the shape of
    ``reference_key``); a sample that has one keeps it. For data that never left its scan (the phantom, in-memory
    samples) beside data that carries :class:`FieldOfViewd`'s mask, so that every sample has the key.

    Example:
        >>> import torch
        >>> out = EnsureFieldOfViewd(reference_key="ct")({"ct": torch.zeros(1, 4, 4)})
        >>> tuple(out["fov"].shape), float(out["fov"].min())
        ((1, 4, 4), 1.0)
    """

    def __init__(self, fov_key: str = "fov", reference_key: str = "ct") -> None:
        super().__init__([fov_key], allow_missing_keys=True)
        self.fov_key, self.reference_key = fov_key, reference_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.fov_key in d:
            return d
        if self.reference_key not in d:
            raise KeyError(f"reference key {self.reference_key!r} not in data (keys: {list(d)}).")
        ref = convert_to_tensor(d[self.reference_key], track_meta=False)
        d[self.fov_key] = torch.ones_like(ref, dtype=torch.float32)
        return d
