"""Deprecated location of :mod:`monai_pairsynth.mixing.synthesis_pool` (issue 16's package layout); old imports keep working."""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "EmptyPoolError": "monai_pairsynth.mixing.synthesis_pool",
        "PhantomPoolSource": "monai_pairsynth.mixing.synthesis_pool",
        "PoolGenerationError": "monai_pairsynth.mixing.synthesis_pool",
        "PoolStorage": "monai_pairsynth.mixing.synthesis_pool",
        "PoolUpdate": "monai_pairsynth.mixing.synthesis_pool",
        "RefillOrder": "monai_pairsynth.mixing.synthesis_pool",
        "SynthesisPool": "monai_pairsynth.mixing.synthesis_pool",
        "DiffusionPoolSource": "monai_pairsynth.inferers.pool_source",
        "affine_from_spacing": "monai_pairsynth.data.nifti_io",
    },
)
