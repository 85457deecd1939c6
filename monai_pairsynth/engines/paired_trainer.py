"""Factory of the linked-diffusion ``SupervisedTrainer`` from scalar settings.

``create_paired_trainer`` builds the default pieces and hands them to
:func:`~monai_pairsynth.engines.assemble_paired_trainer`, which wires them around an unmodified MONAI
``SupervisedTrainer``:

- :class:`PairedDiffusionPrepareBatch` (shared timestep, offset noise, targets) as ``prepare_batch``;
- :class:`PairedNoiseInferer` (``DDPMScheduler.add_noise`` + ``network(noisy_dict, timesteps)``) as ``inferer``;
- :class:`~monai_pairsynth.losses.PairedDiffusionLoss` as ``loss_function``;
- one AdamW with a parameter group per modality (:func:`create_paired_optimizer`);
- handlers of :mod:`monai_pairsynth.handlers` (``LossComponentsHandler``, ``PerceptualWarmup``,
  ``ClipGradNormHandler``, ``EpochTimeLimit``, ``LinearLRWarmup``, ``TrainingProgressBar``), MONAI
  ``StatsHandler`` (and ``TensorBoardStatsHandler`` when tensorboard is importable),
  :class:`ForeachEMAHandler` (an EMA on the contiguous parameter buffers) and :class:`PairedCheckpointSaver`.

The bundle's ``train_diffusion.json`` declares the same pieces as ``_target_`` components and calls
``assemble_paired_trainer`` itself, so that each piece is overridden by its ``#``-path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler, TensorBoardStatsHandler
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from monai_pairsynth._moved import moved_names
from monai_pairsynth.handlers import (
    ClipGradNormHandler,
    LossComponentsHandler,
    PerceptualWarmup,
    TrainingProgressBar,
    paired_loss_output_transform,
)
from monai_pairsynth.handlers import EpochTimeLimit as _EpochTimeLimit
from monai_pairsynth.handlers import LinearLRWarmup as _LinearLRWarmup
from monai_pairsynth.losses import PairedDiffusionLoss, PerceptualMode
from monai_pairsynth.modalities import ModalitySpec, resolve_specs

from .foreach_ema_handler import ForeachEMAHandler
from .paired_checkpoint import PairedCheckpointSaver, create_noise_scheduler
from .paired_noise_inferer import PairedNoiseInferer
from .paired_prepare_batch import PairedDiffusionPrepareBatch
from .param_groups import create_paired_optimizer
from .trainer_assembly import (
    STATS_LOGGER_NAME,
    PairedTrainingParts,
    assemble_paired_trainer,
    check_run_arguments,
    skip_redundant_train_calls,
)

__all__ = [
    "STATS_LOGGER_NAME",
    "PairedTrainingParts",
    "create_paired_trainer",
    "skip_redundant_train_calls",
]

logger = logging.getLogger(__name__)

# the trainer's own handlers moved to monai_pairsynth.handlers (issue 16); the old names keep working with a
# warning (imported above under private names, so that the old path goes through the alias)
__getattr__ = moved_names(
    __name__,
    {"EpochTimeLimit": "monai_pairsynth.handlers", "LinearLRWarmup": "monai_pairsynth.handlers"},
)


def _tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def _check_trainer_arguments(
    model: nn.Module,
    max_epochs: int,
    log_every: int,
    lr_warmup_iters: int,
    max_minutes: float | None,
    device: str | torch.device | None,
    amp: bool,
    modality_specs: Sequence[str] | Mapping[str, ModalitySpec | Mapping[str, Any]] | None,
    tensorboard: bool | None,
    output_dir: str | os.PathLike | None,
) -> tuple[torch.device, dict[str, ModalitySpec]]:
    """:func:`create_paired_trainer`'s argument checks (before anything is built); returns the device and the
    resolved specs of the model's modalities."""
    device = check_run_arguments(model, max_epochs, device, amp)
    if isinstance(log_every, bool) or int(log_every) != log_every or log_every < 0:
        raise ValueError(f"log_every must be an int >= 0, got {log_every!r}.")
    if isinstance(lr_warmup_iters, bool) or int(lr_warmup_iters) != lr_warmup_iters or lr_warmup_iters < 0:
        raise ValueError(f"lr_warmup_iters must be an int >= 0, got {lr_warmup_iters!r}.")
    if max_minutes is not None and (isinstance(max_minutes, bool) or not float(max_minutes) > 0):
        raise ValueError(f"max_minutes must be a positive number of minutes or None, got {max_minutes!r}.")
    modalities = tuple(model.modalities)
    specs = resolve_specs(modality_specs if modality_specs is not None else modalities)
    if set(specs) != set(modalities):
        raise ValueError(
            f"modality_specs name {sorted(specs)}, but the model has modalities {list(modalities)}; they must match."
        )
    if tensorboard and not _tensorboard_available():
        raise ValueError(
            "tensorboard=True, but the 'tensorboard' package is not importable: pip install tensorboard."
        )
    if tensorboard and output_dir is None:
        raise ValueError("tensorboard=True needs output_dir for its log folder.")
    return device, specs


def _logging_handlers(
    stats_log: bool, log_every: int, show_progress: bool, tensorboard: bool | None, output_dir: Any
) -> list[Any]:
    """The trainer's MONAI ``StatsHandler`` (per epoch; per ``log_every`` iterations without a progress bar)
    and, where asked for or available with an ``output_dir``, its ``TensorBoardStatsHandler``."""
    out: list[Any] = []
    if stats_log:
        iteration_log: Any = False
        if log_every > 0 and not show_progress:
            iteration_log = lambda engine, it: it % log_every == 0  # noqa: E731
        out.append(
            StatsHandler(
                iteration_log=iteration_log,
                output_transform=paired_loss_output_transform,
                name=STATS_LOGGER_NAME,
                tag_name="loss",
            )
        )
    use_tb = bool(tensorboard) or (
        tensorboard is None and output_dir is not None and _tensorboard_available()
    )
    if use_tb:
        out.append(
            TensorBoardStatsHandler(
                log_dir=str(Path(output_dir) / "tensorboard"),  # type: ignore[arg-type]
                output_transform=paired_loss_output_transform,
                tag_name="loss",
            )
        )
    return out


def _noise_parts(
    model: nn.Module,
    noise_scheduler: Mapping[str, Any] | None,
    offset_noise_scale: float,
    generator: torch.Generator | None,
    autocast_dtype: torch.dtype | str | None,
    compile_network: bool,
    timestep_options: Mapping[str, float] | None = None,
) -> tuple[DDPMScheduler, PairedDiffusionPrepareBatch, PairedNoiseInferer]:
    """The noise scheduler, the prepare-batch that noises the batch and the training inferer."""
    scheduler = create_noise_scheduler(noise_scheduler)
    sched_cfg = scheduler.noise_scheduler_config
    prepare_batch = PairedDiffusionPrepareBatch(
        tuple(model.modalities),
        sched_cfg["num_train_timesteps"],
        offset_noise_scale=offset_noise_scale,
        generator=generator,
        prediction_type=sched_cfg["prediction_type"],
        scheduler=scheduler,
        **dict(timestep_options or {}),
    )
    # the data is validated where it enters (prepare_batch on CPU batches, DeviceTripletLoader once), so the
    # model's own NaN/Inf check, a host sync on a GPU, is off in training
    inferer = PairedNoiseInferer(
        scheduler, autocast_dtype=autocast_dtype, check_finite=False, compile_network=compile_network
    )
    return scheduler, prepare_batch, inferer


def _default_optimizer(
    model: nn.Module, lr: float | Mapping[str, float], weight_decay: float | Mapping[str, float]
) -> torch.optim.Optimizer:
    """Per-modality AdamW with one contiguous buffer per denoiser (optimiser, clipping and EMA on ~3 tensors
    instead of ~930); under torch.distributed the parameters stay as they are, for DistributedDataParallel's own
    gradient buckets."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return create_paired_optimizer(model, lr=lr, weight_decay=weight_decay, flat_buffers=not distributed)


def _step_handlers(
    loss_function: PairedDiffusionLoss,
    perceptual_weight: float,
    perceptual_start_epoch: int,
    grad_clip_norm: float | None,
    grad_clip_per_modality: bool,
    max_minutes: float | None,
    lr_warmup_iters: int,
) -> list[Any]:
    """The handlers of each step, in attach order (loss components, the perceptual warm-up, clipping), then
    the run's time limit and learning-rate warm-up; each only where switched on."""
    handlers: list[Any] = [LossComponentsHandler(loss_function)]
    if perceptual_weight and float(perceptual_weight) > 0:
        handlers.append(PerceptualWarmup(perceptual_start_epoch, perceptual_weight, loss_function))
    if grad_clip_norm is not None:
        handlers.append(ClipGradNormHandler(grad_clip_norm, per_group=grad_clip_per_modality))
    if max_minutes is not None:
        handlers.append(_EpochTimeLimit(float(max_minutes) * 60.0))
    if lr_warmup_iters:
        handlers.append(_LinearLRWarmup(int(lr_warmup_iters)))
    return handlers


def _ema_handler(
    model: nn.Module, momentum: float | None, warmup_iters: int | None, momentum_warmup: float
) -> ForeachEMAHandler | None:
    """The EMA of ``model`` (``None`` when ``momentum`` is ``None``), with a momentum warm-up unless
    ``warmup_iters`` is ``None``."""
    if momentum is None:
        return None
    warm = {} if warmup_iters is None else {"momentum_warmup": momentum_warmup, "warmup_iters": warmup_iters}
    return ForeachEMAHandler(model, momentum=momentum, **warm)


def create_paired_trainer(
    model: nn.Module,
    train_data_loader: Iterable,
    *,
    max_epochs: int,
    device: str | torch.device | None = None,
    lr: float | Mapping[str, float] = 1e-4,
    weight_decay: float | Mapping[str, float] = 0.0,
    lr_warmup_iters: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    noise_scheduler: Mapping[str, Any] | None = None,
    offset_noise_scale: float = 0.1,
    independent_timestep_prob: float = 0.0,
    clean_prob: float = 0.5,
    generator: torch.Generator | None = None,
    loss_function: PairedDiffusionLoss | None = None,
    perceptual_weight: float = 0.0,
    perceptual_start_epoch: int = 50,
    perceptual_mode: PerceptualMode | str = PerceptualMode.CROSS_MODAL,
    perceptual_max_timestep: int | None = None,
    feature_network: nn.Module | None = None,
    feature_weights_path: str | os.PathLike | None = None,
    snr_gamma: float | None = None,
    foreground_weight: Mapping[str, float] | None = None,
    amp: bool = False,
    amp_kwargs: Mapping[str, Any] | None = None,
    grad_clip_norm: float | None = 1.0,
    grad_clip_per_modality: bool = True,
    autocast_dtype: torch.dtype | str | None = None,
    compile_network: bool = False,
    ema_momentum: float | None = 1e-3,
    ema_warmup_iters: int | None = 200,
    ema_momentum_warmup: float = 0.1,
    output_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    keep_epoch_checkpoints: bool = False,
    modality_specs: Sequence[str] | Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    spatial_size: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    data_generator: torch.Generator | None = None,
    epoch_length: int | None = None,
    log_every: int = 10,
    stats_log: bool = True,
    tensorboard: bool | None = None,
    progress_bar: bool | None = None,
    extra_handlers: Sequence[Any] | None = None,
    resume_from: str | os.PathLike | None = None,
    max_minutes: float | None = None,
) -> SupervisedTrainer:
    """Build a MONAI ``SupervisedTrainer`` that trains a ``PairedDiffusionModel``.

    Args:
        model: a ``PairedDiffusionModel`` (``modalities``, ``denoisers``, ``get_config()``, dict forward).
        train_data_loader: yields batches ``{modality: (B, C, *spatial)}`` in [-1, 1].
        max_epochs: epochs to train (total, counting the epochs of a resumed checkpoint).
        device: training device; default CUDA if available, else CPU.
        lr: learning rate, or ``{modality: lr}`` (one optimiser param group per modality).
        weight_decay: AdamW weight decay, one value or per modality.
        lr_warmup_iters: raise every group's learning rate linearly from ``lr / n`` to ``lr`` over the first
            ``n`` iterations (set from ``engine.state.iteration`` alone, so a resumed run continues the ramp
            exactly); 0: no warm-up.
        optimizer: use this optimiser instead of the per-modality AdamW.
        noise_scheduler: :func:`noise_scheduler_config` keys (``num_train_timesteps``, ``schedule``,
            ``prediction_type``, ``schedule_args``); default 1000-step linear DDPM, epsilon prediction.
        offset_noise_scale: std of the per-image offset noise constant (paper: 0.1).
        independent_timestep_prob: probability that a training sample gets per-modality timesteps, some
            modalities given clean (t = 0) with probability ``clean_prob`` (see
            :class:`PairedDiffusionPrepareBatch`); the checkpoint records both, and a model so trained is
            sampled conditionally with the given modalities clean. 0 (default): shared timesteps only. Use it
            with a model built with ``condition_timesteps=True`` (its encoders then see each condition's
            own timestep).
        clean_prob: probability that a modality of such a sample is given clean.
        generator: ``torch.Generator`` of the noise and timestep draws (saved in checkpoints).
        loss_function: use this loss instead of building a ``PairedDiffusionLoss``.
        perceptual_weight: weight of the perceptual term once switched on; 0 disables it.
        perceptual_start_epoch: epochs trained before the perceptual term starts (paper: 50).
        perceptual_mode: ``"cross_modal"`` (paper) or ``"reconstruction"``.
        perceptual_max_timestep: the perceptual term only for samples with ``t`` below this (``None``: all).
        feature_network: feature network of the perceptual term (default: frozen ``RandomConvFeatures``).
        feature_weights_path: local state-dict file for the feature network.
        snr_gamma: Min-SNR-gamma weighting of the prediction MSE (``PairedDiffusionLoss``); ``None``: off.
        foreground_weight: ``{modality: w}`` weight of foreground pixels (clean value > 0) in that modality's
            MSE, e.g. ``{"label": 4.0}``; ``None``: off.
        amp: mixed precision (CUDA only): autocast + ``GradScaler`` of ``SupervisedTrainer``.
        amp_kwargs: arguments of ``torch.autocast`` (e.g. ``{"dtype": torch.bfloat16}``).
        grad_clip_norm: clip gradient norms to this value; ``None`` disables clipping.
        grad_clip_per_modality: clip each denoiser's gradient norm on its own (a spike in one modality does not
            throttle the others); ``False``: one global norm over all denoisers.
        autocast_dtype: run the network forward under ``torch.autocast`` with this dtype on the training
            device, CPU included (``"bfloat16"``; no ``GradScaler``); ``None`` (default) full precision. See
            ``benchmarks/training_iteration.py`` for whether it pays on a given machine.
        compile_network: opt-in ``torch.compile`` of the linked model's training forward (see
            :class:`PairedNoiseInferer`); worth it on a GPU, where a small model's step is bound by kernel
            launches (``benchmarks/training_throughput.py``).
        ema_momentum: EMA update momentum (``ema = (1 - m) ema + m w`` per iteration); ``None`` disables EMA.
        ema_warmup_iters: iterations over which the momentum goes linearly from ``ema_momentum_warmup``
            down to ``ema_momentum`` (so a young EMA follows the model); ``None`` disables the warm-up.
        ema_momentum_warmup: initial EMA momentum during the warm-up.
        output_dir: where checkpoints (and tensorboard logs) go; ``None`` writes nothing.
        checkpoint_every: epochs between checkpoints (one is always written at the end).
        keep_epoch_checkpoints: keep one checkpoint file per saved epoch besides ``checkpoint.pt``.
        modality_specs: modality specs stored in checkpoints (default: package defaults for the model's
            modalities); their names must be the model's modalities.
        spatial_size, spacing: training grid stored in checkpoints.
        data_generator: the ``DataLoader``'s generator (default: ``train_data_loader.generator``), saved
            for exact resume.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        log_every: ``StatsHandler`` iteration-log interval (0: epoch logs only; iteration logs are off
            while a progress bar is shown).
        stats_log: attach MONAI ``StatsHandler`` (logger ``monai_pairsynth.train``).
        tensorboard: ``None``: log to ``output_dir/tensorboard`` if tensorboard is importable and
            ``output_dir`` is set; ``True``: require it; ``False``: off.
        progress_bar: ignite ``ProgressBar``; ``None``: only when stderr is a terminal.
        extra_handlers: further handlers with ``attach(engine)``.
        resume_from: checkpoint to continue from (see :func:`restore_paired_training`).
        max_minutes: wall-clock budget of one ``run()``: training stops at the end of the first epoch that
            finishes past it (``max_epochs`` still caps it) and the checkpoint of that epoch is written, so a
            run can be sized to a machine's time slot; ``trainer.state.epoch`` tells how far it got. With
            several processes (DDP) ranks may stop at different epochs: leave it ``None`` there.

    Returns:
        the trainer; ``trainer.paired`` is a :class:`PairedTrainingParts` (EMA model, loss, saver, ...).
    """
    device, specs = _check_trainer_arguments(
        model,
        max_epochs,
        log_every,
        lr_warmup_iters,
        max_minutes,
        device,
        amp,
        modality_specs,
        tensorboard,
        output_dir,
    )
    model = model.to(device)
    t_options = {"independent_timestep_prob": independent_timestep_prob, "clean_prob": clean_prob}
    scheduler, prepare_batch, inferer = _noise_parts(
        model, noise_scheduler, offset_noise_scale, generator, autocast_dtype, compile_network, t_options
    )
    if loss_function is None:
        loss_function = PairedDiffusionLoss(
            scheduler,
            prediction_type=scheduler.prediction_type,
            perceptual_mode=perceptual_mode,
            feature_network=feature_network,
            feature_weights_path=feature_weights_path,
            spatial_dims=int(getattr(model, "spatial_dims", 2)),
            snr_gamma=snr_gamma,
            foreground_weight=foreground_weight,
            perceptual_max_timestep=perceptual_max_timestep,
        )
    loss_function = loss_function.to(device)
    if optimizer is None:
        optimizer = _default_optimizer(model, lr, weight_decay)
    if data_generator is None:
        data_generator = getattr(train_data_loader, "generator", None)
    ema_handler = _ema_handler(model, ema_momentum, ema_warmup_iters, ema_momentum_warmup)
    saver = None
    if output_dir is not None:
        saver = PairedCheckpointSaver(
            output_dir,
            model,
            optimizer=optimizer,
            ema_handler=ema_handler,
            loss_function=loss_function,
            prepare_batch=prepare_batch,
            noise_scheduler=scheduler,
            modality_specs=specs,
            spatial_size=spatial_size,
            spacing=spacing,
            data_generator=data_generator,
            every=checkpoint_every,
            keep_epoch_files=keep_epoch_checkpoints,
        )
    show_progress = sys.stderr.isatty() if progress_bar is None else bool(progress_bar)
    handlers = _step_handlers(
        loss_function,
        perceptual_weight,
        perceptual_start_epoch,
        grad_clip_norm,
        grad_clip_per_modality,
        max_minutes,
        lr_warmup_iters,
    )
    handlers.extend(_logging_handlers(stats_log, log_every, show_progress, tensorboard, output_dir))
    handlers.append(TrainingProgressBar(enabled=show_progress))
    handlers.extend(extra_handlers or [])
    trainer = assemble_paired_trainer(
        model,
        train_data_loader,
        optimizer=optimizer,
        loss_function=loss_function,
        prepare_batch=prepare_batch,
        inferer=inferer,
        max_epochs=max_epochs,
        device=device,
        handlers=handlers,
        ema_handler=ema_handler,
        checkpoint_saver=saver,
        resume_from=resume_from,
        data_generator=data_generator,
        epoch_length=epoch_length,
        amp=amp,
        amp_kwargs=amp_kwargs,
    )
    trainer.paired.modality_specs = dict(specs)
    return trainer
