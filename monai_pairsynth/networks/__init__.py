"""Networks of Paired Diffusion: linked denoisers and their conditional-pathway blocks."""

from __future__ import annotations

from monai_pairsynth.networks.conditional_encoder import ConditionalEncoder
from monai_pairsynth.networks.cross_encoder_attention import CrossEncoderAttention
from monai_pairsynth.networks.linked_denoiser import (
    LinkedDenoiser,
    default_cond_channels,
    unet_residual_levels,
)
from monai_pairsynth.networks.paired_diffusion_model import PairedDiffusionModel
from monai_pairsynth.networks.timestep_cbam import TimestepCBAM
from monai_pairsynth.networks.timestep_lowpass_filter import TimestepLowPassFilter

__all__ = [
    "ConditionalEncoder",
    "CrossEncoderAttention",
    "LinkedDenoiser",
    "PairedDiffusionModel",
    "TimestepCBAM",
    "TimestepLowPassFilter",
    "default_cond_channels",
    "unet_residual_levels",
]
