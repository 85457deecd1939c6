"""Helpers of :class:`~monai_pairsynth.inferers.PairedDiffusionInferer`: mixed-precision dtypes, timestep setup with
``strength``, which schedulers step deterministically, and the strided replacement of MONAI's DDPM/DDIM.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import torch
from monai.data import MetaTensor
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

from monai_pairsynth.modalities import ModalitySpec
from monai_pairsynth.schedulers import (
    DPMSolverMultistepScheduler,
    StridedDDIMScheduler,
    StridedDDPMScheduler,
    num_steps_for_strength,
)

__all__ = [
    "CONDITIONING_MODES",
    "AmpDtype",
    "check_conditioning",
    "draw_seeds",
    "prepare_input",
    "resolve_conditioning",
]

logger = logging.getLogger("monai_pairsynth.inferers.paired_diffusion_inferer")

#: ``PairedDiffusionInferer.sample(conditioning=...)``: how known modalities enter ("auto" picks "clean" for a
#: model trained with per-modality timesteps, else "clamp").
CONDITIONING_MODES = ("auto", "clean", "clamp")


class AmpDtype(str, Enum):
    """Mixed-precision dtypes accepted by :meth:`PairedDiffusionInferer.sample` (CUDA only)."""

    BF16 = "bf16"
    FP16 = "fp16"


_AMP_ALIASES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def _resolve_amp_dtype(amp_dtype: torch.dtype | str | None) -> torch.dtype | None:
    if amp_dtype is None:
        return None
    if isinstance(amp_dtype, torch.dtype):
        if amp_dtype in (torch.bfloat16, torch.float16):
            return amp_dtype
    elif isinstance(amp_dtype, str):
        key = amp_dtype.value if isinstance(amp_dtype, AmpDtype) else amp_dtype.lower()
        if key in _AMP_ALIASES:
            return _AMP_ALIASES[key]
    raise ValueError(
        f"amp_dtype must be None, torch.bfloat16, torch.float16 or one of {sorted(_AMP_ALIASES)}, got {amp_dtype!r}."
    )


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class _null_context:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: Any) -> None:
        return None


def _set_timesteps(
    scheduler: Scheduler, num_inference_steps: int, device: torch.device, strength: float
) -> None:
    params = inspect.signature(scheduler.set_timesteps).parameters
    if "strength" in params:
        scheduler.set_timesteps(num_inference_steps, device=device, strength=strength)
        return
    scheduler.set_timesteps(num_inference_steps, device=device)
    if (
        strength < 1.0
    ):  # a stateless scheduler of another library: keep the last `strength` fraction of the steps
        keep = num_steps_for_strength(len(scheduler.timesteps), strength)
        scheduler.timesteps = scheduler.timesteps[len(scheduler.timesteps) - keep :]


def _has_deterministic_step(scheduler: Scheduler) -> bool:
    """Whether ``step`` draws no noise, so that a whole batch can share one scheduler instance.

    DDIM (called with ``eta = 0``) and DPM-Solver++ are deterministic; DDPM, and any scheduler this package
    does not know, are stepped sample by sample with each sample's own generator.
    """
    if isinstance(scheduler, DDPMScheduler):
        return False
    return isinstance(scheduler, (DDIMScheduler, DPMSolverMultistepScheduler))


def _strided_equivalent(scheduler: Scheduler) -> Scheduler:
    """Replace an instance of MONAI's own ``DDPMScheduler`` / ``DDIMScheduler`` by the corrected strided class.

    MONAI 1.6 steps to the wrong previous timestep when ``num_inference_steps < num_train_timesteps``
    (see :mod:`monai_pairsynth.schedulers.strided`). The replacement has the same options and the very same
    noise-schedule tables (copied, so custom schedules carry over); any other scheduler is returned as is.
    """
    if type(scheduler) is DDPMScheduler:
        fixed: Scheduler = StridedDDPMScheduler(
            num_train_timesteps=scheduler.num_train_timesteps,
            variance_type=scheduler.variance_type,
            clip_sample=scheduler.clip_sample,
            prediction_type=scheduler.prediction_type,
            clip_sample_min=scheduler.clip_sample_values[0],
            clip_sample_max=scheduler.clip_sample_values[1],
        )
    elif type(scheduler) is DDIMScheduler:
        set_alpha_to_one = bool(float(scheduler.final_alpha_cumprod) == 1.0)
        fixed = StridedDDIMScheduler(
            num_train_timesteps=scheduler.num_train_timesteps,
            clip_sample=scheduler.clip_sample,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=scheduler.steps_offset,
            prediction_type=scheduler.prediction_type,
            clip_sample_min=scheduler.clip_sample_values[0],
            clip_sample_max=scheduler.clip_sample_values[1],
        )
        fixed.final_alpha_cumprod = scheduler.final_alpha_cumprod.clone()
    else:
        return scheduler
    fixed.betas = scheduler.betas.detach().cpu().float().clone()
    fixed.alphas = scheduler.alphas.detach().cpu().float().clone()
    fixed.alphas_cumprod = scheduler.alphas_cumprod.detach().cpu().float().clone()
    for cache in ("_abar64", "_sqrt_table_cache"):  # tables derived from alphas_cumprod are rebuilt lazily
        fixed.__dict__.pop(cache, None)
    return fixed


def check_conditioning(
    known: Mapping[str, Any] | None,
    seed_sample: Mapping[str, Any] | None,
    strength: float,
    modalities: tuple[str, ...],
) -> dict[str, Any]:
    """Check ``known`` and ``seed_sample`` against the model's modalities (and ``strength`` < 1 needs a seed);
    returns ``known`` as a dict."""
    if known is not None and not isinstance(known, Mapping):
        raise ValueError(f"known must be a dict {{modality: tensor}}, got {type(known).__name__}.")
    known = dict(known or {})
    unknown = [k for k in known if k not in modalities]
    if unknown:
        raise ValueError(
            f"known has unknown modality {unknown}; the model's modalities are {list(modalities)}."
        )
    if len(known) == len(modalities):
        raise ValueError(
            f"known covers every modality {list(modalities)}: nothing is left to generate; leave at least one out."
        )
    if seed_sample is not None:
        if not isinstance(seed_sample, Mapping):
            raise ValueError(
                f"seed_sample must be a dict {{modality: tensor}}, got {type(seed_sample).__name__}."
            )
        missing = [m for m in modalities if m not in seed_sample]
        if missing:
            raise ValueError(
                f"seed_sample is missing modality {missing}; it needs every modality of the model "
                f"{list(modalities)} (got keys {list(seed_sample)})."
            )
    elif strength < 1.0:
        raise ValueError(f"strength={strength} < 1 needs a seed_sample to start from.")
    return known


def resolve_conditioning(
    conditioning: str, known: Mapping[str, Any], clean_conditioning: bool, net: Any
) -> str | None:
    """How ``known`` modalities enter a sampling run: ``"clean"`` (at t = 0), ``"clamp"`` (replaced by the data
    noised to the current level) or ``None`` (nothing known). Logs the choice (logger of the inferer).

    Args:
        conditioning: ``"auto"``, ``"clean"`` or ``"clamp"`` (``"auto"``: ``"clean"`` when
            ``clean_conditioning``, else ``"clamp"``).
        known: the known modalities.
        clean_conditioning: whether the model was trained with per-modality timesteps and clean modalities.
        net: the (unwrapped) model; ``"clean"`` needs one whose forward takes per-modality timesteps and
            ``predict=`` (a ``PairedDiffusionModel``).

    Example:
        >>> resolve_conditioning("auto", {"label": None}, False, None), resolve_conditioning("auto", {}, True, None)
        ('clamp', None)
    """
    if conditioning not in CONDITIONING_MODES:
        raise ValueError(f"conditioning must be one of {list(CONDITIONING_MODES)}, got {conditioning!r}.")
    if not known:
        return None
    mode = ("clean" if clean_conditioning else "clamp") if conditioning == "auto" else conditioning
    if mode == "clean":
        if not hasattr(net, "condition_timesteps"):
            raise ValueError(
                "conditioning='clean' needs a PairedDiffusionModel (per-modality timesteps and predict=), "
                f"got {type(net).__name__}."
            )
        if not clean_conditioning:
            warnings.warn(
                "conditioning='clean' on a model that was not trained with per-modality timesteps (the "
                "inferer's clean_conditioning is False): it never saw a clean modality at t = 0; 'clamp' is the "
                "conditioning such a model supports.",
                UserWarning,
                stacklevel=3,
            )
        logger.info(
            "conditional sampling: known modalities %s enter clean at t = 0 (per-modality timesteps)",
            sorted(known),
        )
    else:
        logger.info(
            "conditional sampling: known modalities %s are clamped to their data noised to the current level "
            "(replacement%s)",
            sorted(known),
            "" if conditioning == "clamp" else "; the model was not trained with per-modality timesteps",
        )
    return mode


def prepare_input(
    x: torch.Tensor, name: str, spec: ModalitySpec, device: torch.device, inputs_normalized: bool
) -> torch.Tensor:
    """A given modality (``known`` or ``seed_sample``) on ``device`` in [-1, 1]: finite, and in range when
    ``inputs_normalized``, else normalised by its ``spec``; errors name the input."""
    x = x.to(device=device, dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values.")
    if inputs_normalized:
        if x.abs().max() > 1.0 + 1e-3:
            raise ValueError(
                f"{name} has values in [{x.min().item():.4g}, {x.max().item():.4g}], outside [-1, 1], but "
                "inputs_normalized=True; pass inputs_normalized=False for physical units."
            )
        return x.clamp(-1.0, 1.0)
    return spec.normalize(x)


def draw_seeds(
    sample_seeds: Sequence[int] | None, generator: torch.Generator | None, num_samples: int
) -> list[int]:
    """One seed per sample: ``sample_seeds`` as given, else ``num_samples`` draws from ``generator``. All of a
    sample's randomness comes from its seed, so a sample does not depend on the batch it is drawn in."""
    if sample_seeds is not None:
        return [int(s) for s in sample_seeds]
    seed_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, 2**62, (num_samples,), generator=generator, device=seed_device).tolist()
