"""compare_dice: mean ± sd and paired tests, including the degenerate inputs SciPy warns about."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from monai_pairsynth.metrics import compare_dice

A = [0.61, 0.72, 0.65, 0.80, 0.70, 0.55, 0.68, 0.74, 0.62, 0.71]


def test_exact_shift_gives_a_small_p_value_and_the_shift():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape
        r = compare_dice(A, [a + 0.05 for a in A])
    assert r["n"] == 10
    assert r["mean_diff"] == pytest.approx(0.05, abs=1e-12) and r["sd_diff"] == pytest.approx(0.0, abs=1e-12)
    assert r["t_pvalue"] == 0.0 and r["t_statistic"] == math.inf
    assert r["wilcoxon_pvalue"] == pytest.approx(2 / 2**10)  # exact: all 10 signs positive, two-sided
    assert r["mean_a"] == pytest.approx(np.mean(A)) and r["sd_a"] == pytest.approx(np.std(A, ddof=1))
    assert r["a"] == f"{np.mean(A):.4f} ± {np.std(A, ddof=1):.4f}" and r["diff"] == "+0.0500 ± 0.0000"
    assert any("equal" in note for note in r["notes"])


def test_matches_scipy_on_ordinary_input():
    b = [a + d for a, d in zip(A, [0.02, -0.01, 0.04, 0.03, 0.0, 0.05, -0.02, 0.06, 0.01, 0.03])]
    r = compare_dice(A, b)
    t = stats.ttest_rel(b, A)
    w = stats.wilcoxon(np.array(b) - np.array(A))
    assert r["t_statistic"] == pytest.approx(t.statistic) and r["t_pvalue"] == pytest.approx(t.pvalue)
    assert r["wilcoxon_statistic"] == pytest.approx(w.statistic) and r["wilcoxon_pvalue"] == pytest.approx(
        w.pvalue
    )
    one_sided = compare_dice(A, b, alternative="greater")
    assert one_sided["t_pvalue"] == pytest.approx(t.pvalue / 2)


def test_identical_values_give_p_one():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = compare_dice(A, list(A))
    assert r["mean_diff"] == 0.0 and r["t_pvalue"] == 1.0 and r["wilcoxon_pvalue"] == 1.0
    assert math.isnan(r["wilcoxon_statistic"])


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_pairs_do_not_crash(n):
    a, b = A[:n], [x + d for x, d in zip(A[:n], (0.1, -0.05))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = compare_dice(a, b)
    assert r["n"] == n
    if n == 1:
        assert math.isnan(r["t_pvalue"]) and r["sd_a"] == 0.0
        assert any("at least 2 pairs" in note for note in r["notes"])
    else:
        assert 0.0 < r["t_pvalue"] <= 1.0
    assert any("cannot reach p < 0.05" in note for note in r["notes"])


def test_shift_in_the_other_direction_with_one_sided_alternative():
    r = compare_dice(A, [a - 0.05 for a in A], alternative="greater")
    assert r["t_statistic"] == -math.inf and r["t_pvalue"] == 1.0 and r["wilcoxon_pvalue"] > 0.99


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "match"),
    [
        ([], [], {}, "dice_a is empty"),
        ([0.5, 0.6], [0.5], {}, "equal lengths"),
        ([0.5, 1.2], [0.5, 0.6], {}, "outside \\[0, 1\\]"),
        ([0.5, float("nan")], [0.5, 0.6], {}, "NaN"),
        ([[0.5]], [[0.5]], {}, "one-dimensional"),
        ("0.5", [0.5], {}, "string"),
        ([0.5], [0.6], {"alternative": "bigger"}, "alternative must be one of"),
    ],
)
def test_bad_input(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare_dice(a, b, **kwargs)
