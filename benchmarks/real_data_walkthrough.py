"""The bundle's preprocessing on the real sarcoma folder, as a user's own ``dataset_dir``: what comes out, what it costs.

For the real FDG-PET/CT patients of ``../shared/data/sts_pet_ct`` (or ``$MONAI_PAIRSYNTH_STS_DIR``) each patient is
run through :func:`monai_pairsynth.data.preprocessing_transforms` with the bundle's grid (``--spacing`` 4 mm,
``--spatial-size`` 64 x 64, labels ``(1, 2)``, the field-of-view mask on) and printed per patient and in total:
tumour slices, wall time (files read included), the share of each slice window that was scanned (``fov``), and
the tumour's PET voxels that sit on the default 15 SUV cap (PET on the target grid, before the crop; the opt-in
``PET_LOG_SPEC`` caps at 60). Peak resident memory is the whole run's (``ru_maxrss``). A preview of one tumour
slice per patient (``--preview-patients`` patients spread over the folder; CT and PET with the mask contour; what
lies outside the field of view shows as air / zero uptake) is written with
:func:`monai_pairsynth.visualize.save_triplet_grid`.

Usage::

    python benchmarks/real_data_walkthrough.py --preview docs/your_own_data_preview.png
    python benchmarks/real_data_walkthrough.py --max-patients 4 --spacing 2 --spatial-size 128 128
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from real_data import DATA_DIR_ENV, real_data_dir  # benchmarks/ is on sys.path (script or tests)

from monai_pairsynth.data import DenormalizeModalitiesd, hecktor_datalist, preprocessing_transforms
from monai_pairsynth.visualize import save_triplet_grid


def run(data_dir: Path, spacing: float, spatial_size: list[int], max_patients: int | None) -> dict:
    items = hecktor_datalist(data_dir)[:max_patients]
    t = preprocessing_transforms(
        spacing=spacing, spatial_size=spatial_size, foreground_values=(1, 2), fov_key="fov"
    )
    volume = preprocessing_transforms(
        spacing=spacing, spatial_size=[0, 0], foreground_values=(1, 2), extract_slices=False
    )
    rows, previews = [], []
    decode = DenormalizeModalitiesd(["ct", "pet", "label"])
    for item in items:
        t0 = time.perf_counter()
        slices = t(dict(item))
        seconds = time.perf_counter() - t0
        vol = volume(dict(item))
        tumour_pet = vol["pet"][vol["label"] > 0]
        rows.append(
            {
                "case_id": item["case_id"],
                "slices": len(slices),
                "seconds": seconds,
                "fov_mean": statistics.mean(float(s["fov"].mean()) for s in slices)
                if slices
                else float("nan"),
                "tumour_voxels_at_15_suv_cap": float((tumour_pet >= 1.0).float().mean())
                if tumour_pet.numel()
                else 0.0,
            }
        )
        if slices:
            mid = slices[len(slices) // 2]
            previews.append(
                {**decode({k: mid[k] for k in ("ct", "pet", "label")}), "case_id": item["case_id"]}
            )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"rows": rows, "previews": previews, "peak_mb": peak_mb}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=None, help=f"the folder (default: ${DATA_DIR_ENV} or ../shared/...)"
    )
    parser.add_argument("--spacing", type=float, default=4.0, help="mm (4, the bundle's)")
    parser.add_argument(
        "--spatial-size", type=int, nargs=2, default=[64, 64], help="crop (64 64, the bundle's)"
    )
    parser.add_argument("--max-patients", type=int, default=None, help="first N patients (all)")
    parser.add_argument("--preview", default=None, help="write a preview PNG here")
    parser.add_argument("--preview-patients", type=int, default=6, help="patients in the preview (6)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data_dir = Path(args.data_dir) if args.data_dir else real_data_dir()
    if data_dir is None:
        raise SystemExit(f"no real-patient folder: set ${DATA_DIR_ENV} or pass --data-dir")
    t0 = time.perf_counter()
    result = run(data_dir, args.spacing, args.spatial_size, args.max_patients)
    total = time.perf_counter() - t0
    rows = result["rows"]
    print("| patient | tumour slices | seconds | scanned share of the window | tumour PET voxels at 15 SUV |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case_id']} | {r['slices']} | {r['seconds']:.2f} | {r['fov_mean']:.2f} | "
            f"{100 * r['tumour_voxels_at_15_suv_cap']:.1f} % |"
        )
    capped = [r for r in rows if r["tumour_voxels_at_15_suv_cap"] > 0]
    print(
        f"\n{len(rows)} patients, {sum(r['slices'] for r in rows)} tumour slices "
        f"(median {statistics.median(r['slices'] for r in rows):g} per patient) at {args.spacing:g} mm, "
        f"{args.spatial_size[0]} x {args.spatial_size[1]}; median {statistics.median(r['seconds'] for r in rows):.2f} s "
        f"per patient, {total:.0f} s in all (both passes); peak resident memory {result['peak_mb']:.0f} MB; "
        f"median scanned share of a window {statistics.median(r['fov_mean'] for r in rows if r['slices']):.2f}; "
        f"{len(capped)} patients with tumour voxels on the 15 SUV cap "
        f"(max {100 * max((r['tumour_voxels_at_15_suv_cap'] for r in rows), default=0):.1f} %)."
    )
    if args.preview:
        chosen = result["previews"][:: max(1, len(result["previews"]) // args.preview_patients)][
            : args.preview_patients
        ]
        path = save_triplet_grid(chosen, args.preview, samples_per_row=3)
        print(f"preview: {path}")
    out = {k: v for k, v in result.items() if k != "previews"} | {"total_seconds": total}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
