"""PerceptualWarmup on its own: the switch epoch, a resumed run, the checks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from ignite.engine import Engine, Events

from monai_pairsynth.handlers import PerceptualWarmup


def test_weight_switches_on_after_start_epoch_and_is_on_the_state():
    loss = SimpleNamespace(perceptual_weight=None)
    engine = Engine(lambda e, b: None)
    PerceptualWarmup(start_epoch=1, weight=0.3, loss_function=loss).attach(engine)
    seen = []
    engine.add_event_handler(
        Events.EPOCH_STARTED, lambda e: seen.append((loss.perceptual_weight, e.state.perceptual_weight))
    )
    engine.run([0], max_epochs=3)
    assert seen == [(0.0, 0.0), (0.3, 0.3), (0.3, 0.3)]


def test_start_epoch_zero_is_on_from_the_start_and_the_weight_depends_only_on_the_epoch():
    warmup = PerceptualWarmup(start_epoch=0, weight=0.1)
    assert warmup.weight_at(1) == 0.1
    later = PerceptualWarmup(start_epoch=50, weight=0.1)
    assert [later.weight_at(e) for e in (1, 50, 51)] == [0.0, 0.0, 0.1]


def test_engine_loss_function_is_the_default():
    engine = SimpleNamespace(
        loss_function=SimpleNamespace(perceptual_weight=None), state=SimpleNamespace(epoch=7)
    )
    PerceptualWarmup(start_epoch=5, weight=0.2)(engine)  # a resumed run entering epoch 7
    assert engine.loss_function.perceptual_weight == 0.2 and engine.state.perceptual_weight == 0.2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start_epoch": -1}, "start_epoch must be an int >= 0"),
        ({"start_epoch": 1.5}, "start_epoch must be an int >= 0"),
        ({"start_epoch": True}, "start_epoch must be an int >= 0"),
        ({"weight": 0.0}, "weight must be a finite number > 0"),
        ({"weight": math.nan}, "weight must be a finite number > 0"),
        ({"loss_function": object()}, "settable 'perceptual_weight'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerceptualWarmup(**kwargs)


def test_an_engine_without_a_perceptual_loss_is_named():
    engine = SimpleNamespace(state=SimpleNamespace(epoch=1))
    with pytest.raises(ValueError, match="needs a loss with a 'perceptual_weight'"):
        PerceptualWarmup()(engine)
