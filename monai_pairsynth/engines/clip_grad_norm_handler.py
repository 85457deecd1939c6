"""Gradient-norm clipping as an ignite handler on MONAI's ``IterationEvents.BACKWARD_COMPLETED``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["ClipGradNormHandler"]


def _optimizer_steps_this_iteration(engine: Any) -> bool:
    """Mirror of ``SupervisedTrainer``'s gradient-accumulation rule: does ``optimizer.step()`` follow this backward?"""
    acc = int(getattr(engine, "accumulation_steps", 1) or 1)
    if acc <= 1:
        return True
    epoch_length = engine.state.epoch_length
    if epoch_length is not None:
        local = (engine.state.iteration - 1) % epoch_length
        return (local + 1) % acc == 0 or (local + 1) == epoch_length
    return engine.state.iteration % acc == 0


class ClipGradNormHandler:
    """Clip the global gradient norm between ``backward()`` and ``optimizer.step()`` of a MONAI trainer.

    Under AMP (``engine.amp`` with a ``GradScaler``) the gradients are unscaled first
    (``scaler.unscale_(optimizer)``, the documented AMP recipe), so ``max_norm`` applies to the true
    gradients; ``scaler.step`` then knows they are unscaled. With gradient accumulation it only acts on the
    iterations that end with an optimiser step. The norm before clipping is stored in
    ``engine.state.grad_norm`` (a float).

    Args:
        max_norm: maximum total norm (> 0).
        norm_type: p of the p-norm (``2.0``; ``inf`` for the max norm).
        parameters: parameters to clip; default all parameters of ``engine.optimizer``.

    Example:
        >>> import torch
        >>> from monai.engines import SupervisedTrainer
        >>> net = torch.nn.Linear(2, 1)
        >>> trainer = SupervisedTrainer("cpu", 1, [{"image": torch.ones(1, 2) * 100, "label": torch.zeros(1, 1)}],
        ...                             net, torch.optim.SGD(net.parameters(), lr=0.0), torch.nn.MSELoss())
        >>> ClipGradNormHandler(max_norm=1.0).attach(trainer)
        >>> trainer.run()
        >>> total = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
        >>> trainer.state.grad_norm > 1.0, round(float(total), 4)
        (True, 1.0)
    """

    def __init__(
        self, max_norm: float, norm_type: float = 2.0, parameters: Iterable[torch.nn.Parameter] | None = None
    ) -> None:
        max_norm = float(max_norm)
        if not math.isfinite(max_norm) or max_norm <= 0:
            raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}.")
        self.max_norm = max_norm
        self.norm_type = float(norm_type)
        self.parameters = None if parameters is None else list(parameters)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if not _optimizer_steps_this_iteration(engine):
            return
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        params = self.parameters
        if params is None:
            params = [p for group in engine.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
        engine.state.grad_norm = float(norm)
