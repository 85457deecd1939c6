"""Reports: the markdown of an evaluation (:func:`metrics_markdown`) and the results files and table of a bundle
evaluation (:func:`write_evaluation_report`, :func:`format_results_table`: real-only vs mixed Dice by patient)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_pairsynth.data.sources import _is_unset
from monai_pairsynth.distributed import is_main_process
from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
from monai_pairsynth.utils import atomic_write_json, atomic_write_text

from .by_patient import patient_ids, patient_means
from .dice_comparison import compare_dice

__all__ = ["format_results_table", "metrics_markdown", "write_evaluation_report"]


def _pm(mean: float | None, sd: float | None, digits: int = 3) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    t = torch.as_tensor(list(values), dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True)) if t.numel() > 1 else 0.0


def format_results_table(results: Mapping[str, Any]) -> str:
    """A small plain-text/markdown table of an evaluation (``evaluation.json``): Dice, pool counts, generation.

    Example:
        >>> print(format_results_table({"dice": {"mixed": {"mean": 0.7, "sd": 0.1, "n": 4}}}))
        | result | value |
        |---|---|
        | test Dice, mixed (n = 4) | 0.700 ± 0.100 |
        >>> dice = {"mixed": {"mean": 0.7, "sd": 0.1, "n": 3, "num_slices": 40, "unit": "patient"}}
        >>> print(format_results_table({"dice": dice}).splitlines()[-1])
        | test Dice, mixed (n = 3 patients, 40 slices; mean ± sd over patients) | 0.700 ± 0.100 |
    """
    rows: list[tuple[str, str]] = []
    dice = results.get("dice") or {}
    for name, entry in dice.items():
        if entry.get("unit") == "patient":
            label = (
                f"test Dice, {name} (n = {entry['n']} patients, {entry.get('num_slices', '?')} slices; "
                "mean ± sd over patients)"
            )
        else:
            label = f"test Dice, {name} (n = {entry['n']})"
        rows.append((label, _pm(entry["mean"], entry["sd"])))
    comparison = results.get("comparison")
    if comparison:
        over = (
            f"paired over {comparison['n']} patients"
            if comparison.get("unit") == "patient"
            else "paired over test cases"
        )
        p = comparison.get("t_pvalue")
        rows.append(
            (
                f"difference {comparison['labels'][1]} - {comparison['labels'][0]} ({over})",
                f"{comparison['mean_diff']:+.3f} ± {comparison['sd_diff']:.3f}, paired t-test p = "
                + (f"{p:.3g}" if p is not None else "n/a (a test needs at least 2 patients)"),
            )
        )
        if comparison.get("unit") == "patient" and p is not None:
            rows.append(
                (
                    "what the p-value counts",
                    "the test patients only: each arm is one trained network, so retraining noise (about 0.02 Dice "
                    "on the real-patient protocol) is not in it; train several seeds per arm and compare with "
                    "metrics.compare_dice_crossed to count it",
                )
            )
    pool = results.get("pool")
    if pool:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(pool.get("rejected", {}).items())) or "none"
        rows.append(("pool: accepted / generated", f"{pool['accepted']} / {pool['generated']}"))
        rows.append(("pool: rejected (by reason)", f"{pool.get('rejected_total', 0)} ({rejected})"))
        if pool.get("generation_seconds") is not None:
            rows.append(("pool: generation time (incl. filter)", f"{pool['generation_seconds']:.1f} s"))
    gen = results.get("generation")
    if gen:
        for label, value in gen.items():
            rows.append((label, value))
    for label, value in (results.get("extra_rows") or {}).items():
        rows.append((label, str(value)))
    lines = ["| result | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _generation_rows(metrics: Mapping[str, Any]) -> dict[str, str]:
    rows: dict[str, str] = {}
    ref = (metrics.get("fid") or {}).get("reference")
    if ref:
        rows[
            f"feature FID, synthetic vs real (n = {ref['n_compared']}; in brackets: real vs real, "
            "patient-disjoint halves)"
        ] = f"{_fmt(ref['synthetic_vs_real'])} ({_fmt(ref['real_vs_real'])})"
    else:
        rows["feature FID, synthetic vs real"] = _fmt((metrics.get("fid") or {}).get("synthetic_vs_real"))
    paired = metrics.get("pairedness")
    if paired:
        term = "score" if "score" in paired["synthetic"] else "lesion_dice"
        s, r = paired["synthetic"][term], paired["real"][term]
        label = (
            "pairedness score, lesion x structure"
            if term == "score"
            else "pairedness: mask vs PET ≥ 40 % SUVmax Dice"
        )
        rows[f"{label} (over samples; in brackets: real, over {r.get('n', '?')} patients)"] = (
            f"{_pm(s.get('mean'), s.get('sd'))} ({_pm(r.get('mean'), r.get('sd'))})"
        )
    diversity = metrics.get("diversity") or {}
    for key, entry in diversity.items():
        if key == "skipped":
            rows["MS-SSIM diversity"] = f"skipped: {entry}"
            continue
        rows[
            f"mean pairwise MS-SSIM, {key} (real pairs of different patients in brackets; lower = more diverse)"
        ] = f"{_fmt(entry['synthetic'], 3)} ({_fmt(entry['real'], 3)})"
    mem = metrics.get("memorisation")
    if mem:
        rows["memorisation: flagged near-copies"] = f"{mem['num_flagged']} of {metrics.get('num_synthetic')}"
        rows[
            "memorisation: median nearest-real distance ratio (real: nearest other patient; about 1 = no copying)"
        ] = _fmt(mem.get("median_ratio"), 3)
    return rows


def write_evaluation_report(
    output_dir: str | os.PathLike,
    dice: Mapping[str, Sequence[float]],
    *,
    case_ids: Sequence[str] | None = None,
    pool_file: str | os.PathLike | None = None,
    generation_metrics: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``evaluation.json`` and ``evaluation.md`` (rank 0 only) and print the table.

    Args:
        output_dir: where to write.
        dice: ``{arm name: per-case Dice}``, e.g. ``{"real only": [...], "mixed": [...]}``; two arms are
            compared with :func:`monai_pairsynth.metrics.compare_dice` (second minus first, paired over
            patients).
        case_ids: test case id of each Dice entry (slices of one case share it). The Dice values are averaged
            per patient (:func:`monai_pairsynth.metrics.patient_ids`: the patient of the case id) before the
            mean ± sd and the paired tests, which run over patients; without ``case_ids`` every entry is its own
            patient.
        pool_file: the pool whose counts are reported (its ``counts.json`` beside it when present, else the
            pool's own running counts).
        generation_metrics: the result of :func:`monai_pairsynth.metrics.evaluation.evaluate` on the pool.
        settings: recorded as they are.

    Returns:
        the content of ``evaluation.json``.
    """
    results: dict[str, Any] = {"dice": {}, "settings": dict(settings or {})}
    arms = {name: [float(v) for v in values] for name, values in dice.items()}
    lengths = {len(v) for v in arms.values()}
    if len(lengths) > 1:
        raise ValueError(
            f"the Dice lists have different lengths {sorted(lengths)}; they must cover the same cases."
        )
    n = lengths.pop() if lengths else 0
    if case_ids is not None and len(case_ids) != n:
        raise ValueError(f"case_ids has {len(case_ids)} entries for {n} Dice values.")
    patients = (
        patient_ids([{"case_id": c} for c in case_ids])
        if case_ids is not None
        else [f"case-{i}" for i in range(n)]
    )
    # MONAI's Dice is NaN where the ground truth is empty (no tumour): the same cases in every arm
    keep = [i for i in range(n) if all(math.isfinite(v[i]) for v in arms.values())]
    excluded = [i for i in range(n) if i not in set(keep)]
    kept_patients = [patients[i] for i in keep]
    for name, values in arms.items():
        per = patient_means([values[i] for i in keep], kept_patients)
        mean, sd = _mean_sd(per["means"].tolist()) if keep else (math.nan, math.nan)
        results["dice"][name] = {
            "mean": mean if keep else None,
            "sd": sd if keep else None,
            "n": len(per["patients"]),
            "num_slices": len(keep),
            "unit": "patient",
            "per_case": [v if math.isfinite(v) else None for v in values],
            "per_patient": dict(zip(per["patients"], per["means"].tolist())),
        }
    results["unit"] = (
        "patient: slice Dice averaged per patient, then mean ± sd and paired tests over patients"
    )
    if case_ids is not None:
        results["case_ids"] = [str(c) for c in case_ids]
    results["patient_ids"] = patients
    results["excluded_cases"] = [str(case_ids[i]) if case_ids is not None else i for i in excluded]
    if len(arms) == 2 and keep:
        (name_a, a), (name_b, b) = [(k, [v[i] for i in keep]) for k, v in arms.items()]
        comparison = compare_dice(list(a), list(b), patient_ids=kept_patients)
        results["comparison"] = {
            "labels": [name_a, name_b],
            **{
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in comparison.items()
            },
        }
    if not _is_unset(pool_file):
        counts_path = Path(str(pool_file)).with_name("counts.json")
        if counts_path.is_file():
            results["pool"] = json.loads(counts_path.read_text(encoding="utf-8"))
        else:
            stats = SynthesisPool.load(str(pool_file)).stats
            results["pool"] = {
                "pool_size": int(stats["size"]),
                "generated": int(stats["generated"]),
                "accepted": int(stats["accepted"]),
                "rejected": {str(k): int(v) for k, v in stats["rejected"].items()},
                "rejected_total": int(sum(stats["rejected"].values())),
                "generation_seconds": float(stats["generation_seconds"]),
            }
        results["pool"]["file"] = str(pool_file)
    if generation_metrics is not None:
        results["generation"] = _generation_rows(generation_metrics)
        results["generation_files"] = dict(generation_metrics.get("files") or {})
    table = format_results_table(results)
    results["table"] = table
    if is_main_process():
        out = Path(output_dir)
        atomic_write_json(out / "evaluation.json", results)
        atomic_write_text(out / "evaluation.md", "# Evaluation\n\n" + table + "\n")
        print(table, flush=True)
    return results


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _ordinal(p: float | str) -> str:
    value = float(p)
    if value != int(value):
        return f"{value:g}th"
    n = int(value)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _pm_stats(stats: Mapping[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{_num(stats['mean'], 3)} ± {_num(stats['sd'], 3)}"


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """The headline numbers of an :func:`evaluate` result as a markdown document with one table."""
    n_real, n_syn = metrics["num_real"], metrics["num_synthetic"]
    n_patients = metrics.get("num_real_patients", n_real)
    lines = [
        "# Synthetic triplet evaluation",
        "",
        f"Real: {n_real} samples of {n_patients} patients ({metrics['real']['kind']}: {metrics['real']['source']}); "
        f"synthetic: {n_syn} samples ({metrics['synthetic']['kind']}: {metrics['synthetic']['source']}); grid "
        f"{' x '.join(map(str, metrics['spatial_size']))}"
        + (f" at {metrics['spacing']} mm" if metrics.get("spacing") else "")
        + f". Feature network: {metrics['feature_network']['description']}.",
        "",
        "Units: real values are averaged per patient first and real-vs-real references use patient-disjoint sets "
        "(slices of one patient are not independent); each synthetic sample is one unit.",
        "",
        "| metric | synthetic | real reference | how to read |",
        "|---|---|---|---|",
    ]
    fid, mm = metrics["fid"], metrics["mmd"]
    lines.append(
        f"| feature FID (all samples) | {_num(fid['synthetic_vs_real'])} | - | lower is closer; biased by N, compare at equal N |"
    )
    ref = fid.get("reference")
    if ref:
        halves = (
            f"{ref['n_compared']} vs {ref['n_reference']} real samples; real halves of "
            f"{ref.get('num_patients_compared', '?')} / {ref.get('num_patients_reference', '?')} patients"
        )
        lines.append(
            f"| feature FID, matched ({halves}) | {_num(ref['synthetic_vs_real'])} | "
            f"{_num(ref['real_vs_real'])} (patient-disjoint real halves) | "
            "the nearer the real-vs-real value, the more alike the sets |"
        )
    else:
        lines.append("| feature FID, matched | n/a | n/a | needs at least 2 real patients per half |")
    lines.append(
        f"| MMD² (RBF, median bandwidth) | {_num(mm['synthetic_vs_real'])} | - | about 0 for one distribution |"
    )
    ref = mm.get("reference")
    if ref:
        lines.append(
            f"| MMD², matched (n = {ref['n_compared']} samples) | {_num(ref['synthetic_vs_real'])} | "
            f"{_num(ref['real_vs_real'])} (patient-disjoint real halves) | as for FID |"
        )
    diversity = metrics.get("diversity") or {}
    if "skipped" in diversity:
        lines.append(f"| MS-SSIM diversity | n/a | n/a | skipped: {diversity['skipped']} |")
    for key, entry in diversity.items():
        if key == "skipped":
            continue
        lines.append(
            f"| mean pairwise MS-SSIM, {key} | {_num(entry['synthetic'])} | {_num(entry['real'])} (pairs of "
            f"different real patients) | 1 = no diversity; diversity ratio (1-s)/(1-r) = "
            f"{_num(entry['diversity_ratio'], 3)} |"
        )
    paired = metrics.get("pairedness")
    if paired:
        unit = f"(ceiling; mean ± sd over {paired['real'].get('num_patients', '?')} patients)"
        rows = (
            ("score", "pairedness score (lesion x structure)", "higher is better; real is the ceiling"),
            (
                "lesion_score",
                "pairedness: lesion (mask vs PET above local background)",
                "a flat PET scores 0",
            ),
            (
                "structure_score",
                "pairedness: structure (CT/PET gradient alignment)",
                "0 for unrelated images",
            ),
            (
                "lesion_dice",
                "earlier lesion Dice (mask vs PET ≥ 40 % SUVmax)",
                "mostly mask size on real tumours",
            ),
            ("body_dice", "earlier body Dice (CT vs PET outline)", "near 1 when CT and PET are aligned"),
        )
        for term, label, reading in rows:
            if term in paired["synthetic"]:
                lines.append(
                    f"| {label} | {_pm_stats(paired['synthetic'][term])} (over samples) | {_pm_stats(paired['real'][term])} "
                    f"{unit} | {reading} |"
                )
        empty = paired["synthetic"]["num_empty_masks"]
        if empty:
            lines.append(
                f"| synthetic samples with an empty mask | {empty} | {paired['real']['num_empty_masks']} | lesion term undefined for them |"
            )
    mem = metrics["memorisation"]
    for p, fraction in mem["fraction_below"].items():
        lines.append(
            f"| memorisation: fraction closer than the {_ordinal(p)} percentile of real NN distances | {_num(fraction, 3)} | "
            f"{float(p) / 100:.3f} (expected without copying) | far above the expected value: near-copies |"
        )
    lines.append(
        f"| memorisation: flagged near-copies | {mem['num_flagged']} of {n_syn} | - | "
        f"closer than the {_ordinal(mem['flag_percentile'])} percentile |"
    )
    lines.append(
        f"| median nearest-real feature distance | {_num(mem['median_nearest_real'])} | "
        f"{_num(mem['median_real_nn'])} (real, {mem.get('reference_unit', 'leave one sample out')}) | ratio {_num(mem['median_ratio'], 3)}: about 1 without "
        "copying, near 0 for copies |"
    )
    lines += [
        "",
        f"Computed by `monai_pairsynth.metrics.evaluation` in {metrics['timings']['total']:.1f} s on {metrics['device']}.",
        "",
    ]
    return "\n".join(lines)
