"""Per-case cost of the file-to-sample preprocessing on a HECKTOR-size case: wall time and peak memory.

A synthetic case of HECKTOR size is written once to a temporary folder in the HECKTOR layout: CT 512 x 512 x 250
int16 (0.977 x 0.977 x 2 mm, body ellipse in air, a bone ring), PET 200 x 200 x 125 float32 (2.5 x 2.5 x 4 mm,
the same 500 mm field of view; uptake in the body, a tumour peak of SUV 40), a label sphere (r = 20 mm) on the CT
grid. Each repeat runs :func:`monai_pairsynth.data.preprocessing_transforms` (``--spacing`` mm, 2D tumour
slices, ``--spatial-size`` crop; the package defaults otherwise) on it in a FRESH Python process, so the peak
resident memory (``ru_maxrss``) is that one case's: printed is the peak minus the resident memory just before the
call (imports done, nothing loaded). Time is the wall time of the one call (and, within it, of reading the two
NIfTI files: ``LoadCaseImaged`` + ``EnsureChannelFirstd``), median over ``--repeats``.

The pipeline before a change can be measured with the same script on an exported tree, e.g.
``git archive <commit> monai_pairsynth | tar -x -C /tmp/old && python benchmarks/preprocessing_cost.py --package-root
/tmp/old`` (the run imports the package from there instead of the installed one, and prints where from).

Usage::

    python benchmarks/preprocessing_cost.py                   # 2 mm, 128 x 128, 3 repeats
    python benchmarks/preprocessing_cost.py --spacing 4 --spatial-size 64 64 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CT_SHAPE, CT_SPACING = (512, 512, 250), (0.977, 0.977, 2.0)
PET_SHAPE, PET_SPACING = (200, 200, 125), (2.5, 2.5, 4.0)


def write_case(root: Path) -> None:
    """The synthetic HECKTOR-size case ``HNS-001`` under ``root`` (imagesTr/, labelsTr/)."""
    import nibabel as nib
    import numpy as np

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)

    def grid(shape, spacing):
        axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]  # mm, centred
        return np.meshgrid(*axes, indexing="ij", sparse=True)

    def affine(shape, spacing):
        a = np.diag([*spacing, 1.0])
        a[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
        return a

    x, y, z = grid(CT_SHAPE, CT_SPACING)
    body = (x / 170.0) ** 2 + (y / 120.0) ** 2 <= 1.0
    bone = np.abs(np.sqrt((x + 40.0) ** 2 + y**2) - 20.0) < 5.0
    ct = np.where(body, 40.0, -1000.0) + np.where(bone & body, 700.0, 0.0) + 0.0 * z
    tumour = ((x - 60.0) ** 2 + (y - 20.0) ** 2 + z**2) <= 20.0**2
    nib.save(
        nib.Nifti1Image(ct.astype(np.int16), affine(CT_SHAPE, CT_SPACING)),
        root / "imagesTr" / "HNS-001__CT.nii.gz",
    )
    nib.save(
        nib.Nifti1Image(tumour.astype(np.uint8), affine(CT_SHAPE, CT_SPACING)),
        root / "labelsTr" / "HNS-001.nii.gz",
    )
    x, y, z = grid(PET_SHAPE, PET_SPACING)
    body = (x / 170.0) ** 2 + (y / 120.0) ** 2 <= 1.0
    r2 = (x - 60.0) ** 2 + (y - 20.0) ** 2 + z**2
    pet = np.where(body, 1.5, 0.05) + 40.0 * np.exp(-r2 / (2 * 10.0**2))
    nib.save(
        nib.Nifti1Image(pet.astype(np.float32), affine(PET_SHAPE, PET_SPACING)),
        root / "imagesTr" / "HNS-001__PT.nii.gz",
    )


def _one_run(root: str, spacing: float, spatial_size: list[int], package_root: str | None) -> dict:
    """Runs in a fresh process: one case through the pipeline; time and peak memory above the start."""
    import resource
    import time

    if package_root is not None:  # measure another version of the package (an exported older tree)
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        sys.path.insert(0, package_root)

    import torch
    from monai.transforms import Compose

    import monai_pairsynth
    from monai_pairsynth.data import hecktor_datalist, preprocessing_transforms

    torch.set_num_threads(1)
    item = hecktor_datalist(root)[0]
    t = preprocessing_transforms(spacing=spacing, spatial_size=spatial_size)

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    before = rss_mb()
    t0 = time.perf_counter()
    loaded = t.transforms[1](t.transforms[0](item))  # LoadCaseImaged, EnsureChannelFirstd: reading the files
    t1 = time.perf_counter()
    slices = Compose(t.transforms[2:])(loaded)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "seconds": seconds,
        "load_seconds": t1 - t0,
        "peak_above_start_mb": peak - before,
        "slices": len(slices),
        "package": str(Path(monai_pairsynth.__file__).parent),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=2.0, help="target voxel size in mm (2)")
    parser.add_argument("--spatial-size", type=int, nargs=2, default=[128, 128], help="crop (128 128)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes, one case each (3)")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--package-root", default=None, help="import monai_pairsynth from this folder")
    parser.add_argument("--_run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._run is not None:
        print(json.dumps(_one_run(args._run, args.spacing, args.spatial_size, args.package_root)))
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        write_case(Path(tmp))
        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, "--_run", tmp, "--spacing", str(args.spacing), "--spatial-size"]
            cmd = cmd[:2] + (["--package-root", args.package_root] if args.package_root else []) + cmd[2:]
            out = subprocess.run(
                cmd + [str(s) for s in args.spatial_size], capture_output=True, text=True, check=True
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {
        "ct_shape": CT_SHAPE,
        "pet_shape": PET_SHAPE,
        "spacing_mm": args.spacing,
        "spatial_size": args.spatial_size,
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "load_seconds_median": statistics.median(r["load_seconds"] for r in runs),
        "peak_above_start_mb_median": statistics.median(r["peak_above_start_mb"] for r in runs),
        "slices": runs[0]["slices"],
        "runs": runs,
        "package": runs[0]["package"],
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread",
    }
    print(
        f"HECKTOR-size case (CT {CT_SHAPE}, PET {PET_SHAPE}) -> {args.spacing:g} mm, {result['slices']} slices: "
        f"{result['seconds_median']:.2f} s (reading the files {result['load_seconds_median']:.2f} s), "
        f"peak +{result['peak_above_start_mb_median']:.0f} MB "
        f"(median of {len(runs)} fresh processes; package {result['package']})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
