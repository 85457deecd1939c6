"""Statistics by patient: slices of one patient are not independent samples.

Every slice-level value (a test Dice, a pairedness score) is first averaged over the slices of its patient, and
statistics (mean ± sd, paired tests) run over patients. Real-vs-real references (FID, MMD, diversity,
memorisation) compare patient-disjoint sets: two neighbouring slices of one patient are near-copies, and a
reference that pairs them makes every genuinely new patient look far away.

A sample's patient is its ``patient_id``, else the patient part of its ``case_id``
(:func:`monai_pairsynth.data.patient_id_from_case`: ``"CHUM-001_2"`` -> ``"CHUM-001"``), else the sample itself
(its index: then every sample counts as its own patient, which is right for phantom cases and for synthetic
samples, each an independent draw).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_pairsynth.data import patient_id_from_case

__all__ = ["patient_disjoint_halves", "patient_ids", "patient_means", "summarize_by_patient"]


def patient_ids(samples: Sequence[Mapping[str, Any]], prefix: str = "sample") -> list[str]:
    """The patient of every sample: ``patient_id``, else from ``case_id``, else ``f"{prefix}-{index}"``.

    Example:
        >>> patient_ids([{"case_id": "CHUM-001_2"}, {"patient_id": "P7"}, {}])
        ['CHUM-001', 'P7', 'sample-2']
    """
    out = []
    for i, s in enumerate(samples):
        pid = s.get("patient_id") if isinstance(s, Mapping) else None
        if pid is None or str(pid) == "":
            case = s.get("case_id") if isinstance(s, Mapping) else None
            pid = patient_id_from_case(str(case)) if case is not None and str(case) != "" else f"{prefix}-{i}"
        out.append(str(pid))
    return out


def _as_values(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).ravel()


def patient_means(values: Any, patients: Sequence[str]) -> dict[str, Any]:
    """Average slice values per patient (NaN slices left out; a patient with only NaNs is left out).

    Args:
        values: one value per slice, ``(N,)``.
        patients: the patient of every slice, ``N`` ids.

    Returns:
        ``{"patients": [id, ...] (first-seen order), "means": (P,) float64, "num_slices": [int, ...]}``.

    Example:
        >>> r = patient_means([0.2, 0.4, 0.9, float("nan")], ["a", "a", "b", "c"])
        >>> r["patients"], [round(float(v), 3) for v in r["means"]], r["num_slices"]
        (['a', 'b'], [0.3, 0.9], [2, 1])
    """
    v = _as_values(values)
    patients = [str(p) for p in patients]
    if v.size != len(patients):
        raise ValueError(f"{v.size} values but {len(patients)} patient ids; give one id per value.")
    order: dict[str, list[float]] = {}
    for value, pid in zip(v.tolist(), patients):
        order.setdefault(pid, [])
        if not math.isnan(value):
            order[pid].append(value)
    kept = {pid: vals for pid, vals in order.items() if vals}
    return {
        "patients": list(kept),
        "means": np.array([float(np.mean(vals)) for vals in kept.values()], dtype=np.float64),
        "num_slices": [len(vals) for vals in kept.values()],
    }


def summarize_by_patient(values: Any, patients: Sequence[str]) -> dict[str, Any]:
    """Mean, sd, median, min, max **over patients** of the per-patient means of slice values.

    Returns:
        ``{"mean", "sd", "median", "min", "max", "n" (patients), "num_patients", "num_slices", "n_nan" (NaN
        slices), "unit": "patient"}``; ``sd`` with ``ddof=1`` (0 for one patient); NaN statistics when no
        value is finite.

    Example:
        >>> s = summarize_by_patient([0.2, 0.4, 0.9, 0.7], ["a", "a", "b", "b"])
        >>> s["mean"], s["num_patients"], s["num_slices"], s["unit"]
        (0.55, 2, 4, 'patient')
    """
    v = _as_values(values)
    per = patient_means(v, patients)
    m = per["means"]
    n = int(m.size)
    nan = float("nan")
    stats = (
        {"mean": nan, "sd": nan, "median": nan, "min": nan, "max": nan}
        if n == 0
        else {
            "mean": float(m.mean()),
            "sd": float(m.std(ddof=1)) if n > 1 else 0.0,
            "median": float(np.median(m)),
            "min": float(m.min()),
            "max": float(m.max()),
        }
    )
    return {
        **stats,
        "n": n,
        "num_patients": n,
        "num_slices": int((~np.isnan(v)).sum()),
        "n_nan": int(np.isnan(v).sum()),
        "unit": "patient",
    }


def patient_disjoint_halves(patients: Sequence[str], seed: int = 0) -> tuple[list[int], list[int]]:
    """Split sample indices into two halves with no patient in both, about equal in samples.

    The patients are shuffled with ``seed``, ordered by their number of samples (largest first, ties in the
    shuffled order) and each goes, with all its samples, to the half that has fewer samples so far (the first
    half on a tie).

    Returns:
        ``(indices of half A, indices of half B)``, each sorted; half B is empty when there is one patient.

    Example:
        >>> ids = ["p1", "p1", "p2", "p3", "p3", "p4"]
        >>> a, b = patient_disjoint_halves(ids)
        >>> {ids[i] for i in a} & {ids[i] for i in b}, sorted(a + b) == list(range(6)), len(a), len(b)
        (set(), True, 3, 3)
    """
    patients = [str(p) for p in patients]
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(patients):
        groups.setdefault(pid, []).append(i)
    names = sorted(groups)
    perm = torch.randperm(len(names), generator=torch.Generator().manual_seed(int(seed))).tolist()
    half_a: list[int] = []
    half_b: list[int] = []
    perm.sort(key=lambda k: -len(groups[names[k]]))  # the largest patients first (stable: ties stay shuffled)
    for k in perm:
        target = half_a if len(half_a) <= len(half_b) else half_b
        target.extend(groups[names[k]])
    return sorted(half_a), sorted(half_b)
