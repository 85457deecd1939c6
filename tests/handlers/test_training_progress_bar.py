"""TrainingProgressBar: a MONAI-style attach of ignite's ProgressBar, showing the loss."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from monai_pairsynth.handlers import TrainingProgressBar


def test_training_progress_bar_attaches_only_when_enabled():
    for enabled, expected in ((False, 0), (True, 1)):
        engine = Engine(lambda e, b: [{"loss": 0.5}])
        before = len(engine._event_handlers[Events.ITERATION_COMPLETED])
        TrainingProgressBar(enabled=enabled).attach(engine)
        assert len(engine._event_handlers[Events.ITERATION_COMPLETED]) - before == expected
    assert TrainingProgressBar()._loss([{"loss": torch.tensor(0.25)}]) == {"loss": 0.25}


def test_output_without_the_loss_shows_nothing():
    bar = TrainingProgressBar(loss_key="total")
    assert (
        bar._loss({"loss": 1.0}) == {} and bar._loss([]) == {} and bar._loss({"total": 2}) == {"total": 2.0}
    )
