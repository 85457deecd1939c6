"""Deprecated location of :mod:`monai_pairsynth.inferers.generate` (kept so old imports and the CLI work).

``python -m monai_pairsynth.generate ...`` still runs the command line; new code imports
``monai_pairsynth.inferers.generate`` (and ``monai_pairsynth.data.nifti_io`` for the file naming).
"""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "generate": "monai_pairsynth.inferers.generate",
        "main": "monai_pairsynth.inferers.generate",
        "modality_file_names": "monai_pairsynth.data.nifti_io",
    },
)

if __name__ == "__main__":
    from monai_pairsynth.inferers.generate import main

    main()
