"""One feature vector per sample from this package's own feature network (for FID, MMD and memorisation).

The feature network is the quality filter's tumour segmenter (:func:`monai_pairsynth.quality.train_feature_segmenter`,
trained on the user's real data; nothing is downloaded). A sample's vector is made from the activations of
chosen layers (by default the encoder of a MONAI ``UNet``), recorded by the quality module's
:class:`~monai_pairsynth.quality.MCDropoutFeatureExtractor` in one deterministic pass. Each layer's activation
``A_l`` of shape ``(C_l, *S_l)`` is unit-normalised along channels at every position (as in the filter's
centroid distance) and average-pooled over space::

    f_l = 1/|S_l| * sum_s  A_l[:, s] / ||A_l[:, s]||          (a C_l-vector of norm <= 1)
    f   = concat(f_1, ..., f_L)                               (F = sum_l C_l)

so every layer contributes on the same scale, whatever the magnitude of its activations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, ModalitySpec, resolve_specs
from monai_pairsynth.quality import (
    IntensityUnits,
    MCDropoutFeatureExtractor,
    iter_triplet_batches,
    pooled_embedding,
    prepare_triplet_batch,
    unet_encoder_layers,
    unit_normalize_channels,
)

__all__ = ["extract_global_features"]


def extract_global_features(
    feature_network: nn.Module,
    data: Any,
    layers: Sequence[str] | None = None,
    image_keys: Sequence[str] = ("ct", "pet"),
    units: IntensityUnits | str = IntensityUnits.PHYSICAL,
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    batch_size: int = 32,
    pool_size: int = 1,
    normalize_channels: bool = True,
    name: str = "data",
) -> torch.Tensor:
    """Pooled layer activations of ``feature_network``, one row per sample.

    Args:
        feature_network: a network taking ``len(image_keys)`` channels ``(B, C_in, H, W[, D])``, e.g. from
            :func:`monai_pairsynth.quality.train_feature_segmenter`. It runs on its own device, in ``eval`` mode
            (its train/eval flags are restored afterwards), without gradients.
        data: the samples: a batched dict ``{key: (N, 1, *spatial)}``, a dataset / list of sample dicts
            ``{key: (1, *spatial)}`` or a ``DataLoader`` of batched dicts.
        layers: names (``network.named_modules()``) of the layers to pool; default: the encoder of a MONAI
            ``UNet`` / ``BasicUNet`` (:func:`monai_pairsynth.quality.unet_encoder_layers`).
        image_keys: modalities fed as channels, in the order the network was trained with.
        units: ``"physical"`` (HU, SUV; the default) or ``"normalized"`` ([-1, 1]).
        specs: modality specs for physical units (default ``DEFAULT_MODALITY_SPECS``).
        batch_size: samples per forward pass.
        pool_size: pooled grid per spatial axis; 1 (default) is global average pooling, ``k > 1`` keeps a
            coarse ``k x k`` layout (scaled by ``1/sqrt(k^d)``, see
            :func:`monai_pairsynth.quality.pooled_embedding`).
        normalize_channels: unit-normalise each position's channel vector before pooling (default True).
        name: what ``data`` is, for error messages.

    Returns:
        ``(N, F)`` float32 CPU tensor, ``F = sum_l C_l * pool_size^d`` (``sum_l C_l`` for the default).

    Raises:
        ValueError: empty data, a sample with NaN/Inf, a bad layer name or argument.
        KeyError: a sample without one of ``image_keys``.

    Example:
        >>> import torch
        >>> from monai_pairsynth.quality import build_feature_segmenter
        >>> net = build_feature_segmenter(2, channels=(4, 8), dropout=0.1)
        >>> batch = {"ct": torch.zeros(3, 1, 16, 16), "pet": torch.ones(3, 1, 16, 16)}
        >>> extract_global_features(net, batch).shape  # 4 + 8 channels of the two encoder layers
        torch.Size([3, 12])
    """
    if not isinstance(feature_network, nn.Module):
        raise ValueError(f"feature_network must be a torch.nn.Module, got {type(feature_network).__name__}.")
    if isinstance(image_keys, str):
        raise ValueError(f"image_keys must be a sequence of keys, got the string {image_keys!r}.")
    image_keys = [str(k) for k in image_keys]
    if not image_keys:
        raise ValueError("image_keys must name at least one modality.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be an integer >= 1, got {pool_size!r}.")
    try:
        units = IntensityUnits(units)
    except ValueError:
        raise ValueError(
            f"units must be one of {[u.value for u in IntensityUnits]}, got {units!r}."
        ) from None
    spec_map = resolve_specs(specs) if specs is not None else dict(DEFAULT_MODALITY_SPECS)
    if layers is None:
        layers = unet_encoder_layers(feature_network)
    extractor = MCDropoutFeatureExtractor(feature_network, list(layers), mc_passes=1)
    device = extractor.device
    rows: list[torch.Tensor] = []
    seen = 0
    for batch in iter_triplet_batches(data, image_keys, batch_size, name=name):
        inputs, _, finite = prepare_triplet_batch(batch, image_keys, None, units, spec_map)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().add(seen).tolist()
            raise ValueError(f"the {name} has NaN/Inf values in samples {bad[:10]} (keys {image_keys}).")
        features, _ = extractor(inputs.to(device))
        activations = [features[layer][0] for layer in extractor.layers]  # pass 0 of K = 1
        if normalize_channels:
            activations = [unit_normalize_channels(a) for a in activations]
        else:
            activations = [a.float() for a in activations]
        rows.append(pooled_embedding(activations, pool_size).cpu())
        seen += inputs.shape[0]
    return torch.cat(rows)
