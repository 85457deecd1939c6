"""A progress bar over training iterations as a MONAI-style handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ignite.handlers import ProgressBar

__all__ = ["TrainingProgressBar"]


class TrainingProgressBar:
    """An ignite ``ProgressBar`` over iterations as a MONAI-style handler (``attach(engine)``), showing the loss.

    MONAI workflows attach their handlers with ``handler.attach(engine)``; ignite's ``ProgressBar.attach`` also
    needs the output transform, which this wrapper supplies.

    Args:
        enabled: ``False`` attaches nothing (e.g. for logs, or ranks other than 0).
        loss_key: key of the loss in the engine output (MONAI trainers: ``"loss"``).
        persist: keep the finished bar of each epoch on screen.
        desc: label of the bar.

    Example:
        >>> from ignite.engine import Engine
        >>> engine = Engine(lambda e, b: None)
        >>> TrainingProgressBar(enabled=False).attach(engine)
        >>> _ = engine.run([0], max_epochs=1)
    """

    def __init__(
        self, enabled: bool = True, loss_key: str = "loss", persist: bool = False, desc: str = "train"
    ) -> None:
        self.enabled = bool(enabled)
        self.loss_key = loss_key
        self.persist = bool(persist)
        self.desc = desc

    def _loss(self, output: Any) -> dict[str, float]:
        if isinstance(output, (list, tuple)) and output:
            output = output[0]
        if isinstance(output, Mapping) and self.loss_key in output:
            return {self.loss_key: float(output[self.loss_key])}
        return {}

    def attach(self, engine: Any) -> None:
        if not self.enabled:
            return
        ProgressBar(persist=self.persist, desc=self.desc).attach(engine, output_transform=self._loss)
