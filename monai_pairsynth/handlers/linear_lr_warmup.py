"""Ignite handler raising every optimiser group's learning rate linearly over the first iterations."""

from __future__ import annotations

from ignite.engine import Engine, Events

__all__ = ["LinearLRWarmup"]


class LinearLRWarmup:
    """Scale every optimiser group's learning rate by ``min(1, iteration / iters)`` at each iteration start.

    Stateless: the factor comes from ``engine.state.iteration`` and the groups' target rates (read at attach
    time, kept as ``group["warmup_target_lr"]``), so a run resumed inside the warm-up continues the ramp.
    The optimiser is ``engine.optimizer`` (as on a MONAI ``SupervisedTrainer``).

    Args:
        iters: number of iterations of the ramp (an int >= 1): iteration ``i`` trains with ``lr * i / iters``
            until ``i = iters``, then with ``lr``.

    Example:
        >>> import torch
        >>> from ignite.engine import Engine, Events
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> engine = Engine(lambda e, b: opt.param_groups[0]["lr"])
        >>> engine.optimizer = opt
        >>> LinearLRWarmup(4).attach(engine)
        >>> lrs = []
        >>> _ = engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: lrs.append(e.state.output))
        >>> _ = engine.run(range(6))
        >>> lrs
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """

    def __init__(self, iters: int) -> None:
        if isinstance(iters, bool) or int(iters) != iters or iters < 1:
            raise ValueError(f"iters must be an int >= 1, got {iters!r}.")
        self.iters = int(iters)

    def attach(self, engine: Engine) -> None:
        """Record each group's target rate (``warmup_target_lr``, kept if already there) and run at every
        ``ITERATION_STARTED``."""
        for group in engine.optimizer.param_groups:  # type: ignore[attr-defined]
            group.setdefault("warmup_target_lr", group["lr"])
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        it = engine.state.iteration
        if it > self.iters + 1:
            return
        factor = min(1.0, it / self.iters)
        for group in engine.optimizer.param_groups:  # type: ignore[attr-defined]
            group["lr"] = group["warmup_target_lr"] * factor
