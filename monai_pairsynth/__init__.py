"""monai_pairsynth: linked diffusion models for aligned PET/CT/tumour-mask triplets, mixed into MONAI training.

Sub-packages by role, in the order of the data flow: ``data``, ``networks``, ``schedulers``, ``losses``,
``engines``, ``inferers``, ``quality``, ``mixing`` (with the faces ``transforms`` and ``handlers``), ``metrics``;
``bundle_checks`` holds the bundle's settings checks. The shared modality contract lives in
:mod:`monai_pairsynth.modalities`. Where each stage lives and what may import what: ``docs/architecture.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .modalities import DEFAULT_MODALITY_SPECS, ModalityKind, ModalitySpec, resolve_specs

__all__ = ["DEFAULT_MODALITY_SPECS", "ModalityKind", "ModalitySpec", "__version__", "resolve_specs"]
