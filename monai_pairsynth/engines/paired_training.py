"""``train_paired_diffusion``: data -> linked diffusion training -> checkpoint, in one call.

With no data it trains on the built-in phantom at the CPU-sized default (64x64 slices at 4 mm, small widths);
with a datalist it runs this package's preprocessing (:func:`monai_pairsynth.data.preprocessing_transforms`)
first. The trainer itself comes from :func:`~monai_pairsynth.engines.create_paired_trainer`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.data import CacheDataset, Dataset
from monai.data.utils import set_rnd
from monai.transforms import Compose
from monai.utils import set_determinism

from monai_pairsynth.data import (
    EnsureFieldOfViewd,
    NormalizeModalitiesd,
    PhantomDataset,
    augmentation_transforms,
    load_datalist_json,
    preprocess_datalist,
    preprocessing_transforms,
)
from monai_pairsynth.losses import PerceptualMode
from monai_pairsynth.modalities import FOV_KEY, ModalitySpec, resolve_specs, with_field_of_view
from monai_pairsynth.networks import PairedDiffusionModel
from monai_pairsynth.utils import atomic_write_json

from .device_triplet_loader import DeviceTripletLoader
from .paired_data_loader import paired_data_loader
from .paired_trainer import create_paired_trainer

__all__ = [
    "DEFAULT_CPU_MODEL_KWARGS",
    "build_training_dataset",
    "device_training_loader",
    "train_paired_diffusion",
]

logger = logging.getLogger(__name__)

#: the CPU-sized default network (parameter count in docs/training.md).
DEFAULT_CPU_MODEL_KWARGS: dict[str, Any] = {
    "channels": (16, 32, 32),
    "attention_levels": (False, False, True),
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "num_head_channels": 8,
}


def _mask_key(specs: Mapping[str, ModalitySpec]) -> str:
    masks = [m for m, s in specs.items() if s.is_mask]
    if not masks:
        raise ValueError(
            f"preprocessing a datalist needs a mask modality (for slice extraction); specs {sorted(specs)} have none."
        )
    return masks[0]


def build_training_dataset(
    data: Any = None,
    *,
    modality_specs: Sequence[str] | Mapping[str, ModalitySpec | Mapping[str, Any]] = ("ct", "pet", "label"),
    spatial_dims: int = 2,
    spatial_size: Sequence[int] | None = (64, 64),
    spacing: float = 4.0,
    num_cases: int = 32,
    seed: int = 0,
    augment: bool = False,
    data_normalized: bool = False,
    datalist_key: str = "training",
    foreground_values: Sequence[float] | None = None,
    cache: bool = True,
    data_summary: dict[str, Any] | None = None,
    use_fov_mask: bool = False,
) -> Dataset:
    """The training dataset of :func:`train_paired_diffusion`: samples ``{modality: (1, *spatial)}`` in [-1, 1].

    Args:
        data: ``None`` (the phantom: ``num_cases`` cases from seed ``seed``), a datalist JSON path, a datalist
            (list of dicts of file paths, preprocessed with :func:`monai_pairsynth.data.preprocessing_transforms`),
            a list of in-memory sample dicts, or a map-style dataset of sample dicts. In-memory samples are in
            physical units (normalised here) unless ``data_normalized``.
        modality_specs: modality names or ``{name: ModalitySpec}``.
        spatial_dims: 2 (slices) or 3 (volumes).
        spatial_size: phantom size / preprocessing crop size.
        spacing: phantom / preprocessing voxel size in mm.
        num_cases: phantom cases.
        seed: phantom base seed.
        augment: add :func:`monai_pairsynth.data.augmentation_transforms` (random rotation, shift, flip).
        data_normalized: in-memory data is already in [-1, 1].
        datalist_key: list read from a datalist JSON.
        foreground_values: label values merged into the tumour when preprocessing files (HECKTOR: ``(1, 2)``).
        cache: cache the deterministic part in memory (``CacheDataset``).
        data_summary: for files, a dict that receives ``cases``, ``samples`` and ``empty_cases`` (ids of cases
            that gave no slice, also logged), for the run's summary.
        use_fov_mask: every sample carries the field-of-view mask ``"fov"`` ({0, 1}, 1 where every image was
            scanned), which the augmentation moves with the images and the training loss uses to leave out what
            preprocessing padded (:class:`~monai_pairsynth.losses.PairedDiffusionLoss`). Files get it from
            preprocessing (``preprocessing_transforms(fov_key="fov")``); the phantom and in-memory samples without
            one get an all-ones mask (nothing padded). Default off: samples as before, no ``"fov"``.
    """
    specs = resolve_specs(modality_specs)
    keys = list(specs)
    fov_key = FOV_KEY if use_fov_mask else None
    moved = with_field_of_view(specs) if use_fov_mask else specs  # what augmentation moves together
    random_part = (
        [augmentation_transforms(list(moved), spatial_dims=spatial_dims, specs=moved)] if augment else []
    )
    normalize = [] if data_normalized else [NormalizeModalitiesd(keys, specs)]
    if use_fov_mask:
        normalize = [*normalize, EnsureFieldOfViewd(FOV_KEY, reference_key=keys[0])]

    def _files(items: Sequence[Mapping[str, Any]]) -> bool:
        return all(
            isinstance(it, Mapping) and all(isinstance(it.get(k), (str, os.PathLike)) for k in keys)
            for it in items
        )

    if data is None:
        base: Any = PhantomDataset(
            num_cases, base_seed=seed, spatial_dims=spatial_dims, spatial_size=spatial_size, spacing=spacing
        )
        deterministic = normalize
    elif isinstance(data, (str, os.PathLike)) or (isinstance(data, Sequence) and data and _files(data)):
        items = (
            load_datalist_json(data, key=datalist_key, keys=keys)
            if isinstance(data, (str, os.PathLike))
            else data
        )
        prep = preprocessing_transforms(
            keys,
            label_key=_mask_key(specs),
            spacing=spacing,
            spatial_size=spatial_size if spatial_size is not None else (128, 128),
            specs=specs,
            foreground_values=foreground_values,
            extract_slices=spatial_dims == 2,
            fov_key=fov_key,
        )
        base = preprocess_datalist(items, prep, summary=data_summary)  # already normalised to [-1, 1]
        deterministic = []
    elif isinstance(data, Sequence) or hasattr(data, "__getitem__"):
        if len(data) == 0:
            raise ValueError("the training data is empty.")
        base = data
        deterministic = normalize
    else:
        raise ValueError(
            f"data must be None (phantom), a datalist JSON path, a list of dicts or a map-style dataset; got {type(data).__name__}."
        )
    transform = Compose([*deterministic, *random_part])
    if cache:
        return CacheDataset(base, transform=transform, progress=False, copy_cache=bool(random_part))
    return Dataset(base, transform=transform)


def _run_and_summarise(
    trainer: Any,
    output_dir: Path,
    run_config: Mapping[str, Any],
    batch_size: int,
    device: torch.device,
    data_summary: Mapping[str, Any],
) -> Path:
    """Run ``trainer`` (``run_config.json`` first), time every step from its batch fetch, write ``summary.json``
    and return the checkpoint path."""
    step_times: list[tuple[float, float]] = []  # (wall, process CPU) seconds per iteration
    tic: list[float] = [0.0, 0.0]

    @trainer.on(Events.GET_BATCH_STARTED)  # the step time covers the batch fetch too
    def _tic(engine: Any) -> None:
        tic[:] = [time.perf_counter(), time.process_time()]

    @trainer.on(Events.ITERATION_COMPLETED)
    def _toc(engine: Any) -> None:
        step_times.append((time.perf_counter() - tic[0], time.process_time() - tic[1]))

    atomic_write_json(output_dir / "run_config.json", run_config)
    trainer.run()
    steady = step_times[1:] if len(step_times) > 1 else step_times
    summary = {
        "epochs": int(trainer.state.epoch),
        "iterations": int(trainer.state.iteration),
        "iterations_this_run": len(step_times),
        "seconds_per_iteration": sum(w for w, _ in steady) / max(len(steady), 1),
        "cpu_seconds_per_iteration": sum(c for _, c in steady) / max(len(steady), 1),
        "batch_size": batch_size,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "last_epoch_metrics": {k: float(v) for k, v in trainer.state.metrics.items()},
        "checkpoint": str(trainer.paired.checkpoint_saver.last_path),
    }
    if data_summary:  # files: how many cases and slices, and which cases gave none (empty masks)
        summary["data"] = data_summary
    atomic_write_json(output_dir / "summary.json", summary)
    logger.info(
        "trained %d iterations, %.3f s per step; checkpoint %s",
        len(step_times),
        summary["seconds_per_iteration"],
        summary["checkpoint"],
    )
    return Path(summary["checkpoint"])


def _build_model(
    modalities: Sequence[str],
    spatial_dims: int,
    model_kwargs: Mapping[str, Any] | None,
    spatial_size: Sequence[int] | None,
    independent_timestep_prob: float = 0.0,
) -> PairedDiffusionModel:
    """The linked model for :func:`train_paired_diffusion` (CPU-default widths unless ``model_kwargs``), checked
    against the data's spatial size; with per-modality timesteps its encoders take them
    (``condition_timesteps=True``) unless ``model_kwargs`` says otherwise."""
    kwargs = dict(DEFAULT_CPU_MODEL_KWARGS if model_kwargs is None else model_kwargs)
    if independent_timestep_prob > 0:
        kwargs.setdefault("condition_timesteps", True)
    for reserved in ("modalities", "spatial_dims"):
        if reserved in kwargs:
            raise ValueError(f"model_kwargs must not set {reserved!r}: it comes from the data.")
    model = PairedDiffusionModel(modalities, spatial_dims=spatial_dims, **kwargs)
    factor = int(getattr(model, "downsample_factor", 1))
    if spatial_size is not None and any(int(s) % factor for s in spatial_size[:spatial_dims]):
        raise ValueError(
            f"spatial_size {tuple(spatial_size)} is not divisible by {factor}, the UNet's downsampling factor for "
            f"channels {tuple(kwargs.get('channels', ()))}; pick a multiple of {factor}."
        )
    return model


def _training_loader(
    dataset: Any,
    batch_size: int,
    specs: Mapping[str, ModalitySpec],
    device: torch.device,
    seed: int,
    augment: bool,
    device_loader: bool,
    num_workers: int,
    use_fov_mask: bool = False,
) -> Any:
    """A :class:`DeviceTripletLoader` (slices on the device, batched augmentation) or a seeded DataLoader; with
    ``use_fov_mask`` the device loader stacks and augments the ``"fov"`` mask beside the modalities."""
    if device_loader:
        return device_training_loader(
            dataset,
            batch_size,
            use_fov_mask=use_fov_mask,
            modality_specs=specs,
            device=device,
            seed=seed,
            augment=augment,
            drop_last=False,
        )
    return paired_data_loader(dataset, batch_size=batch_size, seed=seed, num_workers=num_workers)


def device_training_loader(
    samples: Any, batch_size: int, *, use_fov_mask: bool = False, **kwargs: Any
) -> DeviceTripletLoader:
    """:meth:`DeviceTripletLoader.from_samples` that, with ``use_fov_mask``, also stacks every sample's ``"fov"``
    mask and moves it with the modalities (the same rotation, shift and flip; nearest, like a mask), so its batches
    hold ``"fov"`` for the loss: the loader is given ``with_field_of_view(modality_specs)``. Without it: exactly
    ``DeviceTripletLoader.from_samples(samples, batch_size, **kwargs)``.

    Example:
        >>> import torch
        >>> samples = [{"ct": torch.zeros(1, 8, 8), "label": -torch.ones(1, 8, 8), "fov": torch.ones(1, 8, 8)}] * 2
        >>> loader = device_training_loader(samples, 2, use_fov_mask=True, modality_specs=["ct", "label"], seed=0)
        >>> sorted(next(iter(loader)))
        ['ct', 'fov', 'label']
    """
    if use_fov_mask and len(samples):
        specs = kwargs.get("modality_specs")
        if specs is None:  # from_samples' default: the default modalities the first sample holds
            specs = DeviceTripletLoader.default_names(samples[0])
        kwargs["modality_specs"] = with_field_of_view(specs)
    return DeviceTripletLoader.from_samples(samples, batch_size, **kwargs)


def train_paired_diffusion(
    output_dir: str | os.PathLike,
    *,
    data: Any = None,
    modality_specs: Sequence[str] | Mapping[str, ModalitySpec | Mapping[str, Any]] = ("ct", "pet", "label"),
    num_cases: int = 32,
    spatial_dims: int = 2,
    spatial_size: Sequence[int] | None = (64, 64),
    spacing: float = 4.0,
    data_normalized: bool = False,
    augment: bool = False,
    epochs: int = 2,
    batch_size: int = 8,
    lr: float | Mapping[str, float] = 2e-4,
    weight_decay: float | Mapping[str, float] = 0.0,
    model_kwargs: Mapping[str, Any] | None = None,
    noise_scheduler: Mapping[str, Any] | None = None,
    offset_noise_scale: float = 0.1,
    independent_timestep_prob: float = 0.0,
    clean_prob: float = 0.5,
    perceptual_weight: float = 0.1,
    perceptual_start_epoch: int = 50,
    perceptual_mode: PerceptualMode | str = PerceptualMode.CROSS_MODAL,
    feature_weights_path: str | os.PathLike | None = None,
    snr_gamma: float | None = None,
    foreground_weight: Mapping[str, float] | None = None,
    use_fov_mask: bool = False,
    amp: bool | None = None,
    autocast_dtype: str | None = None,
    device_loader: bool = False,
    grad_clip_norm: float | None = 1.0,
    ema_momentum: float | None = 1e-3,
    ema_warmup_iters: int | None = 200,
    device: str | torch.device | None = None,
    seed: int = 0,
    deterministic: bool = False,
    num_workers: int = 0,
    resume_from: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    keep_epoch_checkpoints: bool = False,
    log_every: int = 10,
    progress_bar: bool | None = None,
    tensorboard: bool | None = None,
    max_minutes: float | None = None,
) -> Path:
    """Train a ``PairedDiffusionModel`` and return the path of its checkpoint.

    Everything not given takes the CPU-sized default: the phantom (``num_cases`` cases, 64x64 at 4 mm),
    :data:`DEFAULT_CPU_MODEL_KWARGS`, batch 8, AdamW lr 2e-4 per modality, 1000-step linear DDPM with epsilon
    prediction, offset noise 0.1, perceptual weight 0.1 from epoch ``perceptual_start_epoch + 1`` (the paper
    switches it on after epoch 50), gradient clipping at 1, EMA momentum 1e-3. ``output_dir`` receives
    ``checkpoint.pt`` (see :mod:`monai_pairsynth.engines.paired_checkpoint`), ``run_config.json`` and
    ``summary.json`` (iterations, mean wall-clock and process-CPU seconds per training step after the first,
    last epoch's losses).

    Args:
        output_dir: where to write.
        data, modality_specs, num_cases, spatial_dims, spatial_size, spacing, data_normalized, augment: the
            training data, see :func:`build_training_dataset`.
        epochs: total epochs (with ``resume_from``: counting the checkpoint's epochs).
        batch_size: samples per step.
        lr, weight_decay: one value or ``{modality: value}`` (one optimiser param group per modality).
        model_kwargs: ``PairedDiffusionModel`` arguments (default :data:`DEFAULT_CPU_MODEL_KWARGS`; the
            modalities and ``spatial_dims`` come from the data).
        noise_scheduler: :func:`~monai_pairsynth.engines.noise_scheduler_config` keys.
        offset_noise_scale: offset noise std.
        independent_timestep_prob, clean_prob: per-modality timesteps with modalities given clean (see
            :func:`create_paired_trainer`); 0 (default): shared timesteps. With p > 0 the model is built with
            ``condition_timesteps=True`` unless ``model_kwargs`` sets it.
        perceptual_weight, perceptual_start_epoch, perceptual_mode, feature_weights_path: perceptual term
            (weight 0 disables it).
        snr_gamma, foreground_weight: Min-SNR-gamma and foreground-pixel weighting of the loss (see
            :class:`~monai_pairsynth.losses.PairedDiffusionLoss`); ``None``: off.
        use_fov_mask: carry the field-of-view mask with every sample (see :func:`build_training_dataset`), so
            the loss leaves out every pixel a crop padded beyond the scan. Default off.
        amp: mixed precision (MONAI's CUDA autocast + ``GradScaler``); default on for CUDA devices unless
            ``autocast_dtype`` is given.
        autocast_dtype: ``"bfloat16"``: the network under bf16 autocast on any device, no ``GradScaler``
            (see :func:`create_paired_trainer`).
        device_loader: 2D only: materialise the training slices once on ``device`` and augment batches there
            (:class:`~monai_pairsynth.engines.DeviceTripletLoader`) instead of a ``DataLoader`` over
            per-sample transforms (``num_workers`` is then unused).
        grad_clip_norm: gradient-norm clip (``None``: off).
        ema_momentum, ema_warmup_iters: EMA of the weights (``None``: off).
        device: default CUDA if available else CPU.
        seed: seeds the model initialisation, the phantom, the data order and the noise draws.
        deterministic: also ``monai.utils.set_determinism`` (deterministic cuDNN).
        num_workers: ``DataLoader`` workers.
        resume_from: checkpoint to continue (same data and settings give the same result as one run).
        checkpoint_every, keep_epoch_checkpoints: checkpointing.
        log_every, progress_bar, tensorboard: logging (see :func:`create_paired_trainer`).
        max_minutes: stop at the first epoch end past this wall-clock budget (``epochs`` still caps it);
            ``summary.json`` records the epochs and iterations reached.

    Returns:
        path of ``checkpoint.pt`` (EMA and online weights, optimiser, configs).
    """

    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}.")
    output_dir = Path(output_dir)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = (device.type == "cuda" and autocast_dtype is None) if amp is None else bool(amp)
    if device_loader and spatial_dims != 2:
        raise ValueError(f"device_loader needs 2D slices (spatial_dims=2), got spatial_dims={spatial_dims}.")
    specs = resolve_specs(modality_specs)
    modalities = tuple(specs)
    if deterministic:
        set_determinism(seed=seed)
    torch.manual_seed(seed)

    model = _build_model(modalities, spatial_dims, model_kwargs, spatial_size, independent_timestep_prob)

    data_summary: dict[str, Any] = {}
    dataset = build_training_dataset(
        data,
        data_summary=data_summary,
        modality_specs=specs,
        spatial_dims=spatial_dims,
        spatial_size=spatial_size,
        spacing=spacing,
        num_cases=num_cases,
        seed=seed,
        augment=augment and not device_loader,
        data_normalized=data_normalized,
        use_fov_mask=use_fov_mask,
    )
    loader = _training_loader(
        dataset, batch_size, specs, device, seed, augment, device_loader, num_workers, use_fov_mask
    )
    first = dataset[0]
    trained_size = [int(s) for s in first[modalities[0]].shape[1:]]
    generator = torch.Generator(device=device).manual_seed(seed + 1)

    run_config = {
        "data": None
        if data is None
        else (str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__),
        "modality_specs": {m: s.to_dict() for m, s in specs.items()},
        "num_cases": num_cases,
        "spatial_dims": spatial_dims,
        "spatial_size": trained_size,
        "spacing": spacing,
        "augment": augment,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": dict(lr) if isinstance(lr, Mapping) else lr,
        "weight_decay": dict(weight_decay) if isinstance(weight_decay, Mapping) else weight_decay,
        "model_config": model.get_config(),
        "noise_scheduler": dict(noise_scheduler or {}),
        "offset_noise_scale": offset_noise_scale,
        "per_modality_timesteps": {
            "independent_timestep_prob": independent_timestep_prob,
            "clean_prob": clean_prob,
        },
        "perceptual_weight": perceptual_weight,
        "perceptual_start_epoch": perceptual_start_epoch,
        "perceptual_mode": PerceptualMode(perceptual_mode).value,
        "feature_weights_path": None if feature_weights_path is None else str(feature_weights_path),
        "snr_gamma": snr_gamma,
        "foreground_weight": None if foreground_weight is None else dict(foreground_weight),
        "use_fov_mask": bool(use_fov_mask),
        "amp": amp,
        "autocast_dtype": autocast_dtype,
        "device_loader": device_loader,
        "grad_clip_norm": grad_clip_norm,
        "ema_momentum": ema_momentum,
        "ema_warmup_iters": ema_warmup_iters,
        "device": str(device),
        "seed": seed,
        "resume_from": None if resume_from is None else str(resume_from),
        "max_minutes": max_minutes,
    }
    trainer = create_paired_trainer(
        model,
        loader,
        max_epochs=int(epochs),
        device=device,
        lr=lr,
        weight_decay=weight_decay,
        noise_scheduler=noise_scheduler,
        offset_noise_scale=offset_noise_scale,
        independent_timestep_prob=independent_timestep_prob,
        clean_prob=clean_prob,
        generator=generator,
        perceptual_weight=perceptual_weight,
        perceptual_start_epoch=perceptual_start_epoch,
        perceptual_mode=perceptual_mode,
        feature_weights_path=feature_weights_path,
        snr_gamma=snr_gamma,
        foreground_weight=foreground_weight,
        amp=amp,
        autocast_dtype=autocast_dtype,
        grad_clip_norm=grad_clip_norm,
        ema_momentum=ema_momentum,
        ema_warmup_iters=ema_warmup_iters,
        output_dir=output_dir,
        checkpoint_every=checkpoint_every,
        keep_epoch_checkpoints=keep_epoch_checkpoints,
        modality_specs=specs,
        spatial_size=trained_size,
        spacing=spacing,
        log_every=log_every,
        progress_bar=progress_bar,
        tensorboard=tensorboard,
        resume_from=resume_from,
        max_minutes=max_minutes,
    )
    if augment and num_workers == 0 and not device_loader:
        # random augmentation draws per epoch from (seed, epoch), so a resumed run augments like a straight one
        @trainer.on(Events.EPOCH_STARTED)
        def _reseed_transforms(engine: Any) -> None:
            set_rnd(dataset, seed=seed * 100_003 + engine.state.epoch)

    return _run_and_summarise(trainer, output_dir, run_config, batch_size, device, data_summary)
