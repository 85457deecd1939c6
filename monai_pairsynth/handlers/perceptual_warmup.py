"""Ignite handler switching the perceptual term of the paired diffusion loss on after a warm-up."""

from __future__ import annotations

import math
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["PerceptualWarmup"]


class PerceptualWarmup:
    """Set ``loss.perceptual_weight`` to 0 for the first ``start_epoch`` epochs, then to ``weight``.

    Runs at ``EPOCH_STARTED``: epoch ``e`` (1-based, ignite's ``engine.state.epoch``) trains with the
    perceptual term iff ``e > start_epoch``, i.e. once ``start_epoch`` epochs are complete (the paper switches
    it on after epoch 50). Because it looks only at the epoch number, a resumed run gets the right weight.
    The current weight is also stored as ``engine.state.perceptual_weight``.

    Args:
        start_epoch: number of epochs trained without the perceptual term (>= 0; 0 = on from the start).
        weight: perceptual weight once switched on (> 0).
        loss_function: the loss whose ``perceptual_weight`` is set; default ``engine.loss_function``.

    Example:
        >>> from ignite.engine import Engine, Events
        >>> from monai.networks.schedulers import DDPMScheduler
        >>> from monai_pairsynth.losses import PairedDiffusionLoss
        >>> loss = PairedDiffusionLoss(DDPMScheduler(10))
        >>> engine = Engine(lambda e, b: None)
        >>> PerceptualWarmup(start_epoch=2, weight=0.5, loss_function=loss).attach(engine)
        >>> seen = []
        >>> _ = engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(loss.perceptual_weight))
        >>> _ = engine.run([0], max_epochs=4)
        >>> seen
        [0.0, 0.0, 0.5, 0.5]
    """

    def __init__(self, start_epoch: int = 50, weight: float = 0.1, loss_function: Any | None = None) -> None:
        if isinstance(start_epoch, bool) or int(start_epoch) != start_epoch or start_epoch < 0:
            raise ValueError(f"start_epoch must be an int >= 0, got {start_epoch!r}.")
        weight = float(weight)
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight must be a finite number > 0, got {weight!r}.")
        if loss_function is not None and not hasattr(loss_function, "perceptual_weight"):
            raise ValueError(
                f"loss_function must have a settable 'perceptual_weight' (e.g. PairedDiffusionLoss), "
                f"got {type(loss_function).__name__}."
            )
        self.start_epoch = int(start_epoch)
        self.weight = weight
        self.loss_function = loss_function

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def weight_at(self, epoch: int) -> float:
        """Perceptual weight used during (1-based) ``epoch``."""
        return self.weight if epoch > self.start_epoch else 0.0

    def __call__(self, engine: Engine) -> None:
        loss = (
            self.loss_function if self.loss_function is not None else getattr(engine, "loss_function", None)
        )
        if loss is None or not hasattr(loss, "perceptual_weight"):
            raise ValueError(
                "PerceptualWarmup needs a loss with a 'perceptual_weight' attribute: pass loss_function=... or use "
                "an engine whose loss_function is a PairedDiffusionLoss."
            )
        value = self.weight_at(engine.state.epoch)
        loss.perceptual_weight = value
        engine.state.perceptual_weight = value
