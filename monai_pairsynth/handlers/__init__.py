"""ignite handlers that stand on their own: gradient clipping, loss components, the perceptual warm-up, the
learning-rate warm-up, a per-epoch time limit and a training progress bar.

Every handler that needs nothing above :mod:`monai_pairsynth.data` lives here, one floor below
:mod:`monai_pairsynth.engines`, whose trainer attaches them. The handlers that are part of another folder's
machinery live beside it: ``ForeachEMAHandler`` and ``GatherGradsHandler`` in :mod:`monai_pairsynth.engines`
(they read and rewrite the optimiser's contiguous parameter buffers), ``PoolRefreshHandler`` and
``MixedDatasetEpochHandler`` in :mod:`monai_pairsynth.mixing` (they drive the pool and the mixed dataset); the
two old spellings ``monai_pairsynth.handlers.PoolRefreshHandler`` / ``.MixedDatasetEpochHandler`` still work.
"""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

from .clip_grad_norm_handler import ClipGradNormHandler
from .epoch_time_limit import EpochTimeLimit
from .linear_lr_warmup import LinearLRWarmup
from .loss_components_handler import LOSS_COMPONENTS_KEY, LossComponentsHandler, paired_loss_output_transform
from .perceptual_warmup import PerceptualWarmup
from .training_progress_bar import TrainingProgressBar

__all__ = [
    "LOSS_COMPONENTS_KEY",
    "ClipGradNormHandler",
    "EpochTimeLimit",
    "LinearLRWarmup",
    "LossComponentsHandler",
    "PerceptualWarmup",
    "TrainingProgressBar",
    "paired_loss_output_transform",
]

# resolved lazily: the mixing floor stands above this one
__getattr__ = moved_names(
    __name__,
    {
        "MixedDatasetEpochHandler": "monai_pairsynth.mixing",
        "PoolRefreshHandler": "monai_pairsynth.mixing",
    },
)
