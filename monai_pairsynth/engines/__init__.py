"""Engines: MONAI/ignite training of the linked diffusion model (prepare-batch, inferer, optimiser, checkpoints).

The training entry points are :func:`assemble_paired_trainer` (a MONAI ``SupervisedTrainer`` from pre-built
pieces: optimiser, loss, prepare-batch, inferer, handlers, EMA, checkpoint saver; what the bundle declares as
``_target_`` components), :func:`create_paired_trainer` (the same from scalar settings, building the default
pieces) and :func:`train_paired_diffusion` (everything from data to checkpoint); the command line is
``python -m monai_pairsynth.engines.train``. The trainer attaches the handlers of
:mod:`monai_pairsynth.handlers`; the two that work on the contiguous parameter buffers of
:mod:`~monai_pairsynth.engines.flat_parameters` (``ForeachEMAHandler``, ``GatherGradsHandler``) live here.
"""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

from .device_triplet_loader import DeviceTripletLoader
from .flat_parameters import FlatParameterAdamW, FlatParameterGroup, GatherGradsHandler, flatten_into_buffer
from .foreach_ema_handler import ForeachEMAHandler
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
    noise_scheduler_config_of,
    read_paired_checkpoint,
    restore_paired_training,
    save_paired_checkpoint,
)
from .paired_data_loader import paired_data_loader
from .paired_noise_inferer import MissingModalityError, PairedNoiseInferer
from .paired_prepare_batch import PairedDiffusionPrepareBatch, offset_noise
from .paired_trainer import create_paired_trainer
from .paired_training import (
    DEFAULT_CPU_MODEL_KWARGS,
    build_training_dataset,
    device_training_loader,
    train_paired_diffusion,
)
from .param_groups import create_paired_optimizer, paired_param_groups
from .trainer_assembly import (
    STATS_LOGGER_NAME,
    PairedTrainingParts,
    assemble_paired_trainer,
    skip_redundant_train_calls,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DEFAULT_CPU_MODEL_KWARGS",
    "STATS_LOGGER_NAME",
    "DeviceTripletLoader",
    "FlatParameterAdamW",
    "FlatParameterGroup",
    "ForeachEMAHandler",
    "GatherGradsHandler",
    "MissingModalityError",
    "PairedCheckpointSaver",
    "PairedDiffusionPrepareBatch",
    "PairedNoiseInferer",
    "PairedTrainingParts",
    "assemble_paired_trainer",
    "build_paired_checkpoint",
    "build_training_dataset",
    "check_model_config",
    "create_noise_scheduler",
    "create_paired_optimizer",
    "create_paired_trainer",
    "device_training_loader",
    "export_sampling_checkpoint",
    "flatten_into_buffer",
    "load_paired_checkpoint",
    "load_paired_weights",
    "noise_scheduler_config",
    "noise_scheduler_config_of",
    "offset_noise",
    "paired_data_loader",
    "paired_param_groups",
    "read_paired_checkpoint",
    "restore_paired_training",
    "save_paired_checkpoint",
    "skip_redundant_train_calls",
    "train_paired_diffusion",
]

# handlers that moved to monai_pairsynth.handlers (issue 16); the old names keep working with a warning
__getattr__ = moved_names(
    __name__,
    {
        name: "monai_pairsynth.handlers"
        for name in (
            "LOSS_COMPONENTS_KEY",
            "ClipGradNormHandler",
            "EpochTimeLimit",
            "LinearLRWarmup",
            "LossComponentsHandler",
            "PerceptualWarmup",
            "paired_loss_output_transform",
        )
    },
)
