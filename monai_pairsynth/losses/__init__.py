"""Losses: the shared loss of the linked denoisers and its frozen perceptual feature network."""

from __future__ import annotations

from .paired_diffusion_loss import (
    FOV_TARGET_KEY,
    PAIRED_TARGET_KEYS,
    PairedDiffusionLoss,
    PerceptualMode,
    make_paired_target,
    perceptual_distance,
    predict_original_sample,
)
from .random_conv_features import RandomConvFeatures, load_feature_weights

__all__ = [
    "FOV_TARGET_KEY",
    "PAIRED_TARGET_KEYS",
    "PairedDiffusionLoss",
    "PerceptualMode",
    "RandomConvFeatures",
    "load_feature_weights",
    "make_paired_target",
    "perceptual_distance",
    "predict_original_sample",
]
