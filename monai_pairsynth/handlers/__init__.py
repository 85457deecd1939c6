"""ignite handlers: the pool refresh and mixed-dataset epoch handlers (defined in :mod:`monai_pairsynth.mixing`)
and a training progress bar."""

from __future__ import annotations

from monai_pairsynth.mixing.mixed_dataset_epoch_handler import MixedDatasetEpochHandler
from monai_pairsynth.mixing.pool_refresh_handler import PoolRefreshHandler

from .training_progress_bar import TrainingProgressBar

__all__ = ["MixedDatasetEpochHandler", "PoolRefreshHandler", "TrainingProgressBar"]
