"""Diffusion schedulers: DPM-Solver++ and strided-correct DDPM/DDIM on MONAI's noise schedules.

Use :func:`make_scheduler` (``"ddpm"``, ``"ddim"``, ``"dpmpp"``) to get a scheduler with the shared
interface described there, including ``set_timesteps(..., strength=...)`` for noise seeding.
"""

from __future__ import annotations

from .dpm_solver_multistep import DPMSolverMultistepScheduler, TimestepSpacing
from .factory import DEFAULT_SAMPLER, DEFAULT_SAMPLER_STEPS, SamplerName, make_scheduler
from .schedule_mixin import StridedScheduleMixin, num_steps_for_strength
from .strided import StridedDDIMScheduler, StridedDDPMScheduler

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_SAMPLER_STEPS",
    "DPMSolverMultistepScheduler",
    "SamplerName",
    "StridedDDIMScheduler",
    "StridedDDPMScheduler",
    "StridedScheduleMixin",
    "TimestepSpacing",
    "make_scheduler",
    "num_steps_for_strength",
]
