"""Write a PNG preview grid of phantom cases so a person can look at the data.

Usage::

    python -m monai_pairsynth.data.preview --num-cases 8 --out phantom_preview.png [--seed 0] [--spatial-dims 2]
    monai-pairsynth-preview --num-cases 4 --out preview3d.png --spatial-dims 3

Each case shows the CT in a soft-tissue window and the PET in a ``hot`` colormap, both with the tumour
mask contour; 3D cases show the axial slice with the most tumour. The path written is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..visualize import save_triplet_grid
from .phantom import make_phantom_case

__all__ = ["main", "write_phantom_preview"]


def write_phantom_preview(
    path: str | os.PathLike,
    num_cases: int = 8,
    seed: int = 0,
    spatial_dims: int = 2,
    spatial_size: Sequence[int] | None = None,
    spacing: float = 2.0,
    samples_per_row: int = 2,
) -> Path:
    """Write a grid of phantom cases ``seed .. seed + num_cases - 1`` to ``path`` (PNG, atomic).

    Row titles give the case id, the tumour area (2D) or volume (3D) and the PET maximum inside the tumour.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_phantom_preview(f"{d}/p.png", num_cases=2, spatial_size=(32, 32), spacing=8.0).stat().st_size > 0
        True
    """
    if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 1:
        raise ValueError(f"num_cases must be a positive int, got {num_cases!r}.")
    cases = [
        make_phantom_case(seed + i, spatial_dims=spatial_dims, spatial_size=spatial_size, spacing=spacing)
        for i in range(num_cases)
    ]
    titles = []
    for case in cases:
        label = case["label"][0].numpy() > 0
        voxel = float(np.prod(case["label"].pixdim.tolist()))
        size = f"{label.sum() * voxel / (1000.0 if spatial_dims == 3 else 1.0):.1f} {'mL' if spatial_dims == 3 else 'mm²'}"
        suv = float(case["pet"][0].numpy()[label].max())
        titles.append(f"{case['case_id']}  tumour {size}, PET max in tumour {suv:.1f}")
    return save_triplet_grid(cases, path, titles=titles, samples_per_row=samples_per_row)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``monai-pairsynth-preview``)."""
    parser = argparse.ArgumentParser(prog="monai-pairsynth-preview", description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-cases", type=int, default=8, help="number of phantom cases (default 8)")
    parser.add_argument("--out", type=Path, default=Path("phantom_preview.png"), help="output PNG path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2, help="2D slices or 3D volumes")
    parser.add_argument(
        "--spatial-size", type=int, nargs="+", default=None, help="grid size, e.g. 128 128 (default)"
    )
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2.0)")
    parser.add_argument("--per-row", type=int, default=2, help="cases per row of the grid (default 2)")
    args = parser.parse_args(argv)
    try:
        path = write_phantom_preview(
            args.out,
            args.num_cases,
            args.seed,
            args.spatial_dims,
            args.spatial_size,
            args.spacing,
            args.per_row,
        )
    except ValueError as err:
        parser.error(str(err))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
