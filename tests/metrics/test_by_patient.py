"""Statistics by patient: slices of one patient cannot pass for independent samples anywhere."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_pairsynth.data import make_phantom_case
from monai_pairsynth.metrics import (
    compare_dice,
    memorisation_report,
    pairwise_ms_ssim,
    patient_disjoint_halves,
    patient_ids,
    patient_means,
    summarize_by_patient,
)


def test_patient_ids_from_patient_id_case_id_or_index():
    samples = [{"patient_id": "P1", "case_id": "X-1"}, {"case_id": "CHUM-007_2"}, {"case_id": "STS_004"}, {}]
    assert patient_ids(samples) == ["P1", "CHUM-007", "STS_004", "sample-3"]


def test_patient_means_and_summary_weight_patients_not_slices():
    # patient a: 9 slices at 0.9; patient b: 1 slice at 0.1. By slice the mean is 0.82, by patient 0.5
    values = [0.9] * 9 + [0.1]
    ids = ["a"] * 9 + ["b"]
    per = patient_means(values, ids)
    assert per["patients"] == ["a", "b"] and per["num_slices"] == [9, 1]
    s = summarize_by_patient(values, ids)
    assert (
        s["mean"] == pytest.approx(0.5) and s["n"] == 2 and s["num_slices"] == 10 and s["unit"] == "patient"
    )
    with pytest.raises(ValueError, match="patient ids"):
        patient_means([0.1, 0.2], ["a"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_halves_are_patient_disjoint_and_balanced(seed):
    rng = np.random.default_rng(seed)
    ids = [f"P{p}" for p in range(12) for _ in range(int(rng.integers(1, 9)))]
    a, b = patient_disjoint_halves(ids, seed)
    assert sorted(a + b) == list(range(len(ids)))
    assert not {ids[i] for i in a} & {ids[i] for i in b}
    assert abs(len(a) - len(b)) <= 8  # at most one patient's slices apart
    assert patient_disjoint_halves(ids, seed) == (a, b)  # seeded


def test_slices_of_one_patient_cannot_give_a_significant_result():
    """The bundle once reported p = 0.02 from 13 slices of one patient: never again."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 0.7, 40)
    b = a + 0.05 + rng.normal(0, 0.002, 40)  # arm B better on every one of 40 slices
    by_slice = compare_dice(a, b)
    assert by_slice["t_pvalue"] < 1e-10 and by_slice["wilcoxon_pvalue"] < 1e-6  # what slices would claim
    one = compare_dice(a, b, patient_ids=["STS_004"] * 40)
    assert one["n"] == 1 and one["unit"] == "patient" and one["num_entries"] == 40
    assert math.isnan(one["t_pvalue"]) and one["wilcoxon_pvalue"] == 1.0
    assert one["mean_diff"] == pytest.approx(float((b - a).mean()))
    assert any("averaged over 1 patient" in note for note in one["notes"])


def test_paired_test_runs_over_patient_means():
    a = [0.5, 0.6, 0.7, 0.4, 0.55, 0.65]
    b = [0.6, 0.5, 0.75, 0.5, 0.5, 0.7]
    ids = ["p", "p", "q", "q", "r", "r"]
    r = compare_dice(a, b, patient_ids=ids)
    expected = compare_dice([0.55, 0.55, 0.6], [0.55, 0.625, 0.6])
    assert r["n"] == 3 and r["patients"] == ["p", "q", "r"]
    assert r["t_pvalue"] == pytest.approx(expected["t_pvalue"]) and r["mean_diff"] == pytest.approx(0.025)
    with pytest.raises(ValueError, match="one patient per Dice value"):
        compare_dice(a, b, patient_ids=ids[:-1])


def _slices_of_patients(num_patients: int, slices: int, noise: float, seed: int = 0):
    """Features of ``num_patients`` patients, ``slices`` near-identical slices each (neighbouring slices)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_patients, 16, generator=g)
    x = centres.repeat_interleave(slices, 0) + noise * torch.randn(num_patients * slices, 16, generator=g)
    return x, [f"P{i}" for i in range(num_patients) for _ in range(slices)]


def test_memorisation_reference_leaves_one_patient_out():
    real, ids = _slices_of_patients(12, 6, noise=0.05)
    new_patients, _ = _slices_of_patients(6, 1, noise=0.05, seed=1)  # genuinely new patients
    by_slice = memorisation_report(new_patients, real)
    by_patient = memorisation_report(new_patients, real, real_patients=ids)
    # the next slice of the same patient sets the slice-level reference: new patients look 10x too far away
    assert by_slice["median_ratio"] > 10
    assert 0.5 < by_patient["median_ratio"] < 2.0 and by_patient["reference_unit"] == "leave one patient out"
    # copies of real slices are still flagged against the patient-level reference
    copies = memorisation_report(real[:5] + 1e-4, real, real_patients=ids)
    assert copies["num_flagged"] == 5
    with pytest.raises(ValueError, match="at least 2"):
        memorisation_report(new_patients, real, real_patients=["P0"] * len(ids))


def test_diversity_pairs_skip_slices_of_one_patient():
    cases = [make_phantom_case(s, spatial_size=(32, 32), spacing=8.0) for s in range(3)]
    ct = torch.stack([c["ct"].as_tensor() for c in cases for _ in range(3)])
    ct = ((ct.clamp(-1000, 1000) + 1000) / 2000).float()
    ids = [f"P{i}" for i in range(3) for _ in range(3)]
    weights = (0.5, 0.5)
    slices = pairwise_ms_ssim(ct, kernel_size=5, weights=weights)
    patients = pairwise_ms_ssim(ct, kernel_size=5, weights=weights, patients=ids)
    assert slices["num_pairs"] == 36 and patients["num_pairs"] == 27  # the 9 same-patient pairs left out
    assert patients["mean"] < slices["mean"]  # identical same-patient pairs no longer inflate the similarity
    with pytest.raises(ValueError, match="one patient"):
        pairwise_ms_ssim(ct, kernel_size=5, weights=weights, patients=["P"] * 9)
