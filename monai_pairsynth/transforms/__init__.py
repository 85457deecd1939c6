"""MONAI transforms that bring synthetic triplets into a segmentation pipeline (defined in :mod:`monai_pairsynth.mixing`)."""

from __future__ import annotations

from monai_pairsynth.mixing.synthesize_paired import (
    SynthesisFallback,
    SynthesisMode,
    SynthesizePaired,
    SynthesizePairedD,
    SynthesizePairedd,
    SynthesizePairedDict,
)

__all__ = [
    "SynthesisFallback",
    "SynthesisMode",
    "SynthesizePaired",
    "SynthesizePairedD",
    "SynthesizePairedDict",
    "SynthesizePairedd",
]
