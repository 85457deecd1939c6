"""DPM-Solver++ (multistep, data prediction) on MONAI's noise schedules.

Lu, Zhou, Bao, Chen, Li, Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", 2022, https://arxiv.org/abs/2211.01095 (Algorithm 1 for order 1 = DDIM, Algorithm 2 for the
multistep second-order solver "DPM-Solver++(2M)").

Symbol table (code name -> paper symbol). The paper integrates from t_0 = T down to t_M = 0; our
``timestep`` is the paper's t_{i-1} (current, noisier) and ``prev_timestep`` is t_i (next, cleaner):

    ==========================================  ========================================================
    code                                        paper
    ==========================================  ========================================================
    ``alphas_cumprod[t]``                       alpha_t^2 (MONAI/DDPM "alpha bar")
    ``alpha_t = sqrt(alphas_cumprod[t])``       alpha_t, the signal scale of q(x_t | x_0)
    ``sigma_t = sqrt(1 - alphas_cumprod[t])``   sigma_t, the noise scale of q(x_t | x_0)
    ``lambda_t = log(alpha_t / sigma_t)``       lambda_t, half the log-SNR
    ``h = lambda_next - lambda_t``              h_i = lambda_{t_i} - lambda_{t_{i-1}}
    ``h_last = lambda_t - lambda_last``         h_{i-1}
    ``h / h_last``                              1 / r_i, with r_i = h_{i-1} / h_i
    ``pred_original_sample``                    x_theta(x_{t_{i-1}}, t_{i-1}), the data prediction
    ``last_pred_original_sample``               x_theta(x_{t_{i-2}}, t_{i-2})
    ``corrected``                               D_i = (1 + 1/(2 r_i)) x_theta(t_{i-1}) - 1/(2 r_i) x_theta(t_{i-2})
    ``sample`` / ``prev_sample``                x~_{t_{i-1}} / x~_{t_i}
    ``-expm1(-h)``                              1 - e^{-h_i}  (= -(e^{-h_i} - 1) in the paper)
    ==========================================  ========================================================

Update (both orders): x~_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x~_{t_{i-1}} + alpha_{t_i} (1 - e^{-h_i}) D_i,
with D_i = x_theta(t_{i-1}) at order 1.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType

from .schedule_mixin import StridedScheduleMixin, predict_original_sample

__all__ = ["DPMSolverMultistepScheduler", "TimestepSpacing"]


class TimestepSpacing(str, Enum):
    """How ``set_timesteps`` places ``num_inference_steps`` timesteps on ``[0, num_train_timesteps)``.

    trailing: ``round(T - k * T / n) - 1`` for ``k = 0..n-1``; always starts at ``T - 1`` and spends no
        model call at ``t = 0`` (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
        Flawed", Table 2). The default.
    linspace: ``round(linspace(T - 1, 0, n))``, the grid of MONAI's DDPM/DDIM schedulers (ends at 0).
    """

    TRAILING = "trailing"
    LINSPACE = "linspace"


class DPMSolverMultistepScheduler(StridedScheduleMixin, Scheduler):
    """DPM-Solver++ multistep scheduler (data prediction; order 1 or 2) on MONAI's noise schedules.

    A deterministic solver of the diffusion probability-flow ODE: 10-25 steps give samples close to
    those of a 1000-step ancestral DDPM. Order 1 is DDIM (eta = 0). It is stateful: ``step`` keeps the
    previous data prediction, so one scheduler instance drives one sampling chain (one per modality in a
    linked sampler). ``set_timesteps`` resets the state, and so does a ``step`` at ``timesteps[0]``.

    Noise seeding (start part-way down the schedule): ``set_timesteps(n, strength=s)`` keeps the last
    ``round(n * s)`` of the ``n`` timesteps; noise the seed sample to ``scheduler.timesteps[0]`` with
    :meth:`add_noise`, then call ``step`` for every entry of ``scheduler.timesteps``.

    Args:
        num_train_timesteps: number of diffusion steps the model was trained with.
        schedule: a member of MONAI's ``NoiseSchedules`` (``"linear_beta"``, ``"scaled_linear_beta"``,
            ``"sigmoid_beta"``, ``"cosine"``); must match the training schedule.
        prediction_type: what the model predicts, a ``DDPMPredictionType`` value: ``"epsilon"`` (the
            noise), ``"v_prediction"`` (velocity ``alpha_t * eps - sigma_t * x_0``) or ``"sample"`` (x_0).
        solver_order: 1 (DPM-Solver++1 = DDIM) or 2 (DPM-Solver++(2M), recommended).
        lower_order_final: use a first-order update at the last step. With ``set_alpha_to_one=True`` the
            last step ends at zero noise, where only the first-order update is defined, so it is first order
            whatever this flag says; the flag matters for ``set_alpha_to_one=False``. Default ``True``.
        set_alpha_to_one: the last step ends on clean data (``alpha = 1``, ``sigma = 0``; the result is the
            data prediction at the last timestep). ``False`` ends at the noise level of training timestep 0.
        timestep_spacing: a :class:`TimestepSpacing` value, ``"trailing"`` (default) or ``"linspace"``.
        thresholding: dynamic thresholding of the data prediction (Saharia et al. 2022, Imagen): per
            sample, ``s = clamp(quantile(|x_0|, dynamic_thresholding_ratio), 1, sample_max_value)`` and
            ``x_0 <- clamp(x_0, -s, s) / s``. Pixel-space models only. Default ``False``.
        dynamic_thresholding_ratio: the quantile of ``|x_0|`` used by ``thresholding``.
        sample_max_value: the largest threshold ``s``; 1.0 suits data normalised to [-1, 1].
        clip_sample: clamp the data prediction to ``[clip_sample_min, clip_sample_max]`` (MONAI's static
            clipping). Default ``False``.
        clip_sample_min: lower clipping bound.
        clip_sample_max: upper clipping bound.
        schedule_args: keyword arguments of the schedule function (e.g. ``beta_start``, ``beta_end``).

    Raises:
        ValueError: an argument outside its allowed values (the message lists them).

    Example:
        >>> import torch
        >>> scheduler = DPMSolverMultistepScheduler(num_train_timesteps=100)
        >>> scheduler.set_timesteps(5)
        >>> scheduler.timesteps.tolist()
        [99, 79, 59, 39, 19]
        >>> x0 = torch.full((1, 1, 4, 4), 0.5)
        >>> noise = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> sample = scheduler.add_noise(x0, noise, scheduler.timesteps[0])
        >>> for t in scheduler.timesteps:  # an oracle that knows the noise
        ...     sample, _ = scheduler.step(noise, t, sample)
        >>> torch.allclose(sample, x0, atol=1e-5)
        True
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        prediction_type: str = DDPMPredictionType.EPSILON,
        solver_order: int = 2,
        lower_order_final: bool = True,
        set_alpha_to_one: bool = True,
        timestep_spacing: str = TimestepSpacing.TRAILING,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        clip_sample: bool = False,
        clip_sample_min: float = -1.0,
        clip_sample_max: float = 1.0,
        **schedule_args,
    ) -> None:
        self._validate_common_args(num_train_timesteps, schedule, prediction_type)
        if isinstance(solver_order, bool) or solver_order not in (1, 2):
            raise ValueError(f"`solver_order` must be 1 or 2, got {solver_order!r}.")
        allowed_spacing = [s.value for s in TimestepSpacing]
        if timestep_spacing not in allowed_spacing:
            raise ValueError(f"Unknown `timestep_spacing` {timestep_spacing!r}; allowed: {allowed_spacing}.")
        if not 0.0 < dynamic_thresholding_ratio <= 1.0:
            raise ValueError(
                f"`dynamic_thresholding_ratio` must be in (0, 1], got {dynamic_thresholding_ratio!r}."
            )
        if not sample_max_value >= 1.0:
            raise ValueError(f"`sample_max_value` must be >= 1, got {sample_max_value!r}.")
        if clip_sample_min >= clip_sample_max:
            raise ValueError(
                f"`clip_sample_min` ({clip_sample_min}) must be smaller than `clip_sample_max` ({clip_sample_max})."
            )
        super().__init__(num_train_timesteps, schedule, **schedule_args)
        self._record_config(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            prediction_type=prediction_type,
            solver_order=solver_order,
            lower_order_final=lower_order_final,
            set_alpha_to_one=set_alpha_to_one,
            timestep_spacing=timestep_spacing,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
            clip_sample=clip_sample,
            clip_sample_min=clip_sample_min,
            clip_sample_max=clip_sample_max,
            **schedule_args,
        )
        self.prediction_type = DDPMPredictionType(prediction_type).value
        self.solver_order = int(solver_order)
        self.lower_order_final = bool(lower_order_final)
        self.set_alpha_to_one = bool(set_alpha_to_one)
        self.timestep_spacing = TimestepSpacing(timestep_spacing).value
        self.thresholding = bool(thresholding)
        self.dynamic_thresholding_ratio = float(dynamic_thresholding_ratio)
        self.sample_max_value = float(sample_max_value)
        self.clip_sample = bool(clip_sample)
        self.clip_sample_values = [float(clip_sample_min), float(clip_sample_max)]
        # standard deviation of the initial noise distribution (diffusers / MONAI convention)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self._reset_state()

    # ----------------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        # position in self.timesteps that the next step() call is expected at
        self._step_index = 0
        # (timestep, data prediction) of the previous step: what order 2 extrapolates with
        self._last_prediction: tuple[int, torch.Tensor] | None = None

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None, strength: float = 1.0
    ) -> None:
        """Set the timesteps of a sampling run and reset the solver state.

        Args:
            num_inference_steps: number of steps of the full schedule, in ``[1, num_train_timesteps]``.
            device: device of ``self.timesteps``.
            strength: fraction of the schedule to run, in ``(0, 1]``. ``1`` samples from pure noise; ``s < 1``
                keeps the last ``round(num_inference_steps * s)`` timesteps (at least one): noise the seed
                sample to ``self.timesteps[0]`` and run them all.

        Raises:
            ValueError: ``num_inference_steps`` or ``strength`` out of range.
        """
        self._validate_num_inference_steps(num_inference_steps)
        total = self.num_train_timesteps
        if self.timestep_spacing == TimestepSpacing.TRAILING:
            # n equal strides of T/n ending just above t = -1 (clean data), i.e. starting at T - 1
            stride = total / num_inference_steps
            full = torch.round(total - torch.arange(num_inference_steps, dtype=torch.float64) * stride) - 1
        else:
            # exactly MONAI's DDPM/DDIM grid (float32 linspace, then round half to even)
            full = torch.linspace(total - 1, 0, num_inference_steps, dtype=torch.float32).round()
        full = full.long()
        self.timesteps = self._keep_last_steps(full, strength).to(device)
        self.num_inference_steps = num_inference_steps
        self._reset_state()

    # ----------------------------------------------------------------------------------------------
    def _alpha_sigma(self, timestep: int) -> tuple[float, float]:
        """``(alpha_t, sigma_t)`` of a timestep; ``-1`` is the end of the chain."""
        if timestep < 0:
            if self.set_alpha_to_one:
                return 1.0, 0.0
            timestep = 0
        abar = self._alpha_cumprod_at(timestep)
        return math.sqrt(abar), math.sqrt(1.0 - abar)

    def _lambda(self, timestep: int) -> float:
        alpha, sigma = self._alpha_sigma(timestep)
        return math.log(alpha) - math.log(sigma)

    def _threshold(self, pred_original_sample: torch.Tensor) -> torch.Tensor:
        flat = pred_original_sample.reshape(pred_original_sample.shape[0], -1).abs()
        scale = torch.quantile(flat, self.dynamic_thresholding_ratio, dim=1)
        scale = scale.clamp(min=1.0, max=self.sample_max_value)
        scale = scale.reshape((-1,) + (1,) * (pred_original_sample.ndim - 1))
        return torch.maximum(torch.minimum(pred_original_sample, scale), -scale) / scale

    def _data_prediction(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor
    ) -> torch.Tensor:
        """x_theta(x_t, t): the model output converted to a prediction of x_0 (then thresholded/clipped)."""
        alpha_t, sigma_t = self._alpha_sigma(timestep)
        pred_original_sample = predict_original_sample(
            self.prediction_type, model_output, sample, alpha_t, sigma_t
        )
        if self.thresholding:
            pred_original_sample = self._threshold(pred_original_sample)
        if self.clip_sample:
            pred_original_sample = pred_original_sample.clamp(*self.clip_sample_values)
        return pred_original_sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DPM-Solver++ step from ``timestep`` to the next entry of ``self.timesteps``.

        Computed in float32 (at least) whatever the input dtype; the results have the dtype of ``sample``.

        Args:
            model_output: the model's prediction at ``(sample, timestep)``, ``(B, C, H, W[, D])``.
            timestep: the current entry of ``self.timesteps`` (steps must follow ``self.timesteps`` in order;
                a step at ``timesteps[0]`` restarts the chain).
            sample: the current sample x_t, ``(B, C, H, W[, D])``.
            generator: unused (the solver is deterministic); accepted so all schedulers share one signature.

        Returns:
            ``(prev_sample, pred_original_sample)``: the sample at ``self.previous_timestep(timestep)`` and the
            data prediction x_0 at ``timestep``.

        Raises:
            ValueError: ``set_timesteps`` was not called, ``timestep`` is not the expected entry of
                ``self.timesteps``, or the shapes do not match.
        """
        del generator  # deterministic solver
        if self.num_inference_steps is None:
            raise ValueError(
                "DPMSolverMultistepScheduler.step() called before set_timesteps(num_inference_steps): "
                "a multistep solver needs the whole schedule."
            )
        self._check_step_inputs(model_output, sample, allow_doubled_channels=False)
        timestep, index = self._timestep_index(timestep)
        if index == 0:
            self._reset_state()
        elif index != self._step_index:
            expected = (
                f"timesteps[{self._step_index}] = {int(self.timesteps[self._step_index])}"
                if self._step_index < len(self.timesteps)
                else "timesteps[0] (the chain has ended)"
            )
            raise ValueError(
                f"step() got timestep {timestep} (timesteps[{index}]) but expected {expected}: a multistep solver "
                "must visit scheduler.timesteps in order (restart with timesteps[0] or call set_timesteps)."
            )
        prev_timestep = self.previous_timestep(timestep)
        is_last = prev_timestep < 0

        out_dtype = sample.dtype
        compute_dtype = torch.promote_types(out_dtype, torch.float32)
        sample_c = sample.to(compute_dtype)
        pred_original_sample = self._data_prediction(model_output.to(compute_dtype), timestep, sample_c)

        last = self._last_prediction
        if last is not None and last[1].shape != pred_original_sample.shape:
            raise ValueError(
                f"`sample` shape {tuple(sample.shape)} changed within a sampling chain (previous step: "
                f"{tuple(last[1].shape)}); restart at timesteps[0] or call set_timesteps."
            )

        alpha_t, sigma_t = self._alpha_sigma(timestep)
        alpha_next, sigma_next = self._alpha_sigma(prev_timestep)
        if sigma_next == 0.0:
            # the chain ends on clean data: lambda_next = inf, h = inf, e^{-h} = 0, and the (only defined)
            # first-order update returns alpha_next * x_theta = x_theta
            prev_sample = alpha_next * pred_original_sample
        else:
            lambda_t = math.log(alpha_t) - math.log(sigma_t)
            lambda_next = math.log(alpha_next) - math.log(sigma_next)
            h = lambda_next - lambda_t
            corrected = pred_original_sample
            use_second_order = (
                self.solver_order == 2 and last is not None and not (is_last and self.lower_order_final)
            )
            if use_second_order:
                last_timestep, last_pred_original_sample = last  # type: ignore[misc]
                h_last = lambda_t - self._lambda(last_timestep)
                if h_last > 0.0:
                    # D_i = x_theta(t_{i-1}) + (1 / (2 r_i)) (x_theta(t_{i-1}) - x_theta(t_{i-2}))
                    corrected = pred_original_sample + (h / (2.0 * h_last)) * (
                        pred_original_sample - last_pred_original_sample
                    )
            prev_sample = (sigma_next / sigma_t) * sample_c + (alpha_next * -math.expm1(-h)) * corrected

        self._last_prediction = (timestep, pred_original_sample)
        self._step_index = index + 1
        return prev_sample.to(out_dtype), pred_original_sample.to(out_dtype)
