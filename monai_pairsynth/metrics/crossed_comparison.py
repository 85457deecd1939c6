"""Two arms compared with both the test patients and the training runs as random: the test that counts both.

:func:`compare_dice` with ``patient_ids`` averages each patient's Dice over the slices *and the training seeds* and
tests over patients: it treats the trained segmenters as fixed. Retraining the same arm with another seed moves
Dice over the test patients by about 0.02 on the real-patient protocol (``docs/data.md``, the control of
``benchmarks/pet_map_segmentation.py``), so that test calls two runs of the same method "different" far more often
than 5 %. The seed-mean t-test counts the seeds but not the patients and has little power with 3-6 seeds.

:func:`compare_dice_crossed` counts both, as multi-reader multi-case (MRMC) studies of imaging do with readers and
cases: here the training runs play the readers. Each run's Dice is averaged over the slices of each patient, the
paired differences ``d[s, p]`` (arm B minus arm A, run ``s``, patient ``p``) go through a two-way analysis of
variance without replication, and the variance of their mean is

    Var(mean d) = (MS_run + max(MS_patient - MS_residual, 0)) / (S * P)

(the expected mean squares of run, patient and residual effects; the maximum keeps the estimate non-negative, as
in Hillis' modification of the Dorfman-Berbaum-Metz method). The t statistic ``mean d / sqrt(Var)`` gets
Satterthwaite's degrees of freedom. Two limits check it: with no run effect at all it is the paired t-test over
patients (``P - 1`` degrees of freedom), with no patient effect it is the paired t-test over the run means
(``S - 1``). Runs are paired across the arms by their id (the same seed in both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from .dice_comparison import _ALTERNATIVES, _as_dice

__all__ = ["compare_dice_crossed"]


def _ids(values: Any, name: str, size: int) -> list[str]:
    if isinstance(values, (str, bytes)) or values is None or len(values) != size:
        got = "a string" if isinstance(values, (str, bytes)) else (None if values is None else len(values))
        raise ValueError(f"{name} must give one id per Dice value ({size}), got {got}.")
    return [str(v) for v in values]


def _cell_means(x: np.ndarray, runs: list[str], patients: list[str], name: str) -> np.ndarray:
    """``(S, P)`` means of every (run, patient) cell, runs and patients in first-seen order; an empty cell is an
    error naming it (the crossed test needs every patient in every run)."""
    run_order = list(dict.fromkeys(runs))
    patient_order = list(dict.fromkeys(patients))
    r_index = {r: i for i, r in enumerate(run_order)}
    p_index = {p: i for i, p in enumerate(patient_order)}
    sums = np.zeros((len(run_order), len(patient_order)))
    counts = np.zeros_like(sums)
    for value, r, p in zip(x, runs, patients, strict=True):
        sums[r_index[r], p_index[p]] += value
        counts[r_index[r], p_index[p]] += 1
    if (counts == 0).any():
        s, p = np.argwhere(counts == 0)[0]
        raise ValueError(
            f"{name}: run {run_order[s]!r} has no Dice for patient {patient_order[p]!r}; the crossed test needs "
            "every test patient in every run."
        )
    return sums / counts


def compare_dice_crossed(
    dice_a: Sequence[float],
    dice_b: Sequence[float],
    patient_ids: Sequence[str],
    run_ids: Sequence[Any],
    alternative: str = "two-sided",
) -> dict[str, Any]:
    """Paired comparison of two arms over test patients *and* training runs (both random), B minus A.

    Args:
        dice_a, dice_b: one Dice per (run, test slice) of each arm, paired entry by entry (the same run id and the
            same slice at position ``i``).
        patient_ids: the test patient of every entry.
        run_ids: the training run of every entry (e.g. the seed); runs are paired across the arms by id.
        alternative: ``"two-sided"``, ``"greater"`` (B > A) or ``"less"``.

    Returns:
        ``{"n_runs", "n_patients", "num_entries", "mean_diff", "se", "df", "t_statistic", "t_pvalue", "ci_low",
        "ci_high" (95 %, two-sided), "ms_run", "ms_patient", "ms_residual", "unit": "patient x run", "notes"}``.
        NaN with a note where the test cannot be computed (fewer than 2 runs or 2 patients); all differences zero
        give ``p = 1``, all equal and non-zero ``t = ±inf``, ``p = 0``.

    Raises:
        ValueError: unequal lengths, values outside [0, 1] or NaN, ids of another length, a run without one of the
            patients, a bad ``alternative``.

    Example:
        >>> runs = [0] * 4 + [1] * 4 + [2] * 4                      # 3 seeds
        >>> patients = ["P1", "P2", "P3", "P4"] * 3                # 4 test patients, one slice each
        >>> a = [0.50, 0.60, 0.55, 0.65] * 3
        >>> b = [x + e for x, e in zip(a, [0.04] * 4 + [0.06] * 4 + [-0.01] * 4)]  # the gain depends on the seed
        >>> r = compare_dice_crossed(a, b, patients, runs)
        >>> round(r["mean_diff"], 3), round(r["df"], 3), round(r["t_pvalue"], 2)  # = the t-test over the seed means
        (0.03, 2.0, 0.29)
        >>> from monai_pairsynth.metrics import compare_dice
        >>> compare_dice(a, b, patient_ids=patients)["t_pvalue"]  # the seeds averaged away: "p = 0"
        0.0
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {list(_ALTERNATIVES)}, got {alternative!r}.")
    a, b = _as_dice(dice_a, "dice_a"), _as_dice(dice_b, "dice_b")
    if a.size != b.size:
        raise ValueError(f"dice_a has {a.size} values and dice_b {b.size}; paired tests need equal lengths.")
    patients = _ids(patient_ids, "patient_ids", a.size)
    runs = _ids(run_ids, "run_ids", a.size)
    d = _cell_means(b, runs, patients, "dice_b") - _cell_means(a, runs, patients, "dice_a")
    s, p = d.shape
    mean = float(d.mean())
    out: dict[str, Any] = {
        "n_runs": s,
        "n_patients": p,
        "num_entries": int(a.size),
        "mean_diff": mean,
        "unit": "patient x run",
        "notes": [],
    }
    nan = {
        k: math.nan
        for k in (
            "se",
            "df",
            "t_statistic",
            "t_pvalue",
            "ci_low",
            "ci_high",
            "ms_run",
            "ms_patient",
            "ms_residual",
        )
    }
    if s < 2 or p < 2:
        out.update(nan)
        out["notes"].append(f"the crossed test needs at least 2 runs and 2 patients, got {s} and {p}")
        return out
    run_means, patient_means = d.mean(1), d.mean(0)
    ms_run = p * float(((run_means - mean) ** 2).sum()) / (s - 1)
    ms_patient = s * float(((patient_means - mean) ** 2).sum()) / (p - 1)
    residual = d - run_means[:, None] - patient_means[None, :] + mean
    ms_residual = float((residual**2).sum()) / ((s - 1) * (p - 1))
    out.update(ms_run=ms_run, ms_patient=ms_patient, ms_residual=ms_residual)
    extra = max(ms_patient - ms_residual, 0.0)
    denominator = ms_run + extra
    scale = max(1.0, float(np.abs(d).max()))
    if denominator <= 1e-24 * scale:
        zero = bool(np.abs(d).max() <= 1e-12)
        t_stat = 0.0 if zero else math.copysign(math.inf, mean)
        favoured = alternative == "two-sided" or (alternative == "greater") == (mean > 0)
        t_p = 1.0 if zero else (0.0 if favoured else 1.0)
        out.update(se=0.0, df=math.nan, t_statistic=t_stat, t_pvalue=t_p, ci_low=mean, ci_high=mean)
        out["notes"].append("the differences do not vary: " + ("no difference" if zero else "t = ±inf"))
        return out
    # Satterthwaite: each mean square contributes its squared size over its degrees of freedom
    parts = ms_run**2 / (s - 1)
    if extra > 0:
        parts += ms_patient**2 / (p - 1) + ms_residual**2 / ((s - 1) * (p - 1))
    df = denominator**2 / parts
    se = math.sqrt(denominator / (s * p))
    t_stat = mean / se
    if alternative == "two-sided":
        t_p = float(2 * stats.t.sf(abs(t_stat), df))
    elif alternative == "greater":
        t_p = float(stats.t.sf(t_stat, df))
    else:
        t_p = float(stats.t.cdf(t_stat, df))
    half = float(stats.t.ppf(0.975, df)) * se
    out.update(
        se=se, df=float(df), t_statistic=float(t_stat), t_pvalue=t_p, ci_low=mean - half, ci_high=mean + half
    )
    if extra == 0:
        out["notes"].append("no patient variation beyond the residual: the test runs over the run means")
    return out
