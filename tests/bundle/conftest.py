"""Fixtures of the bundle tests: a tiny diffusion checkpoint, one generate.json run, the excepthook."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from bundle_helpers import SIZE, SPACING, TINY_MODEL, grid_overrides, run_workflow


@pytest.fixture(autouse=True)
def _keep_excepthook():
    """The configs install a one-line excepthook; give each test the process's original hook back."""
    hook = sys.excepthook
    yield
    sys.excepthook = hook


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An (untrained) tiny linked diffusion checkpoint at 32x32, 8 mm: the format train_diffusion.json writes."""
    from monai_pairsynth.engines import save_paired_checkpoint
    from monai_pairsynth.networks import PairedDiffusionModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = PairedDiffusionModel(("ct", "pet", "label"), **TINY_MODEL)
    return save_paired_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, spatial_size=SIZE, spacing=SPACING
    )


@pytest.fixture(scope="session")
def generated(tmp_path_factory, tiny_checkpoint) -> Path:
    """generate.json run once (tiny): its output folder (pool.pt, filter, preview, counts, nifti/)."""
    out = tmp_path_factory.mktemp("generate")
    run_workflow(
        "generate.json",
        **grid_overrides(
            diffusion_checkpoint=str(tiny_checkpoint),
            num_train_cases=6,
            pool_size=4,
            num_inference_steps=2,
            segmenter_epochs=1,
            mc_passes=2,
            segmenter_channels=[4, 8],
            preview_cases=4,
            export_nifti=True,
            output_dir=str(out),
        ),
    )
    return out
