"""The linked-diffusion ``SupervisedTrainer`` assembled from pre-built components (what a bundle declares).

:func:`assemble_paired_trainer` takes the pieces as objects: the model, the loader, the optimiser, the loss,
the prepare-batch, the training inferer, the step handlers (a list, or a dict by name as MONAI bundles write
them), the EMA handler and the checkpoint saver. It checks that they fit together (one noise scheduler, one
prediction type, one set of modalities, one model), builds an unmodified MONAI ``SupervisedTrainer`` and
attaches what every run needs. :func:`~monai_pairsynth.engines.create_paired_trainer` builds the default
pieces from scalar settings and calls it; the bundle's ``train_diffusion.json`` declares each piece as a
``_target_`` component, so any of them is overridden by its ``#``-path.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from monai_pairsynth.handlers import ClipGradNormHandler, LossComponentsHandler, PerceptualWarmup
from monai_pairsynth.modalities import ModalitySpec, resolve_specs

from .flat_parameters import FlatParameterAdamW, GatherGradsHandler
from .foreach_ema_handler import ForeachEMAHandler
from .paired_checkpoint import (
    PairedCheckpointSaver,
    noise_scheduler_config_of,
    read_paired_checkpoint,
    restore_paired_training,
)

__all__ = [
    "STATS_LOGGER_NAME",
    "PairedTrainingParts",
    "assemble_paired_trainer",
    "skip_redundant_train_calls",
]

#: logger used by the trainer's StatsHandler.
STATS_LOGGER_NAME = "monai_pairsynth.train"

logger = logging.getLogger(__name__)


@dataclass
class PairedTrainingParts:
    """The pieces of a linked-diffusion trainer, available as ``trainer.paired``."""

    model: nn.Module
    noise_scheduler: DDPMScheduler
    noise_scheduler_config: dict[str, Any]
    prepare_batch: Any
    inferer: Any
    loss_function: Any
    optimizer: torch.optim.Optimizer
    modality_specs: dict[str, ModalitySpec]
    loss_components: LossComponentsHandler | None
    perceptual_warmup: PerceptualWarmup | None = None
    grad_clipping: ClipGradNormHandler | None = None
    ema_handler: ForeachEMAHandler | None = None
    checkpoint_saver: PairedCheckpointSaver | None = None
    data_generator: torch.Generator | None = None

    @property
    def ema_model(self) -> nn.Module | None:
        """The EMA copy of the model (the weights sampling should use), or ``None`` without EMA."""
        return None if self.ema_handler is None else self.ema_handler.ema_model


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


def check_run_arguments(
    model: nn.Module, max_epochs: int, device: str | torch.device | None, amp: bool
) -> torch.device:
    """The checks every linked-diffusion trainer makes before building anything; returns the device."""
    for attr in ("modalities", "denoisers", "get_config"):
        if not hasattr(model, attr):
            raise ValueError(
                f"model must be a PairedDiffusionModel (missing {attr!r}), got {type(model).__name__}."
            )
    if isinstance(max_epochs, bool) or int(max_epochs) != max_epochs or max_epochs < 1:
        raise ValueError(f"max_epochs must be an int >= 1, got {max_epochs!r}.")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if amp and device.type != "cuda":
        raise ValueError(
            f"amp=True needs a CUDA device (MONAI autocasts on 'cuda'); got device {str(device)!r}."
        )
    return device


def _mismatch(what: str, first: str, a: Any, second: str, b: Any) -> ValueError:
    verb = "differ" if what == "the modality names" else "differs"
    return ValueError(f"{what} {verb}: {first} has {a!r}, {second} has {b!r}; they must match.")


def _check_noise_parts(
    model: nn.Module, prepare_batch: Any, inferer: Any, loss_function: Any
) -> DDPMScheduler:
    """One noise scheduler, one T, one prediction type, one set of modalities; returns the scheduler."""
    scheduler = getattr(inferer, "scheduler", None)
    if scheduler is None or not hasattr(scheduler, "num_train_timesteps"):
        raise ValueError(
            f"inferer must hold the noise scheduler (a PairedNoiseInferer), got {type(inferer).__name__}."
        )
    steps, prediction = (
        int(scheduler.num_train_timesteps),
        str(getattr(scheduler, "prediction_type", "epsilon")),
    )
    for name, part in (("prepare_batch", prepare_batch), ("loss_function", loss_function)):
        own = getattr(part, "scheduler", None)
        if (
            own is not None
            and own is not scheduler
            and not torch.equal(own.alphas_cumprod, scheduler.alphas_cumprod)
        ):
            raise ValueError(
                f"{name} uses another noise schedule than the inferer's scheduler; give both the same."
            )
        if own is not None and int(own.num_train_timesteps) != steps:
            raise _mismatch(
                "num_train_timesteps", f"{name}'s scheduler", own.num_train_timesteps, "the inferer's", steps
            )
    part_steps = getattr(prepare_batch, "num_train_timesteps", steps)
    if int(part_steps) != steps:
        raise _mismatch("num_train_timesteps", "prepare_batch", part_steps, "the noise scheduler", steps)
    for name, part in (("prepare_batch", prepare_batch), ("loss_function", loss_function)):
        own = getattr(part, "prediction_type", None)
        if own is not None and str(own) != prediction:
            raise _mismatch("prediction_type", name, str(own), "the noise scheduler", prediction)
    names = getattr(prepare_batch, "modalities", None)
    if names is not None and set(names) != set(model.modalities):
        raise _mismatch(
            "the modality names", "prepare_batch", sorted(names), "the model", sorted(model.modalities)
        )
    prob = float(getattr(prepare_batch, "independent_timestep_prob", 0.0) or 0.0)
    if prob > 0 and not getattr(model, "condition_timesteps", True):
        logger.warning(
            "independent_timestep_prob=%s with a model built without condition_timesteps=True: its filters and "
            "CBAMs see each condition's own timestep, its conditional encoders do not.",
            prob,
        )
    return scheduler


def _check_saver(
    saver: PairedCheckpointSaver,
    parts: Mapping[str, Any],
    sched_cfg: Mapping[str, Any],
    modalities: Sequence[str],
) -> None:
    """The checkpoint saver records this trainer's pieces (else its checkpoints would not resume it)."""
    for name, part in parts.items():
        own = getattr(saver, name, None)
        if name == "optimizer" and own is None:
            continue  # the saver takes the engine's optimiser
        if own is not part:
            missing = "is None" if own is None else "is another object"
            raise ValueError(
                f"checkpoint_saver.{name} {missing} than the trainer's {name}: its checkpoints would not "
                f"resume this run; give the saver the trainer's {name}."
            )
    if dict(saver.noise_scheduler) != dict(sched_cfg):
        raise _mismatch(
            "the noise scheduler", "checkpoint_saver", saver.noise_scheduler, "the inferer's", dict(sched_cfg)
        )
    if saver.modality_specs is not None and set(saver.modality_specs) != set(modalities):
        raise _mismatch(
            "the modality names",
            "checkpoint_saver",
            sorted(saver.modality_specs),
            "the model",
            sorted(modalities),
        )


def _step_handlers(optimizer: torch.optim.Optimizer, handlers: Any) -> list[Any]:
    """The handlers to attach, in order: a flat-buffer optimiser's gradient gather first (before clipping reads
    the buffers; added when absent, never droppable), then the given ones (``None`` entries skipped)."""
    items = list(handlers.values()) if isinstance(handlers, Mapping) else list(handlers or [])
    items = [h for h in items if h is not None]
    for h in items:
        if not hasattr(h, "attach"):
            raise ValueError(f"every handler needs an attach(engine) method, got {type(h).__name__}.")
    gathers = [h for h in items if isinstance(h, GatherGradsHandler)]
    for h in gathers:
        if h.optimizer is not optimizer:
            raise ValueError(
                "a GatherGradsHandler in handlers gathers another optimiser's gradients than the trainer's."
            )
    rest = [h for h in items if not isinstance(h, GatherGradsHandler)]
    return ([GatherGradsHandler(optimizer)] if isinstance(optimizer, FlatParameterAdamW) else []) + rest


def _first(handlers: Sequence[Any], kind: type) -> Any:
    return next((h for h in handlers if isinstance(h, kind)), None)


def _resume(trainer: SupervisedTrainer, resume_from: str | os.PathLike, parts: PairedTrainingParts) -> None:
    """Continue ``trainer`` from the checkpoint ``resume_from`` (same noise scheduler required), keeping this
    run's optimiser kernel choice."""
    ckpt = read_paired_checkpoint(resume_from)
    saved_sched = ckpt.get("noise_scheduler") or {}
    if saved_sched != parts.noise_scheduler_config:
        raise ValueError(
            f"resume_from {str(resume_from)!r} was trained with noise scheduler {saved_sched}, "
            f"this trainer uses {parts.noise_scheduler_config}."
        )
    optimizer = parts.optimizer
    kernels = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    restore_paired_training(
        trainer,
        ckpt,
        ema_handler=parts.ema_handler,
        prepare_batch=parts.prepare_batch,
        data_generator=parts.data_generator,
    )
    # load_state_dict restores the saved groups' options, kernel choice included: keep this run's choice
    for group, kernel in zip(optimizer.param_groups, kernels):
        group.update(kernel)
    logger.info("resumed from %s at epoch %d", resume_from, trainer.state.epoch)


def _attach(
    trainer: SupervisedTrainer,
    handlers: Sequence[Any],
    train_data_loader: Iterable,
    ema_handler: ForeachEMAHandler | None,
    saver: PairedCheckpointSaver | None,
) -> None:
    """Attach, in this order: the step handlers, the loader's epoch, the ``train()`` skip, EMA, checkpoints."""
    for handler in handlers:  # after construction: handlers such as LinearLRWarmup read engine.optimizer
        handler.attach(trainer)
    if hasattr(train_data_loader, "set_epoch") and not isinstance(
        train_data_loader, torch.utils.data.DataLoader
    ):
        # e.g. DeviceTripletLoader: its order and augmentation are functions of (seed, epoch), so resume is exact
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: train_data_loader.set_epoch(e.state.epoch))
    skip_redundant_train_calls(trainer.network)
    if ema_handler is not None:
        ema_handler.attach(trainer, name="ema_momentum")
    if saver is not None:
        saver.attach(trainer)  # after EMA: an epoch's checkpoint holds the EMA of its last iteration


def assemble_paired_trainer(
    model: nn.Module,
    train_data_loader: Iterable,
    *,
    optimizer: torch.optim.Optimizer,
    loss_function: Any,
    prepare_batch: Any,
    inferer: Any,
    max_epochs: int,
    device: str | torch.device | None = None,
    handlers: Sequence[Any] | Mapping[str, Any] | None = None,
    ema_handler: ForeachEMAHandler | None = None,
    checkpoint_saver: PairedCheckpointSaver | None = None,
    resume_from: str | os.PathLike | None = None,
    data_generator: torch.Generator | None = None,
    epoch_length: int | None = None,
    amp: bool = False,
    amp_kwargs: Mapping[str, Any] | None = None,
) -> SupervisedTrainer:
    """A MONAI ``SupervisedTrainer`` of a ``PairedDiffusionModel`` from pre-built pieces.

    The pieces must fit together, else a ``ValueError`` names the two that differ: the prepare-batch, the
    inferer and the loss use one noise scheduler (one ``num_train_timesteps``, one ``prediction_type``); the
    prepare-batch draws for the model's modalities; the EMA handler averages ``model``; the checkpoint saver
    records this model, optimiser, EMA, loss, prepare-batch, noise scheduler and loader generator (so its
    checkpoints resume this run) and specs of the model's modalities.

    Attached, in this order: the optimiser's gradient gather when it is a
    :class:`~monai_pairsynth.engines.FlatParameterAdamW` (always, first), ``handlers`` (in their order: a dict
    by name keeps its insertion order), ``set_epoch`` of a loader that is not a ``DataLoader`` (e.g.
    :class:`~monai_pairsynth.engines.DeviceTripletLoader`), the ``train()`` skip
    (:func:`skip_redundant_train_calls`), the EMA, then the checkpoint saver (after the EMA: an epoch's
    checkpoint holds the EMA of its last iteration).

    Args:
        model: a ``PairedDiffusionModel``, already on ``device`` (move it before building the optimiser).
        train_data_loader: yields batches ``{modality: (B, C, *spatial)}`` in [-1, 1].
        optimizer: e.g. :func:`~monai_pairsynth.engines.create_paired_optimizer`.
        loss_function: e.g. :class:`~monai_pairsynth.losses.PairedDiffusionLoss` (moved to ``device``).
        prepare_batch: e.g. :class:`~monai_pairsynth.engines.PairedDiffusionPrepareBatch`.
        inferer: a :class:`~monai_pairsynth.engines.PairedNoiseInferer` (its ``scheduler`` is the run's noise
            scheduler, made by :func:`~monai_pairsynth.engines.create_noise_scheduler`).
        max_epochs: epochs to train (total, counting the epochs of a resumed checkpoint).
        device: training device; default CUDA if available, else CPU.
        handlers: step handlers with ``attach(engine)`` (a list, or a dict by name; ``None`` values skipped),
            e.g. ``LossComponentsHandler``, ``PerceptualWarmup``, ``ClipGradNormHandler``, ``StatsHandler``,
            ``EpochTimeLimit``, ``LinearLRWarmup``, ``TrainingProgressBar``.
        ema_handler: a :class:`~monai_pairsynth.engines.ForeachEMAHandler` of ``model`` (``None``: no EMA).
        checkpoint_saver: a :class:`~monai_pairsynth.engines.PairedCheckpointSaver` (``None``: no checkpoints).
        resume_from: checkpoint to continue from (see :func:`~monai_pairsynth.engines.restore_paired_training`).
        data_generator: the loader's generator (default: ``train_data_loader.generator``), saved for exact
            resume.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        amp, amp_kwargs: mixed precision (CUDA only) of ``SupervisedTrainer``.

    Returns:
        the trainer; ``trainer.paired`` is a :class:`PairedTrainingParts`.

    Example:
        >>> from monai_pairsynth.engines import (PairedDiffusionPrepareBatch, PairedNoiseInferer,
        ...     create_noise_scheduler, create_paired_optimizer)
        >>> from monai_pairsynth.losses import PairedDiffusionLoss
        >>> from monai_pairsynth.networks import PairedDiffusionModel
        >>> model = PairedDiffusionModel(("ct", "pet"), channels=(4, 8), attention_levels=(False, False),
        ...                              norm_num_groups=4)
        >>> scheduler = create_noise_scheduler(num_train_timesteps=100, prediction_type="v_prediction")
        >>> trainer = assemble_paired_trainer(
        ...     model, [{"ct": torch.zeros(1, 1, 8, 8), "pet": torch.zeros(1, 1, 8, 8)}], max_epochs=1, device="cpu",
        ...     optimizer=create_paired_optimizer(model, lr=1e-3, flat_buffers=True),
        ...     loss_function=PairedDiffusionLoss(scheduler),
        ...     prepare_batch=PairedDiffusionPrepareBatch(("ct", "pet"), 100, prediction_type="v_prediction",
        ...                                               scheduler=scheduler),
        ...     inferer=PairedNoiseInferer(scheduler))
        >>> trainer.run()
        >>> trainer.state.iteration, trainer.paired.noise_scheduler_config["prediction_type"]
        (1, 'v_prediction')
    """
    device = check_run_arguments(model, max_epochs, device, amp)
    scheduler = _check_noise_parts(model, prepare_batch, inferer, loss_function)
    sched_cfg = noise_scheduler_config_of(scheduler)
    if ema_handler is not None and getattr(ema_handler, "model", None) is not model:
        raise ValueError(
            "ema_handler averages another model than the trainer's: build it on the trainer's model."
        )
    if data_generator is None:
        data_generator = getattr(train_data_loader, "generator", None)
    if checkpoint_saver is not None:
        parts = {
            "model": model,
            "optimizer": optimizer,
            "ema_handler": ema_handler,
            "loss_function": loss_function,
            "prepare_batch": prepare_batch,
            "data_generator": data_generator,
        }
        _check_saver(checkpoint_saver, parts, sched_cfg, tuple(model.modalities))
    specs = checkpoint_saver.modality_specs if checkpoint_saver is not None else None
    if isinstance(loss_function, nn.Module):
        loss_function = loss_function.to(device)
    step_handlers = _step_handlers(optimizer, handlers)
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
        amp=amp,
        amp_kwargs=dict(amp_kwargs or {}),
        decollate=False,
        optim_set_to_none=True,
    )
    _attach(trainer, step_handlers, train_data_loader, ema_handler, checkpoint_saver)
    trainer.paired = PairedTrainingParts(  # type: ignore[attr-defined]
        model=model,
        noise_scheduler=scheduler,
        noise_scheduler_config=sched_cfg,
        prepare_batch=prepare_batch,
        inferer=inferer,
        loss_function=loss_function,
        optimizer=optimizer,
        modality_specs=dict(specs if specs is not None else resolve_specs(tuple(model.modalities))),
        loss_components=_first(step_handlers, LossComponentsHandler),
        perceptual_warmup=_first(step_handlers, PerceptualWarmup),
        grad_clipping=_first(step_handlers, ClipGradNormHandler),
        ema_handler=ema_handler,
        checkpoint_saver=checkpoint_saver,
        data_generator=data_generator,
    )
    if resume_from is not None:
        _resume(trainer, resume_from, trainer.paired)
    return trainer
