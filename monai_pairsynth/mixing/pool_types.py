"""The option sets, errors and update record of a :class:`~monai_pairsynth.mixing.SynthesisPool`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

__all__ = ["EmptyPoolError", "PoolGenerationError", "PoolStorage", "PoolUpdate", "RefillOrder"]


class PoolStorage(str, Enum):
    """In which units a :class:`SynthesisPool` stores its triplets."""

    PHYSICAL = "physical"
    NORMALIZED = "normalized"


class RefillOrder(str, Enum):
    """Which filled slots a refill replaces: the ``oldest`` ones or ``random`` ones (seeded)."""

    OLDEST = "oldest"
    RANDOM = "random"


class PoolGenerationError(RuntimeError):
    """Raised by :meth:`SynthesisPool.fill` / :meth:`SynthesisPool.refill` when the source failed.

    The failure is already counted in :attr:`SynthesisPool.stats` and the pool is unchanged.

    Attributes:
        reason: ``"exception"`` or ``"out_of_memory"``.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class EmptyPoolError(IndexError):
    """A synthetic triplet was requested from a pool that holds none (fill it first)."""


@dataclass
class PoolUpdate:
    """What one :meth:`SynthesisPool.fill` / :meth:`SynthesisPool.refill` did.

    Attributes:
        requested: number of triplets asked for.
        accepted: number accepted by the filter and written into the pool.
        generated: number of triplets the source produced for this update.
        rejected: rejections by reason (filter reasons and ``"non_finite"``).
        surplus: accepted beyond the request (the last batch was larger than needed), discarded.
        slots: pool slots written.
        attempts: number of source calls.
        seconds: wall time of the generation (filter included).
        complete: ``accepted == requested``.
    """

    requested: int
    accepted: int = 0
    generated: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    surplus: int = 0
    slots: list[int] = field(default_factory=list)
    attempts: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.accepted == self.requested


def _is_out_of_memory(err: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t)
    return isinstance(err, oom_types) or "out of memory" in str(err).lower()


def _in_worker_process() -> bool:
    return torch.utils.data.get_worker_info() is not None
