"""Lock-step sampling of a :class:`~monai_pairsynth.networks.PairedDiffusionModel`.

All linked denoisers are stepped together: one model call per step predicts every modality, and every
modality has its own scheduler instance (multistep solvers such as DPM-Solver++ keep a history per
modality). On top of plain sampling from noise the inferer offers

* **noise seeding** (SDEdit-style): a real triplet is noised to ``strength`` of the schedule and sampling
  starts there (the Paired Diffusion paper uses 0.8-0.9);
* **known modalities** (mask -> PET + CT, CT -> PET + mask, ...): ``known={"label": mask}``. A model trained
  with per-modality timesteps takes them **clean, at t = 0**; any other is given them by RePaint-style
  clamping (replaced, before every model call, by the data noised to the current level).

Reproducibility: one draw from the user's ``generator`` gives every requested sample its own seed, and all
of that sample's randomness (its starting noise, the noise of stochastic scheduler steps) comes from its
own generator. A sample therefore depends only on its seed, not on ``batch_size`` or on its position in a
batch: splitting a request into batches gives the same samples as one batch (up to float round-off of
batched convolutions).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler
from monai.networks.utils import eval_mode
from monai.utils import ensure_tuple_rep
from torch import nn
from tqdm import tqdm

from monai_pairsynth.engines import PairedNoiseInferer, load_paired_checkpoint, load_paired_weights
from monai_pairsynth.modalities import ModalitySpec, resolve_specs
from monai_pairsynth.networks import PairedDiffusionModel
from monai_pairsynth.schedulers import (
    DEFAULT_SAMPLER,
    DEFAULT_SAMPLER_STEPS,
    StridedDDPMScheduler,
    make_scheduler,
)

from .sampling_steps import (
    AmpDtype,
    _has_deterministic_step,
    _null_context,
    _plain,
    _resolve_amp_dtype,
    _set_timesteps,
    _strided_equivalent,
    check_conditioning,
    draw_seeds,
    prepare_input,
    resolve_conditioning,
)

__all__ = ["AmpDtype", "PairedDiffusionInferer"]


@dataclass(frozen=True)
class _SamplingPlan:
    """What every batch of one :meth:`PairedDiffusionInferer.sample` call shares (inputs already normalised)."""

    modalities: tuple[str, ...]
    spatial: tuple[int, ...]
    in_channels: int
    proto: Scheduler  # copied per modality (and per sample for stochastic steps)
    timesteps: list[int]
    noiser: Scheduler  # forward noising of known / seed inputs
    per_sample_steps: bool
    known: dict[str, torch.Tensor]
    seed: dict[str, torch.Tensor]
    device: torch.device
    amp: torch.dtype | None
    clean_known: bool = False  # known modalities enter clean at t = 0 (else clamped to the current level)


class PairedDiffusionInferer(Inferer):
    """Sample aligned multi-modality images (e.g. PET/CT/tumour-mask triplets) from a linked diffusion model.

    Like MONAI's ``DiffusionInferer`` the inferer holds the *noise* configuration and takes the network as an
    argument. It holds what the network was trained with: the noise schedule, the modality specs (to decode
    [-1, 1] back to HU / SUV / binary masks), the training spacing (for the output affine), the training
    spatial shape (the default sample shape) and the offset-noise scale. :meth:`from_checkpoint` reads all of
    that, and the network, from a checkpoint written by the training engine.

    Args:
        num_train_timesteps: number of diffusion steps the network was trained with.
        schedule: MONAI noise schedule name (``"linear_beta"``, ``"scaled_linear_beta"``, ``"cosine"``, ...).
        prediction_type: what the network predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        schedule_args: extra arguments of the schedule function (e.g. ``{"beta_start": 1e-4, "beta_end": 0.02}``).
        specs: ``{modality: ModalitySpec}`` (or a list of names with default specs) used to decode outputs and to
            normalise physical-unit inputs; ``None`` uses the defaults for the model's modality names.
        spacing: voxel spacing of the training data in mm (a float or one value per spatial dim); it is written
            into the output affine. ``None`` gives unit spacing.
        spatial_shape: default spatial shape of generated samples (usually the training patch size).
        offset_noise_scale: scale ``s`` of the offset noise ``s * N(0, 1)`` added per image and channel to the
            Gaussian noise in training; sampling starts from the same distribution.
        clean_conditioning: the network was trained with per-modality timesteps and clean (t = 0) modalities
            (checkpoint key ``per_modality_timesteps``): ``sample(known=...)`` feeds them clean by default.

    :attr:`last_conditioning`: how the last :meth:`sample` call took known modalities (``"clean"``,
    ``"clamp"``, or ``None`` when nothing was known).

    Example:
        >>> import torch
        >>> from monai_pairsynth.networks import PairedDiffusionModel
        >>> model = PairedDiffusionModel(("ct", "pet", "label"), channels=(8, 16),
        ...                              attention_levels=(False, False), norm_num_groups=4)
        >>> inferer = PairedDiffusionInferer(spacing=2.0, spatial_shape=(16, 16))
        >>> out = inferer.sample(model, num_samples=2, scheduler="dpmpp", num_inference_steps=2,
        ...                      generator=torch.Generator().manual_seed(0))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'ct': (2, 1, 16, 16), 'pet': (2, 1, 16, 16), 'label': (2, 1, 16, 16)}
        >>> sorted(out["label"].unique().tolist()) in ([0.0], [1.0], [0.0, 1.0])  # decoded mask is binary
        True
        >>> out["ct"].affine[0].diagonal().tolist()  # training spacing in the (MONAI 4x4) affine
        [2.0, 2.0, 1.0, 1.0]
        >>> cond = inferer.sample(model, known={"label": out["label"]}, num_inference_steps=2,
        ...                       generator=torch.Generator().manual_seed(1))  # mask -> CT + PET
        >>> bool(torch.equal(cond["label"], out["label"]))
        True
        >>> inferer.last_conditioning  # this model was not trained with per-modality timesteps
        'clamp'
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        prediction_type: str = "epsilon",
        schedule_args: Mapping[str, Any] | None = None,
        specs: Sequence[str] | Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
        spacing: float | Sequence[float] | None = None,
        spatial_shape: Sequence[int] | None = None,
        offset_noise_scale: float = 0.1,
        clean_conditioning: bool = False,
    ) -> None:
        super().__init__()
        if int(num_train_timesteps) < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}.")
        allowed_pred = ("epsilon", "v_prediction", "sample")
        prediction_type = getattr(prediction_type, "value", prediction_type)
        if prediction_type not in allowed_pred:
            raise ValueError(f"prediction_type must be one of {list(allowed_pred)}, got {prediction_type!r}.")
        if float(offset_noise_scale) < 0:
            raise ValueError(f"offset_noise_scale must be >= 0, got {offset_noise_scale}.")
        if spacing is not None:
            values = [spacing] if isinstance(spacing, (int, float)) else list(spacing)
            if not values or any(not float(v) > 0 for v in values):
                raise ValueError(
                    f"spacing must be positive (a number or one per spatial dim), got {spacing}."
                )
        if spatial_shape is not None and (
            len(spatial_shape) not in (2, 3) or any(int(s) < 1 for s in spatial_shape)
        ):
            raise ValueError(f"spatial_shape must be 2 or 3 positive sizes, got {spatial_shape}.")
        self.num_train_timesteps = int(num_train_timesteps)
        self.schedule = str(schedule)
        self.prediction_type = str(prediction_type)
        self.schedule_args = dict(schedule_args or {})
        self.specs = None if specs is None else resolve_specs(specs)
        self.spacing = spacing
        self.spatial_shape = None if spatial_shape is None else tuple(int(s) for s in spatial_shape)
        self.offset_noise_scale = float(offset_noise_scale)
        self.clean_conditioning = bool(clean_conditioning)
        self.last_conditioning: str | None = None
        # the forward (noising) process, shared by every scheduler of this schedule; raises on unknown names
        self.noise_schedule = Scheduler(self.num_train_timesteps, self.schedule, **self.schedule_args)

    # ------------------------------------------------------------------ construction from a checkpoint
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike | Mapping[str, Any],
        map_location: str | torch.device = "cpu",
        use_ema: bool = True,
    ) -> tuple[PairedDiffusionInferer, nn.Module]:
        """Build the inferer and the network from a checkpoint written by the training engine.

        The inferer takes the checkpoint's noise schedule (``noise_scheduler``), ``modality_specs``,
        ``spatial_size``, ``spacing``, ``offset_noise_scale`` (0.1 when absent) and ``per_modality_timesteps``
        (absent in older checkpoints: known modalities are clamped, as before).

        Args:
            checkpoint: path of a checkpoint saved by :func:`monai_pairsynth.engines.save_paired_checkpoint`
                (or the loaded checkpoint dict).
            map_location: device the weights are loaded onto.
            use_ema: load the exponential-moving-average weights when the checkpoint has them.

        Returns:
            ``(inferer, model)``; the model is in eval mode on ``map_location``.

        Raises:
            FileNotFoundError: no file at ``checkpoint``.
            ValueError: not a checkpoint of this package, or its weights do not fit its model configuration.
        """
        if isinstance(checkpoint, Mapping):
            ckpt = dict(checkpoint)
            if "model_config" not in ckpt:
                raise ValueError(
                    f"the checkpoint dict has no 'model_config' (keys: {sorted(ckpt)}); is it a monai_pairsynth "
                    "paired diffusion checkpoint?"
                )
            model = load_paired_weights(PairedDiffusionModel(**ckpt["model_config"]), ckpt, use_ema=use_ema)
            model = model.to(map_location)
        else:
            model, ckpt = load_paired_checkpoint(checkpoint, map_location=map_location, use_ema=use_ema)
        return cls(**cls.config_from_checkpoint(ckpt)), model.eval()

    @staticmethod
    def config_from_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments of the inferer stored in a training checkpoint dict."""
        sched = dict(checkpoint.get("noise_scheduler") or {})
        offset = checkpoint.get("offset_noise_scale")
        per_modality = dict(checkpoint.get("per_modality_timesteps") or {})
        clean = (
            float(per_modality.get("independent_timestep_prob") or 0) > 0
            and float(per_modality.get("clean_prob") or 0) > 0
        )
        return {
            "num_train_timesteps": int(sched.get("num_train_timesteps", 1000)),
            "schedule": sched.get("schedule", "linear_beta"),
            "prediction_type": sched.get("prediction_type", "epsilon"),
            "schedule_args": dict(sched.get("schedule_args") or {}),
            "specs": checkpoint.get("modality_specs"),
            "spacing": checkpoint.get("spacing"),
            "spatial_shape": checkpoint.get("spatial_size"),
            "offset_noise_scale": 0.1 if offset is None else float(offset),
            "clean_conditioning": clean,
        }

    # ------------------------------------------------------------------ training-style forward pass
    def __call__(  # type: ignore[override]
        self,
        inputs: Mapping[str, torch.Tensor],
        network: nn.Module,
        noise: Mapping[str, torch.Tensor],
        timesteps: torch.Tensor | Mapping[str, torch.Tensor],
        clean: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Noise every modality to ``timesteps`` and return the network's predictions (a training forward pass).

        It runs the trainer's forward pass, :class:`~monai_pairsynth.engines.PairedNoiseInferer`, on this
        inferer's noise schedule: the same inputs are accepted and the same errors raised.

        Args:
            inputs: ``{modality: (B, C, H, W[, D])}`` clean images in [-1, 1].
            network: the linked model.
            noise: ``{modality: noise}`` of the same shapes.
            timesteps: ``(B,)`` timesteps shared by all modalities, or ``{modality: (B,)}``, each modality at its
                own timesteps.
            clean: ``{modality: (B,) bool}``: samples where the modality enters clean (t = 0), not noised.

        Raises:
            monai_pairsynth.engines.MissingModalityError: (a ``KeyError`` and a ``ValueError``) a modality
                without noise, timesteps or prediction.
        """
        return PairedNoiseInferer(self.noise_schedule)(inputs, network, noise, timesteps, clean=clean)

    # ------------------------------------------------------------------ schedulers
    def _scheduler_prototype(self, scheduler: str | Scheduler) -> Scheduler:
        if isinstance(scheduler, str):
            return make_scheduler(
                scheduler,
                num_train_timesteps=self.num_train_timesteps,
                schedule=self.schedule,
                prediction_type=self.prediction_type,
                # the data live in [-1, 1] by construction (ModalitySpec.normalize): clipping the x0
                # estimate keeps a multistep solver from extrapolating an early, poor estimate off the range
                clip_sample=True,
                **self.schedule_args,
            )
        if not isinstance(scheduler, Scheduler):
            raise ValueError(
                "scheduler must be a name ('ddpm', 'ddim', 'dpmpp') or a MONAI Scheduler instance, "
                f"got {type(scheduler).__name__}."
            )
        proto = copy.deepcopy(scheduler)
        if proto.num_train_timesteps != self.num_train_timesteps:
            raise ValueError(
                f"the scheduler has num_train_timesteps={proto.num_train_timesteps} but the network was trained "
                f"with {self.num_train_timesteps}."
            )
        pred = getattr(
            getattr(proto, "prediction_type", None), "value", getattr(proto, "prediction_type", None)
        )
        if pred is not None and pred != self.prediction_type:
            raise ValueError(
                f"the scheduler has prediction_type={pred!r} but the network predicts {self.prediction_type!r}."
            )
        ref = self.noise_schedule.alphas_cumprod
        if not torch.allclose(proto.alphas_cumprod.detach().cpu().float(), ref, rtol=1e-4, atol=1e-6):
            raise ValueError(
                f"the scheduler's noise schedule differs from the one the network was trained with "
                f"(schedule={self.schedule!r}, schedule_args={self.schedule_args}); build the scheduler with the "
                "training schedule."
            )
        return _strided_equivalent(proto)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        num_samples: int | None = None,
        spatial_shape: Sequence[int] | None = None,
        scheduler: str | Scheduler = DEFAULT_SAMPLER,
        num_inference_steps: int = DEFAULT_SAMPLER_STEPS,
        generator: torch.Generator | None = None,
        sample_seeds: Sequence[int] | None = None,
        progress: bool = False,
        batch_size: int = 16,
        amp_dtype: torch.dtype | str | None = None,
        seed_sample: Mapping[str, torch.Tensor] | None = None,
        strength: float = 1.0,
        known: Mapping[str, torch.Tensor] | None = None,
        inputs_normalized: bool = False,
        decode: bool = True,
        device: str | torch.device | None = None,
        conditioning: str = "auto",
    ) -> dict[str, MetaTensor]:
        """Generate ``num_samples`` aligned samples, stepping every modality's denoiser in lock-step.

        Args:
            model: a :class:`~monai_pairsynth.networks.PairedDiffusionModel` (anything with ``.modalities``,
                ``.spatial_dims`` and ``forward(noisy: dict, timesteps) -> dict``). It is put in eval mode for the
                call and restored afterwards.
            num_samples: number of samples; ``None`` takes the batch size of ``seed_sample`` / ``known``.
            spatial_shape: ``(H, W[, D])``; ``None`` takes it from ``seed_sample`` / ``known``, else from the
                inferer's ``spatial_shape``.
            scheduler: ``"ddpm"``, ``"ddim"``, ``"dpmpp"`` (DPM-Solver++ 2M), or a MONAI ``Scheduler`` instance
                (deep-copied once per modality and batch, never modified). MONAI's own ``DDPMScheduler`` /
                ``DDIMScheduler`` are replaced by this package's corrected strided equivalents.
            num_inference_steps: number of denoising steps (at most the number of training steps).
            generator: ``torch.Generator`` driving all randomness; the same seed gives the same samples on the
                same device. ``None`` draws from torch's global generator.
            sample_seeds: one integer seed per sample instead of ``generator``: sample ``i`` is fully determined
                by ``sample_seeds[i]`` (and the other arguments), so any subset of a run can be regenerated.
            progress: show a tqdm progress bar over all steps.
            batch_size: largest batch given to the network; larger requests are split.
            amp_dtype: ``"bf16"`` / ``"fp16"`` (or the torch dtype) runs the network under CUDA autocast; the
                scheduler arithmetic stays float32. Ignored, with a warning, on CPU.
            seed_sample: ``{modality: (B, C, H, W[, D])}`` (or ``(C, H, W[, D])``) real data to start from; every
                modality of the model must be present (extra keys are ignored). ``B`` must equal ``num_samples``
                or divide it (sample ``i`` uses seed ``i % B``).
            strength: fraction of the schedule the seed is noised to, in (0, 1]. With ``strength=1`` sampling starts
                from pure noise and the seed's content is not used (only its shape); with a smaller value it is
                noised to ``timesteps[0]`` of the truncated schedule and only the remaining steps are run.
            known: ``{modality: (B, C, H, W[, D])}`` (or ``(C, H, W[, D])``) for any proper subset of the
                modalities, generated from (conditional sampling); how they enter is ``conditioning``. The output
                returns them exactly as given. Batch sizes follow the rule of ``seed_sample``.
            inputs_normalized: ``False`` (default): ``seed_sample`` and ``known`` are in physical units (HU, SUV,
                {0, 1}) and are normalised with the specs; ``True``: they are already in the diffusion range
                [-1, 1] (as after this package's preprocessing).
            decode: ``True`` returns physical units (HU, SUV, a strictly binary {0, 1} mask); ``False`` returns
                the same samples in [-1, 1] (images clamped, masks in {-1, 1}).
            device: sampling device; ``None`` uses the model's.
            conditioning: how ``known`` modalities enter: ``"clean"``, at t = 0 at every step (as a model trained
                with per-modality timesteps learnt; their denoisers are not run); ``"clamp"``, replaced before every
                model call by the data noised to the current level with the sample's fixed noise (RePaint);
                ``"auto"``: ``"clean"`` if ``clean_conditioning`` (from the checkpoint), else ``"clamp"``. Logged,
                and kept in :attr:`last_conditioning`.

        Returns:
            ``{modality: MetaTensor (num_samples, C, H, W[, D])}``, float32 on ``device``, with an affine carrying
            the training spacing (a batch: ``decollate_batch`` gives one case per element).

        Raises:
            ValueError: for an unknown or missing modality, a wrong shape, ``strength`` outside (0, 1],
                ``num_inference_steps`` outside [1, num_train_timesteps], a bad ``amp_dtype`` or ``batch_size``.
        """
        net = getattr(model, "module", model)  # DataParallel / DDP wrappers
        modalities = tuple(getattr(net, "modalities", ()) or ())
        spatial_dims = getattr(net, "spatial_dims", None)
        if not modalities or spatial_dims not in (2, 3):
            raise ValueError(
                "model must expose .modalities and .spatial_dims (2 or 3) like PairedDiffusionModel, "
                f"got {type(net).__name__}."
            )
        in_channels = int(getattr(net, "in_channels", 1))
        specs = self._specs_for(modalities)

        # ---- scalar arguments
        if not 0.0 < float(strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}.")
        strength = float(strength)
        if isinstance(num_inference_steps, bool) or int(num_inference_steps) != num_inference_steps:
            raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}.")
        if not 1 <= int(num_inference_steps) <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}] (the number of training steps), "
                f"got {num_inference_steps}."
            )
        num_inference_steps = int(num_inference_steps)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        batch_size = int(batch_size)
        if device is None:
            param = next(iter(net.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        device = torch.device(device)
        amp = _resolve_amp_dtype(amp_dtype)
        if amp is not None and device.type != "cuda":
            warnings.warn(
                f"amp_dtype={amp_dtype!r} is ignored on device {device}: mixed precision is used on CUDA only; "
                "sampling runs in float32.",
                UserWarning,
                stacklevel=2,
            )
            amp = None

        # ---- tensor arguments
        known = check_conditioning(known, seed_sample, strength, modalities)
        mode = resolve_conditioning(conditioning, known, self.clean_conditioning, net)
        named: dict[str, tuple[str, torch.Tensor]] = {}
        for m, x in known.items():
            named[f"known['{m}']"] = (m, x)
        for m in modalities if seed_sample is not None else ():
            named[f"seed_sample['{m}']"] = (m, seed_sample[m])  # type: ignore[index]
        batched: dict[str, torch.Tensor] = {}
        for name, (_m, x) in named.items():
            batched[name] = self._as_batch(name, x, spatial_dims, in_channels)

        spatial = self._resolve_spatial_shape(spatial_shape, batched, spatial_dims)
        factor = int(getattr(net, "downsample_factor", 1))
        if any(s % factor for s in spatial):
            raise ValueError(
                f"spatial shape {spatial} is not divisible by {factor}, the downsampling factor of the network "
                f"(2**(len(channels) - 1))."
            )
        if sample_seeds is not None:
            if generator is not None:
                raise ValueError("pass either generator or sample_seeds, not both.")
            if num_samples is None:
                num_samples = len(sample_seeds)
        num_samples = self._resolve_num_samples(num_samples, batched)
        if sample_seeds is not None and len(sample_seeds) != num_samples:
            raise ValueError(
                f"sample_seeds has {len(sample_seeds)} seeds for num_samples={num_samples}; give one per sample."
            )

        known_norm = {
            m: prepare_input(batched[f"known['{m}']"], f"known['{m}']", specs[m], device, inputs_normalized)
            for m in known
        }
        seed_norm = (
            {
                m: prepare_input(
                    batched[f"seed_sample['{m}']"], f"seed_sample['{m}']", specs[m], device, inputs_normalized
                )
                for m in modalities
            }
            if seed_sample is not None and strength < 1.0
            else {}
        )

        # ---- schedulers: one prototype, copied per modality (and per sample for stochastic steps)
        proto = self._scheduler_prototype(scheduler)
        _set_timesteps(proto, num_inference_steps, device, strength)
        timesteps = [int(t) for t in proto.timesteps.tolist()]
        if not timesteps:
            raise ValueError(
                f"strength={strength} with num_inference_steps={num_inference_steps} leaves no denoising step; "
                "raise strength or num_inference_steps."
            )
        noiser = copy.deepcopy(self.noise_schedule)
        per_sample_steps = not _has_deterministic_step(proto)

        seeds = draw_seeds(sample_seeds, generator, num_samples)  # one per sample: independent of batch_size

        plan = _SamplingPlan(
            modalities,
            spatial,
            in_channels,
            proto,
            timesteps,
            noiser,
            per_sample_steps,
            known_norm,
            seed_norm,
            device,
            amp,
            clean_known=mode == "clean",
        )
        samples = self._sample_in_batches(model, plan, seeds, batch_size, progress)
        self.last_conditioning = mode
        return self._finalise(
            samples, known, known_norm, specs, spatial_dims, inputs_normalized, decode, device
        )

    def _sample_in_batches(
        self, model: nn.Module, plan: _SamplingPlan, seeds: list[int], batch_size: int, progress: bool
    ) -> dict[str, torch.Tensor]:
        """Every sample in batches of ``batch_size`` (each with its own seed), with one progress bar; returns
        ``{modality: (N, C, *spatial)}`` in the normalised range."""
        num_samples = len(seeds)
        chunks: dict[str, list[torch.Tensor]] = {m: [] for m in plan.modalities}
        bar = tqdm(
            total=len(plan.timesteps) * ((num_samples + batch_size - 1) // batch_size),
            disable=not progress,
            desc="sampling",
            unit="step",
        )
        with eval_mode(model), bar:
            for start in range(0, num_samples, batch_size):
                idx = list(range(start, min(start + batch_size, num_samples)))
                out = self._sample_batch(model, plan, [seeds[i] for i in idx], idx, bar)
                for m in plan.modalities:
                    chunks[m].append(out[m])
        return {m: torch.cat(chunks[m]) for m in plan.modalities}

    def _sample_batch(
        self, model: nn.Module, plan: _SamplingPlan, seeds: list[int], indices: list[int], bar: tqdm
    ) -> dict[str, torch.Tensor]:
        modalities, spatial, in_channels, device = (
            plan.modalities,
            plan.spatial,
            plan.in_channels,
            plan.device,
        )
        proto, timesteps, noiser, known, seed = plan.proto, plan.timesteps, plan.noiser, plan.known, plan.seed
        batch = len(seeds)
        gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        # noise of every modality, drawn per sample in a fixed order: epsilon + offset (as in training)
        noise: dict[str, torch.Tensor] = {}
        offset_shape = (in_channels,) + (1,) * len(spatial)
        draws: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
        for g in gens:
            for m in modalities:
                eps = torch.randn((in_channels, *spatial), generator=g, device=device)
                offset = torch.randn(offset_shape, generator=g, device=device)
                draws[m].append(eps + self.offset_noise_scale * offset)
        noise = {m: torch.stack(draws[m]) for m in modalities}

        def rows(x: torch.Tensor) -> torch.Tensor:  # tile a (B0, ...) input onto this batch's sample indices
            return x[torch.tensor([i % x.shape[0] for i in indices], device=x.device)]

        known_b = {m: rows(x) for m, x in known.items()}
        t0 = torch.full((batch,), timesteps[0], device=device, dtype=torch.long)
        if seed:  # noise seeding: start from the real data noised to timesteps[0]
            sample = {m: noiser.add_noise(rows(seed[m]), noise[m], t0) for m in modalities}
        else:  # pure noise: the t=T marginal of the forward process
            sample = {m: noise[m].clone() for m in modalities}
        free = [m for m in modalities if m not in known_b]

        # the strided DDPM steps the whole batch at once, sample i drawing its noise from gens[i] (the same
        # draws as a per-sample loop); other stochastic schedulers step sample by sample
        per_sample_steps = plan.per_sample_steps
        batched_generators = per_sample_steps and isinstance(proto, StridedDDPMScheduler)
        if per_sample_steps and not batched_generators:
            sched = {m: [copy.deepcopy(proto) for _ in range(batch)] for m in free}
        else:
            sched = {m: [copy.deepcopy(proto)] for m in free}

        amp = plan.amp
        autocast = torch.autocast(device_type="cuda", dtype=amp) if amp is not None else _null_context()
        clean = plan.clean_known  # known modalities stay clean at t = 0 and their denoisers are not run
        sample.update(known_b if clean else {})
        for t in timesteps:
            t_batch = torch.full((batch,), t, device=device, dtype=torch.long)
            t_model = {m: t_batch * (m not in known_b) for m in modalities} if clean else t_batch
            extra = {"predict": free} if clean else {}
            for m, x0 in () if clean else known_b.items():  # clamp to the current noise level
                sample[m] = noiser.add_noise(x0, noise[m], t_batch)
            with autocast:
                model_output = model(sample, t_model, **extra)
            for m in free:
                output = model_output[m].float()
                if batched_generators:
                    sample[m] = sched[m][0].step(output, t, sample[m], generator=gens)[0]
                elif per_sample_steps:
                    sample[m] = torch.cat(
                        [
                            sched[m][i].step(output[i : i + 1], t, sample[m][i : i + 1], generator=gens[i])[0]
                            for i in range(batch)
                        ]
                    )
                else:
                    sample[m] = sched[m][0].step(output, t, sample[m])[0]
            bar.update(1)
        for m, x0 in known_b.items():
            sample[m] = x0
        return sample

    # ------------------------------------------------------------------ helpers
    def _specs_for(self, modalities: tuple[str, ...]) -> dict[str, ModalitySpec]:
        if self.specs is None:
            return resolve_specs(modalities)
        missing = [m for m in modalities if m not in self.specs]
        if missing:
            raise ValueError(
                f"the inferer has no modality spec for {missing}; its specs cover {sorted(self.specs)}."
            )
        return {m: self.specs[m] for m in modalities}

    @staticmethod
    def _as_batch(name: str, x: Any, spatial_dims: int, in_channels: int) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        x = _plain(x)
        layout = "(B, C, H, W) or (C, H, W)" if spatial_dims == 2 else "(B, C, H, W, D) or (C, H, W, D)"
        if x.ndim == spatial_dims + 1:
            x = x.unsqueeze(0)
        if x.ndim != spatial_dims + 2:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}; this {spatial_dims}D model expects {layout}."
            )
        if x.shape[1] != in_channels:
            raise ValueError(
                f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}); the model expects {in_channels} "
                f"({layout})."
            )
        if x.shape[0] < 1:
            raise ValueError(f"{name} has an empty batch (shape {tuple(x.shape)}).")
        return x

    def _resolve_spatial_shape(
        self, spatial_shape: Sequence[int] | None, batched: dict[str, torch.Tensor], spatial_dims: int
    ) -> tuple[int, ...]:
        given = {name: tuple(x.shape[2:]) for name, x in batched.items()}
        if spatial_shape is not None:
            shape = tuple(int(s) for s in spatial_shape)
            source = "spatial_shape"
        elif given:
            source, shape = next(iter(given.items()))
        elif self.spatial_shape is not None:
            shape, source = self.spatial_shape, "the inferer's spatial_shape"
        else:
            raise ValueError(
                "spatial_shape is required (no seed_sample, known or default spatial_shape to take it from)."
            )
        if len(shape) != spatial_dims or any(s < 1 for s in shape):
            raise ValueError(
                f"{source} {shape} must have {spatial_dims} positive sizes for this {spatial_dims}D model."
            )
        for name, s in given.items():
            if s != shape:
                raise ValueError(f"{name} has spatial shape {s} but {source} is {shape}; all must agree.")
        return shape

    @staticmethod
    def _resolve_num_samples(num_samples: int | None, batched: dict[str, torch.Tensor]) -> int:
        sizes = {name: int(x.shape[0]) for name, x in batched.items()}
        if num_samples is None:
            if not sizes:
                raise ValueError("num_samples is required when neither seed_sample nor known is given.")
            num_samples = max(sizes.values())
            source = "the largest input batch"
        else:
            source = "num_samples"
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or int(num_samples) < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        num_samples = int(num_samples)
        for name, b in sizes.items():
            if num_samples % b:
                raise ValueError(
                    f"{name} has batch size {b}, which does not divide {source} = {num_samples}; give one case, "
                    f"{num_samples} cases, or a divisor of {num_samples}."
                )
        return num_samples

    def _finalise(
        self,
        samples: dict[str, torch.Tensor],
        known: dict[str, torch.Tensor],
        known_norm: dict[str, torch.Tensor],
        specs: dict[str, ModalitySpec],
        spatial_dims: int,
        inputs_normalized: bool,
        decode: bool,
        device: torch.device,
    ) -> dict[str, MetaTensor]:
        num = next(iter(samples.values())).shape[0]
        spacing = (
            (1.0,) * spatial_dims if self.spacing is None else ensure_tuple_rep(self.spacing, spatial_dims)
        )
        affine = torch.eye(4, dtype=torch.float64)
        for d, s in enumerate(spacing):
            affine[d, d] = float(s)
        affines = affine.expand(num, 4, 4).clone()
        out: dict[str, MetaTensor] = {}
        for m, x in samples.items():
            spec = specs[m]
            if m in known and decode != inputs_normalized:
                # known modalities come back exactly as given (the given units match the requested ones)
                y = _plain(known[m]).to(device=device, dtype=torch.float32)
                y = y.unsqueeze(0) if y.ndim == spatial_dims + 1 else y
                y = y[torch.arange(num, device=y.device) % y.shape[0]]
            elif decode:
                y = spec.denormalize(x.float())
            else:
                y = spec.normalize(spec.denormalize(x.float()))
            meta = {"modality": m, "unit": spec.unit if decode else "", "synthetic": True}
            t = MetaTensor(y.contiguous(), affine=affines, meta=meta)
            t.is_batch = True
            out[m] = t
        return out
