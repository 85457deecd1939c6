"""Quality filter for synthetic PET/CT/mask triplets (``monai_pairsynth.quality``).

Feature-centroid distance over Monte-Carlo-dropout passes of a segmenter trained on the real data, a
segmentation certainty (Dice between the generated mask and the segmenter's prediction, lesion entropy), a
memorisation guard, plausibility rules (mask outside the body, empty mask, no PET uptake), pool and streaming
selection with a reason per rejected sample. See ``docs/quality_filter.md``.
"""

from __future__ import annotations

from .feature_centroid_filter import EmptyMaskRule, FeatureCentroidFilter, FilterNotFittedError, StrataMethod
from .feature_distance import centroid_distances, pooled_embedding, unit_normalize_channels
from .feature_segmenter import (
    build_feature_segmenter,
    load_feature_segmenter,
    save_feature_segmenter,
    train_feature_segmenter,
    unet_encoder_layers,
)
from .kmeans import kmeans
from .mc_dropout_features import FeaturePass, MCDropoutFeatureExtractor, find_dropout_modules
from .plausibility import body_mask, fill_holes_2d, mask_in_body_fraction, pet_uptake_ratio
from .plausibility_settings import PlausibilitySettings
from .selection_result import RejectionReason, SelectionMode, SelectionResult
from .triplet_batches import IntensityUnits, iter_triplet_batches, prepare_triplet_batch
from .triplet_corruptions import TripletCorruption, corrupt_triplets

__all__ = [
    "EmptyMaskRule",
    "FeatureCentroidFilter",
    "FeaturePass",
    "FilterNotFittedError",
    "IntensityUnits",
    "MCDropoutFeatureExtractor",
    "PlausibilitySettings",
    "RejectionReason",
    "SelectionMode",
    "SelectionResult",
    "StrataMethod",
    "TripletCorruption",
    "body_mask",
    "build_feature_segmenter",
    "centroid_distances",
    "corrupt_triplets",
    "fill_holes_2d",
    "find_dropout_modules",
    "iter_triplet_batches",
    "kmeans",
    "load_feature_segmenter",
    "mask_in_body_fraction",
    "pet_uptake_ratio",
    "pooled_embedding",
    "prepare_triplet_batch",
    "save_feature_segmenter",
    "train_feature_segmenter",
    "unet_encoder_layers",
    "unit_normalize_channels",
]
