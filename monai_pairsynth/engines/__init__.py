"""Engines: MONAI/ignite training of the linked diffusion model (prepare-batch, inferer, handlers, checkpoints).

The training entry points are :func:`create_paired_trainer` (a configured MONAI ``SupervisedTrainer``,
callable from a bundle config) and :func:`train_paired_diffusion` (everything from data to checkpoint); the
command line is ``python -m monai_pairsynth.engines.train``.
"""

from __future__ import annotations

from .clip_grad_norm_handler import ClipGradNormHandler
from .device_triplet_loader import DeviceTripletLoader
from .flat_parameters import FlatParameterAdamW, FlatParameterGroup, GatherGradsHandler, flatten_into_buffer
from .foreach_ema_handler import ForeachEMAHandler
from .loss_components_handler import LOSS_COMPONENTS_KEY, LossComponentsHandler, paired_loss_output_transform
from .paired_checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    PairedCheckpointSaver,
    build_paired_checkpoint,
    check_model_config,
    create_noise_scheduler,
    export_sampling_checkpoint,
    load_paired_checkpoint,
    load_paired_weights,
    noise_scheduler_config,
    read_paired_checkpoint,
    restore_paired_training,
    save_paired_checkpoint,
)
from .paired_data_loader import paired_data_loader
from .paired_noise_inferer import PairedNoiseInferer
from .paired_prepare_batch import PairedDiffusionPrepareBatch, offset_noise
from .paired_trainer import (
    STATS_LOGGER_NAME,
    EpochTimeLimit,
    LinearLRWarmup,
    PairedTrainingParts,
    create_paired_trainer,
    skip_redundant_train_calls,
)
from .paired_training import DEFAULT_CPU_MODEL_KWARGS, build_training_dataset, train_paired_diffusion
from .param_groups import create_paired_optimizer, paired_param_groups
from .perceptual_warmup import PerceptualWarmup

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DEFAULT_CPU_MODEL_KWARGS",
    "LOSS_COMPONENTS_KEY",
    "STATS_LOGGER_NAME",
    "ClipGradNormHandler",
    "DeviceTripletLoader",
    "EpochTimeLimit",
    "FlatParameterAdamW",
    "FlatParameterGroup",
    "ForeachEMAHandler",
    "GatherGradsHandler",
    "LinearLRWarmup",
    "LossComponentsHandler",
    "PairedCheckpointSaver",
    "PairedDiffusionPrepareBatch",
    "PairedNoiseInferer",
    "PairedTrainingParts",
    "PerceptualWarmup",
    "build_paired_checkpoint",
    "build_training_dataset",
    "check_model_config",
    "create_noise_scheduler",
    "create_paired_optimizer",
    "create_paired_trainer",
    "export_sampling_checkpoint",
    "flatten_into_buffer",
    "load_paired_checkpoint",
    "load_paired_weights",
    "noise_scheduler_config",
    "offset_noise",
    "paired_data_loader",
    "paired_loss_output_transform",
    "paired_param_groups",
    "read_paired_checkpoint",
    "restore_paired_training",
    "save_paired_checkpoint",
    "skip_redundant_train_calls",
    "train_paired_diffusion",
]
