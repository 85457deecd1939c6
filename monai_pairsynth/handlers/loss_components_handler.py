"""Ignite handler exposing the per-modality parts of the paired diffusion loss for logging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys

__all__ = ["LOSS_COMPONENTS_KEY", "LossComponentsHandler", "paired_loss_output_transform"]

#: key of ``engine.state.output`` under which the iteration's loss components are stored.
LOSS_COMPONENTS_KEY = "loss_components"


def paired_loss_output_transform(output: Any) -> dict[str, Any] | Any:
    """``output_transform`` for MONAI ``StatsHandler`` / ``TensorBoardStatsHandler`` and ignite ``ProgressBar``.

    Returns the iteration's ``{name: scalar}`` loss components when :class:`LossComponentsHandler` stored
    them, else ``{"loss": output["loss"]}``. Accepts the decollated list form (takes its first item).
    """
    if isinstance(output, list):
        if not output:
            return None
        output = output[0]
    if not isinstance(output, Mapping):
        return output
    comps = output.get(LOSS_COMPONENTS_KEY)
    if isinstance(comps, Mapping) and comps:
        return dict(comps)
    return {"loss": output.get(CommonKeys.LOSS)}


class LossComponentsHandler:
    """Copy ``loss_function.last_components`` into the engine after every loss evaluation.

    At ``IterationEvents.LOSS_COMPLETED`` the components (detached 0-d tensors: ``mse_<modality>``, ``mse``,
    ``perceptual``, ``perceptual_weight``, ``loss`` ...) are written to
    ``engine.state.output["loss_components"]`` (for iteration-level logging through
    :func:`paired_loss_output_transform`) and summed; at ``EPOCH_COMPLETED`` their epoch means go to
    ``engine.state.metrics`` as ``<prefix><name>`` (what MONAI's ``StatsHandler`` and
    ``TensorBoardStatsHandler`` print and plot at epoch level). Attach it before those handlers.
    Sums stay on the device; no host sync per iteration.

    Args:
        loss_function: the loss exposing ``last_components``; default ``engine.loss_function``.
        prefix: prefix of the metric names (e.g. ``"train_"``).

    Example:
        >>> import torch
        >>> from ignite.engine import Engine
        >>> from monai_pairsynth.losses import PairedDiffusionLoss
        >>> loss = PairedDiffusionLoss()
        >>> def step(engine, batch):
        ...     engine.state.output = {}
        ...     loss({"ct": batch, "pet": 0 * batch}, {"ct": 0 * batch, "pet": 0 * batch})
        ...     engine.fire_event(IterationEvents.LOSS_COMPLETED)
        ...     return engine.state.output
        >>> engine = Engine(step)
        >>> engine.register_events(*IterationEvents)
        >>> LossComponentsHandler(loss).attach(engine)
        >>> _ = engine.run([torch.ones(1, 1, 2, 2), 3 * torch.ones(1, 1, 2, 2)])
        >>> engine.state.metrics["mse_ct"], float(engine.state.output["loss_components"]["loss"])
        (5.0, 9.0)
    """

    def __init__(self, loss_function: Any | None = None, prefix: str = "") -> None:
        if loss_function is not None and not hasattr(loss_function, "last_components"):
            raise ValueError(
                f"loss_function must expose 'last_components' (e.g. PairedDiffusionLoss), got {type(loss_function).__name__}."
            )
        self.loss_function = loss_function
        self.prefix = str(prefix)
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write_epoch_means)

    def _loss(self, engine: Engine) -> Any:
        loss = (
            self.loss_function if self.loss_function is not None else getattr(engine, "loss_function", None)
        )
        if loss is None or not hasattr(loss, "last_components"):
            raise ValueError(
                "LossComponentsHandler needs a loss exposing 'last_components': pass loss_function=... or use an "
                "engine whose loss_function is a PairedDiffusionLoss."
            )
        return loss

    def reset(self, engine: Engine | None = None) -> None:
        self._sums = {}
        self._count = 0

    def record(self, engine: Engine) -> None:
        comps = {f"{self.prefix}{k}": v.detach() for k, v in self._loss(engine).last_components.items()}
        if isinstance(engine.state.output, dict):
            engine.state.output[LOSS_COMPONENTS_KEY] = comps
        for k, v in comps.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._count += 1

    def write_epoch_means(self, engine: Engine) -> None:
        if self._count:
            engine.state.metrics.update({k: float(v) / self._count for k, v in self._sums.items()})
