"""LinearLRWarmup on its own: the ramp per group, a resumed run inside the ramp, the rate after the ramp."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events

from monai_pairsynth.handlers import LinearLRWarmup


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def _engine(optimizer: torch.optim.Optimizer, seen: list) -> Engine:
    engine = Engine(lambda e, b: [g["lr"] for g in optimizer.param_groups])
    engine.optimizer = optimizer
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output))
    return engine


def test_each_group_ramps_to_its_own_rate():
    seen: list = []
    engine = _engine(_optimizer(1.0, 0.1), seen)
    LinearLRWarmup(2).attach(engine)
    engine.run(range(4))
    assert seen == [pytest.approx(row) for row in ([0.5, 0.05], [1.0, 0.1], [1.0, 0.1], [1.0, 0.1])]


def test_the_rate_depends_only_on_the_iteration_so_a_resumed_run_continues_the_ramp():
    optimizer = _optimizer(0.8)
    warmup = LinearLRWarmup(4)
    warmup.attach(SimpleNamespace(optimizer=optimizer, add_event_handler=lambda *a: None))
    optimizer.param_groups[0]["lr"] = 123.0  # whatever the rate was when the run stopped
    warmup(SimpleNamespace(optimizer=optimizer, state=SimpleNamespace(iteration=3)))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.6)


def test_a_recorded_target_rate_is_kept_on_attach():
    """A resumed optimiser state carries ``warmup_target_lr``; its current (ramped) rate is not the target."""
    optimizer = _optimizer(0.25)
    optimizer.param_groups[0]["warmup_target_lr"] = 1.0
    seen: list = []
    engine = _engine(optimizer, seen)
    LinearLRWarmup(2).attach(engine)
    engine.run(range(2))
    assert seen == [pytest.approx([0.5]), pytest.approx([1.0])]


def test_after_the_ramp_the_rate_is_left_to_others():
    seen: list = []
    optimizer = _optimizer(1.0)
    engine = _engine(optimizer, seen)
    LinearLRWarmup(1).attach(engine)

    @engine.on(Events.ITERATION_COMPLETED(once=3))
    def decay(e):
        optimizer.param_groups[0]["lr"] = 0.01  # e.g. a scheduler after the warm-up

    engine.run(range(5))
    assert [lrs[0] for lrs in seen] == pytest.approx([1.0, 1.0, 1.0, 0.01, 0.01])


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_bad_iters(bad):
    with pytest.raises(ValueError, match="iters must be an int >= 1"):
        LinearLRWarmup(bad)
