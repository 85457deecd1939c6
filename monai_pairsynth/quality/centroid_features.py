"""Feature passes of the quality filter: MC-dropout activations, centroid sums and the fitting sweeps.

:class:`CentroidFeaturesMixin` holds the part of :class:`~monai_pairsynth.quality.FeatureCentroidFilter` that
runs the feature network: per-sample dropout seeds, unit-normalised layer activations, the pooled embedding of
the memorisation guard and the strata, the centroid sums of :meth:`~FeatureCentroidFilter.fit` (sweeps 1 and 2)
and the per-sample scores (distance, certainty, entropy, nearest real). It is a mixin, not a class of its own:
it reads the filter's settings (``layers``, ``mc_passes``, ``seed``, ``certainty``, ``num_strata``, ``strata``,
``embedding_size``, ``batch_size``) and fitted state, so that a setting changed on the filter applies here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from monai_pairsynth.data.validation import check_finite_features

from .feature_distance import centroid_distances, pooled_embedding, unit_normalize_channels
from .filter_options import StrataMethod
from .filter_statistics import check_finite, hard_dice, lesion_entropy, tumour_fraction
from .mc_dropout_features import _mix_seed
from .triplet_batches import iter_triplet_batches

__all__ = ["CentroidFeaturesMixin"]


class CentroidFeaturesMixin:
    """Feature passes, centroid sums and per-sample scores of :class:`~monai_pairsynth.quality.FeatureCentroidFilter`."""

    # provided by the filter
    layers: list[str]
    mc_passes: int
    seed: int
    certainty: bool
    num_strata: int
    strata: StrataMethod
    embedding_size: int | None
    batch_size: int
    feature_network: torch.nn.Module
    _extractor: Any
    _deterministic: Any
    _fitted: dict[str, Any] | None
    _device_cache: dict[str, Any]

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
                dice_sum += hard_dice((1.0 - probs[:, :1]) > 0.5, mask > 0.5)
        distances = dist_sum / self.mc_passes
        out: dict[str, torch.Tensor] = {}
        if self.num_strata > 1 and self.strata == StrataMethod.TUMOUR_SIZE:
            assert mask is not None
            stratum = torch.bucketize(tumour_fraction(mask), cache["size_edges"], right=True)
            out["distance"] = distances.gather(1, stratum[:, None]).squeeze(1)
        else:
            out["distance"], stratum = distances.min(dim=1)
        if self.certainty:
            assert prob_sum is not None and mask is not None
            mean_probs = prob_sum / self.mc_passes
            out["certainty"] = dice_sum / self.mc_passes
            out["entropy"] = lesion_entropy(mean_probs, mask > 0.5)
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

    def _first_sweep(self, real: Any, keys: list[str], units) -> dict[str, Any]:
        """Sweep 1 of :meth:`fit`: the global centroid sum, the deterministic embeddings, the tumour sizes and the
        plausibility measurements of the real samples; checks the features are finite and the samples enough."""
        sums: list[torch.Tensor] | None = None
        embeddings, sizes = [], []
        plausibility: dict[str, list[torch.Tensor]] = {}
        spatial_shape: tuple[int, ...] | None = None
        layer_shapes: list[tuple] | None = None
        count = 0
        for batch in iter_triplet_batches(real, keys, self.batch_size, name="real set"):
            inputs, mask, finite = self._prepare(batch, units, spatial_shape, check_range=True)
            check_finite(finite, "real")
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
            sizes.append(tumour_fraction(mask).cpu() if mask is not None else torch.zeros(inputs.shape[0]))
            for name, values in self._plausibility(inputs, mask).items():
                plausibility.setdefault(name, []).append(values.cpu())
            count += inputs.shape[0]
        assert sums is not None and spatial_shape is not None and layer_shapes is not None
        # the real data was checked finite above: non-finite features mean a broken feature network, which would
        # otherwise reject every candidate later as "non_finite" and blame the generator
        check_finite_features(
            torch.stack([s.sum() for s in sums]), "layer activations", self.feature_network, self.layers
        )
        check_finite_features(torch.cat(embeddings), "embeddings", self.feature_network, self.layers)
        if count < max(2, self.num_strata):
            raise ValueError(
                f"fit needs at least {max(2, self.num_strata)} real samples (2 for the memorisation guard, "
                f"num_strata={self.num_strata}), got {count}."
            )
        return {
            "sums": sums,
            "embeddings": embeddings,
            "sizes": sizes,
            "plausibility": plausibility,
            "spatial_shape": spatial_shape,
            "layer_shapes": layer_shapes,
            "count": count,
        }

    def _stratum_centroids(
        self,
        real: Any,
        keys: list[str],
        units,
        spatial_shape: tuple[int, ...],
        layer_shapes: list[tuple],
        strata_centers: torch.Tensor,
        size_edges: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Sweep 2 of :meth:`fit`: per-stratum centroids. Each sample is assigned from its own embedding / size, so a
        shuffling ``DataLoader`` gives the same strata."""
        sums = None
        counts = torch.zeros(self.num_strata)
        for batch in iter_triplet_batches(real, keys, self.batch_size):
            inputs, mask, _ = self._prepare(batch, units, spatial_shape, check_range=False)
            if self.strata == StrataMethod.KMEANS:
                emb = self._deterministic_embedding(inputs, layer_shapes).cpu()
                groups = (torch.cdist(emb, strata_centers) ** 2).argmin(1)
            else:
                groups = torch.bucketize(tumour_fraction(mask).cpu(), size_edges, right=True)
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
        return [s / (counts.to(s.device).view(-1, *([1] * (s.ndim - 1))) * self.mc_passes) for s in sums]
