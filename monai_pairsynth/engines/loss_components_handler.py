"""Deprecated location of :mod:`monai_pairsynth.handlers.loss_components_handler` (issue 16's package layout); old imports keep working."""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        name: "monai_pairsynth.handlers.loss_components_handler"
        for name in ("LOSS_COMPONENTS_KEY", "LossComponentsHandler", "paired_loss_output_transform")
    },
)
