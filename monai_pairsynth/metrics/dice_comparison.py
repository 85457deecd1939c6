"""Downstream segmentation Dice of two arms (e.g. real-only vs real + synthetic) with paired tests.

The two Dice lists are paired: entry ``i`` of both comes from the same seed (or the same test slice), so the
tests are on the differences ``d_i = b_i - a_i``. When the entries are slices, pass ``patient_ids``: both arms
are then averaged over each patient's slices first and the tests run over patients (the slices of one patient
are not independent; 40 slices of one patient are one observation, not 40). The result says its ``unit``.
The tests are SciPy's paired t-test (``ttest_rel``) and the Wilcoxon
signed-rank test (``wilcoxon``). Degenerate inputs that make SciPy warn or divide by zero (fewer than 2 pairs,
all differences equal, all differences zero) are answered explicitly and explained in ``notes``, so the
function never fails under ``-W error``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from .by_patient import patient_means

__all__ = ["compare_dice"]

_ALTERNATIVES = ("two-sided", "greater", "less")


def _as_dice(values: Any, name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of Dice values, got a string.")
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {type(values).__name__}.") from None
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one Dice per seed or case), got shape {x.shape}.")
    if x.size == 0:
        raise ValueError(f"{name} is empty.")
    if not np.isfinite(x).all():
        raise ValueError(
            f"{name} has NaN/Inf values at positions {np.flatnonzero(~np.isfinite(x))[:10].tolist()}."
        )
    if (x < 0).any() or (x > 1).any():
        bad = np.flatnonzero((x < 0) | (x > 1))[:10].tolist()
        raise ValueError(f"{name} has values outside [0, 1] (not Dice scores) at positions {bad}.")
    return x


def _sd(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else 0.0


def compare_dice(
    dice_a: Sequence[float],
    dice_b: Sequence[float],
    alternative: str = "two-sided",
    patient_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Mean ± sd of two paired Dice lists, their difference ``b - a`` and paired tests.

    Args:
        dice_a: Dice per seed (or case, or slice) of arm A, e.g. real only.
        dice_b: Dice of arm B for the same seeds / cases / slices, same length.
        alternative: ``"two-sided"``, ``"greater"`` (B > A) or ``"less"``, for both tests.
        patient_ids: the patient of every entry; the entries of one patient are averaged (in each arm) before
            the statistics, which then run over patients. ``None``: every entry is one independent unit.

    Returns:
        ``{"n" (units compared: patients when ``patient_ids`` is given), "unit" ("patient" or "entry"),
        "num_entries" (entries before averaging), "patients" (ids in order, or None), "mean_a", "sd_a", "mean_b", "sd_b", "mean_diff", "sd_diff", "a", "b", "diff" (strings
        "mean ± sd"), "t_statistic", "t_pvalue", "wilcoxon_statistic", "wilcoxon_pvalue", "alternative",
        "notes"}``. ``sd`` is the sample standard deviation (0 for one value). A test that cannot be computed
        gives NaN and a note; all differences equal and non-zero give ``t = ±inf``, ``p = 0`` (the limit of
        the t-test; the Wilcoxon test still gives its exact p-value); all differences zero give ``p = 1``.

    Raises:
        ValueError: empty or unequal-length lists, values outside [0, 1] or NaN, a bad ``alternative``, a
            ``patient_ids`` of another length.

    Example:
        >>> a = [0.60, 0.62, 0.58, 0.65, 0.61, 0.59, 0.63, 0.60]
        >>> r = compare_dice(a, [x + 0.05 for x in a])
        >>> round(r["mean_diff"], 6), r["t_pvalue"], round(r["wilcoxon_pvalue"], 4)
        (0.05, 0.0, 0.0078)
        >>> one = compare_dice(a, [x + 0.05 for x in a], patient_ids=["P1"] * 8)  # 8 slices of one patient
        >>> one["n"], one["unit"], one["t_pvalue"]
        (1, 'patient', nan)
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {list(_ALTERNATIVES)}, got {alternative!r}.")
    a, b = _as_dice(dice_a, "dice_a"), _as_dice(dice_b, "dice_b")
    if a.size != b.size:
        raise ValueError(f"dice_a has {a.size} values and dice_b {b.size}; paired tests need equal lengths.")
    num_entries = int(a.size)
    patients = None
    if patient_ids is not None:
        if isinstance(patient_ids, (str, bytes)) or len(patient_ids) != a.size:
            raise ValueError(
                f"patient_ids must give one patient per Dice value ({a.size}), got "
                f"{len(patient_ids) if not isinstance(patient_ids, (str, bytes)) else 'a string'}."
            )
        per_a, per_b = patient_means(a, patient_ids), patient_means(b, patient_ids)
        patients = per_a["patients"]
        a, b = per_a["means"], per_b["means"]
    d = b - a
    n = int(d.size)
    mean_diff = float(d.mean())
    scale = max(1.0, float(np.abs(d).max()))
    all_zero = bool(np.abs(d).max() <= 1e-12)
    all_equal = bool(np.ptp(d) <= 1e-12 * scale)
    notes: list[str] = []

    if n < 2:
        t_stat, t_p = math.nan, math.nan
        notes.append("paired t-test needs at least 2 pairs")
    elif all_zero:
        t_stat, t_p = 0.0, 1.0
        notes.append("all differences are zero: no difference (t = 0, p = 1)")
    elif all_equal:
        t_stat = math.copysign(math.inf, mean_diff)
        if alternative == "two-sided" or (alternative == "greater") == (mean_diff > 0):
            t_p = 0.0
        else:
            t_p = 1.0
        notes.append("all differences are equal: the t-test degenerates (zero variance), t = ±inf")
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = stats.ttest_rel(b, a, alternative=alternative)
        t_stat, t_p = float(result.statistic), float(result.pvalue)
        notes += [f"t-test: {w.message}" for w in caught]

    if all_zero:
        w_stat, w_p = math.nan, 1.0
        notes.append("Wilcoxon: all differences are zero (p = 1)")
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = stats.wilcoxon(d, alternative=alternative)
                w_stat, w_p = float(result.statistic), float(result.pvalue)
            except ValueError as err:
                w_stat, w_p = math.nan, math.nan
                notes.append(f"Wilcoxon not computed: {err}")
        notes += [f"Wilcoxon: {w.message}" for w in caught]
        if n < 6 and alternative == "two-sided":
            notes.append(f"Wilcoxon with n = {n} pairs cannot reach p < 0.05 (two-sided)")

    mean_a, mean_b = float(a.mean()), float(b.mean())
    sd_a, sd_b, sd_d = _sd(a), _sd(b), _sd(d)
    if patients is not None and n < num_entries:
        notes.append(f"{num_entries} entries averaged over {n} patient(s) first; the tests run over patients")
    return {
        "n": n,
        "unit": "patient" if patients is not None else "entry",
        "num_entries": num_entries,
        "patients": patients,
        "mean_a": mean_a,
        "sd_a": sd_a,
        "mean_b": mean_b,
        "sd_b": sd_b,
        "mean_diff": mean_diff,
        "sd_diff": sd_d,
        "a": f"{mean_a:.4f} ± {sd_a:.4f}",
        "b": f"{mean_b:.4f} ± {sd_b:.4f}",
        "diff": f"{mean_diff:+.4f} ± {sd_d:.4f}",
        "t_statistic": t_stat,
        "t_pvalue": t_p,
        "wilcoxon_statistic": w_stat,
        "wilcoxon_pvalue": w_p,
        "alternative": alternative,
        "notes": notes,
    }
