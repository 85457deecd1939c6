"""ignite handlers that bring a synthesis pool into a MONAI training loop."""

from __future__ import annotations

from monai_pairsynth.mixing.mixed_dataset_epoch_handler import MixedDatasetEpochHandler
from monai_pairsynth.mixing.pool_refresh_handler import PoolRefreshHandler

__all__ = ["MixedDatasetEpochHandler", "PoolRefreshHandler"]
