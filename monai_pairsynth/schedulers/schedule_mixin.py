"""Shared behaviour of this package's schedulers: validated, strided, part-way timestep schedules.

Every scheduler returned by :func:`monai_pairsynth.schedulers.make_scheduler` mixes in
:class:`StridedScheduleMixin`, which gives them one interface on top of MONAI's ``Scheduler``:

* ``set_timesteps(num_inference_steps, device=None, strength=1.0)`` builds a strictly decreasing
  ``LongTensor`` of timesteps in ``[0, num_train_timesteps)``; ``strength < 1`` keeps only the last
  ``round(num_inference_steps * strength)`` entries (at least one) for noise seeding;
* ``previous_timestep(timestep)`` is the next entry of ``timesteps`` (``-1`` after the last one): the
  timestep whose noise level ``step`` lands on;
* ``add_noise`` / ``get_velocity`` compute in float32 (at least) on the sample's device without
  changing the scheduler's own tables (MONAI's base casts ``self.alphas_cumprod`` to the dtype of the
  last sample it saw, so an fp16 ``add_noise`` call would silently degrade every later ``step``);
* ``get_config()`` returns a ``ConfigParser``-ready dict (``_target_`` + constructor arguments).

The conversions between a model output (epsilon, v or x_0 prediction) and the x_0 / epsilon estimates
every sampler needs are the module functions :func:`predict_original_sample`, :func:`predict_noise` and
:func:`noise_from_original_sample`, shared by all schedulers of this package.

Noise-seeding protocol (the same for every scheduler here): call ``set_timesteps(n, strength=s)``, noise
the seed sample to ``scheduler.timesteps[0]`` with ``add_noise``, then call ``step`` once for every
entry of ``scheduler.timesteps``, in order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.schedulers import NoiseSchedules
from monai.networks.schedulers.ddpm import DDPMPredictionType

__all__ = [
    "StridedScheduleMixin",
    "noise_from_original_sample",
    "num_steps_for_strength",
    "predict_noise",
    "predict_original_sample",
]

_ALLOWED_PREDICTION_TYPES = [p.value for p in DDPMPredictionType]


def num_steps_for_strength(num_inference_steps: int, strength: float) -> int:
    """Number of steps run when sampling starts part-way down an ``num_inference_steps`` schedule.

    Args:
        num_inference_steps: length of the full schedule.
        strength: fraction of the schedule to run, in ``(0, 1]``; ``1`` starts from pure noise.

    Returns:
        ``num_inference_steps * strength`` rounded half up, at least 1.

    Raises:
        ValueError: ``strength`` outside ``(0, 1]``.

    Example:
        >>> num_steps_for_strength(20, 0.8), num_steps_for_strength(10, 0.01)
        (16, 1)
    """
    if (
        isinstance(strength, bool)
        or not isinstance(strength, numbers.Real)
        or not 0.0 < float(strength) <= 1.0
    ):
        raise ValueError(f"`strength` must be a number in (0, 1], got {strength!r}.")
    # 1e-9 absorbs float noise such as 10 * 0.35 == 3.4999999999999996
    return max(1, math.floor(num_inference_steps * float(strength) + 0.5 + 1e-9))


# scale of the signal / of the noise in x_t = alpha_t x_0 + sigma_t epsilon: a Python float shared by the batch,
# or a tensor broadcastable against the sample (one value per sample, shape (B, 1, ..., 1))
Scale = float | torch.Tensor


def predict_original_sample(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, alpha_t: Scale, sigma_t: Scale
) -> torch.Tensor:
    """The x_0 estimate implied by a model output at ``x_t = alpha_t * x_0 + sigma_t * epsilon``.

    ``alpha_t = sqrt(alphas_cumprod[t])`` and ``sigma_t = sqrt(1 - alphas_cumprod[t])``. DDPM eq. (15) for
    epsilon, ``alpha_t * x_t - sigma_t * v`` for v-prediction (Salimans & Ho 2022), the output itself for
    ``"sample"``.

    Args:
        prediction_type: a ``DDPMPredictionType`` value (``"epsilon"``, ``"v_prediction"``, ``"sample"``).
        model_output: the model's prediction at ``(sample, t)``.
        sample: the noisy sample x_t.
        alpha_t: signal scale, a float or a tensor broadcastable against ``sample``.
        sigma_t: noise scale, likewise.

    Returns:
        The x_0 estimate (no clipping).

    Example:
        >>> import torch
        >>> x0, eps = torch.tensor([0.5]), torch.tensor([-1.0])
        >>> x_t = 0.6 * x0 + 0.8 * eps
        >>> predict_original_sample("epsilon", eps, x_t, 0.6, 0.8)
        tensor([0.5000])
        >>> predict_original_sample("v_prediction", 0.6 * eps - 0.8 * x0, x_t, 0.6, 0.8)
        tensor([0.5000])
    """
    if prediction_type == DDPMPredictionType.EPSILON:
        return (sample - sigma_t * model_output) / alpha_t
    if prediction_type == DDPMPredictionType.SAMPLE:
        return model_output
    # DDPMPredictionType.V_PREDICTION
    return alpha_t * sample - sigma_t * model_output


def noise_from_original_sample(
    pred_original_sample: torch.Tensor, sample: torch.Tensor, alpha_t: Scale, sigma_t: Scale
) -> torch.Tensor:
    """The epsilon that explains x_t with a given x_0: ``(x_t - alpha_t * x_0) / sigma_t``.

    Used to re-derive epsilon from a clipped x_0 estimate (diffusers' ``use_clipped_model_output``), and for
    ``"sample"`` prediction. ``sigma_t`` must be non-zero (every training timestep has some noise).

    Example:
        >>> import torch
        >>> noise_from_original_sample(torch.tensor([0.5]), torch.tensor([-0.5]), 0.6, 0.8)
        tensor([-1.])
    """
    return (sample - alpha_t * pred_original_sample) / sigma_t


def predict_noise(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, alpha_t: Scale, sigma_t: Scale
) -> torch.Tensor:
    """The epsilon estimate implied by a model output at ``x_t = alpha_t * x_0 + sigma_t * epsilon``.

    The output itself for ``"epsilon"``, ``alpha_t * v + sigma_t * x_t`` for v-prediction,
    :func:`noise_from_original_sample` for ``"sample"``. Arguments as in :func:`predict_original_sample`.

    Example:
        >>> import torch
        >>> x0, eps = torch.tensor([0.5]), torch.tensor([-1.0])
        >>> x_t = 0.6 * x0 + 0.8 * eps
        >>> predict_noise("sample", x0, x_t, 0.6, 0.8), predict_noise("v_prediction", 0.6 * eps - 0.8 * x0, x_t, 0.6, 0.8)
        (tensor([-1.]), tensor([-1.]))
    """
    if prediction_type == DDPMPredictionType.EPSILON:
        return model_output
    if prediction_type == DDPMPredictionType.SAMPLE:
        return noise_from_original_sample(model_output, sample, alpha_t, sigma_t)
    # DDPMPredictionType.V_PREDICTION
    return alpha_t * model_output + sigma_t * sample


class StridedScheduleMixin:
    """Mixin for MONAI ``Scheduler`` subclasses that step along the schedule set by ``set_timesteps``.

    The host class must be a ``monai.networks.schedulers.Scheduler`` (it provides ``alphas_cumprod``,
    ``num_train_timesteps`` and ``timesteps``). It must call :meth:`_record_config` in its constructor.
    """

    alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    timesteps: torch.Tensor

    # ----------------------------------------------------------------------------------------------
    # construction helpers
    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _validate_common_args(num_train_timesteps: Any, schedule: Any, prediction_type: Any) -> None:
        if (
            isinstance(num_train_timesteps, bool)
            or not isinstance(num_train_timesteps, int)
            or num_train_timesteps < 1
        ):
            raise ValueError(f"`num_train_timesteps` must be a positive int, got {num_train_timesteps!r}.")
        if schedule not in NoiseSchedules:
            raise ValueError(
                f"Unknown `schedule` {schedule!r}; allowed: {sorted(NoiseSchedules.names)} "
                "(register more with monai.networks.schedulers.NoiseSchedules.add_def)."
            )
        if prediction_type not in _ALLOWED_PREDICTION_TYPES:
            raise ValueError(
                f"Unknown `prediction_type` {prediction_type!r}; allowed: {_ALLOWED_PREDICTION_TYPES}."
            )

    def _record_config(self, **kwargs: Any) -> None:
        """Store the constructor arguments so :meth:`get_config` can rebuild an identical scheduler."""
        self._init_kwargs = {k: (v.value if hasattr(v, "value") else v) for k, v in kwargs.items()}

    def get_config(self) -> dict[str, Any]:
        """A MONAI-bundle config of this scheduler: ``{"_target_": <dotted class path>, **constructor args}``.

        ``monai.bundle.ConfigParser({"s": scheduler.get_config()}).get_parsed_content("s")`` builds an
        identical scheduler (``set_timesteps`` must be called on it again).
        """
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **dict(self._init_kwargs)}

    # ----------------------------------------------------------------------------------------------
    # noise-schedule tables (float64 on the CPU; never mutated)
    # ----------------------------------------------------------------------------------------------
    def _alphas_cumprod64(self) -> torch.Tensor:
        table = getattr(self, "_abar64", None)
        if table is None:
            table = self.alphas_cumprod.detach().to(device="cpu", dtype=torch.float64).clone()
            self._abar64 = table
        return table

    def _alpha_cumprod_at(self, timestep: int) -> float:
        """``alphas_cumprod[timestep]`` as a Python float (float64)."""
        return float(self._alphas_cumprod64()[timestep])

    def _sqrt_tables_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(alphas_cumprod)`` and ``sqrt(1 - alphas_cumprod)`` as float32 on ``device`` (cached)."""
        cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = self.__dict__.setdefault(
            "_sqrt_table_cache", {}
        )
        key = str(device)
        if key not in cache:
            abar = self._alphas_cumprod64()
            cache[key] = (
                abar.sqrt().to(device=device, dtype=torch.float32),
                (1.0 - abar).sqrt().to(device=device, dtype=torch.float32),
            )
        return cache[key]

    # ----------------------------------------------------------------------------------------------
    # timestep schedule
    # ----------------------------------------------------------------------------------------------
    def _validate_num_inference_steps(self, num_inference_steps: Any) -> None:
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or not 1 <= num_inference_steps <= self.num_train_timesteps
        ):
            raise ValueError(
                f"`num_inference_steps` must be an int in [1, num_train_timesteps={self.num_train_timesteps}], "
                f"got {num_inference_steps!r}."
            )

    def _keep_last_steps(self, full_timesteps: torch.Tensor, strength: float) -> torch.Tensor:
        """The tail of ``full_timesteps`` that a run with ``strength`` visits."""
        num_steps = num_steps_for_strength(len(full_timesteps), strength)
        return full_timesteps[len(full_timesteps) - num_steps :].clone()

    def _timestep_index(self, timestep: int | torch.Tensor) -> tuple[int, int]:
        """``(timestep as int, its position in self.timesteps)``; ``ValueError`` when it is not there."""
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(
                    f"`timestep` must be a single timestep (all samples of a batch share it), got a tensor of "
                    f"shape {tuple(timestep.shape)}."
                )
            timestep = int(timestep.item())
        elif isinstance(timestep, bool) or not isinstance(timestep, int):
            try:
                as_int = int(timestep)
            except (TypeError, ValueError):
                raise ValueError(
                    f"`timestep` must be an int or a one-element tensor, got {timestep!r}."
                ) from None
            if as_int != timestep:
                raise ValueError(f"`timestep` must be an integer, got {timestep!r}.")
            timestep = as_int
        cached = self.__dict__.get("_timestep_lookup")
        if cached is None or cached[0] is not self.timesteps:
            values: Sequence[int] = self.timesteps.tolist()
            cached = (self.timesteps, {t: i for i, t in enumerate(values)}, values)
            self._timestep_lookup = cached
        index = cached[1].get(timestep)
        if index is None:
            values = cached[2]
            raise ValueError(
                f"`timestep` {timestep} is not in scheduler.timesteps ({len(values)} entries from {values[0]} down to "
                f"{values[-1]}); call step() with the entries of scheduler.timesteps, in order, after set_timesteps()."
            )
        return timestep, index

    def _batch_timesteps(self, timestep: int | torch.Tensor, batch_size: int) -> list[int]:
        """Validated timesteps of a batch step: ``[t]`` when all samples share ``t``, else one per sample.

        Accepts the forms of :meth:`_timestep_index` and, in addition, a 1-D tensor of ``batch_size``
        entries of ``self.timesteps`` (one per sample); if they are all equal the result is ``[t]``.
        """
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 1 and timestep.numel() > 1:
            if timestep.numel() != batch_size:
                raise ValueError(
                    f"`timestep` must be a single timestep or one per sample, shape ({batch_size},), got a tensor "
                    f"of shape {tuple(timestep.shape)}."
                )
            values = [self._timestep_index(value)[0] for value in timestep.tolist()]
            return values[:1] if len(set(values)) == 1 else values
        return [self._timestep_index(timestep)[0]]

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep that ``step(..., timestep, ...)`` lands on: the next entry of ``self.timesteps``.

        Args:
            timestep: an entry of ``self.timesteps``.

        Returns:
            The following entry of ``self.timesteps``, or ``-1`` after the last entry (the chain ends: the
            result is the clean sample, or the sample at the ``final`` noise level of the scheduler).

        Raises:
            ValueError: ``timestep`` is not in ``self.timesteps``.
        """
        _, index = self._timestep_index(timestep)
        if index + 1 < len(self.timesteps):
            return int(self._timestep_lookup[2][index + 1])
        return -1

    # ----------------------------------------------------------------------------------------------
    # forward process
    # ----------------------------------------------------------------------------------------------
    def _gather_sqrt_coefficients(
        self, reference: torch.Tensor, other: torch.Tensor, timesteps: torch.Tensor | int, other_name: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        if other.shape != reference.shape:
            raise ValueError(
                f"`{other_name}` shape {tuple(other.shape)} must equal the sample shape {tuple(reference.shape)}."
            )
        t = torch.as_tensor(timesteps, device=reference.device)
        if t.is_floating_point():
            if not torch.equal(t, t.round()):
                raise ValueError("`timesteps` must hold integer timesteps.")
        t = t.long()
        if t.ndim == 0:
            t = t.expand(reference.shape[0])
        if t.ndim != 1 or t.shape[0] != reference.shape[0]:
            raise ValueError(
                f"`timesteps` must be a scalar or have shape (B,) = ({reference.shape[0]},), got {tuple(t.shape)}."
            )
        if bool(((t < 0) | (t >= self.num_train_timesteps)).any()):
            raise ValueError(
                f"`timesteps` must lie in [0, num_train_timesteps={self.num_train_timesteps}), got {t.tolist()}."
            )
        sqrt_abar, sqrt_one_minus_abar = self._sqrt_tables_on(reference.device)
        shape = (-1,) + (1,) * (reference.ndim - 1)
        compute_dtype = torch.promote_types(reference.dtype, torch.float32)
        return (
            sqrt_abar[t].reshape(shape).to(compute_dtype),
            sqrt_one_minus_abar[t].reshape(shape).to(compute_dtype),
            compute_dtype,
        )

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """Noise clean samples to ``timesteps``: ``sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * noise``.

        Computed in float32 (at least) and returned in the dtype of ``original_samples``; the scheduler's
        tables are left untouched.

        Args:
            original_samples: clean samples ``(B, C, H, W[, D])``.
            noise: Gaussian noise of the same shape.
            timesteps: one timestep per sample ``(B,)``, or one for all (int or 0-dim tensor), each in
                ``[0, num_train_timesteps)``.

        Returns:
            Noisy samples, same shape and dtype as ``original_samples``.
        """
        sqrt_abar, sqrt_one_minus_abar, compute_dtype = self._gather_sqrt_coefficients(
            original_samples, noise, timesteps, "noise"
        )
        noisy = sqrt_abar * original_samples.to(compute_dtype) + sqrt_one_minus_abar * noise.to(compute_dtype)
        return noisy.to(original_samples.dtype)

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """The v-prediction target ``sqrt(abar_t) * noise - sqrt(1 - abar_t) * x_0`` (Salimans & Ho, 2022).

        Args:
            sample: clean samples ``x_0``, ``(B, C, H, W[, D])``.
            noise: Gaussian noise of the same shape.
            timesteps: as in :meth:`add_noise`.

        Returns:
            The velocity, same shape and dtype as ``sample``.
        """
        sqrt_abar, sqrt_one_minus_abar, compute_dtype = self._gather_sqrt_coefficients(
            sample, noise, timesteps, "noise"
        )
        velocity = sqrt_abar * noise.to(compute_dtype) - sqrt_one_minus_abar * sample.to(compute_dtype)
        return velocity.to(sample.dtype)

    # ----------------------------------------------------------------------------------------------
    # step helpers
    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _check_step_inputs(
        model_output: torch.Tensor, sample: torch.Tensor, allow_doubled_channels: bool
    ) -> None:
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise ValueError("`model_output` and `sample` must be torch tensors.")
        if sample.ndim < 2:
            raise ValueError(f"`sample` must be batched, shape (B, C, H, W[, D]), got {tuple(sample.shape)}.")
        same = model_output.shape == sample.shape
        doubled = (
            allow_doubled_channels
            and model_output.ndim == sample.ndim
            and model_output.shape[1] == 2 * sample.shape[1]
            and model_output.shape[2:] == sample.shape[2:]
            and model_output.shape[0] == sample.shape[0]
        )
        if not (same or doubled):
            raise ValueError(
                f"`model_output` shape {tuple(model_output.shape)} must equal the `sample` shape {tuple(sample.shape)}."
            )
