"""An ignite handler that refreshes part of a :class:`SynthesisPool` while a segmentation trainer runs."""

from __future__ import annotations

import concurrent.futures
import logging
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import look_up_option

from .mixed_dataset_epoch_handler import MixedDatasetEpochHandler
from .synthesis_pool import PoolGenerationError, PoolUpdate, RefillOrder, SynthesisPool

__all__ = ["PoolRefreshHandler"]

logger = logging.getLogger(__name__)


def _batch_flags(batch: Any, key: str) -> tuple[int, int]:
    """(samples in the batch, synthetic ones) from a collated batch dict or a list of sample dicts."""
    if isinstance(batch, Mapping):
        flags = batch.get(key)
        if flags is None:
            first = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0), None)
            return (int(first.shape[0]) if first is not None else 0), 0
        flags = torch.as_tensor(flags).reshape(-1)
        return int(flags.numel()), int(flags.bool().sum())
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(b, Mapping) for b in batch):
        return len(batch), sum(bool(b.get(key, False)) for b in batch)
    return 0, 0


class PoolRefreshHandler:
    """Refresh a fraction of the pool every N epochs; log the filter's counts and the synthetic share seen.

    At ``EPOCH_COMPLETED`` of every ``every_n_epochs``-th epoch, ``pool.refill(fraction)`` replaces the oldest
    (or random) ``round(fraction * capacity)`` triplets. The refill generates into a staging buffer and writes
    only what was generated and accepted, so a generator failure — an exception, CUDA out of memory, NaN output
    — loses nothing the pool held: it is caught, logged and counted (:attr:`failures`, and the pool's
    ``stats["failures"]``), and training goes on with what the pool holds. With ``background=True`` the refill
    runs on a thread (generation on the GPU overlaps the next epoch) and its result is collected at the next
    refresh or when the run completes.

    Two counts are kept apart: :attr:`failures` counts failed **refreshes** by reason (``exception``,
    ``out_of_memory``, ``non_finite`` when a refresh got only non-finite triplets, ``busy``), and
    :attr:`non_finite_triplets` counts generated **triplets** dropped for NaN/Inf (the pool's
    ``stats["rejected"]["non_finite"]`` counts them too).

    Every batch's ``synthetic`` flags are counted, so :attr:`history` (one record per epoch, also set as
    ``engine.state.pool_refresh``) reports the share of synthetic samples actually seen.

    Args:
        pool: the :class:`SynthesisPool` (with a source).
        every_n_epochs: refresh period in epochs (>= 1).
        fraction: share of the capacity regenerated per refresh, in (0, 1].
        order: ``"oldest"`` or ``"random"``; default the pool's ``refill_order``.
        background: refill on the pool's background thread.
        synthetic_key: the flag counted in the batches.
        dataset: optionally a :class:`MixedDataset` (or a DataLoader over one) whose epoch is set at every
            ``EPOCH_STARTED`` (see :class:`MixedDatasetEpochHandler`).

    Example:
        >>> import torch
        >>> from ignite.engine import Engine
        >>> from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
        >>> def source(num, generator):
        ...     pet = torch.rand(num, 1, 8, 8, generator=generator) * 15
        ...     return {"ct": pet * 10 - 50, "pet": pet, "label": (pet > 10).float()}
        >>> pool = SynthesisPool(4, spatial_shape=(8, 8), source=source)
        >>> _ = pool.fill()
        >>> engine = Engine(lambda engine, batch: None)
        >>> handler = PoolRefreshHandler(pool, fraction=0.5)
        >>> handler.attach(engine)
        >>> _ = engine.run([{"synthetic": torch.tensor([True, False])}] * 3, max_epochs=2)
        >>> [(r["epoch"], r["synthetic_share"], r["refreshed"]) for r in handler.history]
        [(1, 0.5, 2), (2, 0.5, 2)]
    """

    def __init__(
        self,
        pool: SynthesisPool,
        every_n_epochs: int = 1,
        fraction: float = 0.25,
        order: RefillOrder | str | None = None,
        background: bool = False,
        synthetic_key: str = "synthetic",
        dataset: Any | None = None,
    ) -> None:
        if not isinstance(pool, SynthesisPool):
            raise ValueError(f"pool must be a SynthesisPool, got {type(pool).__name__}.")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}.")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}.")
        if order is not None:
            order = look_up_option(order, RefillOrder)
        self.pool = pool
        self.every_n_epochs = every_n_epochs
        self.fraction = float(fraction)
        self.order = order
        self.background = bool(background)
        self.synthetic_key = synthetic_key
        self.epoch_handler = MixedDatasetEpochHandler(dataset) if dataset is not None else None
        self.failures: Counter = Counter()
        self.non_finite_triplets = 0
        self.history: list[dict[str, Any]] = []
        self._seen = 0
        self._synthetic_seen = 0
        self._pending: concurrent.futures.Future | None = None

    def attach(self, engine: Engine) -> None:
        if self.epoch_handler is not None:
            self.epoch_handler.attach(engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    # ------------------------------------------------------------------ counting what the trainer saw
    def _epoch_started(self, engine: Engine) -> None:
        self._seen = 0
        self._synthetic_seen = 0

    def _iteration_completed(self, engine: Engine) -> None:
        seen, synthetic = _batch_flags(engine.state.batch, self.synthetic_key)
        self._seen += seen
        self._synthetic_seen += synthetic

    # ------------------------------------------------------------------ refreshing
    def _failed(self, reason: str, err: BaseException | str) -> dict[str, Any]:
        self.failures[reason] += 1
        logger.error(
            "PoolRefreshHandler: pool refresh failed (%s: %s); training continues on the %d triplets the pool holds.",
            reason,
            err,
            len(self.pool),
        )
        return {"refreshed": 0, "failure": reason}

    def _outcome(self, get_update: Any) -> dict[str, Any]:
        """Run ``get_update()`` (a refill, or a finished future's result) and turn it into a record."""
        try:
            update: PoolUpdate = get_update()
        except PoolGenerationError as err:  # already counted by the pool
            return self._failed(err.reason, err)
        except Exception as err:  # a source returning garbage, a filter error...: never kill training
            reason = "out_of_memory" if "out of memory" in str(err).lower() else "exception"
            self.pool.record_failure(reason)
            return self._failed(reason, f"{type(err).__name__}: {err}")
        record: dict[str, Any] = {"refreshed": update.accepted, "failure": None}
        non_finite = update.rejected.get("non_finite", 0)
        if non_finite:
            self.non_finite_triplets += (
                non_finite  # triplets; a refresh that got none counts as a failure below
            )
            if update.accepted == 0:
                record.update(
                    self._failed("non_finite", f"all {non_finite} generated triplets were non-finite")
                )
        return record

    def _collect_background(self, wait: bool) -> dict[str, Any] | None:
        future = self._pending
        if future is None or (not wait and not future.done()):
            return None
        self._pending = None
        return self._outcome(future.result)

    def refresh(self) -> dict[str, Any]:
        """Refresh now (synchronously, or start a background refill); returns ``{"refreshed", "failure"}``."""
        if not self.background:
            return self._outcome(lambda: self.pool.refill(self.fraction, self.order))
        record = self._collect_background(wait=False) or {"refreshed": 0, "failure": None}
        if self._pending is not None:  # the previous background refill is still running: don't queue another
            self.failures["busy"] += 1
            logger.warning(
                "PoolRefreshHandler: the previous background refill is still running; skipping this one."
            )
            return record
        self._pending = self.pool.refill_async(self.fraction, self.order)
        return record

    def _epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        record: dict[str, Any] = {
            "epoch": epoch,
            "seen": self._seen,
            "synthetic_seen": self._synthetic_seen,
            "synthetic_share": self._synthetic_seen / self._seen if self._seen else math.nan,
            "refreshed": 0,
            "failure": None,
        }
        if epoch % self.every_n_epochs == 0:
            record.update(self.refresh())
        stats = self.pool.stats
        record["pool"] = {
            k: stats[k] for k in ("size", "generated", "accepted", "rejected", "failures", "throughput")
        }
        filter_counts = getattr(self.pool.quality_filter, "counts", None)
        record["filter_counts"] = dict(filter_counts) if isinstance(filter_counts, Mapping) else None
        self.history.append(record)
        engine.state.pool_refresh = record
        logger.info(
            "epoch %d: %d/%d samples seen were synthetic (%.1f%%); pool refresh wrote %d triplets%s; pool %d/%d, "
            "generated %d, accepted %d, rejected %s, failures %s, %.2f triplets/s; filter counts %s",
            epoch,
            self._synthetic_seen,
            self._seen,
            100.0 * record["synthetic_share"] if self._seen else float("nan"),
            record["refreshed"],
            f" (failed: {record['failure']})" if record["failure"] else "",
            stats["size"],
            stats["capacity"],
            stats["generated"],
            stats["accepted"],
            stats["rejected"],
            stats["failures"],
            stats["throughput"],
            record["filter_counts"],
        )

    def _completed(self, engine: Engine) -> None:
        record = self._collect_background(wait=True)
        if record is not None and self.history:
            self.history[-1]["background_result"] = record
