"""monai_pairsynth: linked diffusion models for aligned PET/CT/tumour-mask triplets, mixed into MONAI training.

Sub-packages by role: ``data``, ``networks``, ``schedulers``, ``inferers``, ``engines``, ``losses``,
``quality``, ``transforms``, ``metrics``. The shared modality contract lives in :mod:`monai_pairsynth.modalities`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .modalities import DEFAULT_MODALITY_SPECS, ModalityKind, ModalitySpec, resolve_specs

__all__ = ["DEFAULT_MODALITY_SPECS", "ModalityKind", "ModalitySpec", "__version__", "resolve_specs"]
