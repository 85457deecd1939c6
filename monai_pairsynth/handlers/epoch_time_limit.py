"""Ignite handler stopping a run at the first epoch end past a wall-clock budget."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

__all__ = ["EpochTimeLimit"]

logger = logging.getLogger(__name__)


class EpochTimeLimit:
    """Stop an ignite engine at the end of the first epoch completed after ``seconds`` of ``run()``.

    Like ignite's ``TimeLimit`` but timed from ``Events.STARTED`` (not from construction) and checked per
    epoch, so the stop falls on an epoch boundary where checkpoints are written and a resumed run continues
    exactly. ``stopped`` tells whether the limit ended the run; the last epoch of ``max_epochs`` is never
    counted as a stop.

    Args:
        seconds: the budget of one ``run()`` in seconds (a number >= 0).

    Example:
        >>> from ignite.engine import Engine
        >>> engine = Engine(lambda e, b: None)
        >>> limit = EpochTimeLimit(0.0); limit.attach(engine)
        >>> engine.run(range(3), max_epochs=5).epoch, limit.stopped
        (1, True)
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not float(seconds) >= 0:
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}.")
        self.seconds = float(seconds)
        self.started = 0.0
        self.stopped = False

    def attach(self, engine: Engine) -> None:
        """Start the clock at ``STARTED``, check it at every ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self.started, self.stopped = time.perf_counter(), False

    def __call__(self, engine: Engine) -> None:
        elapsed = time.perf_counter() - self.started
        if elapsed >= self.seconds and engine.state.epoch < engine.state.max_epochs:
            logger.info(
                "time limit of %.1f min reached after epoch %d (%.1f min): stopping.",
                self.seconds / 60.0,
                engine.state.epoch,
                elapsed / 60.0,
            )
            self.stopped = True
            engine.terminate()
