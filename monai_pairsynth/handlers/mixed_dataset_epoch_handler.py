"""Deprecated location of :mod:`monai_pairsynth.mixing.mixed_dataset_epoch_handler` (issue 16's package layout); old imports keep working."""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "MixedDatasetEpochHandler": "monai_pairsynth.mixing.mixed_dataset_epoch_handler",
    },
)
