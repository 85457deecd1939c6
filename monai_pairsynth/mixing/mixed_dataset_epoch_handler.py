"""An ignite handler that tells a :class:`MixedDataset` which epoch starts (like ``DistributedSampler.set_epoch``)."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events

from .mixed_dataset import MixedDataset

__all__ = ["MixedDatasetEpochHandler"]


def _as_mixed_dataset(data: Any) -> MixedDataset:
    dataset = getattr(data, "dataset", data)  # a DataLoader -> its dataset
    if not isinstance(dataset, MixedDataset):
        raise ValueError(f"expected a MixedDataset (or a DataLoader over one), got {type(dataset).__name__}.")
    return dataset


class MixedDatasetEpochHandler:
    """Call ``dataset.set_epoch(engine.state.epoch)`` at every ``EPOCH_STARTED``, so the synthetic items change.

    ignite creates an epoch's data iterator after ``EPOCH_STARTED``, and :class:`MixedDataset` keeps the
    epoch in shared memory, so worker processes (persistent or not) see the new composition.

    Args:
        dataset: the :class:`MixedDataset`, or a DataLoader over it.

    Example:
        >>> import torch
        >>> from ignite.engine import Engine
        >>> from .mixed_dataset import MixedDataset
        >>> ds = MixedDataset([{"x": torch.zeros(1)}] * 2, None, ratio=0.0)
        >>> engine = Engine(lambda engine, batch: None)
        >>> MixedDatasetEpochHandler(ds).attach(engine)
        >>> _ = engine.run([0], max_epochs=3)
        >>> ds.epoch
        3
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = _as_mixed_dataset(dataset)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.dataset.set_epoch(engine.state.epoch)
