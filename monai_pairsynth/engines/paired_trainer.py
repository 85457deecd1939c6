"""Factory of the linked-diffusion ``SupervisedTrainer``: every part is a MONAI/ignite building block.

``create_paired_trainer`` wires, around an unmodified MONAI ``SupervisedTrainer``:

- :class:`PairedDiffusionPrepareBatch` (shared timestep, offset noise, targets) as ``prepare_batch``;
- :class:`PairedNoiseInferer` (``DDPMScheduler.add_noise`` + ``network(noisy_dict, timesteps)``) as ``inferer``;
- :class:`~monai_pairsynth.losses.PairedDiffusionLoss` as ``loss_function``;
- one AdamW with a parameter group per modality (:func:`paired_param_groups`);
- handlers of :mod:`monai_pairsynth.handlers` (``LossComponentsHandler``, ``PerceptualWarmup``,
  ``ClipGradNormHandler``, ``EpochTimeLimit``, ``LinearLRWarmup``), :class:`ForeachEMAHandler` (an EMA on the
  contiguous parameter buffers), :class:`PairedCheckpointSaver`, MONAI ``StatsHandler`` (and
  ``TensorBoardStatsHandler`` when tensorboard is importable), ignite ``ProgressBar`` in interactive runs.

It only takes plain values and objects, so a MONAI bundle config can call it by its dotted path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler, TensorBoardStatsHandler
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from monai_pairsynth._moved import moved_names
from monai_pairsynth.handlers import (
    ClipGradNormHandler,
    LossComponentsHandler,
    PerceptualWarmup,
    paired_loss_output_transform,
)
from monai_pairsynth.handlers import EpochTimeLimit as _EpochTimeLimit
from monai_pairsynth.handlers import LinearLRWarmup as _LinearLRWarmup
from monai_pairsynth.losses import PairedDiffusionLoss, PerceptualMode
from monai_pairsynth.modalities import ModalitySpec, resolve_specs

from .flat_parameters import FlatParameterAdamW, GatherGradsHandler
from .foreach_ema_handler import ForeachEMAHandler
from .paired_checkpoint import (
    PairedCheckpointSaver,
    create_noise_scheduler,
    noise_scheduler_config,
    read_paired_checkpoint,
    restore_paired_training,
)
from .paired_noise_inferer import PairedNoiseInferer
from .paired_prepare_batch import PairedDiffusionPrepareBatch
from .param_groups import create_paired_optimizer

__all__ = [
    "STATS_LOGGER_NAME",
    "PairedTrainingParts",
    "create_paired_trainer",
    "skip_redundant_train_calls",
]

#: logger used by the trainer's StatsHandler.
STATS_LOGGER_NAME = "monai_pairsynth.train"

logger = logging.getLogger(__name__)

# the trainer's own handlers moved to monai_pairsynth.handlers (issue 16); the old names keep working with a
# warning (imported above under private names, so that the old path goes through the alias)
__getattr__ = moved_names(
    __name__,
    {"EpochTimeLimit": "monai_pairsynth.handlers", "LinearLRWarmup": "monai_pairsynth.handlers"},
)


@dataclass
class PairedTrainingParts:
    """The pieces :func:`create_paired_trainer` built, available as ``trainer.paired``."""

    model: nn.Module
    noise_scheduler: DDPMScheduler
    noise_scheduler_config: dict[str, Any]
    prepare_batch: PairedDiffusionPrepareBatch
    inferer: PairedNoiseInferer
    loss_function: PairedDiffusionLoss
    optimizer: torch.optim.Optimizer
    modality_specs: dict[str, ModalitySpec]
    loss_components: LossComponentsHandler
    perceptual_warmup: PerceptualWarmup | None = None
    grad_clipping: ClipGradNormHandler | None = None
    ema_handler: ForeachEMAHandler | None = None
    checkpoint_saver: PairedCheckpointSaver | None = None
    data_generator: torch.Generator | None = None

    @property
    def ema_model(self) -> nn.Module | None:
        """The EMA copy of the model (the weights sampling should use), or ``None`` without EMA."""
        return None if self.ema_handler is None else self.ema_handler.ema_model


def _tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def skip_redundant_train_calls(model: nn.Module) -> nn.Module:
    """Make ``model.train()`` return at once when the model is already in training mode.

    MONAI's ``SupervisedTrainer`` calls ``network.train()`` at every iteration (a Python walk over every
    submodule: milliseconds for the linked model, a visible share of a small iteration). This instance-level
    ``train`` remembers the mode it set last and skips the walk when asked for the same mode again;
    ``eval()``/``train(False)`` and any mode change go through ``nn.Module.train`` as before. Caveat: a
    submodule switched to eval directly (``model.denoisers["ct"].eval()``) is not noticed; call
    ``model.train(False)`` then ``model.train()`` to reset. Returns ``model``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Dropout())
        >>> _ = skip_redundant_train_calls(net).train()
        >>> net.eval().training, net[0].training, net.train()[0].training
        (False, False, True)
    """
    if "train" not in vars(model):
        model.train = types.MethodType(_train_unless_already, model)  # type: ignore[method-assign]
    return model


def _train_unless_already(self: nn.Module, mode: bool = True) -> nn.Module:
    mode = bool(mode)
    if vars(self).get("_last_train_mode") is mode and self.training is mode:
        return self
    type(self).train(self, mode)
    self._last_train_mode = mode
    return self


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
) -> tuple[torch.device, tuple[str, ...], dict[str, ModalitySpec]]:
    """:func:`create_paired_trainer`'s argument checks (before anything is built); returns the device, the
    model's modalities and their resolved specs."""
    for attr in ("modalities", "denoisers", "get_config"):
        if not hasattr(model, attr):
            raise ValueError(
                f"model must be a PairedDiffusionModel (missing {attr!r}), got {type(model).__name__}."
            )
    if isinstance(max_epochs, bool) or int(max_epochs) != max_epochs or max_epochs < 1:
        raise ValueError(f"max_epochs must be an int >= 1, got {max_epochs!r}.")
    if isinstance(log_every, bool) or int(log_every) != log_every or log_every < 0:
        raise ValueError(f"log_every must be an int >= 0, got {log_every!r}.")
    if isinstance(lr_warmup_iters, bool) or int(lr_warmup_iters) != lr_warmup_iters or lr_warmup_iters < 0:
        raise ValueError(f"lr_warmup_iters must be an int >= 0, got {lr_warmup_iters!r}.")
    if max_minutes is not None and (isinstance(max_minutes, bool) or not float(max_minutes) > 0):
        raise ValueError(f"max_minutes must be a positive number of minutes or None, got {max_minutes!r}.")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if amp and device.type != "cuda":
        raise ValueError(
            f"amp=True needs a CUDA device (MONAI autocasts on 'cuda'); got device {str(device)!r}."
        )
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
    return device, modalities, specs


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


def _resume(
    trainer: SupervisedTrainer,
    optimizer: torch.optim.Optimizer,
    resume_from: str | os.PathLike,
    sched_cfg: Mapping[str, Any],
    ema_handler: ForeachEMAHandler | None,
    prepare_batch: PairedDiffusionPrepareBatch,
    data_generator: torch.Generator | None,
) -> None:
    """Continue ``trainer`` from the checkpoint ``resume_from`` (same noise scheduler required), keeping this
    run's optimiser kernel choice."""
    ckpt = read_paired_checkpoint(resume_from)
    saved_sched = ckpt.get("noise_scheduler") or {}
    if saved_sched != sched_cfg:
        raise ValueError(
            f"resume_from {str(resume_from)!r} was trained with noise scheduler {saved_sched}, "
            f"this trainer uses {sched_cfg}."
        )
    kernels = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    restore_paired_training(
        trainer, ckpt, ema_handler=ema_handler, prepare_batch=prepare_batch, data_generator=data_generator
    )
    # load_state_dict restores the saved groups' options, kernel choice included: keep this run's choice
    for group, kernel in zip(optimizer.param_groups, kernels):
        group.update(kernel)
    logger.info("resumed from %s at epoch %d", resume_from, trainer.state.epoch)


def _attach_run_handlers(
    trainer: SupervisedTrainer,
    model: nn.Module,
    train_data_loader: Iterable,
    max_minutes: float | None,
    lr_warmup_iters: int,
    ema_handler: ForeachEMAHandler | None,
    saver: PairedCheckpointSaver | None,
    show_progress: bool,
) -> None:
    """What :func:`create_paired_trainer` attaches after building the ``SupervisedTrainer``, in this order:
    time limit, lr warm-up, the loader's epoch, the ``train()`` skip, EMA, checkpoints (after EMA), progress."""
    if max_minutes is not None:
        _EpochTimeLimit(float(max_minutes) * 60.0).attach(trainer)
    if lr_warmup_iters:
        _LinearLRWarmup(int(lr_warmup_iters)).attach(trainer)
    if hasattr(train_data_loader, "set_epoch") and not isinstance(
        train_data_loader, torch.utils.data.DataLoader
    ):
        # e.g. DeviceTripletLoader: its order and augmentation are functions of (seed, epoch), so resume is exact
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: train_data_loader.set_epoch(e.state.epoch))
    skip_redundant_train_calls(model)
    if ema_handler is not None:
        ema_handler.attach(trainer, name="ema_momentum")
    if saver is not None:
        saver.attach(trainer)  # after EMA: an epoch's checkpoint holds the EMA of its last iteration
    if show_progress:
        ProgressBar(persist=False).attach(
            trainer, output_transform=lambda out: {"loss": paired_loss_output_transform(out).get("loss")}
        )


def _check_per_modality_timesteps(model: nn.Module, independent_timestep_prob: float) -> None:
    """Warn when per-modality timesteps train a model whose conditional encoders cannot see them."""
    if independent_timestep_prob > 0 and not getattr(model, "condition_timesteps", True):
        logger.warning(
            "independent_timestep_prob=%s with a model built without condition_timesteps=True: its filters and "
            "CBAMs see each condition's own timestep, its conditional encoders do not.",
            independent_timestep_prob,
        )


def _noise_parts(
    model: nn.Module,
    noise_scheduler: Mapping[str, Any] | None,
    offset_noise_scale: float,
    generator: torch.Generator | None,
    autocast_dtype: torch.dtype | str | None,
    compile_network: bool,
    timestep_options: Mapping[str, float] | None = None,
) -> tuple[dict[str, Any], DDPMScheduler, PairedDiffusionPrepareBatch, PairedNoiseInferer]:
    """The noise scheduler (config and object), the prepare-batch that noises the batch and the training inferer."""
    t_options = dict(timestep_options or {})
    _check_per_modality_timesteps(model, float(t_options.get("independent_timestep_prob", 0.0)))
    sched_cfg = noise_scheduler_config(**dict(noise_scheduler or {}))
    scheduler = create_noise_scheduler(sched_cfg)
    prepare_batch = PairedDiffusionPrepareBatch(
        tuple(model.modalities),
        sched_cfg["num_train_timesteps"],
        offset_noise_scale=offset_noise_scale,
        generator=generator,
        prediction_type=sched_cfg["prediction_type"],
        scheduler=scheduler,
        **t_options,
    )
    # the data is validated where it enters (prepare_batch on CPU batches, DeviceTripletLoader once), so the
    # model's own NaN/Inf check, a host sync on a GPU, is off in training
    inferer = PairedNoiseInferer(
        scheduler, autocast_dtype=autocast_dtype, check_finite=False, compile_network=compile_network
    )
    return sched_cfg, scheduler, prepare_batch, inferer


def _default_optimizer(
    model: nn.Module, lr: float | Mapping[str, float], weight_decay: float | Mapping[str, float]
) -> torch.optim.Optimizer:
    """Per-modality AdamW with one contiguous buffer per denoiser (optimiser, clipping and EMA on ~3 tensors
    instead of ~930); under torch.distributed the parameters stay as they are, for DistributedDataParallel's own
    gradient buckets."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return create_paired_optimizer(model, lr=lr, weight_decay=weight_decay, flat_buffers=not distributed)


def _step_handlers(
    optimizer: torch.optim.Optimizer,
    loss_function: PairedDiffusionLoss,
    perceptual_weight: float,
    perceptual_start_epoch: int,
    grad_clip_norm: float | None,
    grad_clip_per_modality: bool,
) -> tuple[list[Any], LossComponentsHandler, PerceptualWarmup | None, ClipGradNormHandler | None]:
    """The handlers of each optimisation step, in attach order (the gradient gather of a flat-buffer optimiser,
    loss components, the perceptual warm-up, clipping), and the last three of them (``None`` where off)."""
    loss_components = LossComponentsHandler(loss_function)
    handlers: list[Any] = [loss_components]
    if isinstance(
        optimizer, FlatParameterAdamW
    ):  # first on BACKWARD_COMPLETED: before clipping reads the buffers
        handlers.insert(0, GatherGradsHandler(optimizer))
    warmup = None
    if perceptual_weight and float(perceptual_weight) > 0:
        warmup = PerceptualWarmup(perceptual_start_epoch, perceptual_weight, loss_function)
        handlers.append(warmup)
    clipping = None
    if grad_clip_norm is not None:
        clipping = ClipGradNormHandler(grad_clip_norm, per_group=grad_clip_per_modality)
        handlers.append(clipping)
    return handlers, loss_components, warmup, clipping


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
    device, _modalities, specs = _check_trainer_arguments(
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
    sched_cfg, scheduler, prepare_batch, inferer = _noise_parts(
        model, noise_scheduler, offset_noise_scale, generator, autocast_dtype, compile_network, t_options
    )
    if loss_function is None:
        loss_function = PairedDiffusionLoss(
            scheduler,
            prediction_type=sched_cfg["prediction_type"],
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

    handlers, loss_components, warmup, clipping = _step_handlers(
        optimizer,
        loss_function,
        perceptual_weight,
        perceptual_start_epoch,
        grad_clip_norm,
        grad_clip_per_modality,
    )
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
            noise_scheduler=sched_cfg,
            modality_specs=specs,
            spatial_size=spatial_size,
            spacing=spacing,
            data_generator=data_generator,
            every=checkpoint_every,
            keep_epoch_files=keep_epoch_checkpoints,
        )
    show_progress = sys.stderr.isatty() if progress_bar is None else bool(progress_bar)
    handlers.extend(_logging_handlers(stats_log, log_every, show_progress, tensorboard, output_dir))
    handlers.extend(extra_handlers or [])

    trainer = SupervisedTrainer(
        device=device,
        max_epochs=int(max_epochs),
        train_data_loader=train_data_loader,
        network=model,
        optimizer=optimizer,
        loss_function=loss_function,
        epoch_length=epoch_length,
        prepare_batch=prepare_batch,
        inferer=inferer,
        train_handlers=handlers,
        amp=amp,
        amp_kwargs=dict(amp_kwargs or {}),
        decollate=False,
        optim_set_to_none=True,
    )
    _attach_run_handlers(
        trainer, model, train_data_loader, max_minutes, lr_warmup_iters, ema_handler, saver, show_progress
    )
    trainer.paired = PairedTrainingParts(  # type: ignore[attr-defined]
        model=model,
        noise_scheduler=scheduler,
        noise_scheduler_config=sched_cfg,
        prepare_batch=prepare_batch,
        inferer=inferer,
        loss_function=loss_function,
        optimizer=optimizer,
        modality_specs=dict(specs),
        loss_components=loss_components,
        perceptual_warmup=warmup,
        grad_clipping=clipping,
        ema_handler=ema_handler,
        checkpoint_saver=saver,
        data_generator=data_generator,
    )
    if resume_from is not None:
        _resume(trainer, optimizer, resume_from, sched_cfg, ema_handler, prepare_batch, data_generator)
    return trainer
