"""Deprecated location of :mod:`monai_pairsynth.handlers.clip_grad_norm_handler` (issue 16's package layout); old imports keep working."""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "ClipGradNormHandler": "monai_pairsynth.handlers.clip_grad_norm_handler",
    },
)
