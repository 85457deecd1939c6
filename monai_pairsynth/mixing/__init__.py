"""Mixing: everything that brings synthetic triplets into a user's segmentation trainer, in one place.

- :class:`SynthesisPool`: a bounded bank of filtered triplets in shared CPU memory (storage only: the triplets
  come from a *source* callable, e.g. :class:`monai_pairsynth.inferers.DiffusionPoolSource` or
  :class:`PhantomPoolSource`, and pass an optional quality filter);
- :class:`MixedDataset`: real cases + pool at a ratio ``r = N_synthetic / N_real``, resampled each epoch;
- :class:`SynthesizePaired` / :class:`SynthesizePairedd`: a MONAI transform that swaps a sample for a
  synthetic triplet with probability ``prob``;
- :class:`PoolRefreshHandler` / :class:`MixedDatasetEpochHandler`: the ignite handlers that refresh the pool
  and resample the mixed dataset each epoch;
- :mod:`monai_pairsynth.mixing.pool_builder`: pool building for the bundle (quality filter training, DDP
  sharding, the generation outputs).
"""

from __future__ import annotations

from .mixed_dataset import MixedDataset
from .mixed_dataset_epoch_handler import MixedDatasetEpochHandler
from .pool_refresh_handler import PoolRefreshHandler
from .synthesis_pool import (
    EmptyPoolError,
    PhantomPoolSource,
    PoolGenerationError,
    PoolStorage,
    PoolUpdate,
    RefillOrder,
    SynthesisPool,
)
from .synthesize_paired import (
    SynthesisFallback,
    SynthesisMode,
    SynthesizePaired,
    SynthesizePairedD,
    SynthesizePairedd,
    SynthesizePairedDict,
)

__all__ = [
    "EmptyPoolError",
    "MixedDataset",
    "MixedDatasetEpochHandler",
    "PhantomPoolSource",
    "PoolGenerationError",
    "PoolRefreshHandler",
    "PoolStorage",
    "PoolUpdate",
    "RefillOrder",
    "SynthesisFallback",
    "SynthesisMode",
    "SynthesisPool",
    "SynthesizePaired",
    "SynthesizePairedD",
    "SynthesizePairedDict",
    "SynthesizePairedd",
]
