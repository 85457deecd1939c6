"""Which PET intensity map does a segmenter learn best from, on real patients? (issue 13 item 3, segmenter half)

The two PET maps to [-1, 1] the package offers (docs/data.md section 3.1): the default **linear** 0-15 SUV map,
clipped above 15 SUV, and the opt-in **log** map ``monai_pairsynth.modalities.PET_LOG_SPEC`` (0-60 SUV,
``2 log1p(SUV / 3) / log1p(20) - 1``). This script trains the real-patient experiment's segmenter
(``experiments/downstream.py``: MONAI ``UNet``, DiceCE, Adam 1e-3, batch 8, 300 steps, flip + affine
augmentation; real patients only, CT + PET input) once per map and compares test Dice by patient.

- **Data.** The 36 sarcoma patients of ``../shared/data/sts_pet_ct`` (``benchmarks/real_data.py``), preprocessed
  **once** with the log spec (64x64 tumour slices at 4 mm, physical units: PET kept up to 60 SUV, CT -1000..1000
  HU as in the experiment) and cached under ``--work``. Both arms read the *same* slices; they differ only in the
  PET step of the segmenter's transform: linear = the experiment's ``ScaleIntensityRanged(pet, 0, 15, -1, 1,
  clip=True)``, log = the package's ``NormalizeModalitiesd`` with ``PET_LOG_SPEC``. The CT step, augmentation,
  network, optimiser, data order and seeds are the experiment's, identical in both arms.
- **Split.** ``experiments/real_patients.py``: ``patient_split`` (seed 2026, 12 test patients), the arm with N
  patients trains on the first N of the training pool (``train_patients``). N = 8 and 24, seeds 0, 1, 2.
- **Statistics, by patient.** Dice per test slice; each test patient's Dice averaged over its slices and the
  seeds, then the paired difference log - linear over the 12 test patients (mean, 95 % t interval, d_z, paired
  t-test and Wilcoxon: ``monai_pairsynth.metrics.compare_dice(..., patient_ids=...)``,
  ``downstream.patient_effect``), and a paired t-test over the 3 seed means.

Each run's per-slice Dice is cached as ``<work>/runs/n{N}_s{seed}_{map}.json`` (a repeated command skips finished
runs). The summary goes to ``benchmarks/results/pet_map_segmentation_cpu_2026-12-03.json`` and a markdown table
to stdout.

Usage::

    python benchmarks/pet_map_segmentation.py                # 12 runs, ~1 min each on one CPU thread
    python benchmarks/pet_map_segmentation.py --quick        # a rehearsal: 2 + 2 patients, 4 steps, 1 seed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (HERE, REPO / "experiments"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import downstream  # noqa: E402
import real_patients  # noqa: E402

MAPS = ("linear", "log")
N_REAL = (8, 24)
SEEDS = (0, 1, 2)
RESULT = HERE / "results" / "pet_map_segmentation_cpu_2026-12-03.json"
KEYS = downstream.IMAGE_KEYS  # ("ct", "pet"): the two-channel input of the experiment
LINEAR_PET_HIGH = 15.0  # the experiment's (and the default spec's) linear cap, SUV
CONTROL_NOTE = (
    "the linear arm here against the real-patient experiment's real-only runs (runs/real/segment): same protocol, "
    "seeds, patients and data order; the PET inputs differ only by the float rounding of the log-spec "
    "preprocessing (capped at 15 SUV)"
)


def settings(quick: bool) -> Any:
    """The experiment's segmenter settings (``downstream.Settings``: 300 steps, batch 8, lr 1e-3); ``quick``:
    N = 2, one seed, 4 steps."""
    if quick:
        return downstream.Settings(n_real=(2,), seeds=(0,), num_test=2, seg_steps=4)
    return downstream.Settings(n_real=N_REAL, seeds=SEEDS, num_test=real_patients.NUM_TEST, seg_steps=300)


# ------------------------------------------------------------------------------------------------ transforms
def transforms(pet_map: str, train: bool) -> Any:
    """The experiment's segmenter transform (``downstream._transforms``) with only its PET step chosen by
    ``pet_map``: ``"linear"`` keeps it as it is (0-15 SUV, clipped), ``"log"`` puts the package's
    ``NormalizeModalitiesd`` with ``PET_LOG_SPEC`` (then ``EnsureTyped``) in its place. Everything else is the experiment's object."""
    from monai.transforms import Compose, EnsureTyped, ScaleIntensityRanged

    from monai_pairsynth.data import NormalizeModalitiesd
    from monai_pairsynth.modalities import PET_LOG_SPEC

    if pet_map not in MAPS:
        raise ValueError(f"pet_map must be one of {MAPS}, got {pet_map!r}")
    base = downstream._transforms(KEYS, train=train)
    if pet_map == "linear":
        return base
    steps = list(base.transforms)
    pet_steps = [
        i for i, t in enumerate(steps) if isinstance(t, ScaleIntensityRanged) and tuple(t.keys) == ("pet",)
    ]
    if (
        len(pet_steps) != 1
    ):  # the experiment's transform changed shape: fail loudly rather than compare wrongly
        raise RuntimeError(
            f"expected one PET ScaleIntensityRanged in downstream._transforms, found {pet_steps}"
        )
    # the package's log map; EnsureTyped gives the PET the tensor type ScaleIntensityRanged gives the CT (a
    # MetaTensor when MONAI tracks metadata), so ConcatItemsd sees one type, as in the linear arm
    steps[pet_steps[0] : pet_steps[0] + 1] = [
        NormalizeModalitiesd(["pet"], specs={"pet": PET_LOG_SPEC}),
        EnsureTyped(["pet"]),
    ]
    return Compose(steps)


def test_dice(network: Any, pet_map: str, test: list[dict[str, Any]]) -> list[float]:
    """Dice of every test slice: ``downstream._test_dice`` with the arm's transform (for ``"linear"`` the two
    give identical numbers, checked in tests/test_pet_map_benchmark.py)."""
    return downstream._test_dice(
        network, downstream.IMAGE_KEYS, test, transform=transforms(pet_map, train=False)
    )


# ------------------------------------------------------------------------------------------------ data
def prepare(work: Path, folder: Path, quick: bool) -> dict[str, Any]:
    """Preprocess the patients once with the log PET spec (physical units, PET up to 60 SUV) into
    ``<work>/slices_log.pt`` with the split; reused when it exists for the same patients. ``quick``: only the
    first 2 test and 2 training patients."""
    from monai_pairsynth.data.sources import load_samples, resolve_datalist
    from monai_pairsynth.modalities import PET_LOG_SPEC
    from monai_pairsynth.utils import atomic_save_torch, atomic_write_json

    items = resolve_datalist(folder, ("ct", "pet", "label"))
    split = real_patients.patient_split([str(it["case_id"]) for it in items])
    if quick:
        split = {"test": split["test"][:2], "train_pool": split["train_pool"][:2]}
    wanted = set(split["test"]) | set(split["train_pool"])
    work.mkdir(parents=True, exist_ok=True)
    cache, info_file = work / "slices_log.pt", work / "split.json"
    if cache.is_file() and info_file.is_file():
        info = json.loads(info_file.read_text(encoding="utf-8"))
        if info["test"] == split["test"] and info["train_pool"] == split["train_pool"]:
            return info
    # the folder's order, as the experiment's prepare stage reads it (so the training data order is the same)
    datalist = work / "datalist.json"
    atomic_write_json(datalist, {"training": [dict(it) for it in items if str(it["case_id"]) in wanted]})
    start = time.perf_counter()
    samples, _ = load_samples(
        str(datalist),
        spatial_size=real_patients.SPATIAL_SIZE,
        spacing=real_patients.SPACING,
        specs={"pet": PET_LOG_SPEC},
    )
    seconds = time.perf_counter() - start
    slices = [
        {k: (v.as_tensor() if hasattr(v, "as_tensor") else v) for k, v in s.items() if k != "patient_id"}
        for s in samples
    ]
    atomic_save_torch(slices, cache)
    counts = {p: sum(1 for s in slices if s["case_id"] == p) for p in sorted(wanted)}
    suv_max = {
        p: round(float(max(float(s["pet"].max()) for s in slices if s["case_id"] == p)), 2)
        for p in sorted(wanted)
    }
    tumour_above = {
        p: sum(
            int(((s["pet"] > LINEAR_PET_HIGH) & (s["label"] > 0.5)).sum())
            for s in slices
            if s["case_id"] == p
        )
        for p in sorted(wanted)
    }
    info = {
        **split,
        "split_seed": real_patients.SPLIT_SEED,
        "pet_spec": PET_LOG_SPEC.to_dict(),
        "slices_per_patient": counts,
        "pet_max_suv_per_patient": suv_max,
        "tumour_pixels_above_15_suv_per_patient": tumour_above,
        "preprocessing_seconds": round(seconds, 1),
        "spatial_size": list(real_patients.SPATIAL_SIZE),
        "spacing": real_patients.SPACING,
    }
    atomic_write_json(info_file, info)
    top = max(s["pet"].max() for s in slices)
    print(
        f"[prepare] {len(slices)} slices of {len(wanted)} patients in {seconds:.0f} s; PET max {float(top):.1f} SUV",
        flush=True,
    )
    return info


def _slices(work: Path, patients: list[str]) -> list[dict[str, Any]]:
    """The cached slices of ``patients`` (``ct``, ``pet``, ``label`` in physical units), in the cache's order."""
    import torch

    wanted = set(patients)
    return [
        {k: s[k] for k in ("ct", "pet", "label")}
        for s in torch.load(work / "slices_log.pt", weights_only=True)
        if s["case_id"] in wanted
    ]


def _test_patient_ids(work: Path, test: list[str]) -> list[str]:
    import torch

    wanted = set(test)
    return [
        str(s["case_id"])
        for s in torch.load(work / "slices_log.pt", weights_only=True)
        if s["case_id"] in wanted
    ]


# ------------------------------------------------------------------------------------------------ one run
def run_one(work: Path, info: dict[str, Any], n_real: int, seed: int, pet_map: str, s: Any) -> dict[str, Any]:
    """Train and test one segmenter (real only, the experiment's ``run_arm`` for the ``real`` arm with the arm's
    PET map); cached as ``<work>/runs/n{N}_s{seed}_{map}.json``."""
    import torch
    from monai.utils import set_determinism

    from monai_pairsynth.mixing import MixedDataset
    from monai_pairsynth.utils import atomic_write_json

    out_file = work / "runs" / f"n{n_real}_s{seed}_{pet_map}.json"
    if out_file.is_file():
        return json.loads(out_file.read_text(encoding="utf-8"))
    torch.set_num_threads(1)
    start = time.perf_counter()
    set_determinism(seed=seed)
    real = _slices(work, real_patients.train_patients(info, n_real))
    test = _slices(work, info["test"])
    network = downstream._network(len(KEYS))
    dataset = MixedDataset(real, None, ratio=0.0, seed=seed, transform=transforms(pet_map, train=True))
    downstream._train(network, dataset, s.seg_steps, s, seed)
    dice = test_dice(network, pet_map, test)
    set_determinism(seed=None)
    result = {
        "pet_map": pet_map,
        "n_real": n_real,
        "seed": seed,
        "seg_steps": s.seg_steps,
        "train_slices": len(real),
        "dice": dice,
        "test_patients": _test_patient_ids(work, info["test"]),
        "mean_dice": sum(dice) / len(dice),
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(out_file, result)
    print(
        f"[n{n_real} s{seed} {pet_map}] Dice {result['mean_dice']:.4f} ({result['seconds']:.0f} s)",
        flush=True,
    )
    return result


# ------------------------------------------------------------------------------------------------ statistics
def summarise(
    results: list[dict[str, Any]], n_values: tuple[int, ...], seeds: tuple[int, ...]
) -> dict[str, Any]:
    """Per N: each map's mean ± sd over seeds, the per-patient paired difference log - linear (Dice averaged over
    each patient's slices and the seeds first) with its 95 % CI, d_z, t-test and Wilcoxon p, and the paired
    t-test over the seed means."""
    import numpy as np

    from monai_pairsynth.metrics import compare_dice

    by = {(r["n_real"], r["seed"], r["pet_map"]): r for r in results}
    table: dict[str, Any] = {}
    for n in n_values:
        runs = {m: [by.get((n, seed, m)) for seed in seeds] for m in MAPS}
        if any(r is None for rs in runs.values() for r in rs):
            continue
        row: dict[str, Any] = {"n_real": n, "seeds": list(seeds)}
        for m in MAPS:
            means = [r["mean_dice"] for r in runs[m]]
            row[m] = {
                "mean": float(np.mean(means)),
                "sd": float(np.std(means, ddof=1)) if len(means) > 1 else 0.0,
                "seed_means": means,
            }
        for lin, log in zip(runs["linear"], runs["log"], strict=True):
            if lin["test_patients"] != log["test_patients"]:
                raise ValueError(f"runs of N = {n} seed {lin['seed']} were tested on different slices")
        patient_ids = [p for r in runs["linear"] for p in r["test_patients"]]
        patients = compare_dice(
            [d for r in runs["linear"] for d in r["dice"]],
            [d for r in runs["log"] for d in r["dice"]],
            patient_ids=patient_ids,
        )
        seed_cmp = compare_dice(row["linear"]["seed_means"], row["log"]["seed_means"])
        both = downstream.crossed(runs["linear"], runs["log"])
        row.update(
            **downstream.patient_effect(patients),
            p_crossed=float(both["t_pvalue"]),
            crossed_ci_low=float(both["ci_low"]),
            crossed_ci_high=float(both["ci_high"]),
            n_patients=int(patients["n"]),
            n_slices=int(patients["num_entries"]),
            p_patient_t=float(patients["t_pvalue"]),
            p_patient_wilcoxon=float(patients["wilcoxon_pvalue"]),
            seed_diff=float(seed_cmp["mean_diff"]),
            p_seed_t=float(seed_cmp["t_pvalue"]),
            per_patient=_per_patient(runs, patient_ids),
        )
        table[f"n{n}"] = row
    return table


def _per_patient(
    runs: dict[str, list[dict[str, Any]]], patient_ids: list[str]
) -> dict[str, dict[str, float]]:
    """Each test patient's Dice per map (over its slices and the seeds) and the difference log - linear."""
    out: dict[str, dict[str, float]] = {}
    for p in dict.fromkeys(patient_ids):
        row = {}
        for m in MAPS:
            values = [
                d
                for d, pid in zip((d for r in runs[m] for d in r["dice"]), patient_ids, strict=True)
                if pid == p
            ]
            row[m] = sum(values) / len(values)
        row["log_minus_linear"] = row["log"] - row["linear"]
        out[p] = row
    return out


def control(
    results: list[dict[str, Any]], experiment_root: Path, n_values: tuple[int, ...], seeds: tuple[int, ...]
) -> dict[str, Any]:
    """A noise floor: this script's linear arm against the real-patient experiment's own ``real`` runs
    (``<experiment_root>/segment/n{N}_s{seed}_real.json``), the same protocol, seeds and data order, with PET
    inputs that differ only by the float rounding of the log-spec preprocessing. Per N, the same statistics as
    the map comparison (linear here - experiment); ``{}`` where those runs are absent."""
    from monai_pairsynth.metrics import compare_dice

    ours = {(r["n_real"], r["seed"]): r for r in results if r["pet_map"] == "linear"}
    out: dict[str, Any] = {}
    for n in n_values:
        files = [experiment_root / "segment" / f"n{n}_s{seed}_real.json" for seed in seeds]
        if not all(f.is_file() for f in files) or any((n, seed) not in ours for seed in seeds):
            continue
        theirs = [json.loads(f.read_text(encoding="utf-8")) for f in files]
        mine = [ours[(n, seed)] for seed in seeds]
        if any(a["test_patients"] != b["test_patients"] for a, b in zip(mine, theirs, strict=True)):
            continue  # another split or preprocessing: not a control
        patients = compare_dice(
            [d for r in theirs for d in r["dice"]],
            [d for r in mine for d in r["dice"]],
            patient_ids=[p for r in mine for p in r["test_patients"]],
        )
        both = downstream.crossed(theirs, mine)
        out[f"n{n}"] = {
            "experiment_seed_means": [r["mean_dice"] for r in theirs],
            "linear_seed_means": [r["mean_dice"] for r in mine],
            **downstream.patient_effect(patients),
            "p_patient_t": float(patients["t_pvalue"]),
            "p_crossed": float(both["t_pvalue"]),
            "crossed_ci_low": float(both["ci_low"]),
            "crossed_ci_high": float(both["ci_high"]),
            "mean_abs_seed_diff": sum(
                abs(a["mean_dice"] - b["mean_dice"]) for a, b in zip(mine, theirs, strict=True)
            )
            / len(seeds),
        }
    return out


def input_difference(work: Path, experiment_root: Path) -> dict[str, Any] | None:
    """How the cached slices differ from the experiment's ``slices.pt`` (CT, mask, PET capped at 15 SUV)."""
    import torch

    path = experiment_root / "slices.pt"
    if not path.is_file():
        return None
    theirs = torch.load(path, weights_only=True)
    ours = torch.load(work / "slices_log.pt", weights_only=True)
    if [s["case_id"] for s in theirs] != [s["case_id"] for s in ours]:
        return {"same_slices": False}
    return {
        "same_slices": True,
        "ct_max_abs_diff_hu": max(
            float((a["ct"] - b["ct"]).abs().max()) for a, b in zip(ours, theirs, strict=True)
        ),
        "label_max_abs_diff": max(
            float((a["label"] - b["label"]).abs().max()) for a, b in zip(ours, theirs, strict=True)
        ),
        "pet_capped_max_abs_diff_suv": max(
            float((a["pet"].clamp(max=LINEAR_PET_HIGH) - b["pet"]).abs().max())
            for a, b in zip(ours, theirs, strict=True)
        ),
    }


def control_markdown(rows: dict[str, Any]) -> str:
    lines = [
        "| N | linear arm here, seed means | the experiment's real-only runs, seed means | mean \\|difference\\| per "
        "seed | here − experiment over test patients [95 % CI] | p (t, test patients) | p (patients × seeds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in rows.items():
        here = ", ".join(f"{v:.3f}" for v in row["linear_seed_means"])
        there = ", ".join(f"{v:.3f}" for v in row["experiment_seed_means"])
        lines.append(
            f"| {key[1:]} | {here} | {there} | {row['mean_abs_seed_diff']:.3f} | {row['patient_diff']:+.3f} "
            f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] | {_p(row['p_patient_t'])} | "
            f"{_p(row.get('p_crossed', float('nan')))} |"
        )
    return "\n".join(lines)


def by_uptake(table: dict[str, Any], tumour_above: dict[str, int]) -> dict[str, Any]:
    """Per N, the mean difference log - linear over the test patients whose tumour has pixels above 15 SUV (where
    the two maps give the tumour different inputs) and over the others (where they differ only in shape below
    15 SUV and in the background)."""
    out: dict[str, Any] = {}
    for key, row in table.items():
        pp = row["per_patient"]
        high = [p for p in pp if tumour_above.get(p, 0) > 0]
        low = [p for p in pp if p not in high]
        out[key] = {
            "above_15_suv_patients": high,
            "above_15_suv_mean_diff": sum(pp[p]["log_minus_linear"] for p in high) / len(high)
            if high
            else None,
            "others_mean_diff": sum(pp[p]["log_minus_linear"] for p in low) / len(low) if low else None,
        }
    return out


def uptake_markdown(rows: dict[str, Any]) -> str:
    lines = []
    for key, row in rows.items():
        high, rest = row["above_15_suv_mean_diff"], row["others_mean_diff"]
        lines.append(
            f"- N = {key[1:]}: log − linear {'n/a' if high is None else f'{high:+.3f}'} over the test patients with "
            f"tumour above 15 SUV ({', '.join(row['above_15_suv_patients']) or 'none'}), "
            f"{'n/a' if rest is None else f'{rest:+.3f}'} over the others"
        )
    return "\n".join(lines)


def _p(value: float) -> str:
    return "n/a" if value != value else (f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}")


def markdown(table: dict[str, Any]) -> str:
    lines = [
        "| N training patients | linear 0-15 SUV (clipped): Dice, mean ± sd over seeds | log 0-60 SUV: Dice, mean ± sd "
        "over seeds | log − linear over test patients [95 % CI], d_z | p (t, test patients) | p (Wilcoxon, test "
        "patients) | log − linear, seed means | p (t, seed means) | p (patients × seeds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.values():
        lin, log = row["linear"], row["log"]
        lines.append(
            f"| {row['n_real']} | {lin['mean']:.3f} ± {lin['sd']:.3f} | {log['mean']:.3f} ± {log['sd']:.3f} | "
            f"{row['patient_diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], {row['effect_dz']:+.2f} | "
            f"{_p(row['p_patient_t'])} | {_p(row['p_patient_wilcoxon'])} | {row['seed_diff']:+.3f} | "
            f"{_p(row['p_seed_t'])} | {_p(row.get('p_crossed', float('nan')))} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/pet_map", help="cache of the slices and of every run's Dice")
    p.add_argument(
        "--data-dir", default=None, help="default: $MONAI_PAIRSYNTH_STS_DIR or ../shared/data/sts_pet_ct"
    )
    p.add_argument(
        "--quick", action="store_true", help="a rehearsal: 2 training and 2 test patients, 4 steps"
    )
    p.add_argument(
        "--experiment-root",
        default="runs/real",
        help="the real-patient experiment's folder; its real-only runs give the control (skipped when absent)",
    )
    p.add_argument(
        "--out", default=None, help=f"summary JSON (default: {RESULT.relative_to(REPO)}; quick: <work>)"
    )
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from real_data import real_data_dir

    folder = Path(args.data_dir) if args.data_dir else real_data_dir()
    if folder is None or not folder.is_dir():
        print(
            "the real-patient folder is absent (../shared/data/sts_pet_ct or $MONAI_PAIRSYNTH_STS_DIR, or pass "
            "--data-dir): nothing measured.",
            file=sys.stderr,
        )
        return 2
    s = settings(args.quick)
    work = Path(args.work) / ("quick" if args.quick else "full")
    t0 = time.perf_counter()
    load = _load_average()
    info = prepare(work, folder, args.quick)
    n_values = s.n_real
    results = [run_one(work, info, n, seed, m, s) for n in n_values for seed in s.seeds for m in MAPS]
    table = summarise(results, n_values, s.seeds)
    experiment_root = Path(args.experiment_root)
    noise = control(results, experiment_root, n_values, s.seeds)
    uptake = by_uptake(table, info["tumour_pixels_above_15_suv_per_patient"])
    text = markdown(table) + "\n\n" + uptake_markdown(uptake)
    if noise:
        text += "\n\nControl (the noise floor): " + CONTROL_NOTE + "\n\n" + control_markdown(noise)
    summary = {
        "question": "does a segmenter trained on real CT + PET learn better with the linear 0-15 SUV clipped PET "
        "map or the log 0-60 SUV map (PET_LOG_SPEC)?",
        "command": "python benchmarks/pet_map_segmentation.py" + (" --quick" if args.quick else ""),
        "data": str(folder.name),
        "split": {k: info[k] for k in ("test", "train_pool", "split_seed")},
        "train_patients": {f"n{n}": real_patients.train_patients(info, n) for n in n_values},
        "test_slices": sum(info["slices_per_patient"][q] for q in info["test"]),
        "pet_max_suv_per_patient": info["pet_max_suv_per_patient"],
        "tumour_pixels_above_15_suv_per_patient": info["tumour_pixels_above_15_suv_per_patient"],
        "segmenter": {
            "network": "downstream._network (MONAI UNet 16-128, 2 residual units, batch norm), CT + PET input",
            "seg_steps": s.seg_steps,
            "seg_batch": s.seg_batch,
            "seg_lr": s.seg_lr,
            "seeds": list(s.seeds),
        },
        "maps": {
            "linear": "ScaleIntensityRanged(pet, 0, 15, -1, 1, clip=True) (downstream._transforms)",
            "log": "NormalizeModalitiesd(pet, PET_LOG_SPEC): 2 log1p(SUV / 3) / log1p(20) - 1, clipped at 60 SUV",
        },
        "table": table,
        "by_tumour_uptake": uptake,
        "control_vs_experiment": {
            "what": CONTROL_NOTE,
            "experiment_root": str(experiment_root),
            "input_difference": input_difference(work, experiment_root),
            "table": noise,
        },
        "run_seconds": {f"n{r['n_real']}_s{r['seed']}_{r['pet_map']}": r["seconds"] for r in results},
        "preprocessing_seconds": info["preprocessing_seconds"],
        "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
        "wall_seconds_preprocessing_to_last_run": _wall_from_files(work),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start_of_this_call": load,
        },
    }
    from monai_pairsynth.utils import atomic_write_json

    out = Path(args.out) if args.out else (work / "summary.json" if args.quick else RESULT)
    atomic_write_json(out, summary)
    print(text)
    print(f"\nwritten {out}")
    return 0


def _wall_from_files(work: Path) -> float | None:
    """Seconds from the start of the preprocessing (``datalist.json`` is written just before it) to the last run's
    result, read from the file times: the wall time of the computation even when the summary is rewritten later
    (it includes any pause when an interrupted command was resumed)."""
    runs = list((work / "runs").glob("*.json"))
    start = work / "datalist.json"
    if not runs or not start.is_file():
        return None
    return round(max(f.stat().st_mtime for f in runs) - start.stat().st_mtime, 1)


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
