"""LossComponentsHandler and paired_loss_output_transform on their own."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from monai_pairsynth.handlers import LOSS_COMPONENTS_KEY, LossComponentsHandler, paired_loss_output_transform


class _Loss:
    """A loss stand-in whose components are set by the test."""

    def __init__(self):
        self.last_components = {}


def _engine(loss, values_per_iteration, handler=None, with_loss_function=False):
    def step(engine, batch):
        value = batch * engine.state.epoch  # differs between epochs
        engine.state.output = {"loss": torch.tensor(value)}
        loss.last_components = {"mse_ct": torch.tensor(value), "loss": torch.tensor(2 * value)}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        return engine.state.output

    engine = Engine(step)
    engine.register_events(*IterationEvents)
    if with_loss_function:
        engine.loss_function = loss
    (handler or LossComponentsHandler(loss)).attach(engine)
    return engine, values_per_iteration


def test_epoch_means_are_per_epoch_and_the_output_holds_the_iteration():
    loss = _Loss()
    engine, data = _engine(loss, [1.0, 3.0])
    seen = []
    engine.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: seen.append(dict(e.state.output)))
    engine.run(data, max_epochs=2)
    assert engine.state.metrics == {"mse_ct": 4.0, "loss": 8.0}  # the second epoch's mean (both epochs: 3, 6)
    assert float(seen[-1][LOSS_COMPONENTS_KEY]["loss"]) == 12.0


def test_prefix_and_the_engine_loss_function():
    loss = _Loss()
    engine, data = _engine(
        loss, [1.0], handler=LossComponentsHandler(prefix="train_"), with_loss_function=True
    )
    engine.run(data, max_epochs=1)
    assert engine.state.metrics == {"train_mse_ct": 1.0, "train_loss": 2.0}


def test_a_loss_without_components_is_refused():
    with pytest.raises(ValueError, match="must expose 'last_components'"):
        LossComponentsHandler(torch.nn.MSELoss())
    engine, data = _engine(_Loss(), [1.0], handler=LossComponentsHandler())  # no engine.loss_function
    with pytest.raises(ValueError, match="needs a loss exposing 'last_components'"):
        engine.run(data, max_epochs=1)


def test_output_transform_forms():
    comps = {"mse_ct": torch.tensor(1.0)}
    assert paired_loss_output_transform([{"loss": 1.0, LOSS_COMPONENTS_KEY: comps}]) == comps
    assert paired_loss_output_transform({"loss": 2.0}) == {"loss": 2.0}
    assert paired_loss_output_transform({"loss": 2.0, LOSS_COMPONENTS_KEY: {}}) == {"loss": 2.0}
    assert paired_loss_output_transform([]) is None
    assert paired_loss_output_transform(3.0) == 3.0
