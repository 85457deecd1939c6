"""Build one of this package's samplers by name: ``make_scheduler("dpmpp", ...)``."""

from __future__ import annotations

from enum import Enum
from typing import Any

from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType

from .dpm_solver_multistep import DPMSolverMultistepScheduler
from .strided import StridedDDIMScheduler, StridedDDPMScheduler

__all__ = ["DEFAULT_SAMPLER", "DEFAULT_SAMPLER_STEPS", "SamplerName", "make_scheduler"]

#: the package's one sampler default (inferer, pool sources, ``generate``, the bundle's configs): DPM-Solver++(2M)
#: with 20 steps, chosen by ``benchmarks/convergence.py`` / ``benchmarks/sampler_quality.py`` on the demo
#: checkpoint (docs/sampling.md, "Which sampler").
DEFAULT_SAMPLER = "dpmpp"
DEFAULT_SAMPLER_STEPS = 20


class SamplerName(str, Enum):
    """Names accepted by :func:`make_scheduler`.

    ddpm: ancestral DDPM (:class:`StridedDDPMScheduler`), stochastic, needs a ``generator``.
    ddim: DDIM (:class:`StridedDDIMScheduler`), deterministic with ``eta = 0``; with ``clip_sample`` its
        epsilon is re-derived from the clipped x_0 unless ``use_clipped_model_output=False``.
    dpmpp: DPM-Solver++(2M) (:class:`DPMSolverMultistepScheduler`), deterministic, stateful.
    """

    DDPM = "ddpm"
    DDIM = "ddim"
    DPMPP = "dpmpp"


_SCHEDULER_CLASSES: dict[SamplerName, type[Scheduler]] = {
    SamplerName.DDPM: StridedDDPMScheduler,
    SamplerName.DDIM: StridedDDIMScheduler,
    SamplerName.DPMPP: DPMSolverMultistepScheduler,
}


def make_scheduler(
    name: str | SamplerName,
    num_train_timesteps: int = 1000,
    schedule: str = "linear_beta",
    prediction_type: str = DDPMPredictionType.EPSILON,
    **kwargs: Any,
) -> Scheduler:
    """A fresh scheduler of this package, corrected for strided sampling, by sampler name.

    Every returned scheduler has the same interface:

    * ``set_timesteps(num_inference_steps, device=None, strength=1.0)``;
    * ``timesteps``: a strictly decreasing ``LongTensor`` in ``[0, num_train_timesteps)``;
    * ``step(model_output, timestep, sample, generator=...) -> (prev_sample, pred_original_sample)``
      (pass ``generator`` **by keyword**: DDIM's fourth positional argument is MONAI's ``eta``), moving
      from ``timestep`` to ``previous_timestep(timestep)``, the next entry of ``timesteps``; DDPM's
      ``step`` also takes one timestep per sample and one generator per sample, batched;
    * ``add_noise(original_samples, noise, timesteps)``, ``num_train_timesteps``, ``get_config()``.

    Noise-seeding protocol: after ``set_timesteps(n, strength=s)``, noise the seed sample to
    ``scheduler.timesteps[0]`` with ``add_noise``, then call ``step`` for every entry of
    ``scheduler.timesteps`` in order. Multistep schedulers keep state: use one instance per chain
    (per modality).

    Args:
        name: a :class:`SamplerName` value: ``"ddpm"``, ``"ddim"`` or ``"dpmpp"``.
        num_train_timesteps: number of diffusion steps the model was trained with.
        schedule: a member of MONAI's ``NoiseSchedules`` (must match training).
        prediction_type: a ``DDPMPredictionType`` value (must match training).
        kwargs: further constructor arguments of the chosen class (e.g. ``clip_sample``,
            ``solver_order``, DDIM's ``use_clipped_model_output``, schedule arguments such as
            ``beta_start``).

    Returns:
        A :class:`StridedDDPMScheduler`, :class:`StridedDDIMScheduler` or
        :class:`DPMSolverMultistepScheduler`.

    Raises:
        ValueError: unknown ``name`` (or a constructor argument outside its allowed values).

    Example:
        >>> scheduler = make_scheduler("dpmpp", num_train_timesteps=1000)
        >>> scheduler.set_timesteps(20, strength=0.8)
        >>> len(scheduler.timesteps), int(scheduler.timesteps[0])
        (16, 799)
    """
    try:
        key = SamplerName(name)
    except ValueError:
        raise ValueError(
            f"Unknown sampler name {name!r}; allowed: {[s.value for s in SamplerName]}."
        ) from None
    scheduler_class = _SCHEDULER_CLASSES[key]
    return scheduler_class(
        num_train_timesteps=num_train_timesteps, schedule=schedule, prediction_type=prediction_type, **kwargs
    )
