"""The quality filter for synthetic PET/CT/mask triplets: feature-centroid distance, certainty, memorisation guard.

Method (selective synthetic augmentation by feature-centroid distance): a feature network trained on the real
data embeds every sample; the real samples define a centroid of unit-normalised layer activations; a synthetic
sample far from that centroid, or one the segmenter is unsure about, is a likely misgeneration. From a pool of
``4rN`` candidates (``N`` real training samples, augmentation ratio ``r``) the more certain half is kept, and
of those the half closest to the centroid, leaving ``rN``. On top of that this filter adds a streaming mode
with thresholds calibrated on the real data, optional strata (several centroids), a segmentation-specific
certainty (Dice between the generated mask and the segmenter's prediction on the generated images, and the
predictive entropy in the lesion) and a memorisation guard (a near-copy of a real patient is a privacy leak).
Before any of that, plausibility rules reject impossible triplets (a mask outside the body, an empty mask where
every real sample has tumour, a mask without PET uptake; :mod:`~monai_pairsynth.quality.plausibility`).
See ``docs/quality_filter.md``.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_pairsynth.data.validation import check_finite_features, distinct_samples
from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, ModalitySpec, resolve_specs
from monai_pairsynth.utils import atomic_save_torch

from .feature_distance import centroid_distances, pooled_embedding, unit_normalize_channels
from .feature_segmenter import unet_encoder_layers
from .kmeans import kmeans
from .mc_dropout_features import MCDropoutFeatureExtractor, _mix_seed
from .plausibility import body_mask, mask_in_body_fraction, pet_uptake_ratio
from .selection_result import RejectionReason, SelectionMode, SelectionResult
from .triplet_batches import IntensityUnits, iter_triplet_batches, prepare_triplet_batch

logger = logging.getLogger(__name__)

__all__ = ["EmptyMaskRule", "FeatureCentroidFilter", "FilterNotFittedError", "StrataMethod"]

# version 2 adds the plausibility rules (config keys and fitted["plausibility"]); version 1 states still load
_STATE_VERSION = 2
_READABLE_STATE_VERSIONS = (1, 2)
# config keys of the plausibility rules (absent from version-1 states: those load with the defaults)
_PLAUSIBILITY_CONFIG = (
    "ct_key",
    "pet_key",
    "body_threshold",
    "body_dilation",
    "min_mask_in_body",
    "empty_mask",
    "min_mask_voxels",
    "empty_mask_real_fraction",
    "min_pet_uptake",
    "pet_uptake_quantile",
    "pet_uptake_margin",
    "pet_ring",
)
# ...of which these change the stored real measurements, so a saved state must match them when it has them
_PLAUSIBILITY_FIXED_BY_FIT = ("ct_key", "pet_key", "pet_ring")
# (reason, score key, threshold key) of the plausibility rules, in the order they are checked
_PLAUSIBILITY_RULES = (
    ("mask_outside_body", "mask_in_body", "min_mask_in_body"),
    ("empty_mask", "mask_voxels", "min_mask_voxels"),
    ("no_pet_uptake", "pet_uptake", "min_pet_uptake"),
)
# a stratum with fewer real samples than this uses the global distance threshold (its own quantile is noise)
_MIN_STRATUM_FOR_OWN_THRESHOLD = 5


class StrataMethod(str, Enum):
    """How real samples are split into strata, each with its own centroid.

    ``kmeans``: k-means on the compact feature embedding; a sample is measured against its nearest centroid.
    ``tumour_size``: quantile bins of the mask's voxel fraction; a sample is measured against the centroid of
    its own tumour-size bin.
    """

    KMEANS = "kmeans"
    TUMOUR_SIZE = "tumour_size"


class EmptyMaskRule(str, Enum):
    """When the ``empty_mask`` plausibility rule applies.

    ``auto``: only when at least ``empty_mask_real_fraction`` of the real training samples the filter was fitted
    on have a mask of ``min_mask_voxels`` voxels or more (learned at ``fit``); ``on``: always; ``off``: never.
    """

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class FilterNotFittedError(RuntimeError):
    """Raised when a :class:`FeatureCentroidFilter` is used before :meth:`~FeatureCentroidFilter.fit`."""


def _is_real_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_quantile(name: str, value: float | None, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if value is None or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"{name} must be a quantile in [0, 1]{' or None' if allow_none else ''}, got {value!r}."
        )
    return float(value)


class FeatureCentroidFilter:
    """Decide which synthetic triplets may enter training.

    Scores per sample (``score``), all averaged over ``K = mc_passes`` Monte-Carlo-dropout passes of the
    feature network:

    - ``distance``: ``sum_l mean_s ||a_l[:, s] - c_l[:, s]||^2`` to the nearest centroid (per layer ``l``,
      activations ``a_l`` unit-normalised along channels at every position ``s``; ``c_l`` the mean of real
      ``a_l``), see :mod:`~monai_pairsynth.quality.feature_distance`;
    - ``certainty``: Dice between the generated mask and the segmenter's prediction on the generated images
      (1 when both are empty);
    - ``entropy``: mean predictive entropy (of the MC-averaged class probabilities, divided by ``log C`` so it
      lies in [0, 1]) inside the lesion region (generated mask union predicted mask; the whole image when
      both are empty);
    - ``nearest_real``: the smallest squared feature distance (deterministic pass, pooled embedding) to a real
      training sample;
    - ``stratum``: the centroid the distance was measured to.

    Before those are used, plausibility rules reject impossible triplets, each with its own reason
    (``mask_outside_body``, ``empty_mask``, ``no_pet_uptake``; see :meth:`select` and
    :attr:`plausibility_rules`), from the measurements ``mask_in_body``, ``mask_voxels`` and ``pet_uptake``
    (:mod:`~monai_pairsynth.quality.plausibility`). A rule whose modality is not among ``image_keys`` is
    skipped; all of them need the mask, so a filter with any rule on reads ``label_key`` even with
    ``certainty=False``. Their settings are the arguments from ``ct_key`` on.

    Args:
        feature_network: a trained network mapping ``len(image_keys)`` channels ``(B, C_in, H, W[, D])`` to
            segmentation logits ``(B, C_out, H, W[, D])`` (``C_out = 1``: sigmoid, ``>= 2``: softmax with
            class 0 the background), e.g. :func:`train_feature_segmenter`. Any network works for the distance
            with ``certainty=False``. The filter scores on the network's device and never trains it.
        layers: names of the layers whose activations define the feature space; default: the encoder of a
            MONAI ``UNet`` / ``BasicUNet`` (:func:`unet_encoder_layers`).
        image_keys: modalities fed to the network as channels, in the order it was trained with.
        label_key: the tumour mask key (used for certainty, entropy and tumour-size strata).
        mc_passes: ``K >= 1``; ``K = 1`` is deterministic (dropout off).
        num_strata: number of centroids (1: one global centroid).
        strata: ``"kmeans"`` or ``"tumour_size"`` (used when ``num_strata > 1``).
        certainty: compute ``certainty``/``entropy`` from the network output (needs a segmenter; pool mode
            needs it).
        distance_quantile: streaming threshold on ``distance``: this quantile of the real samples' own
            distances (per stratum).
        certainty_quantile: streaming threshold on ``certainty``: this quantile of the real samples' certainty.
        entropy_quantile: optional streaming threshold on ``entropy`` (this quantile of real entropy); ``None``
            disables the entropy check.
        memorisation_quantile: the memorisation guard rejects ``nearest_real`` below this quantile of the real
            training samples' leave-one-out nearest-neighbour distances and, when ``fit`` was given a
            calibration set, below this quantile of the calibration cases' ``nearest_real`` too (the smaller
            of the two thresholds; see ``fit``).
        units: default units of the triplets handed to ``fit``/``score``/``select`` (each takes ``units=`` to
            override): ``"normalized"`` ([-1, 1], as the sampler emits them) or ``"physical"`` (HU/SUV/{0,1}).
        specs: modality specs for physical units (default ``DEFAULT_MODALITY_SPECS``).
        embedding_size: pooled grid per spatial axis of the memorisation/k-means embedding (default 8 in 2D,
            4 in 3D).
        batch_size: samples per forward pass.
        seed: seeds the dropout masks and the k-means. Sample ``i`` of a ``score`` call (or of the real data
            in ``fit``) always gets the same masks, whatever the batch size, so scores are reproducible.
        ct_key: the CT modality of the ``mask_outside_body`` rule (``None``: no CT rule).
        pet_key: the PET modality of the ``no_pet_uptake`` rule (``None``: no PET rule).
        body_threshold: the body is CT above this value in the CT spec's physical unit (default -500 HU:
            between fat, about -100, and air, -1000), holes of each axial slice filled (airway, sinuses,
            lungs are inside the patient). Must lie inside the CT spec's range.
        body_dilation: voxels the body is dilated by (default 1: a lesion at the skin, partial volume).
        min_mask_in_body: ``mask_outside_body`` rejects a sample whose fraction of mask voxels inside the body
            is below this (default 0.9); ``None`` turns the rule off. An empty mask passes this rule.
        empty_mask: ``"auto"`` (default), ``"on"`` / ``True`` or ``"off"`` / ``False``: when the
            ``empty_mask`` rule applies (:class:`EmptyMaskRule`).
        min_mask_voxels: ``empty_mask`` rejects a mask with fewer voxels than this (default 1: an empty mask).
        empty_mask_real_fraction: ``"auto"`` turns the rule on when at least this fraction of the real
            training samples has ``min_mask_voxels`` or more (default 0.95).
        min_pet_uptake: ``no_pet_uptake`` rejects a sample whose PET uptake ratio (mean SUV in the mask over
            the median SUV in a ring around it, :func:`~monai_pairsynth.quality.plausibility.pet_uptake_ratio`)
            is below this: a number (fixed), ``"auto"`` (default: learned at ``fit`` as
            ``pet_uptake_margin`` × the ``pet_uptake_quantile`` of the real training samples' ratios) or
            ``None`` (off). An empty mask passes this rule.
        pet_uptake_quantile: the quantile of the real ratios of ``"auto"`` (default 0.01).
        pet_uptake_margin: the factor of ``"auto"`` (default 0.75; below 1, so that a real tumour fainter than
            the fitted ones still passes).
        pet_ring: ``(inner, outer)`` voxels: the ring is the mask dilated by ``outer`` minus the mask dilated by
            ``inner`` (default ``(1, 3)``).

    Example:
        >>> import torch
        >>> from monai_pairsynth.quality import build_feature_segmenter
        >>> _ = torch.manual_seed(0)
        >>> net = build_feature_segmenter(2, channels=(4, 8), dropout=0.2)
        >>> def case(i):
        ...     g = torch.Generator().manual_seed(i)
        ...     img = torch.rand(1, 16, 16, generator=g) * 2 - 1
        ...     return {"ct": img, "pet": -img, "label": (img > 0.5).float()}
        >>> filt = FeatureCentroidFilter(net, mc_passes=1).fit([case(i) for i in range(8)])
        >>> batch = {k: torch.stack([case(100 + i)[k] for i in range(8)]) for k in ("ct", "pet", "label")}
        >>> result = filt.select(batch, mode="pool", ratio=0.5, num_real=4)
        >>> result.num_accepted, sorted(result.scores)  # doctest: +NORMALIZE_WHITESPACE
        (2, ['certainty', 'distance', 'entropy', 'mask_in_body', 'mask_voxels', 'nearest_real', 'pet_uptake',
             'stratum'])
        >>> print(result.explain(int(result.indices[0])))  # doctest: +ELLIPSIS
        sample ...: accepted (distance=..., certainty=..., entropy=..., nearest_real=..., stratum=0, mask_in_body=...; pool limits: ...)
    """

    def __init__(
        self,
        feature_network: nn.Module,
        layers: Sequence[str] | None = None,
        image_keys: Sequence[str] = ("ct", "pet"),
        label_key: str = "label",
        mc_passes: int = 4,
        num_strata: int = 1,
        strata: StrataMethod | str = StrataMethod.KMEANS,
        certainty: bool = True,
        distance_quantile: float = 0.95,
        certainty_quantile: float = 0.05,
        entropy_quantile: float | None = None,
        memorisation_quantile: float = 0.01,
        units: IntensityUnits | str = IntensityUnits.NORMALIZED,
        specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
        embedding_size: int | None = None,
        batch_size: int = 32,
        seed: int = 0,
        ct_key: str | None = "ct",
        pet_key: str | None = "pet",
        body_threshold: float = -500.0,
        body_dilation: int = 1,
        min_mask_in_body: float | None = 0.9,
        empty_mask: EmptyMaskRule | str | bool = EmptyMaskRule.AUTO,
        min_mask_voxels: int = 1,
        empty_mask_real_fraction: float = 0.95,
        min_pet_uptake: float | str | None = "auto",
        pet_uptake_quantile: float = 0.01,
        pet_uptake_margin: float = 0.75,
        pet_ring: Sequence[int] = (1, 3),
    ) -> None:
        if not isinstance(mc_passes, int) or isinstance(mc_passes, bool) or mc_passes < 1:
            raise ValueError(
                f"mc_passes (K, the number of Monte-Carlo dropout passes) must be an integer >= 1, got {mc_passes!r}."
            )
        if not isinstance(num_strata, int) or isinstance(num_strata, bool) or num_strata < 1:
            raise ValueError(f"num_strata must be an integer >= 1, got {num_strata!r}.")
        try:
            strata = StrataMethod(strata)
        except ValueError:
            raise ValueError(
                f"strata must be one of {[s.value for s in StrataMethod]}, got {strata!r}."
            ) from None
        try:
            units = IntensityUnits(units)
        except ValueError:
            raise ValueError(
                f"units must be one of {[u.value for u in IntensityUnits]}, got {units!r}."
            ) from None
        if isinstance(image_keys, str):
            raise ValueError(f"image_keys must be a sequence of keys, got the string {image_keys!r}.")
        image_keys = [str(k) for k in image_keys]
        if not image_keys or len(set(image_keys)) != len(image_keys):
            raise ValueError(f"image_keys must be a non-empty list of distinct keys, got {image_keys}.")
        if label_key in image_keys:
            raise ValueError(f"label_key {label_key!r} is also one of image_keys {image_keys}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if embedding_size is not None and embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1 or None, got {embedding_size}.")
        if layers is None:
            layers = unet_encoder_layers(feature_network)
        self.feature_network = feature_network
        self.layers = list(layers)
        self.image_keys = image_keys
        self.label_key = str(label_key)
        self.mc_passes = mc_passes
        self.num_strata = num_strata
        self.strata = strata
        self.certainty = bool(certainty)
        self.distance_quantile = _check_quantile("distance_quantile", distance_quantile)
        self.certainty_quantile = _check_quantile("certainty_quantile", certainty_quantile)
        self.entropy_quantile = _check_quantile("entropy_quantile", entropy_quantile, allow_none=True)
        self.memorisation_quantile = _check_quantile("memorisation_quantile", memorisation_quantile)
        self.units = units
        self.specs = resolve_specs(specs) if specs is not None else dict(DEFAULT_MODALITY_SPECS)
        self.embedding_size = embedding_size
        self.batch_size = batch_size
        self.seed = int(seed)
        self._init_plausibility(
            ct_key,
            pet_key,
            body_threshold,
            body_dilation,
            min_mask_in_body,
            empty_mask,
            min_mask_voxels,
            empty_mask_real_fraction,
            min_pet_uptake,
            pet_uptake_quantile,
            pet_uptake_margin,
            pet_ring,
        )
        self._extractor = MCDropoutFeatureExtractor(feature_network, self.layers, mc_passes=mc_passes)
        self._deterministic = (
            self._extractor
            if mc_passes == 1
            else MCDropoutFeatureExtractor(feature_network, self.layers, mc_passes=1)
        )
        self._fitted: dict[str, Any] | None = None
        self._thresholds: dict[str, Any] | None = None
        self._rules: dict[str, dict[str, Any]] = {}
        self._device_cache: dict[str, Any] = {}
        self.reset_counts()

    def _init_plausibility(
        self,
        ct_key,
        pet_key,
        body_threshold,
        body_dilation,
        min_mask_in_body,
        empty_mask,
        min_mask_voxels,
        empty_mask_real_fraction,
        min_pet_uptake,
        pet_uptake_quantile,
        pet_uptake_margin,
        pet_ring,
    ) -> None:
        """Validate and store the plausibility rules' settings (see the class docstring)."""
        for name, key in (("ct_key", ct_key), ("pet_key", pet_key)):
            if key is not None and (not isinstance(key, str) or not key):
                raise ValueError(f"{name} must be a modality key (a non-empty string) or None, got {key!r}.")
            if key is not None and key == self.label_key:
                raise ValueError(f"{name} {key!r} is the label_key; it must name an image modality.")
        if ct_key is not None and ct_key == pet_key:
            raise ValueError(f"ct_key and pet_key must differ, both are {ct_key!r}.")
        if not _is_real_number(body_threshold):
            raise ValueError(f"body_threshold must be a finite number (HU), got {body_threshold!r}.")
        if not _is_int(body_dilation) or body_dilation < 0:
            raise ValueError(f"body_dilation must be an integer >= 0 (voxels), got {body_dilation!r}.")
        if min_mask_in_body is not None and (
            not _is_real_number(min_mask_in_body) or not 0.0 <= float(min_mask_in_body) <= 1.0
        ):
            raise ValueError(
                f"min_mask_in_body must be a fraction in [0, 1] or None (rule off), got {min_mask_in_body!r}."
            )
        if isinstance(empty_mask, bool):
            empty_mask = EmptyMaskRule.ON if empty_mask else EmptyMaskRule.OFF
        try:
            empty_mask = EmptyMaskRule(empty_mask)
        except ValueError:
            raise ValueError(
                f"empty_mask must be one of {[m.value for m in EmptyMaskRule]} (or a bool), got {empty_mask!r}."
            ) from None
        if not _is_int(min_mask_voxels) or min_mask_voxels < 1:
            raise ValueError(f"min_mask_voxels must be an integer >= 1, got {min_mask_voxels!r}.")
        if not _is_real_number(empty_mask_real_fraction) or not 0.0 <= float(empty_mask_real_fraction) <= 1.0:
            raise ValueError(
                f"empty_mask_real_fraction must be a fraction in [0, 1], got {empty_mask_real_fraction!r}."
            )
        if not (
            min_pet_uptake is None
            or min_pet_uptake == "auto"
            or (_is_real_number(min_pet_uptake) and float(min_pet_uptake) >= 0.0)
        ):
            raise ValueError(
                f"min_pet_uptake must be a number >= 0, 'auto' or None (rule off), got {min_pet_uptake!r}."
            )
        pet_uptake_quantile = _check_quantile("pet_uptake_quantile", pet_uptake_quantile)
        if not _is_real_number(pet_uptake_margin) or not float(pet_uptake_margin) > 0.0:
            raise ValueError(f"pet_uptake_margin must be a positive number, got {pet_uptake_margin!r}.")
        if (
            isinstance(pet_ring, (str, bytes))
            or not isinstance(pet_ring, Sequence)
            or len(pet_ring) != 2
            or not all(_is_int(r) for r in pet_ring)
            or not 0 <= pet_ring[0] < pet_ring[1]
        ):
            raise ValueError(
                f"pet_ring must be two integers (inner, outer) with 0 <= inner < outer (voxels), got {pet_ring!r}."
            )
        self.ct_key = ct_key
        self.pet_key = pet_key
        self.body_threshold = float(body_threshold)
        self.body_dilation = int(body_dilation)
        self.min_mask_in_body = None if min_mask_in_body is None else float(min_mask_in_body)
        self.empty_mask = empty_mask
        self.min_mask_voxels = int(min_mask_voxels)
        self.empty_mask_real_fraction = float(empty_mask_real_fraction)
        self.min_pet_uptake = min_pet_uptake if min_pet_uptake in (None, "auto") else float(min_pet_uptake)
        self.pet_uptake_quantile = pet_uptake_quantile
        self.pet_uptake_margin = float(pet_uptake_margin)
        self.pet_ring = (int(pet_ring[0]), int(pet_ring[1]))
        if self._uses_ct():
            spec = self.specs.get(ct_key)
            if spec is None or spec.is_mask:
                raise ValueError(
                    f"the mask_outside_body rule needs an image spec for ct_key {ct_key!r} (to convert to HU); "
                    "pass specs={...}, or min_mask_in_body=None."
                )
            if not float(spec.low) < self.body_threshold < float(spec.high):
                raise ValueError(
                    f"body_threshold {self.body_threshold:g} {spec.unit} lies outside the CT spec's range "
                    f"({spec.low:g}, {spec.high:g}): every voxel would be {'body' if self.body_threshold < spec.low else 'air'}."
                )
        if self._uses_pet():
            spec = self.specs.get(pet_key)
            if spec is None or spec.is_mask:
                raise ValueError(
                    f"the no_pet_uptake rule needs an image spec for pet_key {pet_key!r} (to convert to SUV); "
                    "pass specs={...}, or min_pet_uptake=None."
                )

    def _uses_ct(self) -> bool:
        """The ``mask_outside_body`` rule is configured and its CT is one of the filter's modalities."""
        return (
            self.min_mask_in_body is not None and self.ct_key is not None and self.ct_key in self.image_keys
        )

    def _uses_pet(self) -> bool:
        """The ``no_pet_uptake`` rule is configured and its PET is one of the filter's modalities."""
        return (
            self.min_pet_uptake is not None and self.pet_key is not None and self.pet_key in self.image_keys
        )

    def _uses_plausibility(self) -> bool:
        return self._uses_ct() or self._uses_pet() or self.empty_mask != EmptyMaskRule.OFF

    def _needs_mask(self) -> bool:
        return (
            self.certainty
            or (self.num_strata > 1 and self.strata == StrataMethod.TUMOUR_SIZE)
            or self._uses_plausibility()
        )

    # ------------------------------------------------------------------ configuration and state

    def config(self) -> dict[str, Any]:
        """The constructor arguments (except the network) as plain values."""
        return {
            "layers": list(self.layers),
            "image_keys": list(self.image_keys),
            "label_key": self.label_key,
            "mc_passes": self.mc_passes,
            "num_strata": self.num_strata,
            "strata": self.strata.value,
            "certainty": self.certainty,
            "distance_quantile": self.distance_quantile,
            "certainty_quantile": self.certainty_quantile,
            "entropy_quantile": self.entropy_quantile,
            "memorisation_quantile": self.memorisation_quantile,
            "units": self.units.value,
            "specs": {k: v.to_dict() for k, v in self.specs.items()},
            "embedding_size": self.embedding_size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "ct_key": self.ct_key,
            "pet_key": self.pet_key,
            "body_threshold": self.body_threshold,
            "body_dilation": self.body_dilation,
            "min_mask_in_body": self.min_mask_in_body,
            "empty_mask": self.empty_mask.value,
            "min_mask_voxels": self.min_mask_voxels,
            "empty_mask_real_fraction": self.empty_mask_real_fraction,
            "min_pet_uptake": self.min_pet_uptake,
            "pet_uptake_quantile": self.pet_uptake_quantile,
            "pet_uptake_margin": self.pet_uptake_margin,
            "pet_ring": list(self.pet_ring),
        }

    @property
    def is_fitted(self) -> bool:
        return self._fitted is not None

    @property
    def device(self) -> torch.device:
        return self._extractor.device

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of the triplets the filter was fitted on."""
        return tuple(self._require_fitted("spatial_shape")["spatial_shape"])

    @property
    def thresholds(self) -> dict[str, Any]:
        """Streaming thresholds: ``distance`` (one per stratum, a list), ``min_certainty``, ``max_entropy``
        (``inf`` when disabled) and ``min_nearest_real``; and those of the plausibility rules (both modes):
        ``min_mask_in_body``, ``min_mask_voxels``, ``min_pet_uptake`` (``None`` where the rule is off, see
        :attr:`plausibility_rules`)."""
        self._require_fitted("thresholds")
        assert self._thresholds is not None
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._thresholds.items()}

    @property
    def plausibility_rules(self) -> dict[str, dict[str, Any]]:
        """Per rule (``mask_outside_body``, ``empty_mask``, ``no_pet_uptake``): ``active`` (bool),
        ``threshold`` (``None`` when off) and ``note`` (why it is on or off, e.g. what was learned at ``fit``)."""
        self._require_fitted("plausibility_rules")
        return {k: dict(v) for k, v in self._rules.items()}

    @property
    def real_plausibility(self) -> dict[str, torch.Tensor]:
        """The plausibility measurements of the real *training* samples the rules were learned from
        (``mask_in_body``, ``mask_voxels``, ``pet_uptake``, those computed; empty for a state saved before the
        rules existed)."""
        fitted = self._require_fitted("real_plausibility")
        return {k: v.clone() for k, v in (fitted.get("plausibility") or {}).items()}

    @property
    def real_scores(self) -> dict[str, torch.Tensor]:
        """Scores of the real calibration samples (``distance``, ``certainty``, ``entropy``, ``stratum``), the
        real leave-one-out nearest-neighbour distances (``nearest_real``, training set) and, when ``fit`` had a
        calibration set, the calibration cases' distances to their nearest training sample
        (``calibration_nearest_real``)."""
        fitted = self._require_fitted("real_scores")
        return {k: v.clone() for k, v in fitted["real_scores"].items()}

    def _require_fitted(self, what: str) -> dict[str, Any]:
        if self._fitted is None:
            raise FilterNotFittedError(
                f"FeatureCentroidFilter.{what} needs a fitted filter: call fit(real_data) first or load a saved "
                "state with FeatureCentroidFilter.load(path, network) / load_state_dict(state)."
            )
        return self._fitted

    def state_dict(self) -> dict[str, Any]:
        """Centroids, strata, thresholds, real scores, real embeddings (for the guard) and the config."""
        fitted = self._require_fitted("state_dict")
        return {
            "version": _STATE_VERSION,
            "config": self.config(),
            "fitted": {
                "spatial_shape": list(fitted["spatial_shape"]),
                "layer_shapes": [list(s) for s in fitted["layer_shapes"]],
                "centroids": [c.clone() for c in fitted["centroids"]],
                "strata_centers": fitted["strata_centers"].clone(),
                "size_edges": fitted["size_edges"].clone(),
                "real_embeddings": fitted["real_embeddings"].clone(),
                "real_scores": {k: v.clone() for k, v in fitted["real_scores"].items()},
                "num_real": fitted["num_real"],
                "plausibility": {k: v.clone() for k, v in (fitted.get("plausibility") or {}).items()},
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> FeatureCentroidFilter:
        """Restore a fitted state; its config must match this filter's (the network is not part of it).

        The plausibility rules' thresholds are this filter's (like the quantiles). A state saved before the rules
        existed (version 1) has no real measurements to learn from: ``mask_outside_body`` applies with this
        filter's settings (it learns nothing), ``empty_mask="auto"`` and ``min_pet_uptake="auto"`` are off
        (``"on"`` and a fixed number still apply); :attr:`plausibility_rules` says so.
        """
        if not isinstance(state, Mapping) or "config" not in state or "fitted" not in state:
            raise ValueError(
                "state must be a dict with 'config' and 'fitted' entries, as written by state_dict()."
            )
        if state.get("version") not in _READABLE_STATE_VERSIONS:
            raise ValueError(
                f"unsupported filter state version {state.get('version')!r}; expected one of "
                f"{list(_READABLE_STATE_VERSIONS)}."
            )
        mine, theirs = self.config(), dict(state["config"])
        # quantiles and rule thresholds only set thresholds (recomputed below with this filter's values);
        # batch_size changes nothing
        free = {
            "batch_size",
            "distance_quantile",
            "certainty_quantile",
            "entropy_quantile",
            "memorisation_quantile",
            *(k for k in _PLAUSIBILITY_CONFIG if k not in _PLAUSIBILITY_FIXED_BY_FIT),
        }
        # a state saved before the plausibility rules has none of their keys: nothing to compare
        absent = {k for k in _PLAUSIBILITY_FIXED_BY_FIT if k not in theirs}
        differing = sorted(k for k in mine if k not in free and k not in absent and mine[k] != theirs.get(k))
        if differing:
            details = "; ".join(f"{k}: saved {theirs.get(k)!r}, this filter {mine[k]!r}" for k in differing)
            raise ValueError(f"the saved filter state was made with a different configuration ({details}).")
        f = state["fitted"]
        self._fitted = {
            "spatial_shape": tuple(int(s) for s in f["spatial_shape"]),
            "layer_shapes": [tuple(int(x) for x in s) for s in f["layer_shapes"]],
            "centroids": [c.float().cpu() for c in f["centroids"]],
            "strata_centers": f["strata_centers"].float().cpu(),
            "size_edges": f["size_edges"].float().cpu(),
            "real_embeddings": f["real_embeddings"].float().cpu(),
            "real_scores": {k: v.cpu() for k, v in f["real_scores"].items()},
            "num_real": int(f["num_real"]),
            # None: saved before the plausibility rules (version 1), nothing learned
            "plausibility": (
                {k: v.cpu() for k, v in f["plausibility"].items()}
                if f.get("plausibility") is not None
                else None
            ),
        }
        self._device_cache = {}
        self.calibrate()
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Atomically write :meth:`state_dict` to ``path`` (``torch.save`` format)."""
        return atomic_save_torch(self.state_dict(), path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, feature_network: nn.Module, **overrides: Any
    ) -> FeatureCentroidFilter:
        """Rebuild a filter saved by :meth:`save` around ``feature_network`` (the same trained network).

        ``overrides`` may change ``batch_size`` only (everything else defines the saved scores).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"filter state file {str(path)!r} does not exist.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"cannot read filter state file {str(path)!r}: {err}") from err
        if not isinstance(state, Mapping) or "config" not in state:
            raise ValueError(f"file {str(path)!r} is not a FeatureCentroidFilter state (no 'config').")
        unknown = sorted(set(overrides) - {"batch_size"})
        if unknown:
            raise ValueError(f"load() can only override batch_size, got {unknown}.")
        config = {**state["config"], **overrides}
        return cls(feature_network, **config).load_state_dict(
            {**state, "config": {**state["config"], "batch_size": config["batch_size"]}}
        )

    # ------------------------------------------------------------------ running counts

    def reset_counts(self) -> None:
        """Zero the running counts of :attr:`counts`."""
        self._counts = {"seen": 0, "accepted": 0, "rejected": 0}
        for reason in RejectionReason:
            if reason != RejectionReason.ACCEPTED:
                self._counts[f"rejected_{reason.value}"] = 0

    @property
    def counts(self) -> dict[str, int]:
        """Running totals over all ``select`` calls since construction / :meth:`reset_counts`:
        ``seen``, ``accepted``, ``rejected`` and ``rejected_<reason>`` per :class:`RejectionReason`."""
        return dict(self._counts)

    # ------------------------------------------------------------------ feature computation

    def _sample_seeds(self, start: int, count: int) -> list[int]:
        """Dropout seeds of samples ``start .. start + count - 1`` of one sweep: a sample's MC-dropout masks depend
        on the filter's seed and its position in the data, not on how the data is split into batches."""
        return [_mix_seed(self.seed, i) for i in range(start, start + count)]

    def _embedding_size(self, spatial_dims: int) -> int:
        if self.embedding_size is not None:
            return self.embedding_size
        return 8 if spatial_dims <= 2 else 4

    def _normalized_features(
        self, features: Mapping[str, torch.Tensor], expected: list[tuple] | None
    ) -> list[torch.Tensor]:
        out = []
        for i, name in enumerate(self.layers):
            a = features[name]
            if expected is not None and tuple(a.shape[1:]) != tuple(expected[i]):
                raise ValueError(
                    f"layer {name!r} produced activations of shape {tuple(a.shape[1:])} but the filter was fitted "
                    f"with {tuple(expected[i])}; is this the feature network the filter was fitted with?"
                )
            out.append(unit_normalize_channels(a))
        return out

    def _probabilities(self, logits: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        if logits.ndim != 2 + len(spatial) or tuple(logits.shape[2:]) != spatial:
            raise ValueError(
                f"certainty=True needs a segmentation output (B, C_out, {', '.join(map(str, spatial))}), but the "
                f"network returned shape {tuple(logits.shape)}; use a segmenter or certainty=False."
            )
        logits = logits.float()
        if logits.shape[1] == 1:
            p = torch.sigmoid(logits)
            return torch.cat([1.0 - p, p], dim=1)
        return torch.softmax(logits, dim=1)

    def _deterministic_embedding(self, inputs: torch.Tensor, expected: list[tuple] | None) -> torch.Tensor:
        (single,) = list(self._deterministic.iter_passes(inputs))
        normed = self._normalized_features(single.features, expected)
        return pooled_embedding(normed, self._embedding_size(inputs.ndim - 2))

    def _accumulate_centroid_sums(
        self,
        inputs: torch.Tensor,
        groups: torch.Tensor,
        num_groups: int,
        sums: list[torch.Tensor] | None,
        sample_seeds: list[int],
        expected: list[tuple] | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Add the unit-normalised activations of all K passes of ``inputs`` into per-group sums.

        Returns the sums and, when ``K = 1`` (the pass is the deterministic one), the pooled embedding.
        """
        embedding = None
        for single in self._extractor.iter_passes(inputs, sample_seeds=sample_seeds):
            normed = self._normalized_features(single.features, expected)
            if sums is None:
                sums = [torch.zeros((num_groups, *a.shape[1:]), device=a.device) for a in normed]
            for s, a in zip(sums, normed):
                s.index_add_(0, groups.to(a.device), a)
            if self.mc_passes == 1:
                embedding = pooled_embedding(normed, self._embedding_size(inputs.ndim - 2))
        assert sums is not None
        return sums, embedding

    def _score_tensors(
        self, inputs: torch.Tensor, mask: torch.Tensor | None, sample_seeds: list[int], with_nearest: bool
    ) -> dict[str, torch.Tensor]:
        fitted = self._fitted
        assert fitted is not None
        cache = self._on_device()
        spatial = tuple(inputs.shape[2:])
        b = inputs.shape[0]
        dist_sum = torch.zeros(b, cache["centroids"][0].shape[0], device=inputs.device)
        dice_sum = torch.zeros(b, device=inputs.device)
        prob_sum = None
        embedding = None
        for single in self._extractor.iter_passes(inputs, sample_seeds=sample_seeds):
            normed = self._normalized_features(single.features, fitted["layer_shapes"])
            dist_sum += centroid_distances(normed, cache["centroids"])
            if self.mc_passes == 1 and with_nearest:
                embedding = pooled_embedding(normed, self._embedding_size(len(spatial)))
            if self.certainty:
                assert mask is not None
                probs = self._probabilities(single.output, spatial)
                prob_sum = probs if prob_sum is None else prob_sum + probs
                dice_sum += _hard_dice((1.0 - probs[:, :1]) > 0.5, mask > 0.5)
        distances = dist_sum / self.mc_passes
        out: dict[str, torch.Tensor] = {}
        if self.num_strata > 1 and self.strata == StrataMethod.TUMOUR_SIZE:
            assert mask is not None
            stratum = torch.bucketize(_tumour_fraction(mask), cache["size_edges"], right=True)
            out["distance"] = distances.gather(1, stratum[:, None]).squeeze(1)
        else:
            out["distance"], stratum = distances.min(dim=1)
        if self.certainty:
            assert prob_sum is not None and mask is not None
            mean_probs = prob_sum / self.mc_passes
            out["certainty"] = dice_sum / self.mc_passes
            out["entropy"] = _lesion_entropy(mean_probs, mask > 0.5)
        if with_nearest:
            if embedding is None:
                embedding = self._deterministic_embedding(inputs, fitted["layer_shapes"])
            out["nearest_real"] = (torch.cdist(embedding, cache["real_embeddings"]) ** 2).min(dim=1).values
        out["stratum"] = stratum
        return out

    def _on_device(self) -> dict[str, Any]:
        fitted = self._fitted
        assert fitted is not None
        device = self.device
        cache = getattr(self, "_device_cache", {})
        if cache.get("device") != device or cache.get("fitted_id") != id(fitted):
            cache = {
                "device": device,
                "fitted_id": id(fitted),
                "centroids": [c.to(device) for c in fitted["centroids"]],
                "size_edges": fitted["size_edges"].to(device),
                "real_embeddings": fitted["real_embeddings"].to(device),
            }
            self._device_cache = cache
        return cache

    def _prepare(self, batch: Mapping[str, torch.Tensor], units, spatial_shape, check_range: bool):
        need_mask = self._needs_mask()
        device = self.device
        moved = {k: v.to(device) for k, v in batch.items()}
        return prepare_triplet_batch(
            moved,
            self.image_keys,
            self.label_key if need_mask else None,
            units if units is not None else self.units,
            self.specs,
            spatial_shape=spatial_shape,
            check_range=check_range,
        )

    def _keys(self) -> list[str]:
        return [*self.image_keys, self.label_key] if self._needs_mask() else list(self.image_keys)

    def _plausibility(self, inputs: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The plausibility measurements of a prepared batch (``inputs`` in [-1, 1], ``mask`` {0, 1}), ``(B,)``
        each, for the rules whose modalities the filter has (:mod:`~monai_pairsynth.quality.plausibility`)."""
        out: dict[str, torch.Tensor] = {}
        if mask is None:
            return out
        tumour = mask > 0.5
        if self._uses_ct():
            assert self.ct_key is not None
            i = self.image_keys.index(self.ct_key)
            ct = self.specs[self.ct_key].denormalize(inputs[:, i : i + 1])
            body = body_mask(ct, self.body_threshold, self.body_dilation)
            out["mask_in_body"] = mask_in_body_fraction(tumour, body)
        if self.empty_mask != EmptyMaskRule.OFF:
            out["mask_voxels"] = tumour.flatten(1).sum(1).float()
        if self._uses_pet():
            assert self.pet_key is not None
            i = self.image_keys.index(self.pet_key)
            pet = self.specs[self.pet_key].denormalize(inputs[:, i : i + 1])
            out["pet_uptake"] = pet_uptake_ratio(pet, tumour, self.pet_ring)
        return out

    # ------------------------------------------------------------------ fit

    def fit(
        self, real: Any, calibration: Any = None, units: IntensityUnits | str | None = None
    ) -> FeatureCentroidFilter:
        """Fit centroids, strata, the memorisation guard and the streaming thresholds on real triplets.

        Three sweeps over ``real`` (two with one stratum), each running the K passes: (1) centroid sums (one
        global sum; the per-stratum sums in sweep 2 once the strata are known), the deterministic embeddings
        for the guard and k-means, the tumour sizes and the plausibility measurements (from which the
        ``"auto"`` rules learn); (2) per-stratum centroids; (3) the real samples' own
        scores, from which the thresholds are calibrated (on ``calibration`` instead when given, e.g.
        held-out real cases the segmenter was not trained on, whose certainty is not optimistic).

        The memorisation guard's reference is the training samples' leave-one-out nearest-neighbour distance.
        When the feature network was trained on those samples it has learned to tell them apart, so they sit
        farther from each other than a new real case sits from its nearest training sample, and a low quantile
        of them rejects several times ``memorisation_quantile`` of genuinely new cases (phantom benchmark,
        quantile 0.01: 2.5-8 %). With ``calibration``, the calibration cases' own ``nearest_real`` (held-out
        versus training: what a new, non-copied case gives) is measured as well, and the guard takes the
        smaller of the two quantiles (a few calibration cases alone estimate a low quantile poorly).

        Args:
            real: the real training triplets: a dataset or list of sample dicts ``{key: (1, *spatial)}``, a
                ``DataLoader`` of batched dicts, or one batched dict ``{key: (B, 1, *spatial)}``.
            calibration: optional real triplets for the thresholds (same container types).
            units: units of ``real``/``calibration`` (default: the filter's ``units``).

        Returns:
            ``self``.

        Raises:
            ValueError: an empty real set, missing keys, mismatched shapes, non-finite real values, non-finite
                features of the feature network (named), fewer real samples than strata (or than 2, which the
                guard needs), or real samples that are all exact copies of each other. Some exact copies are
                logged and left out of the guard's calibration (their distance 0 would disable the guard).
        """
        keys = self._keys()
        sums: list[torch.Tensor] | None = None
        embeddings, sizes = [], []
        plausibility: dict[str, list[torch.Tensor]] = {}
        spatial_shape: tuple[int, ...] | None = None
        layer_shapes: list[tuple] | None = None
        count = 0
        # sweep 1: global centroid sum, embeddings, tumour sizes
        for batch in iter_triplet_batches(real, keys, self.batch_size, name="real set"):
            inputs, mask, finite = self._prepare(batch, units, spatial_shape, check_range=True)
            _check_finite(finite, "real")
            if spatial_shape is None:
                spatial_shape = tuple(inputs.shape[2:])
                if len(spatial_shape) not in (2, 3):
                    raise ValueError(f"triplets must be 2D or 3D, got spatial shape {spatial_shape}.")
                layer_shapes = self._layer_shapes(inputs[:1])
            zeros = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
            seeds = self._sample_seeds(count, inputs.shape[0])
            sums, embedding = self._accumulate_centroid_sums(inputs, zeros, 1, sums, seeds, layer_shapes)
            if embedding is None:
                embedding = self._deterministic_embedding(inputs, layer_shapes)
            embeddings.append(embedding.cpu())
            sizes.append(_tumour_fraction(mask).cpu() if mask is not None else torch.zeros(inputs.shape[0]))
            for name, values in self._plausibility(inputs, mask).items():
                plausibility.setdefault(name, []).append(values.cpu())
            count += inputs.shape[0]
        assert sums is not None and spatial_shape is not None and layer_shapes is not None
        # the real data was checked finite above: non-finite features mean a broken feature network, which would
        # otherwise reject every candidate later as "non_finite" and blame the generator
        for what, values in (
            ("layer activations", torch.stack([s.sum() for s in sums])),
            ("embeddings", embeddings),
        ):
            values = torch.cat(values) if isinstance(values, list) else values
            check_finite_features(values, what, self.feature_network, self.layers)
        if count < max(2, self.num_strata):
            raise ValueError(
                f"fit needs at least {max(2, self.num_strata)} real samples (2 for the memorisation guard, "
                f"num_strata={self.num_strata}), got {count}."
            )
        real_embeddings = torch.cat(embeddings)
        real_sizes = torch.cat(sizes)
        strata_centers = torch.zeros(0, real_embeddings.shape[1])
        size_edges = torch.zeros(0)
        if self.num_strata == 1:
            centroids = [s / (count * self.mc_passes) for s in sums]
        else:
            if self.strata == StrataMethod.KMEANS:
                # canonical order first, so the k-means++ draws do not depend on the order the data came in
                order = _canonical_order(real_embeddings)
                strata_centers, sorted_assignment = kmeans(
                    real_embeddings[order],
                    self.num_strata,
                    generator=torch.Generator().manual_seed(self.seed),
                )
                assignment = torch.empty_like(sorted_assignment)
                assignment[order] = sorted_assignment
            else:
                qs = torch.linspace(0, 1, self.num_strata + 1)[1:-1]
                size_edges = torch.quantile(real_sizes, qs)
                assignment = torch.bucketize(real_sizes, size_edges, right=True)
            members = torch.bincount(assignment, minlength=self.num_strata)
            if int(members.min()) == 0:
                empty = torch.nonzero(members == 0).flatten().tolist()
                raise ValueError(
                    f"strata {empty} of {self.num_strata} ({self.strata.value}) have no real sample (too many equal "
                    "tumour sizes or too few samples); use fewer strata."
                )
            # sweep 2: per-stratum sums; each sample is assigned from its own embedding / size, so a shuffling
            # DataLoader gives the same strata
            sums = None
            counts = torch.zeros(self.num_strata)
            for batch in iter_triplet_batches(real, keys, self.batch_size):
                inputs, mask, _ = self._prepare(batch, units, spatial_shape, check_range=False)
                if self.strata == StrataMethod.KMEANS:
                    emb = self._deterministic_embedding(inputs, layer_shapes).cpu()
                    groups = (torch.cdist(emb, strata_centers) ** 2).argmin(1)
                else:
                    groups = torch.bucketize(_tumour_fraction(mask).cpu(), size_edges, right=True)
                seeds = self._sample_seeds(int(counts.sum()), inputs.shape[0])
                counts += torch.bincount(groups, minlength=self.num_strata).float()
                sums, _ = self._accumulate_centroid_sums(
                    inputs, groups, self.num_strata, sums, seeds, layer_shapes
                )
            assert sums is not None
            if int(counts.min()) == 0:
                raise ValueError(
                    f"a stratum lost all its real samples between sweeps (counts {counts.tolist()}); is the real "
                    "data deterministic (no random transforms)?"
                )
            centroids = [
                s / (counts.to(s.device).view(-1, *([1] * (s.ndim - 1))) * self.mc_passes) for s in sums
            ]
        # leave-one-out nearest-neighbour distances between real training samples (the guard's reference)
        nn_sq = torch.cdist(real_embeddings, real_embeddings) ** 2
        nn_sq.fill_diagonal_(float("inf"))
        real_nn = nn_sq.min(dim=1).values
        previous = (self._fitted, self._thresholds)
        self._fitted = {
            "spatial_shape": spatial_shape,
            "layer_shapes": layer_shapes,
            "centroids": [c.float().cpu() for c in centroids],
            "strata_centers": strata_centers.float(),
            "size_edges": size_edges.float(),
            "real_embeddings": real_embeddings.float(),
            "real_scores": {},
            "num_real": count,
            "plausibility": {k: torch.cat(v).float() for k, v in plausibility.items()},
        }
        self._device_cache = {}
        # sweep 3: the real samples' own scores (calibration set when given)
        try:
            scores = self._score_all(
                calibration if calibration is not None else real,
                units,
                with_nearest=calibration is not None,
                check_range=True,
                what="calibration" if calibration is not None else "real",
            )
        except BaseException:
            self._fitted, self._thresholds = previous
            self._device_cache = {}
            raise
        try:
            for name in ("distance", "certainty", "entropy", "nearest_real"):
                if name in scores:
                    check_finite_features(scores[name], f"{name} scores", self.feature_network, self.layers)
        except ValueError:
            self._fitted, self._thresholds = previous
            self._device_cache = {}
            raise
        real_scores = {k: v for k, v in scores.items() if k not in ("finite", "nearest_real")}
        real_scores["nearest_real"] = real_nn
        if calibration is not None:
            # held-out cases to the training set: the guard's unbiased reference (fit's docstring)
            real_scores["calibration_nearest_real"] = scores["nearest_real"]
        self._fitted["real_scores"] = real_scores
        self.calibrate()
        return self

    def _layer_shapes(self, example: torch.Tensor) -> list[tuple]:
        (single,) = list(self._deterministic.iter_passes(example))
        shapes = []
        for name in self.layers:
            a = single.features[name]
            if a.ndim < 3:
                raise ValueError(
                    f"layer {name!r} outputs shape {tuple(a.shape)}; the filter needs (B, C, *spatial) activations."
                )
            shapes.append(tuple(a.shape[1:]))
        if self.certainty:
            self._probabilities(single.output, tuple(example.shape[2:]))
        return shapes

    def calibrate(
        self,
        distance_quantile: float | None = None,
        certainty_quantile: float | None = None,
        entropy_quantile: float | None = None,
        memorisation_quantile: float | None = None,
    ) -> dict[str, Any]:
        """(Re)compute the streaming thresholds from the stored real scores, without refitting.

        Arguments left ``None`` keep the filter's current quantiles; given ones replace them. To disable the
        entropy check again set ``filter.entropy_quantile = None`` and call ``calibrate()``. The plausibility
        rules' thresholds are recomputed too, from the stored real training measurements and the filter's
        current rule settings.

        Returns:
            :attr:`thresholds`.
        """
        fitted = self._require_fitted("calibrate")
        if distance_quantile is not None:
            self.distance_quantile = _check_quantile("distance_quantile", distance_quantile)
        if certainty_quantile is not None:
            self.certainty_quantile = _check_quantile("certainty_quantile", certainty_quantile)
        if entropy_quantile is not None:
            self.entropy_quantile = _check_quantile("entropy_quantile", entropy_quantile)
        if memorisation_quantile is not None:
            self.memorisation_quantile = _check_quantile("memorisation_quantile", memorisation_quantile)
        real = fitted["real_scores"]
        dist, stratum = real["distance"].double(), real["stratum"]
        global_thr = float(torch.quantile(dist, self.distance_quantile))
        per_stratum = []
        for s in range(fitted["centroids"][0].shape[0]):
            members = dist[stratum == s]
            if members.numel() >= _MIN_STRATUM_FOR_OWN_THRESHOLD:
                per_stratum.append(float(torch.quantile(members, self.distance_quantile)))
            else:
                per_stratum.append(global_thr)
        thresholds: dict[str, Any] = {"distance": per_stratum}
        if self.certainty:
            thresholds["min_certainty"] = float(
                torch.quantile(real["certainty"].double(), self.certainty_quantile)
            )
            thresholds["max_entropy"] = (
                float(torch.quantile(real["entropy"].double(), self.entropy_quantile))
                if self.entropy_quantile is not None
                else math.inf
            )
        # an exact duplicate among the real samples has a nearest-real distance of 0: a quantile taken with it would
        # set the guard's threshold to 0, which lets every copy through; calibrate on the distinct samples only
        nearest = real["nearest_real"].double()
        nearest = nearest[distinct_samples(nearest, "real training samples")]
        min_nearest = float(torch.quantile(nearest, self.memorisation_quantile))
        if "calibration_nearest_real" in real:  # fitted with a calibration set
            held = real["calibration_nearest_real"].double()
            if not bool(
                (held > 0).all()
            ):  # a held-out case that is a training case: said, but kept (it is data)
                logger.warning(
                    "%d of %d calibration samples are exact copies of a training sample; the memorisation guard's "
                    "threshold comes out near 0 with them. Calibrate on held-out cases only.",
                    int((held <= 0).sum()),
                    held.numel(),
                )
            held_out = float(torch.quantile(held, self.memorisation_quantile))
            min_nearest = min(min_nearest, held_out)
        thresholds["min_nearest_real"] = min_nearest
        self._rules = self._plausibility_rules(fitted.get("plausibility"))
        for reason, _, name in _PLAUSIBILITY_RULES:
            thresholds[name] = self._rules[reason]["threshold"]
        self._thresholds = thresholds
        return self.thresholds

    def _plausibility_rules(self, real: Mapping[str, torch.Tensor] | None) -> dict[str, dict[str, Any]]:
        """Thresholds of the plausibility rules from the settings and the real training measurements ``real``
        (``None``: a state saved before the rules existed), with a note on each."""
        rules: dict[str, dict[str, Any]] = {}
        legacy = "the saved filter state predates the plausibility rules (nothing learned at fit)"

        def rule(reason: str, threshold: float | None, note: str) -> None:
            if threshold is not None and real is not None:
                key = next(k for r, k, _ in _PLAUSIBILITY_RULES if r == reason)
                if key in real:
                    values = real[key]
                    failing = int((values < threshold).sum())
                    note += f"; {failing} of {values.numel()} real training samples fail it"
            rules[reason] = {"active": threshold is not None, "threshold": threshold, "note": note}

        # mask_outside_body: nothing to learn
        if self.min_mask_in_body is None:
            rule("mask_outside_body", None, "off (min_mask_in_body=None)")
        elif not self._uses_ct():
            rule(
                "mask_outside_body",
                None,
                f"off: ct_key {self.ct_key!r} is not among image_keys {self.image_keys}",
            )
        else:
            rule(
                "mask_outside_body",
                self.min_mask_in_body,
                f"on: >= {self.min_mask_in_body:g} of the mask inside CT > {self.body_threshold:g} "
                f"(holes filled, dilated by {self.body_dilation})",
            )
        # empty_mask: on, off, or learned from how many real training samples have tumour
        k = self.min_mask_voxels
        if self.empty_mask == EmptyMaskRule.OFF:
            rule("empty_mask", None, "off (empty_mask='off')")
        elif self.empty_mask == EmptyMaskRule.ON:
            rule("empty_mask", float(k), f"on (empty_mask='on'): at least {k} mask voxel(s)")
        elif real is None or "mask_voxels" not in real:
            rule("empty_mask", None, f"off (auto): {legacy}")
        else:
            with_tumour, total = int((real["mask_voxels"] >= k).sum()), int(real["mask_voxels"].numel())
            share = with_tumour / max(total, 1)
            if share >= self.empty_mask_real_fraction:
                rule(
                    "empty_mask",
                    float(k),
                    f"on (auto): {with_tumour}/{total} real training samples have >= {k} mask voxel(s) "
                    f"({share:.3g} >= empty_mask_real_fraction {self.empty_mask_real_fraction:g})",
                )
            else:
                rule(
                    "empty_mask",
                    None,
                    f"off (auto): only {with_tumour}/{total} real training samples have >= {k} mask voxel(s) "
                    f"({share:.3g} < empty_mask_real_fraction {self.empty_mask_real_fraction:g}), so an empty "
                    "mask is plausible",
                )
        # no_pet_uptake: fixed, or learned from the real training samples' ratios
        if self.min_pet_uptake is None:
            rule("no_pet_uptake", None, "off (min_pet_uptake=None)")
        elif not self._uses_pet():
            rule(
                "no_pet_uptake",
                None,
                f"off: pet_key {self.pet_key!r} is not among image_keys {self.image_keys}",
            )
        elif self.min_pet_uptake != "auto":
            rule("no_pet_uptake", float(self.min_pet_uptake), f"on (fixed): ratio >= {self.min_pet_uptake:g}")
        elif real is None or "pet_uptake" not in real:
            rule("no_pet_uptake", None, f"off (auto): {legacy}")
        else:
            ratios = real["pet_uptake"].double()
            ratios = ratios[torch.isfinite(ratios)]
            if ratios.numel() == 0:
                rule("no_pet_uptake", None, "off (auto): no real training sample has a mask to learn from")
            else:
                q = float(torch.quantile(ratios, self.pet_uptake_quantile))
                threshold = self.pet_uptake_margin * q
                rule(
                    "no_pet_uptake",
                    threshold,
                    f"on (auto): ratio >= {self.pet_uptake_margin:g} x {q:.4g} (the {self.pet_uptake_quantile:g} "
                    f"quantile of {ratios.numel()} real training ratios) = {threshold:.4g}",
                )
        return rules

    # ------------------------------------------------------------------ score and select

    def _score_all(
        self, data: Any, units, with_nearest: bool, check_range: bool, what: str
    ) -> dict[str, torch.Tensor]:
        fitted = self._require_fitted("score")
        parts: dict[str, list[torch.Tensor]] = {}
        seen = 0
        for batch in iter_triplet_batches(data, self._keys(), self.batch_size, name=f"{what} set"):
            inputs, mask, finite = self._prepare(
                batch, units, fitted["spatial_shape"], check_range=check_range
            )
            if check_range:
                _check_finite(finite, what)
            seeds = self._sample_seeds(seen, inputs.shape[0])
            seen += inputs.shape[0]
            scores = self._score_tensors(inputs, mask, seeds, with_nearest=with_nearest)
            scores.update(self._plausibility(inputs, mask))
            scores["finite"] = finite
            for k, v in scores.items():
                parts.setdefault(k, []).append(v.cpu())
        out = {k: torch.cat(v) for k, v in parts.items()}
        bad = ~out["finite"]
        if bool(bad.any()):
            for k, v in out.items():
                if k not in ("finite", "stratum"):
                    v[bad] = math.nan
            out["stratum"][bad] = -1
        return out

    def score(self, batch: Any, units: IntensityUnits | str | None = None) -> dict[str, torch.Tensor]:
        """Score triplets (scores are on the CPU, one value per sample).

        Args:
            batch: ``{key: (B, 1, *spatial)}`` (the sampler's output), or any container :meth:`fit` takes.
            units: override the filter's ``units`` for this call.

        Returns:
            ``{"distance", "certainty", "entropy", "nearest_real", "stratum"}`` (``certainty``/``entropy`` only
            with ``certainty=True``) and the plausibility measurements ``mask_in_body`` (fraction of the mask in
            the body; CT rule on), ``mask_voxels`` (``empty_mask`` not ``"off"``) and ``pet_uptake`` (PET rule on),
            each ``(B,)``. A sample with NaN/inf values gets NaN scores and stratum -1.

        Raises:
            FilterNotFittedError: before :meth:`fit`.
            KeyError / ValueError: a missing key, a spatial size or channel count other than fitted.
        """
        scores = self._score_all(batch, units, with_nearest=True, check_range=False, what="generated")
        scores.pop("finite")
        return scores

    def select(
        self,
        batch: Any = None,
        mode: SelectionMode | str = SelectionMode.STREAMING,
        ratio: float | None = None,
        num_real: int | None = None,
        max_accept: int | None = None,
        memorisation_guard: bool = True,
        scores: Mapping[str, torch.Tensor] | None = None,
        units: IntensityUnits | str | None = None,
        plausibility: bool = True,
    ) -> SelectionResult:
        """Decide which samples of ``batch`` to keep, and why the others are rejected.

        Both modes first reject non-finite samples, then impossible ones by the plausibility rules, in this
        order: ``mask_outside_body`` (``mask_in_body < min_mask_in_body``), ``empty_mask``
        (``mask_voxels < min_mask_voxels``), ``no_pet_uptake`` (``pet_uptake < min_pet_uptake``); a rule that
        is off (see :attr:`plausibility_rules`) or whose measurement is missing from ``scores`` is skipped, and a
        NaN measurement (an empty mask for the body and PET rules) passes.

        Pool mode (the method): the batch is a pool of exactly ``4·r·N`` candidates (``r = ratio``,
        ``N = num_real``). Candidates failing the memorisation guard, a plausibility rule (or non-finite) are
        removed; the rest are ranked by certainty (Dice, descending; ties by entropy, ascending) and the top
        ``2·r·N`` kept; of those the ``r·N`` with the smallest distance are accepted. So ``4rN → 2rN → rN``:
        exactly ``rN`` unless those checks removed more than ``3rN`` candidates.

        Streaming mode: each sample alone is accepted when it is finite, plausible, ``nearest_real >= min_nearest_real``
        (guard), ``certainty >= min_certainty`` and ``entropy <= max_entropy``, and
        ``distance <= distance threshold of its stratum`` (see :attr:`thresholds`). With ``max_accept``, at
        most that many (the closest) are accepted, the rest of the passing ones are ``not_selected``.

        Args:
            batch: ``{key: (B, 1, *spatial)}`` candidates (may be ``None`` when ``scores`` are given).
            mode: ``"pool"`` or ``"streaming"``.
            ratio: ``r``, the augmentation ratio (pool mode), e.g. 0.5.
            num_real: ``N``, the number of real training samples (pool mode); ``r·N`` must be a whole number.
            max_accept: streaming mode only: accept at most this many.
            memorisation_guard: apply the guard (default on).
            scores: precomputed :meth:`score` output for this batch (skips scoring).
            units: override the filter's ``units`` for this call.
            plausibility: apply the plausibility rules (default on).

        Returns:
            :class:`SelectionResult` (``reason_counts()`` counts every rule's rejections); the running
            :attr:`counts` are updated.
        """
        try:
            mode = SelectionMode(mode)
        except ValueError:
            raise ValueError(
                f"mode must be one of {[m.value for m in SelectionMode]}, got {mode!r}."
            ) from None
        self._require_fitted("select")
        if mode == SelectionMode.POOL:
            if not self.certainty:
                raise ValueError(
                    "pool mode ranks by certainty first; this filter has certainty=False. Use mode='streaming'."
                )
            if ratio is None or num_real is None:
                raise ValueError(
                    "pool mode needs ratio (r) and num_real (N): the pool holds 4·r·N candidates, rN are kept."
                )
            if max_accept is not None:
                raise ValueError("max_accept applies to streaming mode only; pool mode always keeps r·N.")
            keep = _pool_keep(ratio, num_real)
        elif ratio is not None or num_real is not None:
            raise ValueError(
                "ratio and num_real apply to pool mode only; streaming mode uses calibrated thresholds."
            )
        elif max_accept is not None and (not isinstance(max_accept, int) or max_accept < 0):
            raise ValueError(f"max_accept must be a non-negative integer or None, got {max_accept!r}.")
        if scores is None:
            if batch is None:
                raise ValueError("select needs a batch of candidates or their precomputed scores=.")
            scores = self.score(batch, units=units)
        scores = {k: torch.as_tensor(v).cpu() for k, v in scores.items()}
        if "distance" not in scores or "nearest_real" not in scores:
            raise ValueError(
                f"scores must hold 'distance' and 'nearest_real' (as from score()), got {sorted(scores)}."
            )
        n = int(scores["distance"].shape[0])
        if mode == SelectionMode.POOL and n != 4 * keep:
            raise ValueError(
                f"pool mode needs exactly 4·r·N = 4 × {ratio} × {num_real} = {4 * keep} candidates "
                f"(keeping 2·r·N = {2 * keep} after the certainty cut and r·N = {keep} after the distance cut), "
                f"got {n}."
            )
        assert self._thresholds is not None
        finite = torch.isfinite(scores["distance"])
        # the first failing check wins: non-finite, then the plausibility rules in order, then the guard
        rejected = ~finite
        code = torch.full((n,), -1, dtype=torch.long)  # index into `checks`, -1: passed them all
        checks: list[RejectionReason] = []
        applied: dict[str, float] = {}
        if plausibility:
            for reason, key, name in _PLAUSIBILITY_RULES:
                limit = self._thresholds.get(name)
                if limit is None or key not in scores:
                    continue
                fails = (scores[key].float() < limit) & ~rejected  # NaN compares False: passes
                code[fails] = len(checks)
                checks.append(RejectionReason(reason))
                applied[name] = float(limit)
                rejected |= fails
        if memorisation_guard:
            fails = (scores["nearest_real"] < self._thresholds["min_nearest_real"]) & ~rejected
            code[fails] = len(checks)
            checks.append(RejectionReason.MEMORISED)
            rejected |= fails
        reasons = [RejectionReason.ACCEPTED] * n
        for i in torch.nonzero(~finite).flatten().tolist():
            reasons[i] = RejectionReason.NON_FINITE
        for i in torch.nonzero(code >= 0).flatten().tolist():
            reasons[i] = checks[int(code[i])]
        eligible = ~rejected
        if mode == SelectionMode.POOL:
            thresholds = self._select_pool(scores, eligible, keep, reasons)
        else:
            thresholds = self._select_streaming(scores, eligible, max_accept, reasons)
        thresholds.update(applied)
        if memorisation_guard:
            thresholds["min_nearest_real"] = self._thresholds["min_nearest_real"]
        mask = torch.tensor([r == RejectionReason.ACCEPTED for r in reasons], dtype=torch.bool)
        result = SelectionResult(mask=mask, reasons=reasons, scores=scores, thresholds=thresholds, mode=mode)
        self._counts["seen"] += n
        self._counts["accepted"] += result.num_accepted
        self._counts["rejected"] += n - result.num_accepted
        for r in reasons:
            if r != RejectionReason.ACCEPTED:
                self._counts[f"rejected_{r.value}"] += 1
        return result

    def _select_pool(
        self,
        scores: Mapping[str, torch.Tensor],
        eligible: torch.Tensor,
        keep: int,
        reasons: list[RejectionReason],
    ) -> dict[str, float]:
        idx = torch.nonzero(eligible).flatten()
        certainty = scores["certainty"][idx]
        entropy = scores["entropy"][idx]
        # lexicographic: certainty descending, then entropy ascending (stable sorts, least significant first)
        order = torch.sort(entropy, stable=True).indices
        order = order[torch.sort(certainty[order], descending=True, stable=True).indices]
        certain = idx[order[: 2 * keep]]
        for i in idx[order[2 * keep :]].tolist():
            reasons[i] = RejectionReason.UNCERTAIN
        by_distance = certain[torch.sort(scores["distance"][certain], stable=True).indices]
        accepted = by_distance[:keep]
        for i in by_distance[keep:].tolist():
            reasons[i] = RejectionReason.FAR_FROM_CENTROID
        thresholds: dict[str, float] = {}
        if certain.numel():
            thresholds["certainty_cut"] = float(scores["certainty"][certain].min())
        if accepted.numel():
            thresholds["distance_cut"] = float(scores["distance"][accepted].max())
        return thresholds

    def _select_streaming(
        self,
        scores: Mapping[str, torch.Tensor],
        eligible: torch.Tensor,
        max_accept: int | None,
        reasons: list[RejectionReason],
    ) -> dict[str, float]:
        assert self._thresholds is not None
        thr = self._thresholds
        dist_thr = torch.tensor(thr["distance"], dtype=torch.float32)
        stratum = scores["stratum"].long().clamp_min(0)
        passing = []
        for i in torch.nonzero(eligible).flatten().tolist():
            if self.certainty and (
                float(scores["certainty"][i]) < thr["min_certainty"]
                or float(scores["entropy"][i]) > thr["max_entropy"]
            ):
                reasons[i] = RejectionReason.UNCERTAIN
            elif float(scores["distance"][i]) > float(dist_thr[stratum[i]]):
                reasons[i] = RejectionReason.FAR_FROM_CENTROID
            else:
                passing.append(i)
        if max_accept is not None and len(passing) > max_accept:
            passing.sort(key=lambda i: float(scores["distance"][i]))
            for i in passing[max_accept:]:
                reasons[i] = RejectionReason.NOT_SELECTED
        thresholds = {f"distance/{s}": v for s, v in enumerate(thr["distance"])}
        if self.certainty:
            thresholds["min_certainty"] = thr["min_certainty"]
            if math.isfinite(thr["max_entropy"]):
                thresholds["max_entropy"] = thr["max_entropy"]
        return thresholds

    def __repr__(self) -> str:
        state = f"fitted on {self._fitted['num_real']} real samples" if self._fitted else "not fitted"
        return (
            f"{type(self).__name__}(layers={self.layers}, image_keys={self.image_keys}, mc_passes={self.mc_passes}, "
            f"num_strata={self.num_strata}, strata={self.strata.value!r}, {state})"
        )


def _pool_keep(ratio: float, num_real: int) -> int:
    if isinstance(num_real, bool) or not isinstance(num_real, int) or num_real < 1:
        raise ValueError(f"num_real (N) must be a positive integer, got {num_real!r}.")
    if (
        not isinstance(ratio, (int, float))
        or isinstance(ratio, bool)
        or not ratio > 0
        or not math.isfinite(ratio)
    ):
        raise ValueError(f"ratio (r) must be a positive number, got {ratio!r}.")
    keep = round(ratio * num_real)
    if keep < 1 or abs(ratio * num_real - keep) > 1e-6:
        raise ValueError(
            f"r·N = {ratio} × {num_real} = {ratio * num_real:g} must be a whole number >= 1 of samples to keep."
        )
    return keep


def _check_finite(finite: torch.Tensor, what: str) -> None:
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"{what} triplets contain NaN/inf values (samples {bad} of a batch).")


def _tumour_fraction(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` fraction of voxels inside the mask."""
    return mask.flatten(1).float().mean(1)


def _hard_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Dice of two boolean masks ``(B, 1, *spatial)``; 1 when both are empty."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    total = pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), torch.ones_like(total))


def _lesion_entropy(mean_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean normalised predictive entropy inside (generated mask ∪ predicted mask), else the image."""
    num_classes = mean_probs.shape[1]
    entropy = -(mean_probs * mean_probs.clamp_min(1e-12).log()).sum(1, keepdim=True) / math.log(num_classes)
    region = mask | ((1.0 - mean_probs[:, :1]) > 0.5)
    region_count = region.flatten(1).sum(1)
    inside = (entropy * region).flatten(1).sum(1) / region_count.clamp_min(1)
    return torch.where(region_count > 0, inside, entropy.flatten(1).mean(1))


def _canonical_order(points: torch.Tensor) -> torch.Tensor:
    """A permutation sorting rows by a data-dependent key (projection on a fixed pseudo-random direction)."""
    direction = torch.randn(
        points.shape[1], generator=torch.Generator().manual_seed(12345), dtype=torch.float64
    )
    key = points.double() @ direction
    return torch.sort(key, stable=True).indices
