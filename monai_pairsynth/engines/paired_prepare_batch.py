"""Prepare-batch for linked diffusion training: one shared timestep (or, with a chosen probability, one per
modality, some of them clean), independent offset noise per modality."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType

from monai_pairsynth.losses import make_paired_target

__all__ = ["PairedDiffusionPrepareBatch", "offset_noise"]


def offset_noise(
    shape: Sequence[int],
    offset_noise_scale: float = 0.1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian noise plus one constant per image and channel (offset noise, Guttenberg 2023).

    ``noise = z + offset_noise_scale * c`` with ``z ~ N(0, I)`` of ``shape`` and ``c ~ N(0, 1)`` of shape
    ``(B, C, 1, ..., 1)`` broadcast over space. Lets the model change the mean brightness of an image, which
    plain DDPM noise (whose spatial mean tends to 0 at high resolution) barely can.

    Args:
        shape: ``(B, C, *spatial)``.
        offset_noise_scale: standard deviation of the per-image constant (0 gives plain Gaussian noise).
        generator: draws come from it (and on its device) when given, else from torch's global RNG on ``device``.
        device: where the result lives.
        dtype: floating dtype of the result.

    Returns:
        ``(B, C, *spatial)`` noise.
    """
    shape = tuple(int(s) for s in shape)
    draw_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=dtype)
    if offset_noise_scale > 0:
        const = torch.randn(
            shape[:2] + (1,) * (len(shape) - 2), generator=generator, device=draw_device, dtype=dtype
        )
        noise = noise + offset_noise_scale * const
    return noise.to(device) if device is not None else noise


class PairedDiffusionPrepareBatch(DiffusionPrepareBatch):
    """``prepare_batch`` of a MONAI ``SupervisedTrainer`` for linked (paired) diffusion.

    From a batch ``{modality: (B, C, *spatial), ...}`` of clean images in [-1, 1] it draws

    - ONE timestep per sample, uniform in ``[0, num_train_timesteps)``, shared by every modality;
    - for every modality independent Gaussian noise plus offset noise (:func:`offset_noise`);

    and returns ``(inputs, targets, (), {"noise": noise, "timesteps": timesteps})`` where ``inputs`` is
    ``{modality: x0}``, and ``targets`` is the structured dict of
    :func:`~monai_pairsynth.losses.make_paired_target` (regression target per modality, plus x0, noise and
    timesteps for the perceptual term). ``SupervisedTrainer`` then calls
    ``inferer(inputs, network, noise=..., timesteps=...)`` (a
    :class:`~monai_pairsynth.engines.PairedNoiseInferer`) and ``loss_function(prediction, targets)`` (a
    :class:`~monai_pairsynth.losses.PairedDiffusionLoss`). Keys other than the modalities are ignored.

    **Per-modality timesteps** (``independent_timestep_prob`` p > 0, the UniDiffuser idea applied to the
    linked denoisers): each sample is, with probability p, drawn *conditional*: every modality gets its own
    timestep uniform in ``[0, T)`` and, with probability ``clean_prob``, is instead **given clean** (t = 0,
    its clean image as the input, left out of the loss); at least one modality of a sample stays noised.
    The other samples keep the shared timestep (the joint case). Then ``kwargs["timesteps"]`` is
    ``{modality: (B,)}`` and ``kwargs["clean"]`` ``{modality: (B,) bool}`` (also in ``targets``), which
    :class:`~monai_pairsynth.engines.PairedNoiseInferer` and
    :class:`~monai_pairsynth.losses.PairedDiffusionLoss` understand. A model trained so can be sampled
    with any subset of modalities given clean (``PairedDiffusionInferer.sample(known=...)``).

    **Field of view.** When the batch holds ``fov_key`` (default ``"fov"``: the ``(B, 1, *spatial)`` {0, 1}
    mask of :func:`~monai_pairsynth.data.preprocessing_transforms` ``(fov_key="fov")``), it goes into
    ``targets["fov"]``, where :class:`~monai_pairsynth.losses.PairedDiffusionLoss` leaves the pixels outside
    the scan out of every term. It is not a modality: not noised, not an input of the network, no draw made for
    it. A batch without it gives exactly the targets it always did.

    Draw order, per batch: timesteps, then per modality (in ``modalities`` order) its iid noise and its offset
    constants, then (only when p > 0) the per-modality draws of :meth:`get_modality_timesteps`; with a
    ``generator`` the same seed gives the same draws, and p = 0 draws exactly what it always drew. Overridable hooks as in MONAI's
    ``DiffusionPrepareBatch``: :meth:`get_timesteps`, :meth:`get_noise`, :meth:`get_target`.

    Args:
        modalities: names of the modality keys of the batch.
        num_train_timesteps: T of the noise schedule.
        offset_noise_scale: std of the per-image, per-channel offset constant (the paper uses 0.1).
        generator: optional ``torch.Generator``; draws are made on its device, then moved to the batch device.
        prediction_type: ``"epsilon"`` (target = noise, default), ``"v_prediction"`` (target = the scheduler's
            ``get_velocity``) or ``"sample"`` (target = x0).
        scheduler: the MONAI noise scheduler; required for ``"v_prediction"``.
        independent_timestep_prob: probability that a sample gets per-modality timesteps (0, the default:
            every sample shares one timestep, as always).
        clean_prob: in such a sample, the probability that a modality is given clean (t = 0).
        fov_key: the batch key of the field-of-view mask handed to the loss when present (``None``: never).

    Raises (when called): ``KeyError`` naming a missing modality; ``ValueError`` naming the modalities and
    shapes when spatial shapes or batch sizes differ, or the modality holding NaN/Inf (checked on CPU
    batches, before they move to the device; batches already on an accelerator come from data validated where
    it was materialised, e.g. :class:`~monai_pairsynth.engines.DeviceTripletLoader`, and are not re-checked,
    which would cost a host sync every iteration).

    Example:
        >>> import torch
        >>> prep = PairedDiffusionPrepareBatch(("ct", "pet"), 1000, generator=torch.Generator().manual_seed(0))
        >>> batch = {"ct": torch.zeros(2, 1, 8, 8), "pet": torch.zeros(2, 1, 8, 8), "case_id": ["a", "b"]}
        >>> inputs, targets, args, kwargs = prep(batch)
        >>> sorted(inputs), tuple(kwargs["timesteps"].shape), tuple(kwargs["noise"]["pet"].shape)
        (['ct', 'pet'], (2,), (2, 1, 8, 8))
        >>> torch.equal(targets["target"]["ct"], kwargs["noise"]["ct"])
        True
        >>> cond = PairedDiffusionPrepareBatch(("ct", "pet"), 1000, independent_timestep_prob=1.0)
        >>> _, _, _, kw = cond(batch)
        >>> sorted(kw["timesteps"]), sorted(kw["clean"])
        (['ct', 'pet'], ['ct', 'pet'])
        >>> bool((kw["clean"]["ct"] & kw["clean"]["pet"]).any())  # one modality of each sample stays noised
        False
        >>> _, targets, _, _ = prep({**batch, "fov": torch.ones(2, 1, 8, 8)})
        >>> tuple(targets["fov"].shape)
        (2, 1, 8, 8)
    """

    def __init__(
        self,
        modalities: Sequence[str],
        num_train_timesteps: int,
        offset_noise_scale: float = 0.1,
        generator: torch.Generator | None = None,
        prediction_type: str = DDPMPredictionType.EPSILON,
        scheduler: Scheduler | None = None,
        independent_timestep_prob: float = 0.0,
        clean_prob: float = 0.5,
        fov_key: str | None = "fov",
    ) -> None:
        if isinstance(modalities, str):
            raise ValueError(f"modalities must be a sequence of names, got the string {modalities!r}.")
        modalities = tuple(modalities)
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(
                f"modalities must be a non-empty sequence of distinct names, got {list(modalities)}."
            )
        if isinstance(num_train_timesteps, bool) or int(num_train_timesteps) != num_train_timesteps:
            raise ValueError(f"num_train_timesteps must be an int >= 1, got {num_train_timesteps!r}.")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be an int >= 1, got {num_train_timesteps!r}.")
        offset_noise_scale = float(offset_noise_scale)
        if not math.isfinite(offset_noise_scale) or offset_noise_scale < 0:
            raise ValueError(f"offset_noise_scale must be a finite number >= 0, got {offset_noise_scale!r}.")
        allowed = [p.value for p in DDPMPredictionType]
        if prediction_type not in allowed:
            raise ValueError(f"prediction_type must be one of {allowed}, got {prediction_type!r}.")
        if prediction_type == DDPMPredictionType.V_PREDICTION and scheduler is None:
            raise ValueError("prediction_type 'v_prediction' needs the noise scheduler (scheduler=...).")
        if scheduler is not None and int(scheduler.num_train_timesteps) != int(num_train_timesteps):
            raise ValueError(
                f"num_train_timesteps={num_train_timesteps} differs from the scheduler's "
                f"num_train_timesteps={scheduler.num_train_timesteps}."
            )
        for name, value in (
            ("independent_timestep_prob", independent_timestep_prob),
            ("clean_prob", clean_prob),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0.0 <= float(value) <= 1.0
            ):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
        if independent_timestep_prob > 0 and len(modalities) < 2:
            raise ValueError("independent_timestep_prob > 0 needs at least two modalities.")
        if fov_key is not None and (not isinstance(fov_key, str) or fov_key in modalities):
            raise ValueError(f"fov_key must be None or a name other than the modalities', got {fov_key!r}.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        super().__init__(num_train_timesteps=int(num_train_timesteps))
        self.modalities = modalities
        self.offset_noise_scale = offset_noise_scale
        self.generator = generator
        self.prediction_type = str(DDPMPredictionType(prediction_type).value)
        self.scheduler = scheduler
        self.independent_timestep_prob = float(independent_timestep_prob)
        self.clean_prob = float(clean_prob)
        self.fov_key = fov_key

    # ---- hooks (MONAI DiffusionPrepareBatch names) ----
    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        """Noise for one modality's images ``(B, C, *spatial)``: Gaussian plus per-image offset constants."""
        return offset_noise(
            images.shape, self.offset_noise_scale, self.generator, images.device, images.dtype
        )

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` long timesteps uniform in ``[0, num_train_timesteps)`` (drawn once per batch, shared)."""
        draw_device = self.generator.device if self.generator is not None else images.device
        t = torch.randint(
            0, self.num_train_timesteps, (images.shape[0],), generator=self.generator, device=draw_device
        )
        return t.long().to(images.device)

    def get_modality_timesteps(
        self, timesteps: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-modality timesteps and clean flags from the shared ``(B,)`` timesteps (see the class docstring).

        Draws, in this order and always all of them: ``B`` uniforms (which samples are conditional), ``(M, B)``
        timesteps, ``(M, B)`` uniforms (which modalities are clean) and ``B`` modality indices (the one that
        stays noised when all were drawn clean), so the draws do not depend on their values.

        Returns:
            ``({modality: (B,) long}, {modality: (B,) bool})``; clean modalities have timestep 0.
        """
        batch, num = timesteps.shape[0], len(self.modalities)
        g = self.generator
        dev = g.device if g is not None else timesteps.device
        conditional = torch.rand(batch, generator=g, device=dev) < self.independent_timestep_prob
        own = torch.randint(0, self.num_train_timesteps, (num, batch), generator=g, device=dev)
        clean = torch.rand(num, batch, generator=g, device=dev) < self.clean_prob
        keep_noised = torch.randint(0, num, (batch,), generator=g, device=dev)
        all_clean = clean.all(dim=0)
        clean[keep_noised, torch.arange(batch, device=dev)] &= ~all_clean
        clean &= conditional
        shared = timesteps.to(dev).long()
        own = torch.where(conditional, own, shared)
        own = torch.where(clean, torch.zeros_like(own), own)
        device = timesteps.device
        return (
            {m: own[i].to(device) for i, m in enumerate(self.modalities)},
            {m: clean[i].to(device) for i, m in enumerate(self.modalities)},
        )

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Regression target per ``prediction_type``: the noise, the velocity or the clean images."""
        if self.prediction_type == DDPMPredictionType.V_PREDICTION:
            assert self.scheduler is not None
            return self.scheduler.get_velocity(images, noise, timesteps)
        if self.prediction_type == DDPMPredictionType.SAMPLE:
            return images
        return noise

    # ---- validation ----
    def validate_batch(self, batchdata: Any) -> dict[str, torch.Tensor]:
        """Return ``{modality: float tensor}`` (plain tensors) or raise an error naming the problem."""
        if not isinstance(batchdata, Mapping):
            raise ValueError(
                f"a paired diffusion batch must be a dict {{modality: tensor}} with keys {list(self.modalities)}, "
                f"got {type(batchdata).__name__}."
            )
        missing = [m for m in self.modalities if m not in batchdata]
        if missing:
            raise KeyError(
                f"batch is missing modality {missing}; expected {list(self.modalities)}, got keys {sorted(map(str, batchdata))}."
            )
        images: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            x = batchdata[m]
            if isinstance(x, np.ndarray):
                x = torch.as_tensor(x)
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"modality {m!r} must be a tensor, got {type(x).__name__}.")
            if isinstance(x, MetaTensor):
                x = x.as_tensor()
            if x.ndim < 3:
                raise ValueError(
                    f"modality {m!r} has shape {tuple(x.shape)}; expected a batch (B, C, *spatial) with >= 1 spatial dim."
                )
            images[m] = x if x.is_floating_point() else x.float()
        shapes = {m: tuple(x.shape) for m, x in images.items()}
        if len({(s[0], *s[2:]) for s in shapes.values()}) != 1:
            listing = ", ".join(f"{m} {s}" for m, s in shapes.items())
            raise ValueError(f"modalities differ in batch size or spatial shape: {listing}.")
        for m, x in images.items():
            if x.device.type != "cpu":
                continue  # on-device data is validated once where it is materialised: no host sync per step
            if not bool(torch.isfinite(x).all()):
                what = "NaN" if bool(torch.isnan(x).any()) else "Inf"
                raise ValueError(f"modality {m!r} contains {what} values (batch shape {tuple(x.shape)}).")
        return images

    def validate_fov(
        self, batchdata: Mapping[str, Any], images: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | None:
        """The batch's field-of-view mask as a float ``(B, 1, *spatial)`` {0, 1} tensor, or ``None`` without one.

        Raises ``ValueError`` naming the shapes when it does not match the modalities (batch size and spatial
        shape, one channel; ``(B, *spatial)`` gets its channel added) or holds values other than 0 and 1 (checked
        on CPU batches).
        """
        if self.fov_key is None or self.fov_key not in batchdata:
            return None
        fov = batchdata[self.fov_key]
        if isinstance(fov, np.ndarray):
            fov = torch.as_tensor(fov)
        if not isinstance(fov, torch.Tensor):
            raise ValueError(
                f"the field-of-view mask {self.fov_key!r} must be a tensor, got {type(fov).__name__}."
            )
        if isinstance(fov, MetaTensor):
            fov = fov.as_tensor()
        ref = images[self.modalities[0]]
        if fov.ndim == ref.ndim - 1:
            fov = fov.unsqueeze(1)
        if (fov.shape[0], fov.shape[1], *fov.shape[2:]) != (ref.shape[0], 1, *ref.shape[2:]):
            raise ValueError(
                f"the field-of-view mask {self.fov_key!r} has shape {tuple(fov.shape)}; the modalities need "
                f"{(ref.shape[0], 1, *tuple(ref.shape[2:]))}."
            )
        fov = fov.float()
        if fov.device.type == "cpu" and not bool(((fov == 0) | (fov == 1)).all()):
            raise ValueError(f"the field-of-view mask {self.fov_key!r} must hold only 0 and 1.")
        return fov

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[dict[str, torch.Tensor], dict, tuple, dict]:
        images = self.validate_batch(batchdata)
        fov = self.validate_fov(batchdata, images)
        if device is not None:
            images = {m: x.to(device=device, non_blocking=non_blocking, **kwargs) for m, x in images.items()}
            if fov is not None:
                fov = fov.to(device=device, non_blocking=non_blocking)
        reference = images[self.modalities[0]]
        timesteps = self.get_timesteps(reference)
        noise = {m: self.get_noise(images[m]) for m in self.modalities}
        if self.independent_timestep_prob <= 0:  # the joint case: nothing else drawn
            target = {m: self.get_target(images[m], noise[m], timesteps) for m in self.modalities}
            targets = make_paired_target(target, images, noise, timesteps, fov=fov)
            return images, targets, (), {"noise": noise, "timesteps": timesteps}
        own, clean = self.get_modality_timesteps(timesteps)
        target = {m: self.get_target(images[m], noise[m], own[m]) for m in self.modalities}
        targets = make_paired_target(target, images, noise, own, clean=clean, fov=fov)
        return images, targets, (), {"noise": noise, "timesteps": own, "clean": clean}
