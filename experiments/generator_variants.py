"""The generator half of two preprocessing choices, on the real patients: the PET map and the field-of-view mask.

``benchmarks/pet_map_segmentation.py`` measured what the PET map changes for the *segmenter*; this script measures
what the two preprocessing choices of issue 13 change for the *generator*, at the real-patient experiment's CPU
budget (``experiments/real_patients.py``):

- ``linear`` (the reference): the experiment's own N = 24 generator ``gen_real_n24`` (PET linear 0-15 SUV,
  clipped; no field-of-view mask; seed 0).
- ``log``: the same command with ``--pet-intensity log`` (PET_LOG_SPEC, 0-60 SUV).
- ``fov``: the same command with ``--use-fov-mask`` (the loss ignores what preprocessing padded).
- ``seed1``: the reference command with ``--seed 1``: what retraining the same recipe changes (the noise floor
  of a one-generator-per-arm comparison).

Every variant trains on the same 24 patients for exactly the reference's number of epochs (so the same number of
optimiser steps), then is judged on what it draws and on what its pool does for the segmenter:

- **Draws** (the first 4P = 128 candidates of the pool stage, the reference's sample seeds, DDPM-50), in physical
  units: the share with a tumour, with a tumour outside the body, tumour SUV (peak and mean) and the share of tumour
  pixels above 15 SUV, against the real training slices of the 24 patients (per patient), and the filter's
  decisions.
- **Downstream**: the experiment's ``filtered_r0.5`` arm at N = 24 with each variant's filtered pool (the same
  quality filter, fitted once on the 24 patients, the same 6 segmenter seeds), against the experiment's real-only
  and reference runs; statistics over the 12 test patients (each patient's Dice averaged over its slices and the
  seeds) and over the seed means.

Stages (each resumable; the reference's runs are read from ``--root``, never rewritten)::

    python experiments/generator_variants.py train  --root runs/real --jobs 2   # 3 generators, about 30 min each
    python experiments/generator_variants.py all    --root runs/real --jobs 2 --results-md docs/data.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real_patients  # noqa: E402

N_REAL = 24
REFERENCE = "linear"
VARIANTS: dict[str, dict[str, Any]] = {
    "log": {"extra": ("--pet-intensity", "log"), "seed": 0, "what": "PET log map (0-60 SUV)"},
    "fov": {"extra": ("--use-fov-mask",), "seed": 0, "what": "field-of-view mask in the loss"},
    "seed1": {"extra": (), "seed": 1, "what": "reference recipe, generator seed 1"},
}


def variant_name(variant: str, n_real: int = N_REAL) -> str:
    """The generator of ``variant`` (``linear`` is the experiment's own ``gen_real_n{N}``)."""
    base = real_patients.generator_name(n_real)
    return base if variant == REFERENCE else f"{base}_{variant}"


def reference_epochs(root: Path, n_real: int = N_REAL) -> int:
    """Epochs the reference generator trained for (from the experiment's ``generators.json``)."""
    path = root / "generators" / "generators.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `experiments/real_patients.py generators` first")
    runs = json.loads(path.read_text(encoding="utf-8"))
    name = real_patients.generator_name(n_real)
    if name not in runs:
        raise SystemExit(f"{path} has no {name}: train the N = {n_real} reference generator first")
    return int(runs[name]["epochs"])


def train(root: Path, variants: list[str], *, jobs: int, threads: int = 1, device: str = "cpu") -> dict:
    """Train (or resume) the variants' generators for the reference's epochs; slim checkpoints and
    ``generators/variants.json`` (kept apart from the experiment's ``generators.json``)."""
    from train_generators import TrainingJob, run_training_jobs

    from monai_pairsynth.utils import atomic_write_json

    epochs = reference_epochs(root)
    job_list = []
    for v in variants:
        spec = VARIANTS[v]
        name = variant_name(v)
        cmd = real_patients.generator_command(
            root,
            N_REAL,
            device=device,
            max_minutes=10_000.0,  # the epochs bound the run, not the clock
            threads=threads,
            epochs=epochs,
            name=name,
            seed=spec["seed"],
            extra=tuple(spec["extra"]),
        )
        job_list.append(
            TrainingJob(name, root / "generators" / name, cmd, {"n_real": N_REAL, "variant": v, **spec})
        )
    results, failed = run_training_jobs(job_list, root / "generators", jobs, poll_seconds=5.0)
    path = root / "generators" / "variants.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    atomic_write_json(path, {**old, **json.loads(json.dumps(results, default=list))})
    if failed:
        raise SystemExit(f"generators failed: {failed}")
    return results


# ------------------------------------------------------------------------------------------------ pools, segmentation
@dataclass(frozen=True)
class VariantData(real_patients.RealData):
    """The real patients with the variant's generator and pool (``linear``: the experiment's own)."""

    variant: str = REFERENCE

    def generator_file(self, root: Path, n_real: int, seed: int) -> Path:
        return root / "generators" / f"{variant_name(self.variant, n_real)}.pt"

    def pool_name(self, n_real: int, seed: int) -> str:
        base = super().pool_name(n_real, seed)
        return base if self.variant == REFERENCE else f"{base}_{self.variant}"


def share_filter(root: Path, variant: str) -> None:
    """Give the variant's pool the reference pool's quality filter, so the variants differ in their generator only.

    The filter is the one ``downstream.arm_filter`` keeps beside the reference pool (fitted on the 24 patients with
    the experiment's seed; fitted and kept now where the reference pool predates that cache: the same data, seed
    and settings), copied under the variant's pool name."""
    import downstream

    s = real_patients.settings(quick=False)
    data = VariantData(root)
    ref, var = (
        data.pool_name(N_REAL, s.seeds[0]),
        VariantData(root, variant=variant).pool_name(N_REAL, s.seeds[0]),
    )
    downstream.arm_filter(root, ref, data.train(N_REAL, s.seeds[0]), s, s.seeds[0])
    for suffix in ("_filter.pt", "_segmenter.pt"):
        src, dst = root / "pools" / f"{ref}{suffix}", root / "pools" / f"{var}{suffix}"
        if not dst.is_file():
            shutil.copyfile(src, dst)


def arm(variant: str) -> dict[str, Any]:
    """The experiment's ``filtered_r0.5`` arm, named after the variant (``linear``: the experiment's own runs)."""
    name = "filtered_r0.5" if variant == REFERENCE else f"filtered_r0.5_{variant}"
    return {"arm": name, "ratio": 0.5, "pool": "filtered", "keys": ("ct", "pet"), "pretrain": False}


def build(root: Path, variants: list[str], jobs: int, segment: bool = True) -> tuple[list[dict], list[dict]]:
    """The variants' pools, then (``segment``) their segmentation runs (cached; the reference's are read, never
    rebuilt)."""
    import downstream

    s = real_patients.settings(quick=False)
    for v in variants:
        share_filter(root, v)
    pools = downstream.run_jobs(
        [
            (downstream.build_pools, (root, N_REAL, s.seeds[0], s, VariantData(root, variant=v)))
            for v in variants
        ],
        jobs,
    )
    if not segment:
        return pools, []
    runs = downstream.run_jobs(
        [
            (downstream.run_arm, (root, N_REAL, seed, arm(v), s, VariantData(root, variant=v)))
            for v in variants
            for seed in s.seeds
        ],
        jobs,
    )
    return pools, runs


# ------------------------------------------------------------------------------------------------ draws
def tumour_stats(samples: dict[str, Any] | list[dict[str, Any]], spacing: float) -> dict[str, Any]:
    """Per sample (physical units): whether it has a tumour, the tumour's SUVmax and SUVmean, the share of its
    pixels above 15 SUV, and the pairedness score (NaN where the mask is empty)."""
    import numpy as np
    import torch

    from monai_pairsynth.metrics import pairedness

    if isinstance(samples, dict):
        batch = {k: torch.as_tensor(samples[k]).float() for k in ("ct", "pet", "label")}
    else:
        batch = {
            k: torch.stack([torch.as_tensor(x[k]).float() for x in samples]) for k in ("ct", "pet", "label")
        }
    pet, mask = batch["pet"].flatten(1).numpy(), batch["label"].flatten(1).numpy() > 0.5
    has = mask.any(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        suvmax = np.where(has, np.where(mask, pet, -np.inf).max(1), np.nan)
        suvmean = np.where(has, (pet * mask).sum(1) / mask.sum(1), np.nan)
        above = np.where(has, ((pet > 15.0) & mask).sum(1) / mask.sum(1), np.nan)
    paired = pairedness(batch, spacing=spacing, fov_key=None)
    return {
        "has_tumour": has,
        "suvmax": suvmax,
        "suvmean": suvmean,
        "above15": above,
        "pairedness": paired["score"].numpy(),
    }


def summarise_draws(stats: dict[str, Any], patients: list[str] | None = None) -> dict[str, float]:
    """Means over samples (``patients``: each patient's samples averaged first, then the mean over patients), over
    the samples with a tumour for the tumour terms; the SUVmax median and 90th percentile (samples weighted so each
    patient counts once)."""
    import numpy as np

    n = len(stats["has_tumour"])
    ids = np.asarray(patients if patients is not None else [str(i) for i in range(n)])
    weights = np.zeros(n)
    for p in np.unique(ids):
        weights[ids == p] = 1.0 / np.sum(ids == p)

    def mean(values: Any, where: Any) -> float:
        w = weights * where
        return float(np.sum(np.nan_to_num(values) * w) / np.sum(w)) if np.sum(w) > 0 else float("nan")

    has = stats["has_tumour"].astype(bool)
    out = {"units": len(np.unique(ids)), "has_tumour": mean(has.astype(float), np.ones(n))}
    for key in ("suvmax", "suvmean", "above15", "pairedness"):
        out[key] = mean(stats[key], has & np.isfinite(stats[key]))
    order = np.argsort(np.where(has, stats["suvmax"], np.inf))
    values, w = stats["suvmax"][order][: has.sum()], weights[order][: has.sum()]
    cum = np.cumsum(w) / np.sum(w) if len(w) else np.array([])
    for q, name in ((0.5, "suvmax_median"), (0.9, "suvmax_p90")):
        out[name] = float(values[np.searchsorted(cum, q)]) if len(values) else float("nan")
    return out


def draws(root: Path, variants: list[str]) -> dict[str, Any]:
    """Draw statistics of every generator's first 4P / 4 = P candidates (the pools' ``unfiltered`` part: the same
    sample seeds for every variant) and of the real training slices of the 24 patients (PET unclipped: the log-map
    slices of ``benchmarks/pet_map_segmentation.py`` where present, else the experiment's, clipped at 15 SUV)."""
    import torch

    split = json.loads((root / "split.json").read_text(encoding="utf-8"))
    wanted = set(real_patients.train_patients(split, N_REAL))
    unclipped = root.parent / "pet_map" / "full" / "slices_log.pt"
    source = unclipped if unclipped.is_file() else root / "slices.pt"
    real = [s for s in torch.load(source, weights_only=True) if s["case_id"] in wanted]
    out: dict[str, Any] = {
        "real": {
            **summarise_draws(tumour_stats(real, real_patients.SPACING), [s["case_id"] for s in real]),
            "source": str(source.name),
            "unit": "patient",
        }
    }
    for v in [REFERENCE, *variants]:
        data = VariantData(root, variant=v)
        pools = torch.load(root / "pools" / f"{data.pool_name(N_REAL, 0)}.pt", weights_only=True)
        stats = tumour_stats(pools["unfiltered"], real_patients.SPACING)
        out[v] = {**summarise_draws(stats), "unit": "sample", "info": pools["info"]}
    return out


# ------------------------------------------------------------------------------------------------ report
def compare(root: Path, variants: list[str]) -> dict[str, Any]:
    """Each generator's ``filtered_r0.5`` arm against real only and against the reference, over the test patients
    (each patient's Dice averaged over its slices and the seeds) and over the seed means."""
    import downstream
    import numpy as np

    from monai_pairsynth.metrics import compare_dice

    s = real_patients.settings(quick=False)

    def runs_of(name: str) -> list[dict[str, Any]]:
        files = [root / "segment" / f"n{N_REAL}_s{seed}_{name}.json" for seed in s.seeds]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SystemExit(f"segmentation runs missing: {missing}")
        return [json.loads(f.read_text(encoding="utf-8")) for f in files]

    def versus(base: list[dict], runs: list[dict]) -> dict[str, float]:
        patients = compare_dice(
            [d for r in base for d in r["dice"]],
            [d for r in runs for d in r["dice"]],
            patient_ids=[p for r in runs for p in downstream._test_patients(r)],
        )
        seeds = compare_dice([r["mean_dice"] for r in base], [r["mean_dice"] for r in runs])
        both = downstream.crossed(base, runs)
        return {
            "p_crossed": both["t_pvalue"],
            "crossed_ci_low": both["ci_low"],
            "crossed_ci_high": both["ci_high"],
            **downstream.patient_effect(patients),
            "p_patient_t": patients["t_pvalue"],
            "p_patient_wilcoxon": patients["wilcoxon_pvalue"],
            "n_patients": patients["n"],
            "seed_diff": seeds["mean_diff"],
            "p_seed_t": seeds["t_pvalue"],
        }

    real = runs_of("real")
    reference = runs_of(arm(REFERENCE)["arm"])
    table: dict[str, Any] = {}
    for v in [REFERENCE, *variants]:
        runs = runs_of(arm(v)["arm"])
        means = [r["mean_dice"] for r in runs]
        table[v] = {
            "mean": float(np.mean(means)),
            "sd": float(np.std(means, ddof=1)),
            "seed_means": means,
            "vs_real": versus(real, runs),
            **({} if v == REFERENCE else {"vs_reference": versus(reference, runs)}),
        }
    table["real"] = {"mean": float(np.mean([r["mean_dice"] for r in real])),
                     "sd": float(np.std([r["mean_dice"] for r in real], ddof=1))}  # fmt: skip
    return table


def _effect(e: dict[str, float]) -> str:
    return (
        f"{e['patient_diff']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}] | {e['p_patient_t']:.2g} | "
        f"{e['p_crossed']:.2g} [{e['crossed_ci_low']:+.3f}, {e['crossed_ci_high']:+.3f}] | {e['p_seed_t']:.2g}"
    )


def _generator_rows(root: Path, variants: list[str]) -> str:
    runs = json.loads((root / "generators" / "generators.json").read_text(encoding="utf-8"))
    extra = json.loads((root / "generators" / "variants.json").read_text(encoding="utf-8"))
    rows = []
    for v in [REFERENCE, *variants]:
        r = runs[variant_name(v)] if v == REFERENCE else extra[variant_name(v)]
        what = "reference: PET linear 0-15 SUV, no mask, seed 0" if v == REFERENCE else VARIANTS[v]["what"]
        rows.append(
            f"| {v} | {what} | {r['epochs']} | {r['iterations']} | {r['cpu_seconds_per_iteration']:.2f} | "
            f"{r['last_epoch_metrics']['loss']:.4f} |"
        )
    return "\n".join(rows)


def _draw_rows(d: dict[str, Any], variants: list[str]) -> str:
    rows = []
    for v in ["real", REFERENCE, *variants]:
        x = d[v]
        rejected = ""
        if "info" in x:
            rej = x["info"]["rejections"]
            rejected = (
                f"{rej.get('mask_outside_body', 0)} / {rej.get('empty_mask', 0)} of {x['info']['candidates']}"
            )
        label = (
            f"real training slices ({x['units']} patients)" if v == "real" else f"{v} ({x['units']} draws)"
        )
        rows.append(
            f"| {label} | {x['has_tumour']:.2f} | {x['suvmax_median']:.1f} | {x['suvmax_p90']:.1f} | "
            f"{x['suvmean']:.1f} | {x['above15']:.3f} | {x['pairedness']:.2f} | {rejected or '-'} |"
        )
    return "\n".join(rows)


def reading(table: dict[str, Any], variants: list[str]) -> str:
    """What the Dice table says, read off it: each variant against the reference, next to the seed-1 retrain."""
    floor = abs(table["seed1"]["vs_reference"]["patient_diff"]) if "seed1" in table else None
    lines = []
    for v in variants:
        if v == "seed1":
            continue
        e = table[v]["vs_reference"]
        verdict = (
            "significant at 5 % with patients and seeds random"
            if e["p_crossed"] < 0.05
            else "not significant with patients and seeds random"
        )
        size = (
            f"; the same recipe retrained with another seed moved it by {table['seed1']['vs_reference']['patient_diff']:+.3f}"
            if floor is not None
            else ""
        )
        beyond = (
            ""
            if floor is None
            else (" (larger than that)" if abs(e["patient_diff"]) > floor else " (within that)")
        )
        lines.append(
            f"- **{v}** against the reference: {e['patient_diff']:+.3f} Dice over test patients "
            f"(test patients p = {e['p_patient_t']:.2g}; patients × seeds p = {e['p_crossed']:.2g}, {verdict}; seed "
            f"means p = {e['p_seed_t']:.2g}){size}{beyond}."
        )
    return "\n".join(lines)


def report(root: Path, variants: list[str], minutes: float) -> str:
    import platform

    import torch

    d = draws(root, variants)
    real_pet = (
        "PET unclipped (the log-map slices of `benchmarks/pet_map_segmentation.py`)"
        if d["real"]["source"] == "slices_log.pt"
        else "PET clipped at 15 SUV (the experiment's slices; run `benchmarks/pet_map_segmentation.py` for unclipped)"
    )
    table = compare(root, variants)
    dice_rows = "\n".join(
        f"| {v} | {table[v]['mean']:.3f} ± {table[v]['sd']:.3f} | {_effect(table[v]['vs_real'])} | "
        + (_effect(table[v]["vs_reference"]) if "vs_reference" in table[v] else "(reference) | | |")
        + " |"
        for v in [REFERENCE, *variants]
    )
    from monai_pairsynth.utils import atomic_write_json

    atomic_write_json(root / "variants_summary.json", json.loads(json.dumps({"draws": d, "dice": table},
                      default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))))  # fmt: skip
    return f"""#### Which map and which loss: the generator

Written by `experiments/generator_variants.py` (do not edit by hand: rerun it). The real-patient experiment's
N = 24 generator (`experiments/real_patients.py`, [results.md](results.md#real-patients-36-fdg-petct-soft-tissue-sarcomas):
CPU default widths, the bundle's recipe, the 24 training patients, one thread) is the **reference**; each variant
reruns its exact command with one change and the same number of epochs, so the same optimiser steps. A CPU
budget, not converged generators: this compares what each choice does at the budget the experiment used.

| generator | what differs | epochs | optimiser steps | CPU s per step | last-epoch loss |
|---|---|---|---|---|---|
{_generator_rows(root, variants)}

**What they draw** (the first 32 of each pool's 128 candidates, the same sample seeds for every generator, in
physical units; real: the {d["real"]["units"]} training patients' tumour slices, {real_pet}, each patient's slices
averaged first, the SUVmax quantiles weighting each patient
once; the linear generators cannot exceed 15 SUV). Tumour terms over the draws with a tumour. Rejected: the
quality filter's plausibility rules over all 128 candidates (tumour outside the body / empty mask).

| draws | share with a tumour | tumour SUVmax, median | SUVmax, 90th pct | tumour SUVmean | tumour pixels > 15 SUV | pairedness score | rejected: outside body / empty |
|---|---|---|---|---|---|---|---|
{_draw_rows(d, variants)}

**What their pools do for the segmenter**: the experiment's `filtered_r0.5` arm at N = 24 (filtered pool of 32
from the 128 candidates with the reference pool's quality filter, mixing ratio 0.5, the experiment's segmenter,
300 steps, seeds 0-{len(table[REFERENCE]["seed_means"]) - 1}). Differences over the 12 test patients (each patient's
Dice averaged over its slices and the seeds) with 95 % CI and paired t-test (it ignores retraining noise, see the
control above); with the test patients and the seeds both random (`compare_dice_crossed`, p and 95 % CI); over
the seed means with a paired t-test.

| generator's pool | Dice, mean ± sd over seeds | vs real only: over patients [95 % CI] | p (t, patients) | p (patients × seeds) [95 % CI] | p (t, seed means) | vs reference: over patients [95 % CI] | p (t, patients) | p (patients × seeds) [95 % CI] | p (t, seed means) |
|---|---|---|---|---|---|---|---|---|---|
{dice_rows}

Real only: {table["real"]["mean"]:.3f} ± {table["real"]["sd"]:.3f}.

{reading(table, variants)}

```bash
python experiments/generator_variants.py train --root runs/real --jobs 2
python experiments/generator_variants.py all   --root runs/real --jobs 2 --results-md docs/data.md
```

Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, one torch thread per process;
pools and segmentation runs {minutes:.1f} min (sum of per-run times).
"""


SECTION = "generator-variants"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("train", "pools", "segment", "report", "all"))
    p.add_argument("--root", default="runs/real")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--results-md", default=None, help="file that receives the section (e.g. docs/data.md)")
    args = p.parse_args(argv)
    root = Path(args.root)
    if args.stage == "train":
        train(root, args.variants, jobs=args.jobs, threads=args.threads, device=args.device)
        return 0
    import downstream

    from monai_pairsynth.utils import atomic_write_text

    jobs = 1 if args.stage == "report" else args.jobs
    pools, runs = build(root, args.variants, jobs, segment=args.stage != "pools")
    if args.stage in ("report", "all"):
        minutes = (sum(r["seconds"] for r in runs) + sum(i["sample_seconds"] for i in pools)) / 60
        body = report(root, args.variants, minutes)
        out = Path(args.results_md) if args.results_md else root / "variants.md"
        text = out.read_text(encoding="utf-8") if out.is_file() else ""
        atomic_write_text(out, downstream.replace_section(text, body, SECTION))
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
