"""Deprecated location of :mod:`monai_pairsynth.metrics.evaluation` (kept so old imports and the CLI work).

``python -m monai_pairsynth.evaluate ...`` still runs the command line; new code imports
``monai_pairsynth.metrics.evaluation`` (``evaluate``, ``load_triplet_set``, ``main``) and
``monai_pairsynth.metrics.report`` (``metrics_markdown``).
"""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "PHANTOM": "monai_pairsynth.data.sources",
        "evaluate": "monai_pairsynth.metrics.evaluation",
        "load_triplet_set": "monai_pairsynth.metrics.evaluation",
        "main": "monai_pairsynth.metrics.evaluation",
        "metrics_markdown": "monai_pairsynth.metrics.report",
    },
)

if __name__ == "__main__":
    from monai_pairsynth.metrics.evaluation import main

    main()
