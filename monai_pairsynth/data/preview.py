"""Write a PNG preview grid of phantom cases so a person can look at the data.

Usage::

    python -m monai_pairsynth.data.preview --num-cases 8 --out phantom_preview.png [--seed 0] [--spatial-dims 2]
    monai-pairsynth-preview --num-cases 4 --out preview3d.png --spatial-dims 3
    python -m monai_pairsynth.data.preview --stats --num-cases 200     # print phantom statistics instead

Each case shows the CT in a soft-tissue window and the PET in a ``hot`` colormap, both with the tumour
mask contour; 3D cases show the axial slice with the most tumour. The path written is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..visualize import save_triplet_grid
from .phantom import PhantomTissue, make_phantom_case

__all__ = ["main", "phantom_statistics", "write_phantom_preview"]


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


def _hottest_blob_dice(pet: np.ndarray, tumour: np.ndarray) -> float:
    """Dice of a PET-only heuristic: the connected region above 40% of the image's SUVmax around its hottest voxel."""
    from scipy import ndimage

    regions, _ = ndimage.label(pet > 0.4 * pet.max())
    guess = regions == regions[np.unravel_index(int(pet.argmax()), pet.shape)]
    return float(2.0 * (guess & tumour).sum() / max(int(guess.sum() + tumour.sum()), 1))


def phantom_statistics(
    num_cases: int = 200, seed: int = 0, spatial_size: Sequence[int] | None = None, spacing: float = 2.0
) -> dict[str, float]:
    """Summary statistics of ``num_cases`` 2D phantom cases (the numbers quoted in ``docs/data.md``).

    Returns percentiles (p10/p50/p90) of the tumour area (mm²), of the PET mean and maximum in the tumour
    and of the soft-tissue PET background (SUV), the median CT contrast of the tumour over muscle (HU), the
    fraction of cases where some voxel outside the (2-voxel dilated) tumour is hotter on PET than the
    tumour's maximum, the Dice of a PET-only heuristic (threshold at 40% of the slice's SUVmax, keep the
    region of the hottest voxel; mean, and fraction of cases with Dice > 0.3, i.e. the right blob) and the
    mean / median generation time per case (ms, this machine).

    Example:
        >>> stats = phantom_statistics(4, spatial_size=(32, 32), spacing=8.0)
        >>> stats["num_cases"], stats["tumour_area_mm2_p50"] > 0
        (4.0, True)
    """
    from scipy import ndimage

    rows, times = [], []
    for i in range(num_cases):
        t0 = time.perf_counter()
        case = make_phantom_case(seed + i, spatial_size=spatial_size, spacing=spacing, return_tissue=True)
        times.append(time.perf_counter() - t0)
        ct, pet, label, tissue = (case[k][0].numpy() for k in ("ct", "pet", "label", "tissue"))
        tumour = label > 0
        body = tissue != PhantomTissue.AIR
        near = ndimage.binary_dilation(tumour, iterations=2)
        soft = np.isin(tissue, (PhantomTissue.MUSCLE, PhantomTissue.FAT)) & ~near
        core = tumour & (tissue == PhantomTissue.TUMOUR)
        contrast = (
            np.median(ct[core]) - np.median(ct[tissue == PhantomTissue.MUSCLE]) if core.any() else np.nan
        )
        rows.append(
            (
                tumour.sum() * float(np.prod(case["label"].pixdim.tolist())),
                pet[tumour].mean(),
                pet[tumour].max(),
                np.median(pet[soft & body]),
                contrast,
                float(pet[~near].max() > pet[tumour].max()),
                _hottest_blob_dice(pet, tumour),
            )
        )
    r = np.asarray(rows, dtype=np.float64)
    out: dict[str, float] = {"num_cases": float(num_cases)}
    for j, name in enumerate(("tumour_area_mm2", "tumour_pet_mean", "tumour_pet_max", "background_pet")):
        for q in (10, 50, 90):
            out[f"{name}_p{q}"] = float(np.percentile(r[:, j], q))
    out["tumour_ct_contrast_hu_median"] = float(np.nanmedian(r[:, 4]))
    out["fraction_hotter_non_tumour"] = float(r[:, 5].mean())
    out["pet_40pct_baseline_dice_mean"] = float(r[:, 6].mean())
    out["pet_40pct_baseline_hit_fraction"] = float((r[:, 6] > 0.3).mean())
    out["generation_ms_mean"] = 1000.0 * float(np.mean(times))
    out["generation_ms_median"] = 1000.0 * float(np.median(times))
    return out


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
    parser.add_argument("--stats", action="store_true", help="print statistics of 2D cases instead of a grid")
    args = parser.parse_args(argv)
    if args.stats:
        if args.num_cases < 1:
            parser.error(f"--num-cases must be >= 1, got {args.num_cases}")
        for name, value in phantom_statistics(
            args.num_cases, args.seed, args.spatial_size, args.spacing
        ).items():
            print(f"{name:32s} {value:10.3f}")
        return 0
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
