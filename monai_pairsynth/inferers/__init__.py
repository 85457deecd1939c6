"""Inferers: lock-step sampling of linked diffusion models (:class:`PairedDiffusionInferer`)."""

from __future__ import annotations

from .paired_diffusion_inferer import AmpDtype, PairedDiffusionInferer

__all__ = ["AmpDtype", "PairedDiffusionInferer"]
