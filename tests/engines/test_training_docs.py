"""docs/training.md lists every option of ``python -m monai_pairsynth.engines.train``."""

from __future__ import annotations

import re
from pathlib import Path

from monai_pairsynth.engines.train import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def test_every_cli_option_is_in_training_md():
    text = DOC.read_text()
    # each option's first long form (a --x/--no-x pair is named by --x)
    options = {
        next(o for o in action.option_strings if o.startswith("--"))
        for action in build_parser()._actions
        if any(o.startswith("--") for o in action.option_strings) and "--help" not in action.option_strings
    }
    assert "--use-fov-mask" in options and "--pet-intensity" in options
    missing = sorted(o for o in options if not re.search(re.escape(o) + r"(?![a-z0-9-])", text))
    assert not missing, f"docs/training.md does not list {missing}"
