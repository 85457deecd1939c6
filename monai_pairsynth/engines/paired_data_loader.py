"""A training ``DataLoader`` whose shuffling order is a function of (seed, epoch), so resumes are exact."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from monai.data import DataLoader
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["paired_data_loader"]


def paired_data_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """MONAI ``DataLoader`` over ``dataset`` with an epoch-seeded ``DistributedSampler``.

    The sampler orders epoch ``e`` by ``randperm(len(dataset), generator=seed + e)`` and MONAI's ``Workflow``
    calls ``sampler.set_epoch(engine.state.epoch)`` at every epoch start, so the order of an epoch does not
    depend on what was drawn before it: a resumed run sees the same batches as an uninterrupted one
    (a ``RandomSampler`` draws from a shared generator, including one extra permutation when an epoch's
    iterator is exhausted, which a checkpoint taken at the epoch end cannot capture). Under
    ``torch.distributed`` each rank gets its shard; otherwise a single replica sees the whole dataset.
    The loader's own ``generator`` (worker seeds) is seeded with ``seed`` too.

    Args:
        dataset: map-style dataset of sample dicts.
        batch_size: samples per batch.
        shuffle: shuffle every epoch.
        seed: base seed of the order and of the worker seeds.
        num_workers: ``DataLoader`` workers.
        drop_last: drop the last incomplete batch.
        kwargs: further ``DataLoader`` arguments (not ``sampler``/``shuffle``/``generator``).

    Example:
        >>> loader = paired_data_loader(list(range(6)), batch_size=3, seed=1)
        >>> loader.sampler.set_epoch(1); a = [b.tolist() for b in loader]
        >>> loader.sampler.set_epoch(1); b = [b.tolist() for b in loader]
        >>> a == b, sorted(sum(a, []))
        (True, [0, 1, 2, 3, 4, 5])
    """
    for bad in ("sampler", "shuffle", "generator", "batch_sampler"):
        if bad in kwargs:
            raise ValueError(f"paired_data_loader sets {bad!r} itself; do not pass it.")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    distributed = dist.is_available() and dist.is_initialized()
    sampler = DistributedSampler(
        dataset,  # type: ignore[arg-type]
        num_replicas=dist.get_world_size() if distributed else 1,
        rank=dist.get_rank() if distributed else 0,
        shuffle=shuffle,
        seed=int(seed),
        drop_last=drop_last,
    )
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(int(seed)),
        **kwargs,
    )
