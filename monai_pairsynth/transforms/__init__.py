"""MONAI transforms that bring synthetic triplets into a segmentation pipeline."""

from __future__ import annotations

from .synthesize_paired import (
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
