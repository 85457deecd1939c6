"""EpochTimeLimit on its own: the stop falls on an epoch end, never on the last epoch, the clock starts at run().

The clock is the module's ``time.perf_counter``, replaced by a fake that each iteration advances, so nothing here
depends on how fast the machine is.
"""

from __future__ import annotations

import logging

import pytest
from ignite.engine import Engine, Events

from monai_pairsynth.handlers import EpochTimeLimit
from monai_pairsynth.handlers import epoch_time_limit as module


@pytest.fixture
def clock(monkeypatch):
    """A fake ``perf_counter``: ``clock["now"]`` seconds, advanced by hand."""
    now = {"now": 1000.0}
    monkeypatch.setattr(module.time, "perf_counter", lambda: now["now"])
    return now


def _engine(clock, seconds_per_iteration: float) -> Engine:
    def step(engine, batch):
        clock["now"] += seconds_per_iteration

    return Engine(step)


def test_stops_at_the_end_of_the_first_epoch_past_the_budget(clock):
    engine = _engine(clock, 5.0)  # 2 iterations an epoch: 10 s an epoch
    limit = EpochTimeLimit(25.0)
    limit.attach(engine)
    state = engine.run(range(2), max_epochs=10)
    assert (state.epoch, state.iteration, limit.stopped) == (3, 6, True)  # 30 s >= 25 s after epoch 3


def test_a_budget_exactly_reached_stops():
    engine = Engine(lambda e, b: None)
    limit = EpochTimeLimit(0.0)
    limit.attach(engine)
    assert engine.run(range(3), max_epochs=5).epoch == 1 and limit.stopped


def test_the_last_epoch_is_not_a_stop(clock):
    engine = _engine(clock, 100.0)
    limit = EpochTimeLimit(1.0)
    limit.attach(engine)
    assert engine.run(range(2), max_epochs=1).epoch == 1
    assert not limit.stopped


def test_a_generous_budget_runs_every_epoch(clock):
    engine = _engine(clock, 1.0)
    limit = EpochTimeLimit(3600.0)
    limit.attach(engine)
    assert engine.run(range(2), max_epochs=4).epoch == 4 and not limit.stopped


def test_the_clock_starts_at_run_not_at_construction(clock):
    limit = EpochTimeLimit(15.0)
    clock["now"] += 1e6  # long after construction
    engine = _engine(clock, 5.0)
    limit.attach(engine)
    assert engine.run(range(2), max_epochs=5).epoch == 2  # 20 s of run() >= 15 s after epoch 2


def test_a_resumed_run_gets_a_fresh_budget(clock):
    engine = _engine(clock, 5.0)
    limit = EpochTimeLimit(10.0)
    limit.attach(engine)
    assert engine.run(range(2), max_epochs=5).epoch == 1 and limit.stopped
    limit.seconds = 1e9  # the next run() restarts the clock and clears `stopped`
    state = engine.run(range(2), max_epochs=5)
    assert state.epoch == 5 and not limit.stopped


def test_the_stop_is_logged(clock, caplog):
    engine = _engine(clock, 60.0)
    EpochTimeLimit(30.0).attach(engine)
    with caplog.at_level(logging.INFO, logger=module.__name__):
        engine.run(range(1), max_epochs=3)
    assert "time limit of 0.5 min reached after epoch 1 (1.0 min): stopping." in caplog.text


def test_it_runs_at_epoch_completed_only(clock):
    engine = _engine(clock, 100.0)
    EpochTimeLimit(1.0).attach(engine)
    iterations = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: iterations.append(e.state.iteration))
    engine.run(range(3), max_epochs=2)
    assert iterations == [1, 2, 3]  # the budget ran out at iteration 1, the epoch still finished


@pytest.mark.parametrize("bad", [-1.0, True, float("nan")])
def test_bad_budget(bad):
    with pytest.raises(ValueError, match="seconds must be a number >= 0"):
        EpochTimeLimit(bad)
