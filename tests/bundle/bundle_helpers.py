"""Helpers of the bundle tests: the bundle folder, the test grid, in-process ``monai.bundle`` runs."""

from __future__ import annotations

import warnings
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "pet_ct_pairsynth"
#: the grid every bundle test runs at (the tiny checkpoint's training grid)
SIZE = [32, 32]
SPACING = 8.0
TINY_MODEL = {
    "channels": (8, 16),
    "attention_levels": (False, False),
    "norm_num_groups": 4,
    "num_res_blocks": 1,
}


def config_path(name: str) -> str:
    return str(BUNDLE / "configs" / name)


def make_workflow(config: str | list[str], **overrides):
    """An initialised MONAI ``ConfigWorkflow`` of bundle config(s), as ``python -m monai.bundle run`` builds it."""
    from monai.bundle.scripts import create_workflow

    files = [config_path(c) for c in ([config] if isinstance(config, str) else config)]
    with warnings.catch_warnings():
        # MONAI warns about running configs from untrusted sources: these are the bundle's own
        warnings.filterwarnings("ignore", message="parsing config_file", category=UserWarning)
        return create_workflow(
            config_file=files if len(files) > 1 else files[0],
            bundle_root=str(BUNDLE),
            logging_file=False,
            **overrides,
        )


def run_workflow(config: str | list[str], **overrides):
    """Initialise, run and finalise a bundle config in this process; returns the workflow (for its parser)."""
    workflow = make_workflow(config, **overrides)
    workflow.run()
    workflow.finalize()
    return workflow


def grid_overrides(**extra):
    return {"spatial_size": SIZE, "spacing": SPACING, "progress": False, **extra}
