"""MONAI's DDPM and DDIM schedulers, corrected for strided sampling (fewer steps than training steps).

MONAI 1.6's schedulers mishandle a schedule of ``n < num_train_timesteps`` steps (see
``docs/schedulers.md`` and ``tests/schedulers/test_strided_schedulers.py``, which pin MONAI's behaviour):

* ``DDPMScheduler.step`` always moves to ``timestep - 1`` and uses the one-step ``betas[timestep]``, so a
  10-step run removes only ten training steps' worth of noise per call and the sample reaches the next
  scheduled timestep at the wrong noise level;
* ``DDIMScheduler.step`` moves to ``timestep - num_train_timesteps // n`` while ``set_timesteps`` spaces the
  timesteps ``(num_train_timesteps - 1 - steps_offset) / (n - 1)`` apart, so every step lands off the
  schedule (by 11 timesteps at n = 10, 2-3 at n = 20, 0-1 at n = 50, for 1000 training steps).

The subclasses here step from each timestep to the *next entry of* ``self.timesteps`` (``-1`` after the
last: the clean sample), with the noise-schedule coefficients of that strided step; everything else
(constructor, grid of ``set_timesteps``, clipping, variance types, ``eta``) is MONAI's. They also share the
``strength`` argument of :class:`~monai_pairsynth.schedulers.DPMSolverMultistepScheduler` for noise seeding,
compute in float32 whatever the input dtype, and never mutate their schedule tables in ``add_noise``.
"""

from __future__ import annotations

import math

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType, DDPMVarianceType

from .schedule_mixin import StridedScheduleMixin

__all__ = ["StridedDDIMScheduler", "StridedDDPMScheduler"]

_ALLOWED_VARIANCE_TYPES = [v.value for v in DDPMVarianceType]


def _predict_original_and_noise(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_0, epsilon)`` predicted from a model output at a timestep with ``alphas_cumprod = alpha_prod_t``."""
    sqrt_abar, sqrt_one_minus_abar = math.sqrt(alpha_prod_t), math.sqrt(1.0 - alpha_prod_t)
    if prediction_type == DDPMPredictionType.EPSILON:
        return (sample - sqrt_one_minus_abar * model_output) / sqrt_abar, model_output
    if prediction_type == DDPMPredictionType.SAMPLE:
        return model_output, (sample - sqrt_abar * model_output) / sqrt_one_minus_abar
    # DDPMPredictionType.V_PREDICTION
    return (
        sqrt_abar * sample - sqrt_one_minus_abar * model_output,
        sqrt_abar * model_output + sqrt_one_minus_abar * sample,
    )


class StridedDDPMScheduler(StridedScheduleMixin, DDPMScheduler):
    """MONAI's ``DDPMScheduler`` whose ``step`` moves to the next timestep of the schedule (strided DDPM).

    For a step from ``t`` to ``s`` (the next entry of ``timesteps``; ``s = -1`` means clean data with
    ``alphas_cumprod = 1``), the per-step noise is derived from the cumulative products, as in the
    "respaced" DDPM of Nichol & Dhariwal (2021, Sec. 4) and diffusers' strided DDPM:
    ``alpha_step = abar_t / abar_s``, ``beta_step = 1 - alpha_step``; the posterior q(x_s | x_t, x_0) is
    DDPM's eq. (6)-(7) with ``beta_t -> beta_step`` and ``abar_{t-1} -> abar_s``. With the full schedule
    (``n = num_train_timesteps``) this is exactly MONAI's ``DDPMScheduler``.

    Noise seeding: ``set_timesteps(n, strength=s)`` keeps the last ``round(n * s)`` timesteps; noise the
    seed sample to ``scheduler.timesteps[0]`` with ``add_noise`` and step through all of ``timesteps``.

    Args:
        num_train_timesteps: number of diffusion steps the model was trained with.
        schedule: a member of MONAI's ``NoiseSchedules``.
        variance_type: a ``DDPMVarianceType`` value (``"fixed_small"``, ``"fixed_large"``, ``"learned"``,
            ``"learned_range"``).
        clip_sample: clamp the predicted x_0 to ``[clip_sample_min, clip_sample_max]`` (MONAI default True).
        prediction_type: a ``DDPMPredictionType`` value (``"epsilon"``, ``"sample"``, ``"v_prediction"``).
        clip_sample_min: lower clipping bound.
        clip_sample_max: upper clipping bound.
        schedule_args: keyword arguments of the schedule function.

    Example:
        >>> scheduler = StridedDDPMScheduler(num_train_timesteps=100)
        >>> scheduler.set_timesteps(10, strength=0.5)
        >>> scheduler.timesteps.tolist(), scheduler.previous_timestep(44)
        ([44, 33, 22, 11, 0], 33)
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        variance_type: str = DDPMVarianceType.FIXED_SMALL,
        clip_sample: bool = True,
        prediction_type: str = DDPMPredictionType.EPSILON,
        clip_sample_min: float = -1.0,
        clip_sample_max: float = 1.0,
        **schedule_args,
    ) -> None:
        self._validate_common_args(num_train_timesteps, schedule, prediction_type)
        if variance_type not in _ALLOWED_VARIANCE_TYPES:
            raise ValueError(
                f"Unknown `variance_type` {variance_type!r}; allowed: {_ALLOWED_VARIANCE_TYPES}."
            )
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            variance_type=variance_type,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            clip_sample_min=clip_sample_min,
            clip_sample_max=clip_sample_max,
            **schedule_args,
        )
        self._record_config(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            variance_type=variance_type,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            clip_sample_min=clip_sample_min,
            clip_sample_max=clip_sample_max,
            **schedule_args,
        )

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None, strength: float = 1.0
    ) -> None:
        """MONAI's DDPM grid ``round(linspace(T - 1, 0, n))``, optionally only its last part.

        Args:
            num_inference_steps: number of steps of the full schedule, in ``[1, num_train_timesteps]``.
            device: device of ``self.timesteps``.
            strength: fraction of the schedule to run, in ``(0, 1]``; keeps the last
                ``round(num_inference_steps * strength)`` timesteps (at least one).

        Raises:
            ValueError: ``num_inference_steps`` or ``strength`` out of range.
        """
        self._validate_num_inference_steps(num_inference_steps)
        super().set_timesteps(num_inference_steps, device=device)
        self.timesteps = self._keep_last_steps(self.timesteps, strength)

    def _strided_variance(
        self, alpha_prod_t: float, alpha_prod_prev: float, predicted_variance: torch.Tensor | None
    ) -> torch.Tensor | float:
        """Variance of q(x_s | x_t, x_0) for the strided step, following MONAI's variance types."""
        beta_step = 1.0 - alpha_prod_t / alpha_prod_prev
        posterior = (1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t) * beta_step
        if self.variance_type == DDPMVarianceType.FIXED_SMALL:
            return max(posterior, 1e-20)
        if self.variance_type == DDPMVarianceType.FIXED_LARGE:
            return beta_step
        if self.variance_type == DDPMVarianceType.LEARNED and predicted_variance is not None:
            return predicted_variance
        if self.variance_type == DDPMVarianceType.LEARNED_RANGE and predicted_variance is not None:
            frac = (predicted_variance + 1) / 2
            return frac * beta_step + (1 - frac) * posterior
        return posterior

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample x_s ~ q(x_s | x_t, x_0 = prediction), ``s`` = the next entry of ``self.timesteps``.

        Args:
            model_output: the model's prediction at ``(sample, timestep)``, ``(B, C, H, W[, D])`` (twice the
                channels for the learned variance types).
            timestep: an entry of ``self.timesteps``.
            sample: the current sample x_t, ``(B, C, H, W[, D])``.
            generator: random generator of the posterior noise (on the sample's device).

        Returns:
            ``(prev_sample, pred_original_sample)``, dtype of ``sample``.

        Raises:
            ValueError: ``timestep`` is not in ``self.timesteps`` or the shapes do not match.
        """
        self._check_step_inputs(model_output, sample, allow_doubled_channels=True)
        timestep, _ = self._timestep_index(timestep)
        prev_timestep = self.previous_timestep(timestep)

        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in (
            DDPMVarianceType.LEARNED,
            DDPMVarianceType.LEARNED_RANGE,
        ):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        elif model_output.shape != sample.shape:
            raise ValueError(
                f"`model_output` has {model_output.shape[1]} channels for {sample.shape[1]} sample channels; twice "
                f"the channels is only allowed with variance_type 'learned' or 'learned_range' (got "
                f"{self.variance_type!r})."
            )

        out_dtype = sample.dtype
        compute_dtype = torch.promote_types(out_dtype, torch.float32)
        sample_c = sample.to(compute_dtype)
        model_output_c = model_output.to(compute_dtype)
        if predicted_variance is not None:
            predicted_variance = predicted_variance.to(compute_dtype)

        # 1. the strided step t -> s: abar_t, abar_s, alpha_step = abar_t / abar_s, beta_step = 1 - alpha_step
        alpha_prod_t = self._alpha_cumprod_at(timestep)
        alpha_prod_prev = self._alpha_cumprod_at(prev_timestep) if prev_timestep >= 0 else 1.0
        alpha_step = alpha_prod_t / alpha_prod_prev
        beta_step = 1.0 - alpha_step

        # 2. predicted x_0 (DDPM eq. 15), optionally clipped
        pred_original_sample, _ = _predict_original_and_noise(
            self.prediction_type, model_output_c, sample_c, alpha_prod_t
        )
        if self.clip_sample:
            pred_original_sample = pred_original_sample.clamp(*self.clip_sample_values)

        # 3. posterior mean of q(x_s | x_t, x_0) (DDPM eq. 7 with the strided beta)
        original_coeff = math.sqrt(alpha_prod_prev) * beta_step / (1.0 - alpha_prod_t)
        current_coeff = math.sqrt(alpha_step) * (1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t)
        prev_sample = original_coeff * pred_original_sample + current_coeff * sample_c

        # 4. posterior noise, except on the last step (which returns the mean, as MONAI does at t = 0)
        if prev_timestep >= 0:
            noise = torch.randn(
                sample_c.shape,
                dtype=compute_dtype,
                device=sample_c.device,
                generator=generator,
                layout=sample.layout,
            )
            variance = self._strided_variance(alpha_prod_t, alpha_prod_prev, predicted_variance)
            std = variance**0.5 if isinstance(variance, torch.Tensor) else math.sqrt(variance)
            prev_sample = prev_sample + std * noise

        return prev_sample.to(out_dtype), pred_original_sample.to(out_dtype)


class StridedDDIMScheduler(StridedScheduleMixin, DDIMScheduler):
    """MONAI's ``DDIMScheduler`` whose ``step`` moves to the next timestep of the schedule.

    DDIM (Song et al. 2021, eq. 12) from ``t`` to ``s`` = the next entry of ``timesteps`` (after the last
    entry: ``alphas_cumprod = 1`` when ``set_alpha_to_one`` else ``alphas_cumprod[0]``, as in MONAI). With
    the full schedule this is exactly MONAI's ``DDIMScheduler``; strided, every step lands on the noise
    level of the timestep the next model call is made at.

    Noise seeding: ``set_timesteps(n, strength=s)`` keeps the last ``round(n * s)`` timesteps; noise the
    seed sample to ``scheduler.timesteps[0]`` with ``add_noise`` and step through all of ``timesteps``.

    Args:
        num_train_timesteps: number of diffusion steps the model was trained with.
        schedule: a member of MONAI's ``NoiseSchedules``.
        clip_sample: clamp the predicted x_0 to ``[clip_sample_min, clip_sample_max]`` (MONAI default True).
        set_alpha_to_one: the last step ends on ``alphas_cumprod = 1`` (clean) instead of ``alphas_cumprod[0]``.
        steps_offset: added to the inference timesteps (MONAI / Stable Diffusion convention).
        prediction_type: a ``DDPMPredictionType`` value (``"epsilon"``, ``"sample"``, ``"v_prediction"``).
        clip_sample_min: lower clipping bound.
        clip_sample_max: upper clipping bound.
        schedule_args: keyword arguments of the schedule function.

    Example:
        >>> scheduler = StridedDDIMScheduler(num_train_timesteps=100)
        >>> scheduler.set_timesteps(10)
        >>> scheduler.timesteps[:3].tolist(), scheduler.previous_timestep(99)
        ([99, 88, 77], 88)
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = DDPMPredictionType.EPSILON,
        clip_sample_min: float = -1.0,
        clip_sample_max: float = 1.0,
        **schedule_args,
    ) -> None:
        self._validate_common_args(num_train_timesteps, schedule, prediction_type)
        if (
            isinstance(steps_offset, bool)
            or not isinstance(steps_offset, int)
            or not 0 <= steps_offset < num_train_timesteps
        ):
            raise ValueError(
                f"`steps_offset` must be an int in [0, {num_train_timesteps}), got {steps_offset!r}."
            )
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=steps_offset,
            prediction_type=prediction_type,
            clip_sample_min=clip_sample_min,
            clip_sample_max=clip_sample_max,
            **schedule_args,
        )
        self._record_config(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=steps_offset,
            prediction_type=prediction_type,
            clip_sample_min=clip_sample_min,
            clip_sample_max=clip_sample_max,
            **schedule_args,
        )
        self.set_alpha_to_one = bool(set_alpha_to_one)

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None, strength: float = 1.0
    ) -> None:
        """MONAI's DDIM grid ``round(linspace(T - 1 - offset, 0, n)) + offset``, optionally only its last part.

        Args:
            num_inference_steps: number of steps of the full schedule, in ``[1, num_train_timesteps]``.
            device: device of ``self.timesteps``.
            strength: fraction of the schedule to run, in ``(0, 1]``; keeps the last
                ``round(num_inference_steps * strength)`` timesteps (at least one).

        Raises:
            ValueError: ``num_inference_steps`` or ``strength`` out of range.
        """
        self._validate_num_inference_steps(num_inference_steps)
        super().set_timesteps(num_inference_steps, device=device)
        self.timesteps = self._keep_last_steps(self.timesteps, strength)

    def _final_alpha_cumprod(self) -> float:
        return 1.0 if self.set_alpha_to_one else self._alpha_cumprod_at(0)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM step from ``timestep`` to the next entry of ``self.timesteps`` (eq. 12 of Song et al.).

        The argument order is MONAI's (``eta`` before ``generator``): pass ``generator`` by keyword.

        Args:
            model_output: the model's prediction at ``(sample, timestep)``, ``(B, C, H, W[, D])``.
            timestep: an entry of ``self.timesteps``.
            sample: the current sample x_t, ``(B, C, H, W[, D])``.
            eta: weight of the stochastic part (0 = deterministic DDIM, 1 = DDPM-like).
            generator: random generator of the noise when ``eta > 0``.

        Returns:
            ``(prev_sample, pred_original_sample)``, dtype of ``sample``.

        Raises:
            ValueError: ``timestep`` is not in ``self.timesteps``, the shapes do not match, or ``eta < 0``.
        """
        if not eta >= 0.0:
            raise ValueError(f"`eta` must be >= 0, got {eta!r}.")
        self._check_step_inputs(model_output, sample, allow_doubled_channels=False)
        timestep, _ = self._timestep_index(timestep)
        prev_timestep = self.previous_timestep(timestep)

        out_dtype = sample.dtype
        compute_dtype = torch.promote_types(out_dtype, torch.float32)
        sample_c = sample.to(compute_dtype)

        alpha_prod_t = self._alpha_cumprod_at(timestep)
        alpha_prod_prev = (
            self._alpha_cumprod_at(prev_timestep) if prev_timestep >= 0 else self._final_alpha_cumprod()
        )

        pred_original_sample, pred_epsilon = _predict_original_and_noise(
            self.prediction_type, model_output.to(compute_dtype), sample_c, alpha_prod_t
        )
        if self.clip_sample:
            pred_original_sample = pred_original_sample.clamp(*self.clip_sample_values)

        # sigma_t(eta) of eq. (16): eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)
        variance = (1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t) * (1.0 - alpha_prod_t / alpha_prod_prev)
        std_dev = eta * math.sqrt(max(variance, 0.0))
        direction = math.sqrt(max(1.0 - alpha_prod_prev - std_dev**2, 0.0)) * pred_epsilon
        prev_sample = math.sqrt(alpha_prod_prev) * pred_original_sample + direction
        if eta > 0:
            noise = torch.randn(
                sample_c.shape, dtype=compute_dtype, device=sample_c.device, generator=generator
            )
            prev_sample = prev_sample + std_dev * noise
        return prev_sample.to(out_dtype), pred_original_sample.to(out_dtype)

    def reversed_step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic DDIM inversion step from ``timestep`` to the previous (larger) entry of ``timesteps``.

        MONAI's version uses the same wrong stride as its ``step``; this one is the exact inverse of
        :meth:`step` with ``eta = 0`` for a model whose prediction does not depend on the timestep.

        Args:
            model_output: the model's prediction at ``(sample, timestep)``.
            timestep: an entry of ``self.timesteps`` other than the first.
            sample: the sample at ``timestep``.

        Returns:
            ``(next_sample, pred_original_sample)``: the sample at the larger timestep and the x_0 prediction.

        Raises:
            ValueError: ``timestep`` is not in ``self.timesteps`` or is its first (largest) entry.
        """
        self._check_step_inputs(model_output, sample, allow_doubled_channels=False)
        timestep, index = self._timestep_index(timestep)
        if index == 0:
            raise ValueError(
                f"reversed_step() needs a larger timestep than {timestep}, the first entry of scheduler.timesteps."
            )
        next_timestep = int(self._timestep_lookup[2][index - 1])
        out_dtype = sample.dtype
        compute_dtype = torch.promote_types(out_dtype, torch.float32)
        sample_c = sample.to(compute_dtype)
        alpha_prod_t = self._alpha_cumprod_at(timestep)
        alpha_prod_next = self._alpha_cumprod_at(next_timestep)
        pred_original_sample, pred_epsilon = _predict_original_and_noise(
            self.prediction_type, model_output.to(compute_dtype), sample_c, alpha_prod_t
        )
        if self.clip_sample:
            pred_original_sample = pred_original_sample.clamp(*self.clip_sample_values)
        next_sample = (
            math.sqrt(alpha_prod_next) * pred_original_sample
            + math.sqrt(1.0 - alpha_prod_next) * pred_epsilon
        )
        return next_sample.to(out_dtype), pred_original_sample.to(out_dtype)
