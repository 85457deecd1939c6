"""A real dataset plus synthetic triplets from a :class:`SynthesisPool`, at augmentation ratio ``r``.

``r = N_synthetic / N_real`` (the selective-synthetic-augmentation study found ``r = 0.5`` best): an epoch holds
every real item once and ``round(r * N_real)`` synthetic ones, drawn from the pool anew for each epoch with a
seeded generator (``set_epoch``, as with ``DistributedSampler``). ``r = 0`` is the real dataset alone. Every
item carries ``synthetic: True/False``.

The composition is a pure function of ``(seed, epoch, len(pool))``; the epoch number lives in shared memory,
so DataLoader workers (also ``persistent_workers=True``) and every DDP rank agree on it without communication.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import apply_transform
from torch.utils.data import Dataset

from monai_pairsynth.data.validation import check_dtype, check_finite, check_ratio

from .synthesis_pool import EmptyPoolError, SynthesisPool

__all__ = ["MixedDataset"]

logger = logging.getLogger(__name__)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


class MixedDataset(Dataset):
    """Real items plus ``round(ratio * N_real)`` synthetic items per epoch (``len = N_real + round(r N_real)``).

    Items ``0 .. N_real - 1`` are the real ones (in order); the rest are synthetic, each mapped to a pool entry
    for the current epoch: without repetition while the pool holds enough, else every entry about equally often.
    Shuffle with the DataLoader (or ``DistributedSampler``) as usual; call :meth:`set_epoch` at the start of
    each epoch (:class:`monai_pairsynth.mixing.MixedDatasetEpochHandler` or ``PoolRefreshHandler(...,
    dataset=...)`` do it for an ignite trainer).

    Items hold the pool's modality keys plus ``synthetic_key``; other keys of the real items are dropped unless
    listed in ``extra_keys``, which also gives their value for synthetic items (every item must have the same
    keys to be collated). Synthetic values are cast to the dtype of the real ones. ``transform`` (e.g. the
    intensity normalisation and augmentation of the pipeline) is applied to every item, real or synthetic.

    Args:
        real_dataset: map-style dataset of sample dicts ``{key: (1, H, W[, D]), ...}``, e.g. ``PhantomDataset``
            or a MONAI ``CacheDataset`` of loaded and preprocessed cases, in the pool's units (physical by
            default: put intensity normalisation in ``transform``).
        pool: the filled :class:`SynthesisPool` (may be ``None`` only with ``ratio=0``).
        ratio: ``0 <= r <= MAX_SYNTHETIC_RATIO`` (100), synthetic items per real item and epoch; a larger ratio
            is refused at construction (an epoch of ``r N_real`` synthetic items and their index table must fit).
        seed: seed of the per-epoch draw.
        transform: applied to every item (real and synthetic), like ``monai.data.Dataset``'s.
        synthetic_key: key of the flag.
        extra_keys: ``{key: value for synthetic items}`` of non-modality keys to keep (e.g.
            ``{"case_id": "synthetic"}``).
        check_sample: read real item 0 at construction to check its keys, shapes, dtypes and finiteness against
            the pool (clear errors instead of a collate failure or NaN losses later).

    Example:
        >>> import torch
        >>> from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
        >>> def source(num, generator):
        ...     pet = torch.rand(num, 1, 8, 8, generator=generator) * 15
        ...     return {"ct": pet * 10 - 50, "pet": pet, "label": (pet > 10).float()}
        >>> pool = SynthesisPool(8, spatial_shape=(8, 8), source=source)
        >>> _ = pool.fill()
        >>> real = [{"ct": torch.zeros(1, 8, 8), "pet": torch.zeros(1, 8, 8), "label": torch.zeros(1, 8, 8)}] * 4
        >>> ds = MixedDataset(real, pool, ratio=0.5, seed=0)
        >>> len(ds), [ds[i]["synthetic"] for i in range(len(ds))]
        (6, [False, False, False, False, True, True])
        >>> ds.set_epoch(1)
        >>> ds.pool_indices(0).tolist() != ds.pool_indices(1).tolist()
        True
    """

    def __init__(
        self,
        real_dataset: Sequence | Dataset,
        pool: SynthesisPool | None,
        ratio: float = 0.5,
        seed: int = 0,
        transform: Callable | None = None,
        synthetic_key: str = "synthetic",
        extra_keys: Mapping[str, Any] | None = None,
        check_sample: bool = True,
    ) -> None:
        if not isinstance(ratio, (int, float, np.integer, np.floating)):
            raise ValueError(f"ratio must be a number >= 0 (N_synthetic / N_real), got {ratio!r}.")
        ratio = check_ratio(ratio, "ratio")
        try:
            num_real = len(real_dataset)
        except TypeError:
            raise ValueError(
                f"real_dataset must be a map-style dataset with a length, got {type(real_dataset).__name__}."
            ) from None
        if num_real < 1:
            raise ValueError("real_dataset is empty.")
        if pool is not None and not isinstance(pool, SynthesisPool):
            raise ValueError(f"pool must be a SynthesisPool, got {type(pool).__name__}.")
        num_synthetic = _round_half_up(ratio * num_real)
        if num_synthetic > 0:
            if pool is None:
                raise ValueError(f"ratio={ratio} needs a pool; pass pool=SynthesisPool(...) or ratio=0.")
            if len(pool) == 0:
                raise ValueError(
                    f"the pool is empty but ratio={ratio} asks for {num_synthetic} synthetic items per epoch; "
                    "fill it first (pool.fill())."
                )
            if len(pool) < num_synthetic:
                logger.info(
                    "MixedDataset: %d synthetic items per epoch from a pool of %d: entries repeat within an epoch.",
                    num_synthetic,
                    len(pool),
                )
        if not isinstance(synthetic_key, str) or not synthetic_key:
            raise ValueError(f"synthetic_key must be a non-empty string, got {synthetic_key!r}.")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        self.real_dataset = real_dataset
        self.pool = pool
        self.ratio = float(ratio)
        self.seed = int(seed)
        self.transform = transform
        self.synthetic_key = synthetic_key
        self.extra_keys = dict(extra_keys or {})
        self.keys: tuple[str, ...] = pool.keys if pool is not None else ()
        if synthetic_key in self.keys or synthetic_key in self.extra_keys:
            raise ValueError(f"synthetic_key {synthetic_key!r} clashes with a modality or extra key.")
        self.num_real = num_real
        self.num_synthetic = num_synthetic
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._cache: tuple[tuple[int, int], torch.Tensor] | None = None
        self._dtypes: dict[str, torch.dtype] = {}
        if check_sample and pool is not None:
            self._check_real_item(real_dataset[0])

    def _check_real_item(self, item: Any) -> None:
        if not isinstance(item, Mapping):
            raise ValueError(f"real_dataset items must be dicts, item 0 is a {type(item).__name__}.")
        missing = [k for k in (*self.keys, *self.extra_keys) if k not in item]
        if missing:
            raise ValueError(
                f"real item 0 has no key {missing} (it has {sorted(map(str, item))}); the pool holds "
                f"{list(self.keys)} and extra_keys are {sorted(self.extra_keys)}."
            )
        for k in self.keys:
            shape = tuple(item[k].shape)
            expected = (1, *self.pool.spatial_shape)
            if shape != expected:
                raise ValueError(
                    f"real item 0 has {k!r} of shape {shape} but the pool's triplets have shape {expected}; "
                    "build the pool with the real data's spatial size."
                )
            check_dtype(item[k], f"real item 0 key {k!r}")
            check_finite(item[k], f"real item 0 key {k!r}")
            if isinstance(item[k], torch.Tensor):
                self._dtypes[k] = item[k].dtype
            elif isinstance(item[k], np.ndarray):
                self._dtypes[k] = torch.from_numpy(np.empty(0, dtype=item[k].dtype)).dtype

    def __len__(self) -> int:
        return self.num_real + self.num_synthetic

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the synthetic composition of ``epoch`` (shared with worker processes)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}.")
        self._epoch.fill_(int(epoch))

    def pool_indices(self, epoch: int | None = None) -> torch.Tensor:
        """``(round(r N_real),)`` pool indices of the synthetic items of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        size = len(self.pool) if self.pool is not None else 0
        if self._cache is not None and self._cache[0] == (epoch, size):
            return self._cache[1]
        if self.num_synthetic == 0:
            indices = torch.zeros(0, dtype=torch.long)
        elif size == 0:
            raise EmptyPoolError(
                f"MixedDataset: the pool is empty but {self.num_synthetic} synthetic items are needed per epoch."
            )
        else:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            rounds = -(-self.num_synthetic // size)
            indices = torch.cat([torch.randperm(size, generator=generator) for _ in range(rounds)])
            indices = indices[: self.num_synthetic]
        self._cache = ((epoch, size), indices)
        return indices

    def is_synthetic(self, index: int) -> bool:
        return self._normalize_index(index) >= self.num_real

    def _normalize_index(self, index: int) -> int:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"MixedDataset index {index} is out of range for {n} items.")
        return index % n

    def _synthetic_item(self, j: int) -> dict[Hashable, Any]:
        pool_index = int(self.pool_indices()[j])
        triplet = self.pool[pool_index]
        item: dict[Hashable, Any] = {}
        for k in self.keys:
            v = triplet[k]
            if k in self._dtypes and v.dtype != self._dtypes[k]:
                v = MetaTensor(v.as_tensor().to(self._dtypes[k]), meta=v.meta)
            v.meta["pool_index"] = pool_index
            item[k] = v
        item.update(self.extra_keys)
        item[self.synthetic_key] = True
        return item

    def _real_item(self, i: int) -> dict[Hashable, Any]:
        item = self.real_dataset[i]
        if not isinstance(item, Mapping):
            raise ValueError(f"real_dataset items must be dicts, item {i} is a {type(item).__name__}.")
        if self.pool is None:
            out = dict(item)
        else:
            keep = (*self.keys, *self.extra_keys)
            missing = [k for k in keep if k not in item]
            if missing:
                raise KeyError(f"real item {i} has no key {missing} (it has {sorted(map(str, item))}).")
            out = {k: item[k] for k in keep}
        out[self.synthetic_key] = False
        return out

    def __getitem__(self, index: int) -> Any:
        index = self._normalize_index(index)
        if index < self.num_real:
            item = self._real_item(index)
        else:
            item = self._synthetic_item(index - self.num_real)
        return apply_transform(self.transform, item) if self.transform is not None else item

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_real={self.num_real}, num_synthetic={self.num_synthetic}, "
            f"ratio={self.ratio}, seed={self.seed}, epoch={self.epoch})"
        )
