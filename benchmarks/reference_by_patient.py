"""Real-vs-real references by slice or by patient: how does a genuinely new real patient read against them?

The real FDG-PET/CT sarcoma patients (``benchmarks/real_data.py``) are preprocessed at the bundle's grid (64 x 64
at 4 mm, tumour slices, physical units). ``--held-out`` patients (seeded draw) play a perfect generator: real
patients the reference set has never seen. The other patients are the real set; a feature segmenter
(``train_feature_segmenter``, ``--feature-epochs``) is trained on them, as ``evaluate`` does. For every held-out
patient, its slices are compared with the real set as ``evaluate`` compares a synthetic set:

- **FID ratio**: matched FID of (the patient's slices vs real half A) over (real half B vs real half A), with the
  halves drawn **by slice** (the old reference: neighbouring slices of one patient on both sides) or **by
  patient** (``patient_disjoint_halves``, what ``evaluate`` now does);
- **NN ratio**: ``memorisation_report``'s median nearest-real distance of the patient's slices over the median
  real-to-real nearest-neighbour distance, **leave one slice out** (old) or **leave one patient out** (new).

A reference fit for a new patient gives ratios near 1 (FID a little above: a single patient is a narrow set).

Usage::

    python benchmarks/reference_by_patient.py                 # 36 patients, 6 held out, 5 feature epochs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pairedness_real import load_patients
from real_data import DATA_DIR_ENV, real_data_dir

from monai_pairsynth.metrics import (
    extract_global_features,
    feature_fid,
    memorisation_report,
    patient_disjoint_halves,
)
from monai_pairsynth.quality import train_feature_segmenter


def _matched_fid(real_f: torch.Tensor, syn_f: torch.Tensor, half_a: list[int], half_b: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    a, b = real_f[half_a], real_f[half_b]
    k = min(b.shape[0], syn_f.shape[0])
    b = b[torch.randperm(b.shape[0], generator=g)[:k]]
    s = syn_f[torch.randperm(syn_f.shape[0], generator=g)[:k]]
    return feature_fid(a, s), feature_fid(a, b)


def run(data_dir: Path, held_out: int, feature_epochs: int, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    patients = load_patients(data_dir, spatial_size=(64, 64), spacing=4.0)
    ids = sorted(patients)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    new_ids = sorted(ids[i] for i in perm[:held_out])
    real_ids = [p for p in ids if p not in new_ids]
    real = [s for p in real_ids for s in patients[p]]
    real_patients = [p for p in real_ids for _ in patients[p]]
    loaded = time.perf_counter() - start
    network = train_feature_segmenter(
        real, channels=(8, 16, 32, 64), epochs=feature_epochs, batch_size=8, seed=seed, units="physical"
    )
    trained = time.perf_counter() - start - loaded
    real_f = extract_global_features(network, real, units="physical")
    by_slice = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed)).tolist()
    halves = {
        "slice": (sorted(by_slice[: len(real) // 2]), sorted(by_slice[len(real) // 2 :])),
        "patient": patient_disjoint_halves(real_patients, seed),
    }
    rows = []
    for pid in new_ids:
        syn_f = extract_global_features(network, patients[pid], units="physical")
        row: dict[str, Any] = {"patient": pid, "num_slices": len(patients[pid])}
        for unit, (a, b) in halves.items():
            fid_new, fid_ref = _matched_fid(real_f, syn_f, a, b, seed)
            row[f"fid_ratio_by_{unit}"] = fid_new / fid_ref if fid_ref > 0 else float("inf")
        row["nn_ratio_by_slice"] = memorisation_report(syn_f, real_f)["median_ratio"]
        row["nn_ratio_by_patient"] = memorisation_report(syn_f, real_f, real_patients=real_patients)[
            "median_ratio"
        ]
        rows.append(row)
    summary = {
        key: {
            "median": float(np.median([r[key] for r in rows])),
            "min": min(r[key] for r in rows),
            "max": max(r[key] for r in rows),
        }
        for key in ("fid_ratio_by_slice", "fid_ratio_by_patient", "nn_ratio_by_slice", "nn_ratio_by_patient")
    }
    return {
        "data_dir": str(data_dir),
        "grid": [64, 64],
        "spacing_mm": 4.0,
        "num_real_patients": len(real_ids),
        "num_real_slices": len(real),
        "held_out_patients": new_ids,
        "feature_epochs": feature_epochs,
        "seed": seed,
        "rows": rows,
        "summary": summary,
        "seconds": {"load": loaded, "feature_segmenter": trained, "total": time.perf_counter() - start},
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--data-dir", default=None, help=f"HECKTOR folder (default ${DATA_DIR_ENV} or ../shared/...)"
    )
    parser.add_argument("--held-out", type=int, default=6, help="new patients (6)")
    parser.add_argument("--feature-epochs", type=int, default=5, help="feature segmenter epochs (5)")
    parser.add_argument("--seed", type=int, default=0, help="held-out draw, halves, segmenter (0)")
    parser.add_argument("--json", default="benchmarks/results/reference_by_patient.json", help="result file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else real_data_dir()
    if data_dir is None or not data_dir.is_dir():
        raise SystemExit(f"no real-patient folder; set --data-dir or ${DATA_DIR_ENV}.")
    result = run(data_dir, args.held_out, args.feature_epochs, args.seed)
    print(
        f"{result['num_real_patients']} real patients ({result['num_real_slices']} slices) as the reference set; "
        f"each of {len(result['rows'])} held-out real patients compared with it as a 'synthetic' set:"
    )
    print(
        "| new patient | slices | FID ratio, halves by slice | by patient | NN ratio, leave one slice out | "
        "leave one patient out |"
    )
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['patient']} | {r['num_slices']} | {r['fid_ratio_by_slice']:.1f} | {r['fid_ratio_by_patient']:.1f} | "
            f"{r['nn_ratio_by_slice']:.2f} | {r['nn_ratio_by_patient']:.2f} |"
        )
    print({k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in result["summary"].items()})
    print(f"{result['seconds']['total']:.0f} s")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
