"""A pool source that samples a trained linked diffusion model: :class:`DiffusionPoolSource`.

It lives with the sampler it calls (``inferers/``), below the pool that stores its output, so the pool itself
(:mod:`monai_pairsynth.mixing.synthesis_pool`) imports no sampler.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor

from monai_pairsynth.schedulers import DEFAULT_SAMPLER, DEFAULT_SAMPLER_STEPS

from .paired_diffusion_inferer import PairedDiffusionInferer

__all__ = ["DiffusionPoolSource"]


class DiffusionPoolSource:
    """A pool source that samples a trained linked diffusion model with :class:`PairedDiffusionInferer`.

    Args:
        inferer_or_checkpoint: a checkpoint path written by the training engine (``save_paired_checkpoint``) —
            the network and the inferer are rebuilt with ``PairedDiffusionInferer.from_checkpoint`` — or a
            ``PairedDiffusionInferer`` (then ``model`` is required).
        model: the ``PairedDiffusionModel`` when an inferer is given.
        num_inference_steps: denoising steps per triplet.
        scheduler: ``"dpmpp"`` (DPM-Solver++ 2M, default), ``"ddim"`` or ``"ddpm"``.
        batch_size: largest batch given to the network; a pool request is split into such chunks.
        device: sampling device (the model is moved there on first use, not before); default: CUDA when
            available, else CPU. The pool creates its generator on this device.
        spatial_shape: spatial shape of the triplets; default: the inferer's (the training shape).
        amp_dtype: ``"bf16"`` / ``"fp16"`` mixed precision on CUDA (see ``PairedDiffusionInferer.sample``).
        use_ema: load EMA weights from the checkpoint when present.

    Outputs are in physical units (HU, SUV, a binary mask), as a :class:`SynthesisPool` expects. The source
    also generates a triplet seeded from a real one (:meth:`generate_seeded`), which
    :class:`monai_pairsynth.transforms.SynthesizePairedd` uses in ``mode="seeded"``.

    Example:
        >>> import torch
        >>> from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
        >>> from monai_pairsynth.inferers import PairedDiffusionInferer
        >>> from monai_pairsynth.networks import PairedDiffusionModel
        >>> model = PairedDiffusionModel(("ct", "pet", "label"), channels=(8, 16),
        ...                              attention_levels=(False, False), norm_num_groups=4)
        >>> source = DiffusionPoolSource(PairedDiffusionInferer(spacing=2.0, spatial_shape=(16, 16)), model,
        ...                              num_inference_steps=2, device="cpu")
        >>> pool = SynthesisPool(2, source=source)
        >>> pool.fill().accepted, pool.spatial_shape, pool.spacing
        (2, (16, 16), (2.0, 2.0))
    """

    def __init__(
        self,
        inferer_or_checkpoint: Any,
        model: torch.nn.Module | None = None,
        num_inference_steps: int = DEFAULT_SAMPLER_STEPS,
        scheduler: str = DEFAULT_SAMPLER,
        batch_size: int = 16,
        device: torch.device | str | None = None,
        spatial_shape: Sequence[int] | None = None,
        amp_dtype: torch.dtype | str | None = None,
        use_ema: bool = True,
    ) -> None:
        if isinstance(inferer_or_checkpoint, (str, os.PathLike)):
            if model is not None:
                raise ValueError(
                    "pass either a checkpoint (the model is read from it) or an inferer and a model."
                )
            if not os.path.isfile(inferer_or_checkpoint):
                raise FileNotFoundError(f"no diffusion checkpoint at {os.fspath(inferer_or_checkpoint)!r}.")
            inferer, model = PairedDiffusionInferer.from_checkpoint(
                inferer_or_checkpoint, map_location="cpu", use_ema=use_ema
            )
        elif isinstance(inferer_or_checkpoint, PairedDiffusionInferer):
            if model is None:
                raise ValueError("an inferer was given without model=...; pass the PairedDiffusionModel too.")
            inferer = inferer_or_checkpoint
        else:
            raise ValueError(
                "inferer_or_checkpoint must be a checkpoint path or a PairedDiffusionInferer, "
                f"got {type(inferer_or_checkpoint).__name__}."
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        self.inferer = inferer
        self.model = model
        net = getattr(model, "module", model)
        self.keys = tuple(getattr(net, "modalities", ()))
        self.num_inference_steps = num_inference_steps
        self.scheduler = scheduler
        self.batch_size = batch_size
        self.amp_dtype = amp_dtype
        self.device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        shape = spatial_shape if spatial_shape is not None else inferer.spatial_shape
        self.spatial_shape = None if shape is None else tuple(int(s) for s in shape)
        self.spacing = inferer.spacing
        self.specs = inferer.specs
        self._on_device = False

    def _model(self) -> torch.nn.Module:
        if not self._on_device:
            self.model.to(self.device)
            self._on_device = True
        return self.model

    def _sample(self, num: int, generator: torch.Generator, **kwargs: Any) -> dict[str, torch.Tensor]:
        out = self.inferer.sample(
            self._model(),
            num_samples=num,
            spatial_shape=self.spatial_shape,
            scheduler=self.scheduler,
            num_inference_steps=self.num_inference_steps,
            generator=generator,
            batch_size=self.batch_size,
            amp_dtype=self.amp_dtype,
            decode=True,
            device=self.device,
            **kwargs,
        )
        return {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in out.items()}

    def __call__(self, num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``num`` new triplets ``{key: (num, 1, *spatial_shape)}`` in physical units, on ``device``."""
        return self._sample(num, generator)

    def generate_seeded(
        self, reference: Mapping[str, torch.Tensor], strength: float, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Triplets started from ``reference`` (physical units, ``(B, 1, *spatial)``) noised to ``strength``."""
        first = next(iter(reference.values()))
        return self._sample(
            int(first.shape[0]),
            generator,
            seed_sample={k: v.to(self.device) for k, v in reference.items()},
            strength=strength,
        )
