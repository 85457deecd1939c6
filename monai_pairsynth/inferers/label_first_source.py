"""Label-first pool source: masks drawn from real training masks, moved, then CT + PET generated for them.

:class:`LabelFirstPoolSource` is a pool source like :class:`~monai_pairsynth.inferers.DiffusionPoolSource`
(``source(num, generator) -> {key: (num, 1, *spatial)}`` in physical units), but instead of sampling a mask
together with the images it

1. draws a real training case with a tumour,
2. transforms its mask with :class:`MaskPlacement` (random rotation, isotropic scaling and a mild elastic
   deformation, MONAI transforms seeded from the pool's ``torch.Generator``) and places it at a random
   position accepted only when the whole mask lies inside the body outline of that case's CT (CT above
   -500 HU, holes filled: :func:`monai_pairsynth.quality.body_mask`, the body the quality filter uses),
3. generates CT + PET for the mask (``PairedDiffusionInferer.sample(known={"label": masks})``: clean at t = 0
   when the checkpoint was trained with per-modality timesteps, else clamped; ``last_conditioning`` says which),

so the label of every triplet is correct by construction. A placement that fails ``max_tries`` times falls
back to the untransformed mask at its original position; fallbacks are counted and logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Affine, Rand2DElastic, Rand3DElastic
from monai.utils import look_up_option

from monai_pairsynth.quality.plausibility import body_mask, dilate
from monai_pairsynth.schedulers import DEFAULT_SAMPLER, DEFAULT_SAMPLER_STEPS

from .pool_source import DiffusionPoolSource

__all__ = ["CONDITIONING_MODES", "LabelFirstPoolSource", "MaskPlacement"]

logger = logging.getLogger(__name__)

#: what ``conditioning=`` accepts (as ``PairedDiffusionInferer.sample``)
CONDITIONING_MODES = ("auto", "clean", "clamp")


def _plain(x: Any) -> torch.Tensor:
    """A plain CPU tensor (a MetaTensor's per-operation overhead dominates these small masks)."""
    x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
    return x.detach().cpu()


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator, device=generator.device).item())


def _randint(generator: torch.Generator, high: int) -> int:
    return int(torch.randint(high, (), generator=generator, device=generator.device).item())


def _float_or_none(value: Any) -> float | None:
    """``value`` as a float, ``None`` when it is not a number (a bool, a string, a list)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _float_pair(value: Any) -> tuple[float, float] | None:
    """``(low, high)`` as floats, ``None`` when ``value`` is not a sequence (or array) of two numbers."""
    if isinstance(value, (str, bytes, Mapping)):
        return None
    try:
        pair = [_float_or_none(v) for v in value]
    except TypeError:  # not iterable
        return None
    if len(pair) != 2 or None in pair:
        return None
    return float(pair[0]), float(pair[1])  # type: ignore[arg-type]


def _bbox(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper (inclusive) voxel index of a non-empty ``(*spatial)`` boolean mask."""
    low, high = [], []
    m = mask.numpy()
    for axis in range(m.ndim):
        hit = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != axis)))
        low.append(int(hit[0]))
        high.append(int(hit[-1]))
    return torch.tensor(low), torch.tensor(high)


def _shift(mask: torch.Tensor, offset: Sequence[int]) -> torch.Tensor | None:
    """``mask`` (``(*spatial)``, boolean) moved by whole voxels; ``None`` when a voxel would leave the image."""
    low, high = _bbox(mask)
    shape = torch.tensor(mask.shape)
    off = torch.tensor([int(o) for o in offset])
    if bool(((low + off) < 0).any()) or bool(((high + off) >= shape).any()):
        return None
    return torch.roll(mask, shifts=tuple(int(o) for o in offset), dims=tuple(range(mask.ndim)))


class MaskPlacement:
    """Random rotation, isotropic scaling and elastic deformation of a tumour mask, then a random placement
    inside a body outline.

    Each try: the mask is moved so that its bounding box is centred in the image, rotated and scaled about the
    centre (MONAI ``Affine``, bilinear, then thresholded at 0.5), deformed (MONAI ``Rand2DElastic`` in 2D,
    ``Rand3DElastic`` in 3D) and moved (whole voxels) so that its bounding-box centre falls on a body voxel
    drawn uniformly. The try is accepted when the result is non-empty, does not touch the image border after
    the deformation (it was not cut off) and lies entirely inside ``body`` shrunk by ``margin`` voxels (away
    from the skin). After ``max_tries`` failed tries the
    untransformed mask is returned at its original position (``placed=False``).

    Every random number comes from the ``torch.Generator`` passed to :meth:`__call__` (MONAI's transforms get a
    seed drawn from it), so the same generator state gives the same mask.

    Args:
        rotate_degrees: rotation drawn uniformly in ``[-rotate_degrees, rotate_degrees]`` (2D: in-plane; 3D:
            about each axis). Default 15.
        scale_range: isotropic scale factor drawn uniformly in ``(low, high)`` (> 1 enlarges). Default
            ``(0.8, 1.25)``.
        elastic_magnitude: 2D: displacement of the elastic control points in voxels, drawn in this range
            (``Rand2DElastic(magnitude_range=...)``); 3D: ``Rand3DElastic``'s ``magnitude_range`` (scales a
            Gaussian-smoothed field, so it needs larger values, e.g. ``(20, 40)``). ``(0, 0)`` turns it off.
            Default ``(0.0, 1.0)``: mild.
        elastic_spacing: 2D: control-point spacing in voxels (default a quarter of the smallest image side,
            at least 2); 3D: the Gaussian sigma of ``Rand3DElastic`` in voxels (default the same value / 2).
        max_tries: tries before the fallback.
        margin: the placed mask keeps this many voxels from the body outline (the body is eroded by it; a body
            too thin for the margin keeps its outline). Default 1.

    Example:
        >>> import torch
        >>> mask = torch.zeros(1, 16, 16); mask[0, 6:9, 6:9] = 1
        >>> body = torch.zeros(1, 16, 16, dtype=torch.bool); body[0, 2:14, 2:14] = True
        >>> placed, ok, tries = MaskPlacement()(mask, body, torch.Generator().manual_seed(0))
        >>> ok, bool((placed & ~body).any()), placed.shape
        (True, False, torch.Size([1, 16, 16]))
    """

    def __init__(
        self,
        rotate_degrees: float = 15.0,
        scale_range: Sequence[float] = (0.8, 1.25),
        elastic_magnitude: Sequence[float] = (0.0, 1.0),
        elastic_spacing: float | None = None,
        max_tries: int = 20,
        margin: int = 1,
    ) -> None:
        rotate = _float_or_none(rotate_degrees)
        if rotate is None or not (math.isfinite(rotate) and rotate >= 0):
            raise ValueError(f"rotate_degrees must be a finite number >= 0, got {rotate_degrees!r}.")
        scale = _float_pair(scale_range)
        if scale is None or not 0 < scale[0] <= scale[1] or not math.isfinite(scale[1]):
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}.")
        magnitude = _float_pair(elastic_magnitude)
        if magnitude is None or not 0 <= magnitude[0] <= magnitude[1] or not math.isfinite(magnitude[1]):
            raise ValueError(
                f"elastic_magnitude must be (low, high) with 0 <= low <= high, got {elastic_magnitude!r}."
            )
        spacing = _float_or_none(elastic_spacing)
        if elastic_spacing is not None and (spacing is None or not (math.isfinite(spacing) and spacing > 0)):
            raise ValueError(f"elastic_spacing must be a finite number > 0 or None, got {elastic_spacing!r}.")
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"max_tries must be an integer >= 1, got {max_tries!r}.")
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise ValueError(f"margin must be an integer >= 0 (voxels), got {margin!r}.")
        self.margin = margin
        self.rotate_degrees = rotate
        self.scale_range = scale
        self.elastic_magnitude = magnitude
        self.elastic_spacing = spacing
        self.max_tries = max_tries
        self._elastic_cache: dict[tuple[int, ...], Any] = {}

    def __repr__(self) -> str:
        return (
            f"MaskPlacement(rotate_degrees={self.rotate_degrees}, scale_range={self.scale_range}, "
            f"elastic_magnitude={self.elastic_magnitude}, elastic_spacing={self.elastic_spacing}, "
            f"max_tries={self.max_tries}, margin={self.margin})"
        )

    def _elastic(self, spatial: Sequence[int]) -> Any | None:
        if self.elastic_magnitude[1] <= 0:
            return None
        step = self.elastic_spacing if self.elastic_spacing is not None else max(2.0, min(spatial) / 4)
        if len(spatial) == 2:
            return Rand2DElastic(
                spacing=(step, step),
                magnitude_range=self.elastic_magnitude,
                prob=1.0,
                mode="bilinear",
                padding_mode="zeros",
            )
        sigma = step / 2 if self.elastic_spacing is None else step
        return Rand3DElastic(
            sigma_range=(sigma, sigma),
            magnitude_range=self.elastic_magnitude,
            prob=1.0,
            mode="bilinear",
            padding_mode="zeros",
        )

    def transform(self, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random rotation + isotropic scaling + elastic deformation of ``mask`` ``(1, *spatial)``, centred
        in the image; boolean ``(1, *spatial)`` (possibly empty, or cut by the image border)."""
        m = _plain(mask)[0] > 0.5
        dims = m.ndim
        low, high = _bbox(m)
        centre = torch.tensor(m.shape) // 2
        centred = _shift(m, (centre - (low + high) // 2).tolist())
        if centred is None:  # cannot happen for a mask inside the image, kept for safety
            centred = m
        angle = math.radians(self.rotate_degrees)
        angles = [_uniform(generator, -angle, angle) for _ in range(1 if dims == 2 else 3)]
        scale = _uniform(generator, *self.scale_range)
        seed = _randint(generator, 2**31 - 1)
        # MONAI's affine maps output to input coordinates: a factor 1/s enlarges the content by s
        affine = Affine(
            rotate_params=angles[0] if dims == 2 else angles,
            scale_params=(1.0 / scale,) * dims,
            mode="bilinear",
            padding_mode="zeros",
            image_only=True,
        )
        out = _plain(affine(centred[None].float()))
        shape = tuple(m.shape)
        if shape not in self._elastic_cache:
            self._elastic_cache[shape] = self._elastic(shape)
        elastic = self._elastic_cache[shape]
        if elastic is not None:
            elastic.set_random_state(seed=seed)
            out = _plain(elastic(out))
        return out > 0.5

    def __call__(
        self, mask: torch.Tensor, body: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, bool, int]:
        """Transform ``mask`` and place it inside ``body``.

        Args:
            mask: ``(1, *spatial)`` binary mask (non-empty).
            body: ``(1, *spatial)`` boolean body outline of the same case.
            generator: drives every random draw.

        Returns:
            ``(placed mask (1, *spatial) bool on the CPU, placed, tries)``: ``placed`` is ``False`` when every try
            failed and the untransformed mask is returned at its original position.

        Raises:
            ValueError: an empty mask, or mask and body of different shapes.
        """
        m = _plain(mask) > 0.5
        b = _plain(body).bool()
        if m.shape != b.shape or m.ndim < 3:
            raise ValueError(
                f"mask and body must both be (1, *spatial) of the same shape, got {tuple(m.shape)} and {tuple(b.shape)}."
            )
        if not bool(m.any()):
            raise ValueError("MaskPlacement needs a non-empty mask.")
        if self.margin > 0:
            eroded = ~dilate(~b[None], self.margin)[0]  # erosion: the complement dilated
            if bool(eroded.any()):
                b = eroded
        body_voxels = b[0].nonzero()
        for attempt in range(1, self.max_tries + 1):
            moved = self.transform(m.float(), generator)[0]
            if not bool(moved.any()) or len(body_voxels) == 0:
                continue
            border = torch.zeros_like(moved)
            for axis in range(moved.ndim):
                border.index_fill_(axis, torch.tensor([0, moved.shape[axis] - 1]), True)
            if bool((moved & border).any()):  # touching the border: the deformation may have cut it
                continue
            target = body_voxels[_randint(generator, len(body_voxels))]
            low, high = _bbox(moved)
            placed = _shift(moved, (target - (low + high) // 2).tolist())
            if placed is None or bool((placed & ~b[0]).any()):
                continue
            return placed[None], True, attempt
        return m, False, self.max_tries


class LabelFirstPoolSource(DiffusionPoolSource):
    """A pool source that generates CT + PET for real training masks moved to new, plausible positions.

    Per triplet: a case with a tumour is drawn uniformly from ``cases``, its mask is transformed and placed
    inside that case's body by ``placement`` (:class:`MaskPlacement`), and the images are sampled for it with
    ``known={label_key: masks}`` (``conditioning``). The returned label is the given mask, exactly.

    Args:
        inferer_or_checkpoint: a checkpoint path (the network and inferer are rebuilt with
            ``PairedDiffusionInferer.from_checkpoint``) or a ``PairedDiffusionInferer`` (then ``model`` is required),
            as :class:`DiffusionPoolSource`.
        model: the ``PairedDiffusionModel`` when an inferer is given.
        cases: the real cases the masks come from: a sequence of dicts in physical units with at least
            ``ct_key`` (HU) and ``label_key`` (binary), each ``(1, *spatial)`` on the training grid (e.g. what
            :func:`monai_pairsynth.data.sources.real_samples` returns). Keyword only, required.
        placement: the mask augmentation and placement (default ``MaskPlacement()``: rotation +-15 degrees,
            scale 0.8-1.25, mild elastic, 20 tries).
        conditioning: ``"auto"`` (default: clean at t = 0 when the checkpoint was trained with per-modality
            timesteps, else clamped), ``"clean"`` or ``"clamp"``, passed to ``PairedDiffusionInferer.sample``.
        label_key, ct_key: the mask and the CT (whose body outline the mask must lie in).
        body_threshold: the body is CT above this value (HU), holes filled (:func:`monai_pairsynth.quality.body_mask`).
        num_inference_steps, scheduler, batch_size, device, spatial_shape, amp_dtype, use_ema: as
            :class:`DiffusionPoolSource`.

    Attributes:
        drawn, placed, fallbacks, tries: running counts over every mask drawn (``drawn = placed + fallbacks``;
            ``tries`` sums the placement tries). :meth:`placement_counts` returns them as a dict.
        last_conditioning: how the last call fed the masks (``"clean"`` or ``"clamp"``).
        last_case_indices, last_placed: of the last call, the index in ``cases`` each mask came from and whether
            it was placed (``False``: the fallback).

    Raises:
        ValueError: no case has a non-empty mask, a case lacks ``ct_key`` / ``label_key`` or is of another grid,
            the model has no such modalities, or a bad ``conditioning``.

    Example:
        >>> import torch
        >>> from monai_pairsynth.mixing import SynthesisPool
        >>> from monai_pairsynth.inferers import PairedDiffusionInferer
        >>> from monai_pairsynth.networks import PairedDiffusionModel
        >>> model = PairedDiffusionModel(("ct", "pet", "label"), channels=(8, 16),
        ...                              attention_levels=(False, False), norm_num_groups=4)
        >>> ct = torch.full((1, 16, 16), -1000.0); ct[:, 2:14, 2:14] = 40.0
        >>> label = torch.zeros(1, 16, 16); label[:, 6:9, 6:9] = 1.0
        >>> source = LabelFirstPoolSource(PairedDiffusionInferer(spacing=2.0, spatial_shape=(16, 16)), model,
        ...                               cases=[{"ct": ct, "label": label}], num_inference_steps=2, device="cpu")
        >>> pool = SynthesisPool(2, source=source)
        >>> pool.fill().accepted, source.drawn, source.last_conditioning
        (2, 2, 'clamp')
    """

    def __init__(
        self,
        inferer_or_checkpoint: Any,
        model: torch.nn.Module | None = None,
        *,
        cases: Sequence[Mapping[str, Any]],
        placement: MaskPlacement | None = None,
        conditioning: str = "auto",
        label_key: str = "label",
        ct_key: str = "ct",
        body_threshold: float = -500.0,
        num_inference_steps: int = DEFAULT_SAMPLER_STEPS,
        scheduler: str = DEFAULT_SAMPLER,
        batch_size: int = 16,
        device: torch.device | str | None = None,
        spatial_shape: Sequence[int] | None = None,
        amp_dtype: torch.dtype | str | None = None,
        use_ema: bool = True,
    ) -> None:
        super().__init__(
            inferer_or_checkpoint,
            model,
            num_inference_steps=num_inference_steps,
            scheduler=scheduler,
            batch_size=batch_size,
            device=device,
            spatial_shape=spatial_shape,
            amp_dtype=amp_dtype,
            use_ema=use_ema,
        )
        try:
            self.conditioning = look_up_option(conditioning, CONDITIONING_MODES)
        except ValueError:
            raise ValueError(
                f"conditioning must be one of {list(CONDITIONING_MODES)}, got {conditioning!r}."
            ) from None
        for name, key in (("label_key", label_key), ("ct_key", ct_key)):
            if key not in self.keys:
                raise ValueError(f"{name} {key!r} is not a modality of the model {list(self.keys)}.")
        self.label_key = label_key
        self.ct_key = ct_key
        self.body_threshold = float(body_threshold)
        self.placement = placement if placement is not None else MaskPlacement()
        if not callable(self.placement):
            raise ValueError(f"placement must be a MaskPlacement, got {type(self.placement).__name__}.")
        self._masks, self._bodies = self._read_cases(cases)
        self._with_tumour = [i for i in range(len(self._masks)) if bool(self._masks[i].any())]
        if not self._with_tumour:
            raise ValueError(
                f"none of the {len(self._masks)} cases has a non-empty {label_key!r} mask: a label-first pool "
                "needs real tumour masks to draw from."
            )
        if self.spatial_shape is None:
            self.spatial_shape = tuple(self._masks.shape[2:])
        self.drawn = 0
        self.placed = 0
        self.fallbacks = 0
        self.tries = 0
        self.last_conditioning: str | None = None
        self.last_case_indices: list[int] = []
        self.last_placed: list[bool] = []

    def _read_cases(self, cases: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        cases = list(cases) if cases is not None else []
        if not cases:
            raise ValueError(
                "cases is empty: a label-first pool needs real cases (ct and label) to draw masks from."
            )
        masks, bodies = [], []
        for i, case in enumerate(cases):
            if not isinstance(case, Mapping) or self.ct_key not in case or self.label_key not in case:
                have = sorted(case) if isinstance(case, Mapping) else type(case).__name__
                raise ValueError(f"case {i} needs {self.ct_key!r} and {self.label_key!r} (it has {have}).")
            ct = _plain(case[self.ct_key]).float()
            label = _plain(case[self.label_key]).float()
            if ct.shape != label.shape or ct.ndim not in (3, 4) or ct.shape[0] != 1:
                raise ValueError(
                    f"case {i}: {self.ct_key!r} {tuple(ct.shape)} and {self.label_key!r} {tuple(label.shape)} must "
                    "both be (1, *spatial) of the same shape."
                )
            if self.spatial_shape is not None and tuple(ct.shape[1:]) != tuple(self.spatial_shape):
                raise ValueError(
                    f"case {i} is {tuple(ct.shape[1:])}, the source generates {tuple(self.spatial_shape)}: give "
                    "cases on the generator's training grid."
                )
            if masks and ct.shape != masks[0].shape:
                raise ValueError(f"case {i} is {tuple(ct.shape[1:])}, case 0 is {tuple(masks[0].shape[1:])}.")
            masks.append(label > 0.5)
            bodies.append(body_mask(ct[None], self.body_threshold, dilation=0)[0])
        return torch.stack(masks), torch.stack(bodies)

    def placement_counts(self) -> dict[str, int]:
        """``{"drawn", "placed", "fallbacks", "tries"}`` over every call so far."""
        return {"drawn": self.drawn, "placed": self.placed, "fallbacks": self.fallbacks, "tries": self.tries}

    def _place(
        self, mask: torch.Tensor, body: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, bool]:
        placed_mask, ok, tries = self.placement(mask, body, generator)
        self.drawn += 1
        self.tries += int(tries)
        if ok:
            self.placed += 1
        else:
            self.fallbacks += 1
        return placed_mask, bool(ok)

    def draw_masks(self, num: int, generator: torch.Generator) -> torch.Tensor:
        """``num`` placed masks ``(num, 1, *spatial)`` (float {0, 1}, CPU); updates the counts and
        ``last_case_indices`` / ``last_placed``."""
        out, indices, flags = [], [], []
        for _ in range(int(num)):
            i = self._with_tumour[_randint(generator, len(self._with_tumour))]
            placed_mask, ok = self._place(self._masks[i], self._bodies[i], generator)
            out.append(placed_mask)
            indices.append(i)
            flags.append(ok)
        self.last_case_indices, self.last_placed = indices, flags
        failed = flags.count(False)
        if failed:
            logger.warning(
                "label-first source: %d of %d masks could not be placed inside the body in %d tries and keep their "
                "original position (%d fallbacks of %d masks so far).",
                failed,
                len(flags),
                self.placement.max_tries if isinstance(self.placement, MaskPlacement) else -1,
                self.fallbacks,
                self.drawn,
            )
        return torch.stack(out).float() if out else torch.zeros(0, 1, *self._masks.shape[2:])

    def _generate_for(self, masks: torch.Tensor, generator: torch.Generator, **kwargs: Any) -> dict:
        masks = masks.to(self.device)
        out = self._sample(
            int(masks.shape[0]),
            generator,
            known={self.label_key: masks},
            conditioning=self.conditioning,
            **kwargs,
        )
        out[self.label_key] = masks  # the given mask, exactly
        self.last_conditioning = self.inferer.last_conditioning
        logger.info(
            "label-first source: %d triplets generated for placed masks (conditioning %s; %d placed, %d fallbacks "
            "of %d masks so far)",
            int(masks.shape[0]),
            self.last_conditioning,
            self.placed,
            self.fallbacks,
            self.drawn,
        )
        return out

    def __call__(self, num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``num`` new triplets ``{key: (num, 1, *spatial_shape)}`` in physical units, on ``device``; the label is
        the placed mask."""
        return self._generate_for(self.draw_masks(num, generator), generator)

    def generate_seeded(
        self, reference: Mapping[str, torch.Tensor], strength: float, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Triplets seeded from ``reference`` (physical units, ``(B, 1, *spatial)``; ``strength`` as
        :meth:`DiffusionPoolSource.generate_seeded`) for a mask placed inside the reference's own body: the
        reference's mask when it has one, else one drawn from ``cases``, transformed as in :meth:`__call__`."""
        ct = _plain(reference[self.ct_key]).float()
        labels = _plain(reference[self.label_key]) > 0.5
        bodies = body_mask(ct, self.body_threshold, dilation=0)
        out, flags = [], []
        for b in range(int(ct.shape[0])):
            mask = labels[b]
            if not bool(mask.any()):
                mask = self._masks[self._with_tumour[_randint(generator, len(self._with_tumour))]]
            placed_mask, ok = self._place(mask, bodies[b], generator)
            out.append(placed_mask)
            flags.append(ok)
        self.last_placed = flags
        return self._generate_for(
            torch.stack(out).float(),
            generator,
            seed_sample={k: v.to(self.device) for k, v in reference.items()},
            strength=strength,
        )
