"""Inferers: lock-step sampling of linked diffusion models (:class:`PairedDiffusionInferer`), the diffusion pool
source (:class:`DiffusionPoolSource`) and NIfTI generation (:mod:`monai_pairsynth.inferers.generate`)."""

from __future__ import annotations

from .paired_diffusion_inferer import AmpDtype, PairedDiffusionInferer
from .pool_source import DiffusionPoolSource

__all__ = ["AmpDtype", "DiffusionPoolSource", "PairedDiffusionInferer"]
