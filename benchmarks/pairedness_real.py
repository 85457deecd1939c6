"""Does the pairedness score hold on real patients? Real triplets against five broken pairings, per patient.

The real FDG-PET/CT sarcoma patients of ``../shared/data/sts_pet_ct`` (36 patients, HECKTOR layout; or
``--data-dir``, or the environment variable ``MONAI_PAIRSYNTH_STS_DIR``) are preprocessed like the training data
(:func:`monai_pairsynth.data.preprocessing_transforms`: RAS, 2 mm, the tumour slices, a 128 x 128 crop), decoded to
HU / SUV / {0, 1}. Each patient's slices are scored by :func:`monai_pairsynth.metrics.pairedness` as they are and
after one of five corruptions, and every term is averaged over the patient's slices (the patient is the unit):

- ``mask_swap``: each slice gets the mask of a slice of another patient (patient ``i + n // 2`` in sorted order,
  its slices spread over this patient's);
- ``pet_flat``: the PET replaced by a flat image (its own mean);
- ``pet_flip``: the PET mirrored left-right (the first spatial axis, R-L after RAS);
- ``mask_shift``: the mask moved by 20 mm along the first axis (what leaves the grid is dropped);
- ``ct_swap``: the CT of another patient (the same partner as ``mask_swap``).

Printed per corruption and term: the fraction of patients whose real triplet scores above the broken one
(``real > broken``) and the mean gap ``real - broken`` over patients. The criterion (issue 13): for the headline
``score``, every corruption at >= 80 % of patients with a mean gap >= 0.15.

Usage::

    python benchmarks/pairedness_real.py                     # all 36 patients, every slice
    python benchmarks/pairedness_real.py --max-patients 8 --slice-step 4 --json /tmp/p.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from real_data import DATA_DIR_ENV, real_data_dir  # benchmarks/ is on sys.path (script or tests)

from monai_pairsynth.metrics import pairedness

TERMS = ("score", "lesion_score", "structure_score", "lesion_dice", "body_dice")
CORRUPTIONS = ("mask_swap", "pet_flat", "pet_flip", "mask_shift", "ct_swap")
MIN_FRACTION, MIN_GAP = 0.8, 0.15
SHIFT_MM = 20.0


def load_patients(
    data_dir: str | os.PathLike,
    max_patients: int | None = None,
    patient_step: int = 1,
    slice_step: int = 1,
    spatial_size: Sequence[int] = (128, 128),
    spacing: float = 2.0,
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """``{patient id: [slice {"ct", "pet", "label"} in physical units, ...]}`` of a HECKTOR folder.

    Args:
        data_dir: the HECKTOR-layout folder.
        max_patients: keep at most this many patients (after ``patient_step``; sorted by id).
        patient_step: keep every ``patient_step``-th patient in sorted order.
        slice_step: keep every ``slice_step``-th tumour slice of a patient.
        spatial_size, spacing: the preprocessing grid.
    """
    from monai_pairsynth.data import (
        DenormalizeModalitiesd,
        hecktor_datalist,
        preprocess_datalist,
        preprocessing_transforms,
    )

    keys = ["ct", "pet", "label"]
    items = hecktor_datalist(data_dir)[:: int(patient_step)]
    if max_patients is not None:
        items = items[: int(max_patients)]
    transform = preprocessing_transforms(keys, spacing=spacing, spatial_size=spatial_size)
    decode = DenormalizeModalitiesd(keys)
    samples = [
        {**decode({k: s[k] for k in keys}), "case_id": s["case_id"]}
        for s in preprocess_datalist(items, transform)
    ]
    patients: dict[str, list[dict[str, torch.Tensor]]] = {}
    for s in samples:
        patients.setdefault(str(s["case_id"]), []).append(
            {k: torch.as_tensor(s[k]).float() for k in ("ct", "pet", "label")}
        )
    return {pid: slices[:: int(slice_step)] for pid, slices in sorted(patients.items())}


def _spread(other: list[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    return [other[k * len(other) // n] for k in range(n)]


def _shift(label: torch.Tensor, pixels: int) -> torch.Tensor:
    out = torch.zeros_like(label)
    out[:, pixels:] = label[:, :-pixels]
    return out


def corrupt(
    patients: Mapping[str, list[dict[str, torch.Tensor]]], spacing: float = 2.0
) -> dict[str, dict[str, list[dict[str, torch.Tensor]]]]:
    """``{"real" or corruption: {patient id: slices}}`` (see the module docstring)."""
    ids = sorted(patients)
    n = len(ids)
    if n < 2:
        raise ValueError(f"the swaps need at least 2 patients, got {n}.")
    partner = {pid: ids[(i + max(1, n // 2)) % n] for i, pid in enumerate(ids)}
    pixels = round(SHIFT_MM / spacing)
    out: dict[str, dict[str, list[dict[str, torch.Tensor]]]] = {"real": dict(patients)}
    makers: dict[str, Callable[[str, list[dict[str, torch.Tensor]]], list[dict[str, torch.Tensor]]]] = {
        "mask_swap": lambda pid, sl: [
            {**s, "label": o["label"]} for s, o in zip(sl, _spread(patients[partner[pid]], len(sl)))
        ],
        "pet_flat": lambda pid, sl: [
            {**s, "pet": torch.full_like(s["pet"], float(s["pet"].mean()))} for s in sl
        ],
        "pet_flip": lambda pid, sl: [{**s, "pet": s["pet"].flip(1)} for s in sl],
        "mask_shift": lambda pid, sl: [{**s, "label": _shift(s["label"], pixels)} for s in sl],
        "ct_swap": lambda pid, sl: [
            {**s, "ct": o["ct"]} for s, o in zip(sl, _spread(patients[partner[pid]], len(sl)))
        ],
    }
    for name in CORRUPTIONS:
        out[name] = {pid: makers[name](pid, sl) for pid, sl in patients.items()}
    return out


def patient_scores(
    sets: Mapping[str, Mapping[str, list[dict[str, torch.Tensor]]]], spacing: float = 2.0
) -> dict[str, dict[str, dict[str, float]]]:
    """``{set: {patient id: {term: mean over the patient's slices}}}`` (slices with an empty mask skipped)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, patients in sets.items():
        out[name] = {}
        for pid, slices in patients.items():
            p = pairedness(slices, spacing=spacing)
            keep = ~p["mask_empty"]
            out[name][pid] = {
                t: float(p[t][keep].mean()) if bool(keep.any()) else float("nan") for t in TERMS
            } | {"num_slices": int(keep.sum())}
    return out


def corruption_table(scores: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, Any]]:
    """``{corruption: {term: {"fraction_real_above", "mean_gap", "num_patients"}}}`` over patients."""
    real = scores["real"]
    table: dict[str, dict[str, Any]] = {}
    for name in CORRUPTIONS:
        table[name] = {}
        for term in TERMS:
            gaps = np.array(
                [real[pid][term] - scores[name][pid][term] for pid in real if pid in scores[name]],
                dtype=float,
            )
            gaps = gaps[np.isfinite(gaps)]
            table[name][term] = {
                "fraction_real_above": float((gaps > 0).mean()) if gaps.size else float("nan"),
                "mean_gap": float(gaps.mean()) if gaps.size else float("nan"),
                "num_patients": int(gaps.size),
            }
    return table


def criterion_met(table: Mapping[str, Mapping[str, Mapping[str, float]]], term: str = "score") -> bool:
    """Every corruption: ``real > broken`` in >= 80 % of patients and a mean gap >= 0.15 for ``term``."""
    return all(
        table[c][term]["fraction_real_above"] >= MIN_FRACTION and table[c][term]["mean_gap"] >= MIN_GAP
        for c in CORRUPTIONS
    )


def markdown(table: Mapping[str, Mapping[str, Mapping[str, float]]], real_means: Mapping[str, float]) -> str:
    """Per corruption and term: fraction of patients with real > broken / mean gap."""
    lines = [
        "| broken pairing | " + " | ".join(TERMS) + " |",
        "|---|" + "---|" * len(TERMS),
        "| *real triplets (mean over patients)* | "
        + " | ".join(f"{real_means[t]:.3f}" for t in TERMS)
        + " |",
    ]
    for name in CORRUPTIONS:
        cells = [
            f"{table[name][t]['fraction_real_above']:.2f} / {table[name][t]['mean_gap']:+.3f}" for t in TERMS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(
    data_dir: str | os.PathLike,
    max_patients: int | None = None,
    patient_step: int = 1,
    slice_step: int = 1,
    spacing: float = 2.0,
    size: int = 128,
) -> dict[str, Any]:
    """Load, corrupt, score; the result written by :func:`main` as JSON."""
    start = time.perf_counter()
    patients = load_patients(data_dir, max_patients, patient_step, slice_step, (size, size), spacing)
    loaded = time.perf_counter() - start
    scores = patient_scores(corrupt(patients, spacing), spacing)
    table = corruption_table(scores)
    real_means = {t: float(np.nanmean([v[t] for v in scores["real"].values()])) for t in TERMS}
    return {
        "data_dir": str(data_dir),
        "num_patients": len(patients),
        "num_slices": sum(len(s) for s in patients.values()),
        "grid": [size, size],
        "spacing_mm": spacing,
        "slice_step": slice_step,
        "patient_step": patient_step,
        "unit": "patient (each term averaged over the patient's tumour slices first)",
        "criterion": {"min_fraction": MIN_FRACTION, "min_mean_gap": MIN_GAP, "term": "score"},
        "criterion_met": criterion_met(table),
        "real_means": real_means,
        "table": table,
        "per_patient": scores,
        "seconds": {"load": loaded, "total": time.perf_counter() - start},
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--data-dir", default=None, help=f"HECKTOR folder (default ${DATA_DIR_ENV} or ../shared/...)"
    )
    parser.add_argument("--max-patients", type=int, default=None, help="at most this many patients (all)")
    parser.add_argument("--patient-step", type=int, default=1, help="every n-th patient in sorted order (1)")
    parser.add_argument("--slice-step", type=int, default=1, help="every n-th tumour slice (1)")
    parser.add_argument("--json", default="benchmarks/results/pairedness_real.json", help="result file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else real_data_dir()
    if data_dir is None or not data_dir.is_dir():
        raise SystemExit(
            f"no real-patient folder ({data_dir or '../shared/data/sts_pet_ct'}); set --data-dir or ${DATA_DIR_ENV}."
        )
    result = run(data_dir, args.max_patients, args.patient_step, args.slice_step)
    print(
        f"{result['num_patients']} patients, {result['num_slices']} tumour slices; per corruption and term: "
        "fraction of patients with real > broken / mean gap (real - broken) over patients"
    )
    print(markdown(result["table"], result["real_means"]))
    print(
        f"criterion (score: >= {MIN_FRACTION:.0%} of patients and mean gap >= {MIN_GAP} for every corruption): "
        f"{'met' if result['criterion_met'] else 'NOT met'}; {result['seconds']['total']:.0f} s"
    )
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
