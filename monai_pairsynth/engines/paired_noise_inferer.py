"""Training-time inferer of linked diffusion: noise every modality at its timestep, predict jointly.

:class:`PairedNoiseInferer` is the package's one training forward pass: the trainer's ``inferer`` and
``PairedDiffusionInferer.__call__`` (:mod:`monai_pairsynth.inferers`) both run it, so they accept the same
inputs and raise the same errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler

__all__ = ["MissingModalityError", "PairedNoiseInferer", "resolve_autocast_dtype"]

_AUTOCAST_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class MissingModalityError(KeyError, ValueError):
    """A modality of the batch has no noise, no timesteps or no prediction in a training forward pass.

    A ``KeyError`` (what the trainer's inferer raised) and a ``ValueError`` (what
    ``PairedDiffusionInferer.__call__`` raised before both ran the one forward pass), so either ``except`` works.
    """


def resolve_autocast_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """``None``, a dtype or a name (``"bfloat16"``, ``"bf16"``, ``"float16"``, ``"fp16"``) -> dtype or ``None``.

    Example:
        >>> resolve_autocast_dtype("bf16")
        torch.bfloat16
    """
    if value is None or value in (torch.bfloat16, torch.float16):
        return value  # type: ignore[return-value]
    if isinstance(value, str) and value.lower() in _AUTOCAST_DTYPES:
        return _AUTOCAST_DTYPES[value.lower()]
    raise ValueError(f"autocast dtype must be None, 'bfloat16' or 'float16', got {value!r}.")


class PairedNoiseInferer(Inferer):
    """The ``inferer`` of a ``SupervisedTrainer`` for a :class:`~monai_pairsynth.networks.PairedDiffusionModel`.

    The dict counterpart of MONAI's ``DiffusionInferer.__call__``: each modality is noised with the
    scheduler's ``add_noise`` at the shared ``timesteps`` (x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise), then
    ``network(noisy_dict, timesteps)`` predicts all modalities at once, so every denoiser sees the others'
    noisy images at the same timestep. Sampling lives in :mod:`monai_pairsynth.inferers`.

    With per-modality timesteps (``timesteps={modality: (B,)}`` and ``clean={modality: (B,) bool}``, from
    :class:`PairedDiffusionPrepareBatch` with ``independent_timestep_prob > 0``) each modality is noised at its
    own timesteps, a clean one enters as its clean image (t = 0), and the network gets the dict of timesteps.

    Args:
        scheduler: the MONAI noise scheduler used for training.
        autocast_dtype: run the network under ``torch.autocast`` of the inputs' device type with this dtype
            (``torch.bfloat16`` or ``"bfloat16"``; ``float16`` on CUDA only); ``None``: full precision. The
            noising and the loss stay in float32, and no ``GradScaler`` is needed for bfloat16.
        compile_network: run the network through ``torch.compile`` (compiled once, at the first call, for the
            network it is called with; opt-in: compilation takes a while and needs a C++ compiler on the CPU).
            The trainer's ``network`` stays the original module, so checkpoints and EMA are unaffected.
        check_finite: passed to the network (``PairedDiffusionModel.forward``) when ``False``, to skip its
            NaN/Inf check (a host sync on a GPU) where the data was validated where it entered.

    Example:
        >>> import torch
        >>> from monai.networks.schedulers import DDPMScheduler
        >>> inferer = PairedNoiseInferer(DDPMScheduler(1000))
        >>> net = lambda noisy, t: {k: torch.zeros_like(v) for k, v in noisy.items()}
        >>> x = {"ct": torch.zeros(2, 1, 8, 8), "pet": torch.zeros(2, 1, 8, 8)}
        >>> out = inferer(x, net, noise={k: torch.randn_like(v) for k, v in x.items()}, timesteps=torch.tensor([1, 2]))
        >>> sorted(out), tuple(out["pet"].shape)
        (['ct', 'pet'], (2, 1, 8, 8))
    """

    def __init__(
        self,
        scheduler: Scheduler,
        autocast_dtype: torch.dtype | str | None = None,
        check_finite: bool = True,
        compile_network: bool = False,
    ) -> None:
        super().__init__()
        if not hasattr(scheduler, "add_noise"):
            raise ValueError(f"scheduler must be a MONAI noise Scheduler, got {type(scheduler).__name__}.")
        self.scheduler = scheduler
        self.autocast_dtype = resolve_autocast_dtype(autocast_dtype)
        self.check_finite = bool(check_finite)
        self.compile_network = bool(compile_network)
        self._compiled: tuple[int, Callable] | None = None

    def __call__(  # type: ignore[override]
        self,
        inputs: Mapping[str, torch.Tensor],
        network: Callable[..., Mapping[str, torch.Tensor]],
        noise: Mapping[str, torch.Tensor],
        timesteps: torch.Tensor | Mapping[str, torch.Tensor],
        clean: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Args:
            inputs: ``{modality: (B, C, *spatial)}`` clean images x0.
            network: callable ``(noisy: dict, timesteps) -> dict`` of predictions.
            noise: ``{modality: (B, C, *spatial)}`` noise to add.
            timesteps: ``(B,)`` timesteps shared by all modalities, or ``{modality: (B,)}``.
            clean: ``{modality: (B,) bool}``: samples where the modality enters clean, not noised.

        Returns:
            ``{modality: (B, C, *spatial)}`` predictions.

        Raises:
            MissingModalityError: (a ``KeyError`` and a ``ValueError``) a modality of ``inputs`` without noise,
                without timesteps (per-modality ``timesteps``) or without a prediction.
            ValueError: the network returned something else than a dict, or a prediction of another shape.
        """
        missing = [m for m in inputs if m not in noise]
        if missing:
            raise MissingModalityError(f"no noise given for modality {missing}; noise has {sorted(noise)}.")
        per_modality = isinstance(timesteps, Mapping)
        if per_modality:
            missing = [m for m in inputs if m not in timesteps]
            if missing:
                raise MissingModalityError(
                    f"no timesteps given for modality {missing}; timesteps has {sorted(timesteps)}."
                )
        noisy = {
            m: self.scheduler.add_noise(
                original_samples=x, noise=noise[m], timesteps=timesteps[m] if per_modality else timesteps
            )
            for m, x in inputs.items()
        }
        for m, flags in (clean or {}).items():
            if m in noisy:  # a given modality: its clean image
                mask = flags.to(device=noisy[m].device, dtype=torch.bool)
                noisy[m] = torch.where(mask.reshape(-1, *(1,) * (noisy[m].ndim - 1)), inputs[m], noisy[m])
        extra = {} if self.check_finite else {"check_finite": False}
        if self.compile_network:
            if self._compiled is None or self._compiled[0] != id(network):
                self._compiled = (id(network), torch.compile(network, dynamic=False))
            network = self._compiled[1]
        if self.autocast_dtype is None:
            prediction = network(noisy, timesteps, **extra)
        else:
            device_type = next(iter(noisy.values())).device.type
            with torch.autocast(device_type=device_type, dtype=self.autocast_dtype):
                prediction = network(noisy, timesteps, **extra)
        if not isinstance(prediction, Mapping):
            raise ValueError(
                f"the network must return a dict {{modality: tensor}}, got {type(prediction).__name__}."
            )
        for m, x in noisy.items():
            if m not in prediction:
                raise MissingModalityError(
                    f"the network returned no prediction for modality {m!r}; got {sorted(prediction)}."
                )
            if tuple(prediction[m].shape) != tuple(x.shape):
                raise ValueError(
                    f"prediction of modality {m!r} has shape {tuple(prediction[m].shape)}, input {tuple(x.shape)}."
                )
        return dict(prediction)
