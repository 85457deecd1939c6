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
(constructor, grid of ``set_timesteps``, clipping, variance types, ``eta``) is MONAI's, except that DDIM
by default re-derives epsilon from the clipped x_0 (``use_clipped_model_output``). They also share the
``strength`` argument of :class:`~monai_pairsynth.schedulers.DPMSolverMultistepScheduler` for noise seeding,
compute in float32 whatever the input dtype, and never mutate their schedule tables in ``add_noise``. DDPM's
``step`` updates a whole batch at once, with one timestep and one generator per sample if wanted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType, DDPMVarianceType

from .schedule_mixin import (
    StridedScheduleMixin,
    noise_from_original_sample,
    predict_noise,
    predict_original_sample,
)

__all__ = ["StridedDDIMScheduler", "StridedDDPMScheduler"]

_ALLOWED_VARIANCE_TYPES = [v.value for v in DDPMVarianceType]


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

    def _posterior_std(
        self,
        alpha_prod_t: list[float],
        alpha_prod_prev: list[float],
        predicted_variance: torch.Tensor | None,
        as_scale: Callable[[list[float]], float | torch.Tensor],
    ) -> float | torch.Tensor:
        """Standard deviation of q(x_s | x_t, x_0) for the strided step, following MONAI's variance types.

        ``alpha_prod_t`` / ``alpha_prod_prev`` hold one value (shared by the batch) or one per sample;
        ``as_scale`` turns such a list into a float or a ``(B, 1, ..., 1)`` tensor.
        """
        beta_step = [1.0 - t / s for t, s in zip(alpha_prod_t, alpha_prod_prev)]
        posterior = [(1.0 - s) / (1.0 - t) * b for t, s, b in zip(alpha_prod_t, alpha_prod_prev, beta_step)]
        if self.variance_type == DDPMVarianceType.FIXED_SMALL:
            return as_scale([math.sqrt(max(p, 1e-20)) for p in posterior])
        if self.variance_type == DDPMVarianceType.FIXED_LARGE:
            return as_scale([math.sqrt(b) for b in beta_step])
        if self.variance_type == DDPMVarianceType.LEARNED and predicted_variance is not None:
            return predicted_variance**0.5
        if self.variance_type == DDPMVarianceType.LEARNED_RANGE and predicted_variance is not None:
            frac = (predicted_variance + 1) / 2
            return (frac * as_scale(beta_step) + (1 - frac) * as_scale(posterior)) ** 0.5
        return as_scale([math.sqrt(p) for p in posterior])

    @staticmethod
    def _per_sample_generators(
        generator: torch.Generator | Sequence[torch.Generator] | None, batch_size: int
    ) -> list[torch.Generator] | None:
        """``generator`` as a list of one generator per sample, or ``None`` for one draw for the batch."""
        if generator is None or isinstance(generator, torch.Generator):
            return None
        if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError(
                f"`generator` must be a torch.Generator, a sequence of one torch.Generator per sample, or None, "
                f"got {type(generator).__name__}."
            )
        if len(generator) != batch_size:
            raise ValueError(
                f"`generator` has {len(generator)} generators for a batch of {batch_size}; give one per sample."
            )
        return list(generator)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample x_s ~ q(x_s | x_t, x_0 = prediction), ``s`` = the next entry of ``self.timesteps``.

        The whole batch is updated at once. Random draws (posterior noise, none on a sample's last step):

        * ``generator`` a ``torch.Generator`` or ``None`` (torch's global generator): one draw of the shape of
          ``sample`` when any sample needs noise;
        * ``generator`` a sequence of one ``torch.Generator`` per sample: sample ``i`` draws its own noise,
          shape ``(1, C, H, W[, D])``, from ``generator[i]``, in batch order. These are exactly the draws of
          ``B`` separate calls ``step(model_output[i:i+1], t_i, sample[i:i+1], generator=generator[i])``, so
          the batched step gives those calls' results (same values up to float rounding; bit-identical in
          practice) and a sample does not depend on the rest of its batch.

        Args:
            model_output: the model's prediction at ``(sample, timestep)``, ``(B, C, H, W[, D])`` (twice the
                channels for the learned variance types).
            timestep: an entry of ``self.timesteps`` shared by the batch (int, 0-dim or one-element tensor), or
                a ``(B,)`` tensor of entries, one per sample (each sample steps to its own next entry).
            sample: the current sample x_t, ``(B, C, H, W[, D])``.
            generator: random generator of the posterior noise (on the sample's device), or one per sample.

        Returns:
            ``(prev_sample, pred_original_sample)``, dtype of ``sample``.

        Raises:
            ValueError: a timestep is not in ``self.timesteps``, the shapes do not match, or ``generator`` is
                not a generator, ``None`` or one generator per sample.

        Example:
            >>> import torch
            >>> scheduler = StridedDDPMScheduler(num_train_timesteps=100, clip_sample=False)
            >>> scheduler.set_timesteps(10)
            >>> x, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
            >>> gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
            >>> batched, _ = scheduler.step(eps, 55, x, generator=gens)
            >>> one = scheduler.step(eps[1:2], 55, x[1:2], generator=torch.Generator().manual_seed(2))[0]
            >>> torch.allclose(batched[1:2], one)
            True
        """
        self._check_step_inputs(model_output, sample, allow_doubled_channels=True)
        batch_size = sample.shape[0]
        timesteps = self._batch_timesteps(timestep, batch_size)
        prev_timesteps = [self.previous_timestep(t) for t in timesteps]
        generators = self._per_sample_generators(generator, batch_size)

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
        per_sample_shape = (batch_size,) + (1,) * (sample.ndim - 1)

        def as_scale(values: list[float]) -> float | torch.Tensor:
            # one coefficient for the batch stays a Python float (no host-to-device copy); per-sample
            # coefficients become a (B, 1, ..., 1) tensor rounded to the compute dtype, as the float would be
            if len(values) == 1:
                return values[0]
            return torch.tensor(values, dtype=compute_dtype, device=sample_c.device).reshape(per_sample_shape)

        # 1. the strided step t -> s: abar_t, abar_s, alpha_step = abar_t / abar_s, beta_step = 1 - alpha_step
        #    (float64, one value for the batch or one per sample)
        alpha_prod_t = [self._alpha_cumprod_at(t) for t in timesteps]
        alpha_prod_prev = [self._alpha_cumprod_at(s) if s >= 0 else 1.0 for s in prev_timesteps]
        alpha_step = [t / s for t, s in zip(alpha_prod_t, alpha_prod_prev)]
        beta_step = [1.0 - a for a in alpha_step]

        # 2. predicted x_0 (DDPM eq. 15), optionally clipped
        pred_original_sample = predict_original_sample(
            self.prediction_type,
            model_output_c,
            sample_c,
            as_scale([math.sqrt(a) for a in alpha_prod_t]),
            as_scale([math.sqrt(1.0 - a) for a in alpha_prod_t]),
        )
        if self.clip_sample:
            pred_original_sample = pred_original_sample.clamp(*self.clip_sample_values)

        # 3. posterior mean of q(x_s | x_t, x_0) (DDPM eq. 7 with the strided beta)
        original_coeff = as_scale(
            [math.sqrt(s) * b / (1.0 - t) for t, s, b in zip(alpha_prod_t, alpha_prod_prev, beta_step)]
        )
        current_coeff = as_scale(
            [
                math.sqrt(a) * (1.0 - s) / (1.0 - t)
                for t, s, a in zip(alpha_prod_t, alpha_prod_prev, alpha_step)
            ]
        )
        prev_sample = original_coeff * pred_original_sample + current_coeff * sample_c

        # 4. posterior noise, except on a sample's last step (which returns the mean, as MONAI does at t = 0)
        needs_noise = [s >= 0 for s in prev_timesteps]
        if any(needs_noise):
            noise_kwargs = {"dtype": compute_dtype, "device": sample_c.device, "layout": sample.layout}
            if generators is None:
                noise = torch.randn(sample_c.shape, generator=generator, **noise_kwargs)  # type: ignore[arg-type]
            else:
                row_shape = (1, *sample_c.shape[1:])
                row_needs_noise = needs_noise * batch_size if len(needs_noise) == 1 else needs_noise
                noise = torch.cat(
                    [
                        torch.randn(row_shape, generator=g, **noise_kwargs)
                        if needed
                        else torch.zeros(row_shape, **noise_kwargs)
                        for g, needed in zip(generators, row_needs_noise)
                    ]
                )
            std = self._posterior_std(alpha_prod_t, alpha_prod_prev, predicted_variance, as_scale)
            if all(needs_noise):
                prev_sample = prev_sample + std * noise
            else:  # per-sample timesteps, some of them at their last step: those keep the mean
                mask = torch.tensor(needs_noise, device=sample_c.device).reshape(per_sample_shape)
                prev_sample = torch.where(mask, prev_sample + std * noise, prev_sample)

        return prev_sample.to(out_dtype), pred_original_sample.to(out_dtype)


class StridedDDIMScheduler(StridedScheduleMixin, DDIMScheduler):
    """MONAI's ``DDIMScheduler`` whose ``step`` moves to the next timestep of the schedule.

    DDIM (Song et al. 2021, eq. 12) from ``t`` to ``s`` = the next entry of ``timesteps`` (after the last
    entry: ``alphas_cumprod = 1`` when ``set_alpha_to_one`` else ``alphas_cumprod[0]``, as in MONAI). With
    the full schedule and ``use_clipped_model_output=False`` this is exactly MONAI's ``DDIMScheduler``;
    strided, every step lands on the noise level of the timestep the next model call is made at.

    Clipping: when ``clip_sample`` clamps the x_0 estimate, the epsilon of the update's direction term is, by
    default (``use_clipped_model_output=True``), re-derived from the clipped x_0,
    ``eps = (x_t - sqrt(abar_t) * x0_clipped) / sqrt(1 - abar_t)`` (diffusers' ``use_clipped_model_output``),
    so that the step moves along one consistent (x_0, epsilon) pair that reproduces x_t. MONAI's DDIM keeps
    the model's raw epsilon next to the clipped x_0 (``use_clipped_model_output=False``): then, for an x_0
    estimate far outside the clipping range (typical of a young network at ``t ~ T``), the two terms of the
    update no longer describe the same x_t. Without ``clip_sample`` both settings agree.

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
        use_clipped_model_output: with ``clip_sample``, re-derive epsilon from the clipped x_0 estimate
            (default ``True``); ``False`` keeps the model's own epsilon (MONAI's DDIM, and this class before
            the option existed). Used by :meth:`step` and :meth:`reversed_step`.
        schedule_args: keyword arguments of the schedule function.

    Example:
        >>> import torch
        >>> scheduler = StridedDDIMScheduler(num_train_timesteps=100)
        >>> scheduler.set_timesteps(10)
        >>> scheduler.timesteps[:3].tolist(), scheduler.previous_timestep(99)
        ([99, 88, 77], 88)
        >>> x_t, eps = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), -1.0)
        >>> x_s, x0 = scheduler.step(eps, 99, x_t)  # x_0 estimate 2.15, clipped to 1
        >>> raw_eps = StridedDDIMScheduler(num_train_timesteps=100, use_clipped_model_output=False)
        >>> raw_eps.set_timesteps(10)
        >>> x_s_raw, _ = raw_eps.step(eps, 99, x_t)
        >>> float(x0.max()), round(float(x_s.max()), 4), round(float(x_s_raw.max()), 4)
        (1.0, 0.5742, -0.0723)
    """

    # default for instances pickled before the option existed
    use_clipped_model_output: bool = True

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
        use_clipped_model_output: bool = True,
        **schedule_args,
    ) -> None:
        self._validate_common_args(num_train_timesteps, schedule, prediction_type)
        if not isinstance(use_clipped_model_output, bool):
            raise ValueError(f"`use_clipped_model_output` must be a bool, got {use_clipped_model_output!r}.")
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
            use_clipped_model_output=use_clipped_model_output,
            **schedule_args,
        )
        self.set_alpha_to_one = bool(set_alpha_to_one)
        self.use_clipped_model_output = use_clipped_model_output

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

    def _original_and_noise(
        self, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_0, epsilon)`` estimates at ``alphas_cumprod = alpha_prod_t``: x_0 clipped per ``clip_sample``,
        epsilon re-derived from the clipped x_0 when ``use_clipped_model_output`` (else the model's own)."""
        alpha_t, sigma_t = math.sqrt(alpha_prod_t), math.sqrt(1.0 - alpha_prod_t)
        pred_original_sample = predict_original_sample(
            self.prediction_type, model_output, sample, alpha_t, sigma_t
        )
        if not self.clip_sample:
            return pred_original_sample, predict_noise(
                self.prediction_type, model_output, sample, alpha_t, sigma_t
            )
        pred_original_sample = pred_original_sample.clamp(*self.clip_sample_values)
        if self.use_clipped_model_output:
            return pred_original_sample, noise_from_original_sample(
                pred_original_sample, sample, alpha_t, sigma_t
            )
        return pred_original_sample, predict_noise(
            self.prediction_type, model_output, sample, alpha_t, sigma_t
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM step from ``timestep`` to the next entry of ``self.timesteps`` (eq. 12 of Song et al.).

        The argument order is MONAI's (``eta`` before ``generator``): pass ``generator`` by keyword. With
        ``clip_sample`` and ``use_clipped_model_output`` (the defaults) the direction term uses the epsilon
        re-derived from the clipped x_0 estimate (see the class docstring).

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

        pred_original_sample, pred_epsilon = self._original_and_noise(
            model_output.to(compute_dtype), sample_c, alpha_prod_t
        )

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
        :meth:`step` with ``eta = 0`` for a model whose prediction does not depend on the timestep. It uses
        the same (x_0, epsilon) pair as :meth:`step`, so ``use_clipped_model_output`` applies here too.

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
        pred_original_sample, pred_epsilon = self._original_and_noise(
            model_output.to(compute_dtype), sample_c, alpha_prod_t
        )
        next_sample = (
            math.sqrt(alpha_prod_next) * pred_original_sample
            + math.sqrt(1.0 - alpha_prod_next) * pred_epsilon
        )
        return next_sample.to(out_dtype), pred_original_sample.to(out_dtype)
