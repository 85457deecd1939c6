"""``torch.distributed`` helpers: the rank and world size, the main process, a trainer's network under DDP."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["distributed_trainer", "is_main_process", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """``True`` outside ``torch.distributed`` and on rank 0 (where files are written and logs shown).

    Example:
        >>> is_main_process()
        True
    """
    return world()[0] == 0


def distributed_trainer(
    trainer: Any, device: str | torch.device, find_unused_parameters: bool = False
) -> Any:
    """Wrap ``trainer.network`` in ``DistributedDataParallel`` (after the trainer and its handlers were built).

    The handlers (EMA, checkpoints, gradient clipping) keep the unwrapped model, whose parameters DDP shares,
    so checkpoints hold plain state dicts. Outside ``torch.distributed`` the trainer is returned unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return trainer
    device = torch.device(device)
    trainer.network = DistributedDataParallel(
        trainer.network,
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=bool(find_unused_parameters),
    )
    return trainer
