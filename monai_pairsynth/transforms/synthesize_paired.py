"""Deprecated location of :mod:`monai_pairsynth.mixing.synthesize_paired` (issue 16's package layout); old imports keep working."""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "SynthesisFallback": "monai_pairsynth.mixing.synthesize_paired",
        "SynthesisMode": "monai_pairsynth.mixing.synthesize_paired",
        "SynthesizePaired": "monai_pairsynth.mixing.synthesize_paired",
        "SynthesizePairedD": "monai_pairsynth.mixing.synthesize_paired",
        "SynthesizePairedDict": "monai_pairsynth.mixing.synthesize_paired",
        "SynthesizePairedd": "monai_pairsynth.mixing.synthesize_paired",
    },
)
