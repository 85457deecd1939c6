"""Checkpoints of linked diffusion training: self-describing, atomic, and exact to resume from.

A checkpoint is a ``dict`` written with :func:`monai_pairsynth.utils.atomic_save_torch` and readable with
``torch.load(weights_only=True)``::

    format, version              "monai_pairsynth.paired_diffusion_checkpoint", 1
    model_class, model_config    "PairedDiffusionModel", model.get_config()  (rebuilds the model)
    model, ema_model             state dicts (ema_model: the EMA weights used for sampling, or None)
    noise_scheduler              {"num_train_timesteps", "schedule", "prediction_type", "schedule_args"}
    offset_noise_scale           offset noise std used in training (samplers start from the same noise law)
    per_modality_timesteps       {"independent_timestep_prob", "clean_prob"} of the prepare-batch: p > 0 means the
                                 model learnt modalities given clean at t = 0, so conditional sampling feeds them
                                 so (absent in checkpoints written before the option: shared timesteps only)
    modality_specs               {modality: ModalitySpec.to_dict()}
    spatial_size, spacing        training grid (e.g. [64, 64], 4.0 mm)
    optimizer, scaler            optimiser state (per-modality param groups) and AMP GradScaler state
    trainer                      {"epoch", "iteration", "epoch_length", "max_epochs"}
    perceptual_weight            loss weight in force when saved
    ema                          {"momentum_event_index": ...} (EMA warm-up position)
    rng                          torch (and CUDA) global RNG, prepare-batch and data-loader generators

:func:`load_paired_checkpoint` rebuilds the model from its own config; :func:`load_paired_weights` refuses
a model of another configuration with a message naming every mismatching key;
:func:`restore_paired_training` puts a new trainer exactly where the saved one stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.networks.schedulers import DDPMScheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType
from monai.networks.schedulers.scheduler import NoiseSchedules
from torch import nn

from monai_pairsynth.modalities import ModalitySpec, resolve_specs
from monai_pairsynth.networks import PairedDiffusionModel
from monai_pairsynth.utils import atomic_save_torch, state_dict_mismatch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "PairedCheckpointSaver",
    "build_paired_checkpoint",
    "check_model_config",
    "create_noise_scheduler",
    "export_sampling_checkpoint",
    "load_paired_checkpoint",
    "load_paired_weights",
    "noise_scheduler_config",
    "noise_scheduler_config_of",
    "read_paired_checkpoint",
    "restore_paired_training",
    "save_paired_checkpoint",
]

CHECKPOINT_FORMAT = "monai_pairsynth.paired_diffusion_checkpoint"
CHECKPOINT_VERSION = 1
_MODEL_CLASS = "PairedDiffusionModel"

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# noise scheduler config
# ----------------------------------------------------------------------------------------------------------------
def noise_scheduler_config(
    num_train_timesteps: int = 1000,
    schedule: str = "linear_beta",
    prediction_type: str = DDPMPredictionType.EPSILON,
    schedule_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validated, JSON-serialisable description of the DDPM noise schedule of a training run.

    Args:
        num_train_timesteps: T (>= 1).
        schedule: a MONAI ``NoiseSchedules`` name (``"linear_beta"``, ``"scaled_linear_beta"``,
            ``"sigmoid_beta"``, ``"cosine"``).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        schedule_args: extra arguments of the schedule function (e.g. ``{"beta_start": 1e-4, "beta_end": 0.02}``).

    Example:
        >>> noise_scheduler_config(500, "scaled_linear_beta")["num_train_timesteps"]
        500
    """
    if (
        isinstance(num_train_timesteps, bool)
        or int(num_train_timesteps) != num_train_timesteps
        or num_train_timesteps < 1
    ):
        raise ValueError(f"num_train_timesteps must be an int >= 1, got {num_train_timesteps!r}.")
    if schedule not in NoiseSchedules:
        raise ValueError(f"schedule must be one of {sorted(NoiseSchedules.components)}, got {schedule!r}.")
    allowed = [p.value for p in DDPMPredictionType]
    if prediction_type not in allowed:
        raise ValueError(f"prediction_type must be one of {allowed}, got {prediction_type!r}.")
    return {
        "num_train_timesteps": int(num_train_timesteps),
        "schedule": str(schedule),
        "prediction_type": str(DDPMPredictionType(prediction_type).value),
        "schedule_args": dict(schedule_args or {}),
    }


def create_noise_scheduler(config: Mapping[str, Any] | None = None, **overrides: Any) -> DDPMScheduler:
    """A MONAI ``DDPMScheduler`` from a :func:`noise_scheduler_config` dict (``None``: the defaults).

    Keyword ``overrides`` replace single keys of ``config`` (a bundle can set ``prediction_type`` alone). The
    validated config is kept on the scheduler as ``noise_scheduler_config``, which checkpoints record (see
    :func:`noise_scheduler_config_of`).

    Example:
        >>> create_noise_scheduler({"num_train_timesteps": 50}).num_train_timesteps
        50
        >>> create_noise_scheduler(None, schedule="cosine").noise_scheduler_config["schedule"]
        'cosine'
    """
    cfg = noise_scheduler_config(**{**dict(config or {}), **overrides})
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg["num_train_timesteps"],
        schedule=cfg["schedule"],
        prediction_type=cfg["prediction_type"],
        **cfg["schedule_args"],
    )
    scheduler.noise_scheduler_config = cfg
    return scheduler


def noise_scheduler_config_of(scheduler: Any) -> dict[str, Any]:
    """The :func:`noise_scheduler_config` dict of a noise scheduler (what a checkpoint records).

    A scheduler made by :func:`create_noise_scheduler` carries it; for another MONAI ``DDPMScheduler`` it is
    recovered from ``num_train_timesteps``, ``prediction_type`` and the betas of a named schedule with its
    default arguments. A mapping is validated and returned as a config.

    Raises:
        ValueError: naming the scheduler when its schedule cannot be told (build it with
            :func:`create_noise_scheduler`).

    Example:
        >>> noise_scheduler_config_of(DDPMScheduler(20, schedule="cosine"))["schedule"]
        'cosine'
    """
    if isinstance(scheduler, Mapping):
        return noise_scheduler_config(**dict(scheduler))
    tagged = getattr(scheduler, "noise_scheduler_config", None)
    if isinstance(tagged, Mapping):
        return noise_scheduler_config(**dict(tagged))
    betas = getattr(scheduler, "betas", None)
    steps = getattr(scheduler, "num_train_timesteps", None)
    prediction = getattr(scheduler, "prediction_type", DDPMPredictionType.EPSILON)
    if isinstance(betas, torch.Tensor) and isinstance(steps, int):
        for name in NoiseSchedules.components:
            cfg = noise_scheduler_config(steps, name, prediction)
            if torch.allclose(create_noise_scheduler(cfg).betas, betas):
                return cfg
    raise ValueError(
        f"cannot tell the schedule of the noise scheduler {type(scheduler).__name__} (for its checkpoints): "
        "build it with monai_pairsynth.engines.create_noise_scheduler."
    )


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def _rng_state(prepare_batch: Any = None, data_generator: torch.Generator | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(prepare_batch, "generator", None)
    if isinstance(gen, torch.Generator):
        state["prepare_batch"] = gen.get_state()
    if isinstance(data_generator, torch.Generator):
        state["data"] = data_generator.get_state()
    return state


def _per_modality_timesteps(prepare_batch: Any) -> dict[str, float] | None:
    """How the run drew timesteps (``None`` without a prepare-batch that tells)."""
    prob = getattr(prepare_batch, "independent_timestep_prob", None)
    if prob is None:
        return None
    return {"independent_timestep_prob": float(prob), "clean_prob": float(prepare_batch.clean_prob)}


def build_paired_checkpoint(
    model: nn.Module,
    *,
    ema_model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any | None = None,
    engine: Engine | None = None,
    noise_scheduler: Mapping[str, Any] | None = None,
    modality_specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    spatial_size: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    loss_function: Any | None = None,
    prepare_batch: Any | None = None,
    ema_handler: Any | None = None,
    data_generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (see the module docstring for its layout).

    Args:
        model: the online model; must have ``get_config()`` (a ``PairedDiffusionModel``).
        ema_model: EMA copy of the model (default: ``ema_handler.ema_model`` if given).
        optimizer, scaler: optimiser and AMP ``GradScaler`` (scaler default: ``engine.scaler``).
        engine: the trainer; its epoch/iteration are stored.
        noise_scheduler: :func:`noise_scheduler_config` dict of the run.
        modality_specs: specs of the modalities (default: the package defaults for the model's modalities).
        spatial_size, spacing: training grid.
        loss_function: its ``perceptual_weight`` is stored.
        prepare_batch: its ``generator`` state, ``offset_noise_scale`` and per-modality-timestep options
            (``independent_timestep_prob``, ``clean_prob``) are stored.
        ema_handler: ignite ``EMAHandler``; its EMA model and warm-up position are stored.
        data_generator: the ``DataLoader``'s generator (shuffling order), stored for exact resume.
    """
    if not hasattr(model, "get_config"):
        raise ValueError(
            f"model must provide get_config() (a PairedDiffusionModel), got {type(model).__name__}."
        )
    config = _jsonable(model.get_config())
    if ema_model is None and ema_handler is not None:
        ema_model = ema_handler.ema_model
    if scaler is None and engine is not None:
        scaler = getattr(engine, "scaler", None)
    modalities = list(config.get("modalities", []))
    specs = resolve_specs(modality_specs if modality_specs is not None else modalities)
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_class": _MODEL_CLASS,
        "model_config": config,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema_model": None
        if ema_model is None
        else {k: v.detach().cpu() for k, v in ema_model.state_dict().items()},
        "noise_scheduler": noise_scheduler_config(**dict(noise_scheduler or {})),
        "modality_specs": {m: s.to_dict() for m, s in specs.items()},
        "spatial_size": None if spatial_size is None else [int(s) for s in spatial_size],
        "spacing": None if spacing is None else _jsonable(spacing),
        "offset_noise_scale": None
        if getattr(prepare_batch, "offset_noise_scale", None) is None
        else float(prepare_batch.offset_noise_scale),
        "per_modality_timesteps": _per_modality_timesteps(prepare_batch),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "trainer": None,
        "perceptual_weight": None if loss_function is None else float(loss_function.perceptual_weight),
        "ema": None,
        "rng": _rng_state(prepare_batch, data_generator),
    }
    if engine is not None:
        ckpt["trainer"] = {
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "epoch_length": engine.state.epoch_length,
            "max_epochs": engine.state.max_epochs,
        }
    if ema_handler is not None:
        sched = getattr(ema_handler, "momentum_scheduler", None)
        ckpt["ema"] = {
            "momentum": float(ema_handler.momentum),
            "momentum_event_index": None if sched is None else int(sched.event_index),
        }
    return ckpt


def save_paired_checkpoint(path: str | os.PathLike, model: nn.Module, **kwargs: Any) -> Path:
    """Write :func:`build_paired_checkpoint` ``(model, **kwargs)`` to ``path`` atomically; returns the path."""
    return atomic_save_torch(build_paired_checkpoint(model, **kwargs), path)


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------
def read_paired_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load`` a checkpoint of this package (``weights_only=True``) with clear errors.

    Raises:
        FileNotFoundError: naming the path if it does not exist.
        ValueError: if the file is unreadable or not a paired diffusion checkpoint of a known version.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(p)!r}.")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read checkpoint {str(p)!r}: {e}") from e
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(p)!r} is not a monai_pairsynth paired diffusion checkpoint (no format tag {CHECKPOINT_FORMAT!r})."
        )
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(p)!r} has version {ckpt.get('version')!r}; this package reads version {CHECKPOINT_VERSION}."
        )
    return dict(ckpt)


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def _fmt(value: Any) -> str:
    return repr(_as_tuples(value))


def check_model_config(model: nn.Module, checkpoint: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Raise ``ValueError`` naming every key where ``model.get_config()`` differs from the checkpoint's config.

    Example message: ``channels: checkpoint (32, 64, 64) vs model (8, 16); norm_num_groups: checkpoint 8 vs
    model 4``.
    """
    if not hasattr(model, "get_config"):
        raise ValueError(
            f"model must provide get_config() (a PairedDiffusionModel), got {type(model).__name__}."
        )
    saved = _jsonable(checkpoint.get("model_config") or {})
    current = _jsonable(model.get_config())
    diffs = [
        f"{k}: {source} {_fmt(saved.get(k, '<absent>'))} vs model {_fmt(current.get(k, '<absent>'))}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k, "<absent>") != current.get(k, "<absent>")
    ]
    if diffs:
        raise ValueError(
            f"the {source} was written for a model of another configuration: " + "; ".join(diffs) + "."
        )


def _load_state(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    problem = state_dict_mismatch(module.state_dict(), state, "checkpoint", "model")
    if problem:
        raise ValueError(f"{what} weights do not fit the model: {problem}.")
    module.load_state_dict(state)


def load_paired_weights(
    model: nn.Module, checkpoint: Mapping[str, Any] | str | os.PathLike, use_ema: bool = False
) -> nn.Module:
    """Load the (EMA) weights of a checkpoint into an existing model after checking its configuration.

    Args:
        model: a ``PairedDiffusionModel`` of the checkpoint's configuration.
        checkpoint: a checkpoint dict or its path.
        use_ema: load the EMA weights (falls back to the online weights, with a log line, if the run kept
            no EMA).

    Raises:
        ValueError: naming every mismatching configuration key (or state-dict key / shape).
    """
    ckpt = read_paired_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    check_model_config(model, ckpt)
    key = "ema_model" if use_ema and ckpt.get("ema_model") is not None else "model"
    if use_ema and key == "model":
        if ckpt.get("rng") is None:  # a slim sampling export: its "model" already holds the exported weights
            logger.debug(
                "sampling checkpoint (export_sampling_checkpoint): loading its weights, the EMA weights when "
                "the training run kept them."
            )
        else:
            logger.info("checkpoint holds no EMA weights; loading the online model weights.")
    _load_state(model, ckpt[key], "EMA" if key == "ema_model" else "model")
    return model


def load_paired_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", use_ema: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with and load its weights.

    Args:
        path: checkpoint file.
        map_location: as in ``torch.load``; the model is moved there too when it is a device.
        use_ema: load the EMA weights (the ones sampling should use); falls back to the online weights if
            the run kept no EMA.

    Returns:
        ``(model, checkpoint)``: the model in eval mode, and the checkpoint dict (noise scheduler config,
        modality specs, spatial size, spacing, ...).
    """
    ckpt = read_paired_checkpoint(path, map_location=map_location)
    if ckpt.get("model_class") != _MODEL_CLASS:
        raise ValueError(
            f"checkpoint {str(path)!r} holds a {ckpt.get('model_class')!r}, not a {_MODEL_CLASS}."
        )
    model = PairedDiffusionModel(**ckpt["model_config"])
    load_paired_weights(model, ckpt, use_ema=use_ema)
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    model.eval()
    return model, ckpt


# ----------------------------------------------------------------------------------------------------------------
# resume
# ----------------------------------------------------------------------------------------------------------------
def restore_paired_training(
    trainer: Any,
    checkpoint: Mapping[str, Any] | str | os.PathLike,
    *,
    ema_handler: Any | None = None,
    prepare_batch: Any | None = None,
    data_generator: torch.Generator | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Put a freshly built trainer where a saved one stopped (call before ``trainer.run()``).

    Restores the model weights (configuration checked), the EMA weights and EMA warm-up position, the
    optimiser state, epoch and iteration, the global torch (and CUDA) RNG, the prepare-batch and data-loader
    generators, and, when the run starts (``Events.STARTED``, after MONAI's ``Trainer.run`` has created its
    ``GradScaler``), the AMP scaler state. With deterministic settings, ``N`` epochs straight and ``k`` epochs
    + resume + ``N - k`` epochs give the same weights. The perceptual weight follows from the epoch through
    :class:`~monai_pairsynth.handlers.PerceptualWarmup`. Random augmentation transforms are reseeded per
    epoch by :func:`~monai_pairsynth.engines.train_paired_diffusion`.

    Args:
        trainer: a MONAI ``SupervisedTrainer`` (``network``, ``optimizer``, ``state``).
        checkpoint: checkpoint dict or path.
        ema_handler: ignite ``EMAHandler`` attached to ``trainer``.
        prepare_batch: the trainer's prepare-batch (its ``generator`` is restored).
        data_generator: the ``DataLoader``'s generator.
        restore_rng: restore the global torch/CUDA RNG states.

    Returns:
        the checkpoint dict.

    Raises:
        ValueError: if the model configuration differs, or the checkpoint has already reached the
            trainer's ``max_epochs``.
    """
    ckpt = (
        read_paired_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else dict(checkpoint)
    )
    # validate everything before changing anything
    check_model_config(trainer.network, ckpt)
    state = ckpt.get("trainer") or {}
    epoch = int(state.get("epoch", 0))
    if epoch >= trainer.state.max_epochs:
        raise ValueError(
            f"the checkpoint is at epoch {epoch}, the trainer's max_epochs is {trainer.state.max_epochs}: "
            "ask for more epochs to continue training."
        )
    if ema_handler is not None and ckpt.get("ema_model") is None:
        raise ValueError("the checkpoint holds no EMA weights, but the trainer keeps an EMA model.")
    if trainer.optimizer is not None and ckpt.get("optimizer") is not None:
        saved_groups = [len(g["params"]) for g in ckpt["optimizer"]["param_groups"]]
        # (from the state dict: an optimiser over flat buffers reports its groups in the per-parameter layout)
        own_groups = [len(g["params"]) for g in trainer.optimizer.state_dict()["param_groups"]]
        if saved_groups != own_groups:
            raise ValueError(
                f"the optimiser state of the checkpoint has param groups of sizes {saved_groups}, the trainer's "
                f"optimiser {own_groups}."
            )
    load_paired_weights(trainer.network, ckpt, use_ema=False)
    if ema_handler is not None:
        _load_state(ema_handler.ema_model, ckpt["ema_model"], "EMA")
        sched = getattr(ema_handler, "momentum_scheduler", None)
        ema_state = ckpt.get("ema") or {}
        if sched is not None and ema_state.get("momentum_event_index") is not None:
            sched.event_index = int(ema_state["momentum_event_index"])
    if ckpt.get("optimizer") is not None:
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.state.epoch = epoch
    trainer.state.iteration = int(state.get("iteration", 0))
    rng = ckpt.get("rng") or {}
    if restore_rng:
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    gen = getattr(prepare_batch, "generator", None)
    if isinstance(gen, torch.Generator) and "prepare_batch" in rng:
        gen.set_state(rng["prepare_batch"].cpu())
    if isinstance(data_generator, torch.Generator) and "data" in rng:
        data_generator.set_state(rng["data"].cpu())
    scaler_state = ckpt.get("scaler")
    if scaler_state is not None:

        def _restore_scaler(engine: Any) -> None:
            if getattr(engine, "scaler", None) is not None:
                engine.scaler.load_state_dict(scaler_state)

        trainer.add_event_handler(Events.STARTED, _restore_scaler)
    return ckpt


# ----------------------------------------------------------------------------------------------------------------
# handler
# ----------------------------------------------------------------------------------------------------------------
class PairedCheckpointSaver:
    """Ignite handler writing :func:`save_paired_checkpoint` files during training (atomically).

    Writes ``save_dir / filename`` (overwritten) every ``every`` epochs and at the end of the run; with
    ``keep_epoch_files`` also ``checkpoint_epoch{N:04d}.pt`` copies. The AMP scaler is taken from the engine
    at save time.

    Args:
        save_dir: output folder (created).
        model: the online ``PairedDiffusionModel``.
        optimizer: the trainer's optimiser.
        ema_handler: ignite ``EMAHandler`` (its EMA model and warm-up position are saved).
        loss_function: its ``perceptual_weight`` is saved.
        prepare_batch: its generator state is saved.
        noise_scheduler: :func:`noise_scheduler_config` dict, or the noise scheduler itself (see
            :func:`noise_scheduler_config_of`).
        modality_specs: specs of the modalities.
        spatial_size, spacing: training grid.
        data_generator: the ``DataLoader``'s generator.
        every: epochs between saves (>= 1).
        filename: name of the rolling checkpoint.
        keep_epoch_files: also keep one file per saved epoch.

    Example:
        >>> import tempfile, torch
        >>> from ignite.engine import Engine
        >>> from monai_pairsynth.networks import PairedDiffusionModel
        >>> model = PairedDiffusionModel(("ct", "pet"), channels=(4, 8), attention_levels=(False, False),
        ...                              norm_num_groups=4)
        >>> engine = Engine(lambda e, b: None)
        >>> saver = PairedCheckpointSaver(tempfile.mkdtemp(), model, every=1)
        >>> saver.attach(engine)
        >>> _ = engine.run([0], max_epochs=2)
        >>> read_paired_checkpoint(saver.last_path)["trainer"]["epoch"]
        2
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        ema_handler: Any | None = None,
        loss_function: Any | None = None,
        prepare_batch: Any | None = None,
        noise_scheduler: Mapping[str, Any] | DDPMScheduler | None = None,
        modality_specs: Mapping[str, Any] | Sequence[str] | None = None,
        spatial_size: Sequence[int] | None = None,
        spacing: float | Sequence[float] | None = None,
        data_generator: torch.Generator | None = None,
        every: int = 1,
        filename: str = "checkpoint.pt",
        keep_epoch_files: bool = False,
    ) -> None:
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}.")
        if not filename or os.sep in filename or (os.altsep and os.altsep in filename):
            raise ValueError(f"filename must be a plain file name, got {filename!r}.")
        self.save_dir = Path(save_dir)
        self.model = model
        self.optimizer = optimizer
        self.ema_handler = ema_handler
        self.loss_function = loss_function
        self.prepare_batch = prepare_batch
        self.noise_scheduler = noise_scheduler_config_of(
            noise_scheduler if noise_scheduler is not None else {}
        )
        self.modality_specs = None if modality_specs is None else resolve_specs(modality_specs)
        self.spatial_size = spatial_size
        self.spacing = spacing
        self.data_generator = data_generator
        self.every = int(every)
        self.filename = filename
        self.keep_epoch_files = keep_epoch_files
        self.last_path: Path | None = None
        self._saved_at: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _final(self, engine: Engine) -> None:
        if self._saved_at != engine.state.iteration:
            self(engine)

    def __call__(self, engine: Engine) -> None:
        ckpt = build_paired_checkpoint(
            self.model,
            optimizer=self.optimizer if self.optimizer is not None else getattr(engine, "optimizer", None),
            engine=engine,
            noise_scheduler=self.noise_scheduler,
            modality_specs=self.modality_specs,
            spatial_size=self.spatial_size,
            spacing=self.spacing,
            loss_function=self.loss_function,
            prepare_batch=self.prepare_batch,
            ema_handler=self.ema_handler,
            data_generator=self.data_generator,
        )
        self.last_path = atomic_save_torch(ckpt, self.save_dir / self.filename)
        if self.keep_epoch_files:
            atomic_save_torch(ckpt, self.save_dir / f"checkpoint_epoch{engine.state.epoch:04d}.pt")
        self._saved_at = engine.state.iteration


def export_sampling_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, use_ema: bool = True, half: bool = False
) -> Path:
    """Write a slim copy of a training checkpoint that holds only what sampling needs.

    The weights sampling should use (the EMA weights when the run kept them) become the checkpoint's
    ``model``; optimiser, scaler, RNG and EMA-handler state are dropped, so the file is about a quarter of the
    training checkpoint. It still rebuilds its own model with :func:`load_paired_checkpoint`; it cannot
    resume training.

    Args:
        src: training checkpoint.
        dst: output file (written atomically).
        use_ema: take the EMA weights if present.
        half: store floating-point weights as float16 (they are cast back to float32 on load).
    """
    ckpt = read_paired_checkpoint(src)
    weights = ckpt.get("ema_model") if use_ema and ckpt.get("ema_model") is not None else ckpt["model"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    slim = {
        k: v for k, v in ckpt.items() if k not in ("optimizer", "scaler", "rng", "ema", "ema_model", "model")
    }
    slim["model"] = weights
    slim["ema_model"] = None
    slim["optimizer"] = slim["scaler"] = slim["rng"] = slim["ema"] = None
    return atomic_save_torch(slim, dst)
