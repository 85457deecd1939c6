"""Inferers: lock-step sampling of linked diffusion models (:class:`PairedDiffusionInferer`), the diffusion pool
sources (:class:`DiffusionPoolSource`: joint sampling; :class:`LabelFirstPoolSource`: CT + PET generated for real
masks moved by :class:`MaskPlacement`) and NIfTI generation (:mod:`monai_pairsynth.inferers.generate`)."""

from __future__ import annotations

from .label_first_source import LabelFirstPoolSource, MaskPlacement
from .paired_diffusion_inferer import AmpDtype, PairedDiffusionInferer
from .pool_source import DiffusionPoolSource

__all__ = [
    "AmpDtype",
    "DiffusionPoolSource",
    "LabelFirstPoolSource",
    "MaskPlacement",
    "PairedDiffusionInferer",
]
