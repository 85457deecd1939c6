"""compare_dice_crossed: test patients and training runs both random (issue 13: the noise floor of by-patient tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_pairsynth.metrics import compare_dice, compare_dice_crossed


def _entries(d: np.ndarray, slices: int = 2, base: float = 0.5):
    """Entries (a, b, patients, runs) whose (run, patient) cell differences are ``d`` (S x P), ``slices`` per cell."""
    a, b, patients, runs = [], [], [], []
    for s in range(d.shape[0]):
        for p in range(d.shape[1]):
            for k in range(slices):
                wiggle = 0.01 * ((s + 2 * p + k) % 3)  # slices differ, the same in both arms
                a.append(base + wiggle)
                b.append(base + wiggle + d[s, p])
                patients.append(f"P{p}")
                runs.append(s)
    return a, b, patients, runs


def test_without_run_effects_it_is_the_t_test_over_patients():
    rng = np.random.default_rng(0)
    d = np.tile(rng.normal(0.02, 0.03, size=8), (5, 1))  # every run gives each patient the same difference
    a, b, patients, runs = _entries(d)
    crossed = compare_dice_crossed(a, b, patients, runs)
    by_patient = compare_dice(a, b, patient_ids=patients)
    assert crossed["df"] == pytest.approx(7.0)
    assert crossed["t_pvalue"] == pytest.approx(by_patient["t_pvalue"], rel=1e-9)
    assert crossed["mean_diff"] == pytest.approx(by_patient["mean_diff"])


def test_without_patient_effects_it_is_the_t_test_over_run_means():
    d = np.tile(np.array([[0.04], [0.06], [-0.01], [0.03]]), (1, 6))  # the difference depends on the run only
    a, b, patients, runs = _entries(d)
    crossed = compare_dice_crossed(a, b, patients, runs)
    run_a = [np.mean([x for x, r in zip(a, runs, strict=True) if r == s]) for s in range(4)]
    run_b = [np.mean([x for x, r in zip(b, runs, strict=True) if r == s]) for s in range(4)]
    assert crossed["df"] == pytest.approx(3.0)
    assert crossed["t_pvalue"] == pytest.approx(compare_dice(run_a, run_b)["t_pvalue"], rel=1e-9)
    # the by-patient test sees the same shift in every patient and calls it certain
    assert compare_dice(a, b, patient_ids=patients)["t_pvalue"] < 1e-6 < 0.05 < crossed["t_pvalue"]


def test_retraining_noise_does_not_make_it_significant_where_the_patient_test_is():
    """No arm effect; each retrain shifts the difference (sd 0.02), patients differ (0.02), slices are noisy: the
    crossed test keeps its 5 % level, the by-patient test does not."""
    rng = np.random.default_rng(1)
    crossed_hits = patient_hits = 0
    trials = 400
    for _ in range(trials):
        d = rng.normal(0, 0.02, (6, 1)) + rng.normal(0, 0.02, (1, 12)) + rng.normal(0, 0.01, (6, 12))
        a, b, patients, runs = _entries(d, slices=1)
        crossed_hits += compare_dice_crossed(a, b, patients, runs)["t_pvalue"] < 0.05
        patient_hits += compare_dice(a, b, patient_ids=patients)["t_pvalue"] < 0.05
    assert crossed_hits / trials <= 0.08
    assert patient_hits / trials >= 0.15


def test_a_real_effect_is_found():
    rng = np.random.default_rng(2)
    d = 0.08 + rng.normal(0, 0.02, (6, 1)) + rng.normal(0, 0.02, (1, 12)) + rng.normal(0, 0.01, (6, 12))
    r = compare_dice_crossed(*_entries(d, slices=1))
    assert r["t_pvalue"] < 1e-3 and r["ci_low"] > 0 and r["n_runs"] == 6 and r["n_patients"] == 12


def test_one_sided_alternatives():
    rng = np.random.default_rng(3)
    d = 0.01 + rng.normal(0, 0.02, (4, 1)) + rng.normal(0, 0.02, (1, 10))
    a, b, patients, runs = _entries(d, slices=1)
    two = compare_dice_crossed(a, b, patients, runs)
    greater = compare_dice_crossed(a, b, patients, runs, alternative="greater")
    less = compare_dice_crossed(a, b, patients, runs, alternative="less")
    assert two["t_statistic"] > 0
    assert greater["t_pvalue"] == pytest.approx(two["t_pvalue"] / 2)
    assert less["t_pvalue"] == pytest.approx(1 - two["t_pvalue"] / 2)


def test_slices_of_one_patient_or_one_run_cannot_give_a_result():
    d = np.full((3, 1), 0.1) + np.array([[0.0], [0.01], [0.02]])
    one_patient = compare_dice_crossed(*_entries(d, slices=20))
    assert math.isnan(one_patient["t_pvalue"]) and "at least 2 runs and 2 patients" in one_patient["notes"][0]
    one_run = compare_dice_crossed(*_entries(np.full((1, 5), 0.1) + np.arange(5) * 0.01))
    assert math.isnan(one_run["t_pvalue"]) and one_run["n_runs"] == 1


def test_constant_differences():
    a, b, patients, runs = _entries(np.zeros((3, 4)))
    zero = compare_dice_crossed(a, b, patients, runs)
    assert zero["t_pvalue"] == 1.0 and zero["t_statistic"] == 0.0
    a, b, patients, runs = _entries(np.full((3, 4), 0.05))
    same = compare_dice_crossed(a, b, patients, runs)
    assert same["t_pvalue"] == 0.0 and same["t_statistic"] == math.inf
    assert compare_dice_crossed(a, b, patients, runs, alternative="less")["t_pvalue"] == 1.0


def test_bad_input_is_named():
    a, b, patients, runs = _entries(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="run '1' has no Dice for patient 'P2'"):
        compare_dice_crossed(a[:-2], b[:-2], patients[:-2], runs[:-2])
    with pytest.raises(ValueError, match="patient_ids must give one id per Dice value"):
        compare_dice_crossed(a, b, patients[:-1], runs)
    with pytest.raises(ValueError, match="run_ids must give one id per Dice value"):
        compare_dice_crossed(a, b, patients, "0")
    with pytest.raises(ValueError, match="equal lengths"):
        compare_dice_crossed(a, b[:-1], patients, runs)
    with pytest.raises(ValueError, match="outside"):
        compare_dice_crossed([1.5, *a[1:]], b, patients, runs)
    with pytest.raises(ValueError, match="alternative"):
        compare_dice_crossed(a, b, patients, runs, alternative="both")
