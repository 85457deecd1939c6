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

The filter is spread over a few modules of this package: the rules' settings and thresholds in
:mod:`.plausibility_settings`, the feature passes and fitting sweeps in :mod:`.centroid_features`, the
selection in :mod:`.filter_selection`, calibration statistics in :mod:`.filter_statistics`, the config, saved
states and the views of what ``fit`` learned in :mod:`.filter_state`, option sets and the not-fitted error in
:mod:`.filter_options`. Every public name stays importable from here and from :mod:`monai_pairsynth.quality`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.utils import look_up_option
from torch import nn

from monai_pairsynth.data.validation import check_finite_features
from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, ModalitySpec, resolve_specs

from .centroid_features import CentroidFeaturesMixin
from .feature_segmenter import unet_encoder_layers
from .filter_options import EmptyMaskRule, FilterNotFittedError, StrataMethod, check_quantile
from .filter_selection import check_mode_arguments, first_failing_checks, select_pool, select_streaming
from .filter_state import PLAUSIBILITY_CONFIG, FilterStateMixin
from .filter_statistics import (
    assign_strata,
    check_finite,
    streaming_thresholds,
)
from .mc_dropout_features import MCDropoutFeatureExtractor
from .plausibility_settings import (
    PLAUSIBILITY_RULES,
    PlausibilitySettings,
    measure_plausibility,
    plausibility_rules,
)
from .selection_result import RejectionReason, SelectionMode, SelectionResult
from .triplet_batches import IntensityUnits, iter_triplet_batches, prepare_triplet_batch

__all__ = [
    "EmptyMaskRule",
    "FeatureCentroidFilter",
    "FilterNotFittedError",
    "PlausibilitySettings",
    "StrataMethod",
]

# the old module-level name of the plausibility config keys (tests and saved-state tools read it)
_PLAUSIBILITY_CONFIG = PLAUSIBILITY_CONFIG


class FeatureCentroidFilter(CentroidFeaturesMixin, FilterStateMixin):
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
    ``certainty=False``. Their settings are ``plausibility`` (:class:`PlausibilitySettings`).

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
        plausibility: the plausibility rules' settings, a :class:`PlausibilitySettings` (default: its defaults).
        **plausibility_options: the same settings as keyword arguments (``ct_key``, ``pet_key``,
            ``body_threshold``, ``body_dilation``, ``min_mask_in_body``, ``empty_mask``, ``min_mask_voxels``,
            ``empty_mask_real_fraction``, ``min_pet_uptake``, ``pet_uptake_quantile``, ``pet_uptake_margin``,
            ``pet_ring``; see :class:`PlausibilitySettings`), as before the settings object existed; they
            replace the fields of ``plausibility``. The filter reads them back as attributes
            (``filter.min_pet_uptake``) and stores them flat in its state, so saved filters keep loading.

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
        plausibility: PlausibilitySettings | None = None,
        **plausibility_options: Any,
    ) -> None:
        if not isinstance(mc_passes, int) or isinstance(mc_passes, bool) or mc_passes < 1:
            raise ValueError(
                f"mc_passes (K, the number of Monte-Carlo dropout passes) must be an integer >= 1, got {mc_passes!r}."
            )
        if not isinstance(num_strata, int) or isinstance(num_strata, bool) or num_strata < 1:
            raise ValueError(f"num_strata must be an integer >= 1, got {num_strata!r}.")
        strata = look_up_option(strata, StrataMethod)
        units = look_up_option(units, IntensityUnits)
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
        self.distance_quantile = check_quantile("distance_quantile", distance_quantile)
        self.certainty_quantile = check_quantile("certainty_quantile", certainty_quantile)
        self.entropy_quantile = check_quantile("entropy_quantile", entropy_quantile, allow_none=True)
        self.memorisation_quantile = check_quantile("memorisation_quantile", memorisation_quantile)
        self.units = units
        self.specs = resolve_specs(specs) if specs is not None else dict(DEFAULT_MODALITY_SPECS)
        self.embedding_size = embedding_size
        self.batch_size = batch_size
        self.seed = int(seed)
        unknown = sorted(set(plausibility_options) - set(PLAUSIBILITY_CONFIG))
        if unknown:
            raise TypeError(f"FeatureCentroidFilter got unexpected keyword arguments {unknown}.")
        settings = plausibility if plausibility is not None else PlausibilitySettings()
        if not isinstance(settings, PlausibilitySettings):
            raise TypeError(
                f"plausibility must be a PlausibilitySettings or None, got {type(settings).__name__}."
            )
        self.plausibility = dataclasses.replace(settings, **plausibility_options)
        self.plausibility.check_for(self.image_keys, self.label_key, self.specs)
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

    def _uses_ct(self) -> bool:
        return self.plausibility.uses_ct(self.image_keys)

    def _uses_pet(self) -> bool:
        return self.plausibility.uses_pet(self.image_keys)

    def _uses_plausibility(self) -> bool:
        return self.plausibility.uses_any(self.image_keys)

    def _needs_mask(self) -> bool:
        return (
            self.certainty
            or (self.num_strata > 1 and self.strata == StrataMethod.TUMOUR_SIZE)
            or self._uses_plausibility()
        )

    @property
    def device(self) -> torch.device:
        return self._extractor.device

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
        return measure_plausibility(self.plausibility, inputs, mask, self.image_keys, self.specs)

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
        sweep = self._first_sweep(real, keys, units)
        count, spatial_shape, layer_shapes = sweep["count"], sweep["spatial_shape"], sweep["layer_shapes"]
        real_embeddings = torch.cat(sweep["embeddings"])
        strata_centers, size_edges = torch.zeros(0, real_embeddings.shape[1]), torch.zeros(0)
        if self.num_strata == 1:
            centroids = [s / (count * self.mc_passes) for s in sweep["sums"]]
        else:
            strata_centers, size_edges = assign_strata(
                real_embeddings, torch.cat(sweep["sizes"]), self.num_strata, self.strata, self.seed
            )
            centroids = self._stratum_centroids(
                real, keys, units, spatial_shape, layer_shapes, strata_centers, size_edges
            )
        # leave-one-out nearest-neighbour distances between real training samples (the guard's reference)
        nn_sq = torch.cdist(real_embeddings, real_embeddings) ** 2
        nn_sq.fill_diagonal_(float("inf"))
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
            "plausibility": {k: torch.cat(v).float() for k, v in sweep["plausibility"].items()},
        }
        self._device_cache = {}
        try:
            self._fitted["real_scores"] = self._real_scores(real, calibration, units, nn_sq.min(dim=1).values)
        except BaseException:
            self._fitted, self._thresholds = previous
            self._device_cache = {}
            raise
        self.calibrate()
        return self

    def _real_scores(
        self, real: Any, calibration: Any, units, real_nn: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Sweep 3 of :meth:`fit`: the real samples' own scores (the calibration set's when given), from which
        :meth:`calibrate` takes the thresholds; ``real_nn`` are the training samples' leave-one-out distances."""
        scores = self._score_all(
            calibration if calibration is not None else real,
            units,
            with_nearest=calibration is not None,
            check_range=True,
            what="calibration" if calibration is not None else "real",
        )
        for name in ("distance", "certainty", "entropy", "nearest_real"):
            if name in scores:
                check_finite_features(scores[name], f"{name} scores", self.feature_network, self.layers)
        real_scores = {k: v for k, v in scores.items() if k not in ("finite", "nearest_real")}
        real_scores["nearest_real"] = real_nn
        if calibration is not None:
            # held-out cases to the training set: the guard's unbiased reference (fit's docstring)
            real_scores["calibration_nearest_real"] = scores["nearest_real"]
        return real_scores

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
            self.distance_quantile = check_quantile("distance_quantile", distance_quantile)
        if certainty_quantile is not None:
            self.certainty_quantile = check_quantile("certainty_quantile", certainty_quantile)
        if entropy_quantile is not None:
            self.entropy_quantile = check_quantile("entropy_quantile", entropy_quantile)
        if memorisation_quantile is not None:
            self.memorisation_quantile = check_quantile("memorisation_quantile", memorisation_quantile)
        thresholds = streaming_thresholds(
            fitted["real_scores"],
            fitted["centroids"][0].shape[0],
            self.certainty,
            self.distance_quantile,
            self.certainty_quantile,
            self.entropy_quantile,
            self.memorisation_quantile,
        )
        self._rules = plausibility_rules(self.plausibility, self.image_keys, fitted.get("plausibility"))
        for reason, _, name in PLAUSIBILITY_RULES:
            thresholds[name] = self._rules[reason]["threshold"]
        self._thresholds = thresholds
        return self.thresholds

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
                check_finite(finite, what)
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
        mode = look_up_option(mode, SelectionMode)
        self._require_fitted("select")
        keep = check_mode_arguments(mode, self.certainty, ratio, num_real, max_accept)
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
        if keep is not None and n != 4 * keep:
            raise ValueError(
                f"pool mode needs exactly 4·r·N = 4 × {ratio} × {num_real} = {4 * keep} candidates "
                f"(keeping 2·r·N = {2 * keep} after the certainty cut and r·N = {keep} after the distance cut), "
                f"got {n}."
            )
        assert self._thresholds is not None
        reasons, eligible, applied = first_failing_checks(
            scores, self._thresholds, plausibility, memorisation_guard
        )
        if keep is not None:
            thresholds = select_pool(scores, eligible, keep, reasons)
        else:
            thresholds = select_streaming(
                scores, eligible, self._thresholds, self.certainty, max_accept, reasons
            )
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

    def __repr__(self) -> str:
        state = f"fitted on {self._fitted['num_real']} real samples" if self._fitted else "not fitted"
        return (
            f"{type(self).__name__}(layers={self.layers}, image_keys={self.image_keys}, mc_passes={self.mc_passes}, "
            f"num_strata={self.num_strata}, strata={self.strata.value!r}, {state})"
        )


def _plausibility_setting(name: str) -> property:
    return property(
        lambda self: getattr(self.plausibility, name),
        doc=f"``plausibility.{name}`` (read-only; see :class:`PlausibilitySettings`).",
    )


# the settings as read-only attributes, as before the settings object existed (``filter.min_pet_uptake``)
for _name in PLAUSIBILITY_CONFIG:
    setattr(FeatureCentroidFilter, _name, _plausibility_setting(_name))
del _name
