"""Phantom helpers shared by the quality-filter tests (imported by ``conftest.py`` and the test modules)."""

from __future__ import annotations

import torch

from monai_pairsynth.data import NormalizeModalitiesd, PhantomDataset

KEYS = ("ct", "pet", "label")
SIZE, SPACING = (64, 64), 4.0
NUM_TRAIN, NUM_CALIBRATION, NUM_TEST = 128, 32, 64
SEGMENTER = {
    "channels": (8, 16, 32),
    "num_res_units": 0,
    "dropout": 0.2,
    "epochs": 10,
    "batch_size": 8,
    "learning_rate": 2e-2,
}


def phantom_cases(
    num: int, base_seed: int, spatial_dims: int = 2, spatial_size=SIZE, spacing=SPACING
) -> list[dict]:
    """``num`` phantom cases normalised to [-1, 1], as plain tensors ``(1, *spatial)``."""
    ds = PhantomDataset(
        num,
        base_seed=base_seed,
        spatial_dims=spatial_dims,
        spatial_size=spatial_size,
        spacing=spacing,
        transform=NormalizeModalitiesd(list(KEYS)),
    )
    # PhantomDataset cannot be iterated with `for` (no IndexError past the end): index it
    cases = [ds[i] for i in range(len(ds))]
    return [{k: case[k].as_tensor() for k in KEYS} for case in cases]


def stack(cases: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([c[k] for c in cases]) for k in KEYS}
