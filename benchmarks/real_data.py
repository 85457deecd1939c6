"""Where the real FDG-PET/CT patients are: the one lookup used by the benchmarks and the tests.

``$MONAI_PAIRSYNTH_STS_DIR`` when set, else ``../shared/data/sts_pet_ct`` from the project root (36 sarcoma
patients in the HECKTOR layout; its README gives the source and licence). It is not part of the package: on a
user's machine it is absent, and whatever needs it skips (tests) or stops with a message (benchmarks).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR_ENV", "DEFAULT_DATA_DIR", "real_data_dir"]

DATA_DIR_ENV = "MONAI_PAIRSYNTH_STS_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sts_pet_ct"


def real_data_dir() -> Path | None:
    """The real-patient folder, or ``None`` when it does not exist."""
    path = Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser().resolve()
    return path if path.is_dir() else None
