"""The downstream experiment on real patients: does mixing synthetic triplets help on real FDG-PET/CT?

The same protocol as the phantom experiment (``experiments/downstream.py``), on the 36 real soft-tissue-sarcoma
patients of ``../shared/data/sts_pet_ct`` (HECKTOR layout; not part of the package, see its README):

- **Patients, not slices.** A seeded permutation of the patient ids fixes a test set of ``num_test`` patients
  (every tumour slice of each); the remaining patients form the training pool, and the arm with ``N`` real
  patients trains on the first ``N`` of it (so the 8-patient set lies inside the 16-patient set, and so on).
- **Generators.** One linked diffusion generator per ``N``, trained only on that arm's patients, by the
  package's own command line with the recipe of the bundle's ``train_diffusion.json``
  (``experiments/train_generators.py``'s settings) and a wall-time budget. Generators are shared by the
  seeds of one ``N`` (a CPU budget: say so in the report); the seeds vary the segmenter's initialisation,
  its data order and augmentation, and the pool's samples.
- **Label-first generators** (``conditional``, issue 14): each joint generator fine-tuned with per-modality
  timesteps (``finetune_conditional``), so the label-first pools give their masks clean at t = 0.
- **Pools, segmentation, report**: ``downstream.py``'s stages with this data, statistics by patient.

Stages (each resumable: finished outputs are skipped, a generator resumes from its checkpoint)::

    python experiments/real_patients.py prepare     --root runs/real   # preprocess the 36 patients once
    python experiments/real_patients.py generators  --root runs/real --max-minutes 60 --jobs 3
    python experiments/real_patients.py conditional --root runs/real --max-minutes 35 --jobs 3  # label-first arms
    python experiments/real_patients.py all         --root runs/real --jobs 2 --results-md docs/results_real.md

``--data-dir`` (default: ``$MONAI_PAIRSYNTH_STS_DIR`` or ``../shared/data/sts_pet_ct``) points at the folder.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "benchmarks"))

from train_generators import (  # noqa: E402
    BATCH_SIZE,
    EMA_MOMENTUM,
    EMA_WARMUP_ITERS,
    LEARNING_RATE,
    RECIPE,
    TrainingJob,
    run_training_jobs,
)

SPATIAL_SIZE = (64, 64)
SPACING = 4.0
SPLIT_SEED = 2026
NUM_TEST = 12
N_REAL = (8, 16, 24)
SEEDS = (0, 1, 2, 3, 4, 5)  # segmenter seeds per arm: 6, so the test over seed means has some power
POOL_SIZE = 32  # the filtered pool of each N keeps 32 of 4 x 32 candidates
FILTER_EPOCHS = 8


def data_dir(arg: str | None) -> Path:
    """The real-patient folder: ``arg``, else the benchmarks' lookup; a clear error where it is absent."""
    if arg:
        path = Path(arg).expanduser()
    else:
        from real_data import real_data_dir

        path = real_data_dir()  # type: ignore[assignment]
    if path is None or not Path(path).is_dir():
        raise SystemExit(
            "the real-patient folder is absent: pass --data-dir or set MONAI_PAIRSYNTH_STS_DIR "
            "(see ../shared/data/sts_pet_ct/README.md)."
        )
    return Path(path)


def patient_split(
    patient_ids: list[str], num_test: int = NUM_TEST, seed: int = SPLIT_SEED
) -> dict[str, list[str]]:
    """``{"test": [...], "train_pool": [...]}``: a seeded permutation of the sorted ids, the first ``num_test``
    for testing. Deterministic and independent of the order the ids come in."""
    ids = sorted(set(patient_ids))
    if len(ids) != len(patient_ids):
        raise ValueError("patient ids must be unique")
    if not 1 <= num_test < len(ids):
        raise ValueError(f"num_test must be in [1, {len(ids) - 1}], got {num_test}")
    random.Random(seed).shuffle(ids)
    return {"test": ids[:num_test], "train_pool": ids[num_test:]}


def train_patients(split: dict[str, list[str]], n_real: int) -> list[str]:
    """The ``n_real`` training patients of an arm: the first ``n_real`` of the training pool."""
    pool = split["train_pool"]
    if not 1 <= n_real <= len(pool):
        raise ValueError(f"n_real must be in [1, {len(pool)}], got {n_real}")
    return pool[:n_real]


def generator_name(n_real: int) -> str:
    return f"gen_real_n{n_real}"


# ------------------------------------------------------------------------------------------------ prepare
def prepare(root: Path, folder: Path) -> dict[str, Any]:
    """Preprocess every patient once (64x64 tumour slices at 4 mm, physical units) into ``root/slices.pt``,
    write the split and one datalist JSON of files per arm (for the generators' command line)."""

    from monai_pairsynth.data.sources import load_samples, resolve_datalist
    from monai_pairsynth.utils import atomic_save_torch, atomic_write_json

    root.mkdir(parents=True, exist_ok=True)
    split_file = root / "split.json"
    if all((root / f).is_file() for f in ("split.json", "slices.pt", "datalist_all.json")):
        return json.loads(split_file.read_text(encoding="utf-8"))
    start = time.perf_counter()
    samples, _ = load_samples(str(folder), spatial_size=SPATIAL_SIZE, spacing=SPACING)
    seconds = time.perf_counter() - start
    slices = [{k: v.as_tensor() if hasattr(v, "as_tensor") else v for k, v in s.items()} for s in samples]
    atomic_save_torch(slices, root / "slices.pt")
    ids = sorted({s["case_id"] for s in slices})
    split = patient_split(ids)
    items = {str(it["case_id"]): dict(it) for it in resolve_datalist(folder, ("ct", "pet", "label"))}
    atomic_write_json(root / "datalist_all.json", {"training": list(items.values())})
    counts = {p: sum(1 for s in slices if s["case_id"] == p) for p in ids}
    info = {
        **split,
        "split_seed": SPLIT_SEED,
        "slices_per_patient": counts,
        "preprocessing_seconds": round(seconds, 1),
        "spatial_size": list(SPATIAL_SIZE),
        "spacing": SPACING,
    }
    atomic_write_json(split_file, info)
    print(f"[prepare] {len(slices)} slices of {len(ids)} patients in {seconds:.0f} s", flush=True)
    return info


# ------------------------------------------------------------------------------------------------ generators
def arm_datalist(root: Path, n_real: int) -> Path:
    """``root/datalist_n{N}.json``: the files of the arm's ``n_real`` training patients (the generator's input)."""
    from monai_pairsynth.utils import atomic_write_json

    split = json.loads((root / "split.json").read_text(encoding="utf-8"))
    items = {
        it["case_id"]: it
        for it in json.loads((root / "datalist_all.json").read_text(encoding="utf-8"))["training"]
    }
    path = root / f"datalist_n{n_real}.json"
    atomic_write_json(path, {"training": [items[p] for p in train_patients(split, n_real)]})
    return path


def generator_command(
    root: Path,
    n_real: int,
    *,
    device: str,
    max_minutes: float,
    threads: int,
    epochs: int = 100_000,
    precision: tuple[str, ...] = (),
    name: str | None = None,
    seed: int = 0,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The package's training command for the ``n_real``-patient generator (resumes from its checkpoint).

    ``name`` (default ``gen_real_n{N}``), ``seed`` and ``extra`` command-line arguments make a variant of it on
    the same patients (``experiments/generator_variants.py``: another PET map, the field-of-view mask, a seed)."""
    run_dir = root / "generators" / (name or generator_name(n_real))
    cmd = [
        sys.executable,
        "-m",
        "monai_pairsynth.engines.train",
        "--output-dir", str(run_dir),
        "--datalist", str(arm_datalist(root, n_real)),
        "--spatial-size", *map(str, SPATIAL_SIZE),
        "--spacing", str(SPACING),
        "--augment",
        "--batch-size", str(BATCH_SIZE),
        "--lr", str(LEARNING_RATE),
        "--epochs", str(epochs),
        "--ema-momentum", str(EMA_MOMENTUM),
        "--ema-warmup-iters", str(EMA_WARMUP_ITERS),
        *RECIPE,
        "--checkpoint-every", "5",
        "--log-every", "0",
        "--no-progress",
        "--no-tensorboard",
        "--threads", str(threads),
        "--device", device,
        "--max-minutes", str(max_minutes),
        "--seed", str(seed),
    ]  # fmt: skip
    cmd += list(extra) + list(precision)  # e.g. ("--no-amp", "--autocast", "bfloat16") on a GPU
    if (run_dir / "checkpoint.pt").is_file():
        cmd += ["--resume-from", str(run_dir / "checkpoint.pt")]
    return cmd


def train_generators(
    root: Path,
    *,
    n_real: tuple[int, ...] = N_REAL,
    device: str,
    max_minutes: float,
    jobs: int,
    threads: int,
    epochs: int = 100_000,
    precision: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train (or resume) one generator per N in parallel processes and export slim sampling checkpoints."""
    from monai_pairsynth.utils import atomic_write_json

    job_list = [
        TrainingJob(
            generator_name(n),
            root / "generators" / generator_name(n),
            generator_command(
                root,
                n,
                device=device,
                max_minutes=max_minutes,
                threads=threads,
                epochs=epochs,
                precision=precision,
            ),
            {"n_real": n, "seed": 0},
        )
        for n in n_real
    ]
    results, failed = run_training_jobs(job_list, root / "generators", jobs, poll_seconds=5.0)
    path = root / "generators" / "generators.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    atomic_write_json(path, {**old, **results})
    if failed:
        raise SystemExit(f"generators failed: {failed}")
    return results


def conditional_name(n_real: int) -> str:
    """The per-modality-timestep generator of ``n_real`` patients (fine-tuned from the joint one)."""
    return f"{generator_name(n_real)}_cond"


def finetune_conditional(
    root: Path, n_real: int, max_minutes: float, threads: int = 1, device: str = "cpu"
) -> dict[str, Any]:
    """Fine-tune the joint ``n_real``-patient generator into one that also samples conditionally (issue 14).

    The model is rebuilt with ``condition_timesteps=True`` and starts from the joint generator's EMA weights (only
    the new timestep projections start fresh; anything else missing or unexpected is an error), then trains with
    the joint recipe plus per-modality timesteps (``independent_timestep_prob`` 0.5, ``clean_prob`` 0.5) on the
    same patients and preprocessing, for ``max_minutes`` of this call. Resumable: a second call continues from
    ``<root>/generators/<name>/checkpoint.pt``. Writes the slim sampling checkpoint ``<name>.pt`` and a summary.
    """
    import torch

    from monai_pairsynth.engines import (
        build_training_dataset,
        create_paired_trainer,
        export_sampling_checkpoint,
        read_paired_checkpoint,
    )
    from monai_pairsynth.engines.paired_training import device_training_loader
    from monai_pairsynth.networks import PairedDiffusionModel
    from monai_pairsynth.utils import atomic_write_json

    torch.set_num_threads(threads)
    name = conditional_name(n_real)
    run_dir = root / "generators" / name
    resume = run_dir / "checkpoint.pt"
    joint = read_paired_checkpoint(root / "generators" / generator_name(n_real) / "checkpoint.pt")
    config = {k: v for k, v in joint["model_config"].items() if k != "modalities"}
    torch.manual_seed(0)
    model = PairedDiffusionModel(
        tuple(joint["model_config"]["modalities"]), **config, condition_timesteps=True
    )
    if not resume.is_file():
        missing, unexpected = model.load_state_dict(joint["ema_model"] or joint["model"], strict=False)
        if unexpected or any(".time_projections." not in k for k in missing):
            raise ValueError(f"joint generator does not fit: missing {missing}, unexpected {unexpected}")
    specs = joint["modality_specs"]
    dataset = build_training_dataset(
        str(arm_datalist(root, n_real)),
        modality_specs=specs,
        spatial_dims=2,
        spatial_size=SPATIAL_SIZE,
        spacing=SPACING,
        seed=0,
        augment=False,
    )
    loader = device_training_loader(
        dataset, BATCH_SIZE, modality_specs=specs, device=device, seed=1, augment=True, drop_last=False
    )
    trainer = create_paired_trainer(
        model,
        loader,
        max_epochs=100_000,
        device=device,
        lr=LEARNING_RATE,
        noise_scheduler=joint["noise_scheduler"],
        snr_gamma=5.0,
        foreground_weight={"label": 4.0},
        perceptual_weight=0.0,
        offset_noise_scale=float(joint.get("offset_noise_scale", 0.1)),
        independent_timestep_prob=0.5,
        clean_prob=0.5,
        ema_momentum=EMA_MOMENTUM,
        ema_warmup_iters=EMA_WARMUP_ITERS,
        generator=torch.Generator(device=device).manual_seed(2),
        output_dir=run_dir,
        checkpoint_every=5,
        modality_specs=specs,
        spatial_size=SPATIAL_SIZE,
        spacing=SPACING,
        stats_log=False,
        progress_bar=False,
        tensorboard=False,
        max_minutes=max_minutes,
        resume_from=resume if resume.is_file() else None,
    )
    start = time.perf_counter()
    first_iteration = int(trainer.state.iteration)
    trainer.run()
    export_sampling_checkpoint(run_dir / "checkpoint.pt", root / "generators" / f"{name}.pt", half=True)
    old = run_dir / "finetune.json"
    before = json.loads(old.read_text(encoding="utf-8")) if old.is_file() else {"seconds": 0.0}
    summary = {
        "name": name,
        "n_real": n_real,
        "init": f"{generator_name(n_real)} EMA weights",
        "independent_timestep_prob": 0.5,
        "clean_prob": 0.5,
        "iterations": int(trainer.state.iteration),
        "seconds": before["seconds"] + time.perf_counter() - start,
        "iterations_this_call": int(trainer.state.iteration) - first_iteration,
    }
    atomic_write_json(old, summary)
    return summary


# ------------------------------------------------------------------------------------------------ data provider
@functools.lru_cache(maxsize=2)
def _slices(path: str) -> tuple[dict[str, Any], ...]:
    import torch

    return tuple(torch.load(path, weights_only=True))


@dataclass(frozen=True)
class RealData:
    """The real patients for ``downstream.build_pools`` / ``downstream.run_arm`` (same methods as ``PhantomData``).

    Training samples of an arm are every tumour slice of its patients; the test samples every tumour slice of the
    test patients, each tagged with its patient so the statistics average slices per patient first."""

    root: Path
    tag: str = ""  # distinguishes the pools of a rehearsal from the real ones

    def _split(self) -> dict[str, Any]:
        return json.loads((self.root / "split.json").read_text(encoding="utf-8"))

    def _of(self, patients: list[str]) -> list[dict[str, Any]]:
        wanted = set(patients)
        return [
            {k: s[k] for k in ("ct", "pet", "label")}
            for s in _slices(str(self.root / "slices.pt"))
            if s["case_id"] in wanted
        ]

    def train(self, n_real: int, seed: int) -> list[dict[str, Any]]:
        return self._of(train_patients(self._split(), n_real))

    def test(self) -> list[dict[str, Any]]:
        return self._of(self._split()["test"])

    def test_patients(self) -> list[str]:
        wanted = set(self._split()["test"])
        return [str(s["case_id"]) for s in _slices(str(self.root / "slices.pt")) if s["case_id"] in wanted]

    def generator_file(self, root: Path, n_real: int, seed: int) -> Path:
        return root / "generators" / f"{generator_name(n_real)}.pt"

    def pool_name(self, n_real: int, seed: int) -> str:
        """One pool per N, shared by the seeds (the CPU budget: sampling dominates the experiment's cost)."""
        return f"pool_real_n{n_real}{self.tag}"

    def sample_seeds(self, n_real: int, seed: int, count: int) -> list[int]:
        return [7_000_000 + 1_000 * n_real + i for i in range(count)]


def settings(quick: bool) -> Any:
    """The real-patient sizes (``quick``: a rehearsal with 1-step generators)."""
    import downstream

    if quick:
        return downstream.Settings(
            n_real=(2,),
            seeds=(0,),
            num_test=2,
            pool_sizes=((2, 4),),
            sampler_steps=4,
            seg_steps=4,
            filter_epochs=1,
            plausibility=False,
            ratios=(0.5, 1.0),
            ct_only=False,
        )
    return downstream.Settings(
        n_real=N_REAL,
        seeds=SEEDS,
        num_test=NUM_TEST,
        pool_sizes=tuple((n, POOL_SIZE) for n in N_REAL),
        sampler="ddpm",
        sampler_steps=50,
        seg_steps=300,
        filter_epochs=FILTER_EPOCHS,
        plausibility=True,
        ratios=(0.5, 1.0),
        ct_only=False,
    )


# ------------------------------------------------------------------------------------------------ report
def baseline_caveat(s: Any, table: dict[str, Any]) -> str:
    """A sentence when real-only Dice does not rise with N (read off the table; empty when it does)."""
    means = [(n, table[f"n{n}/real"]["mean"]) for n in sorted(s.n_real) if f"n{n}/real" in table]
    if all(b >= a for (_, a), (_, b) in itertools.pairwise(means)):
        return ""
    values = ", ".join(f"{m:.3f} at N = {n}" for n, m in means)
    lowest = min(means, key=lambda nm: nm[1])[0]
    return (
        f"- **Caveat: real-only Dice does not rise with N** ({values}). Every arm gets the same {s.seg_steps} "
        "optimiser steps, so the segmenters are not trained to convergence and part of each difference is "
        f"optimisation noise; effects at N = {lowest} stand against the lowest of the baselines. The seed-mean "
        f"tests (n = {len(s.seeds)}) are the conservative reading."
    )


NOISE_FLOOR = REPO / "benchmarks" / "results" / "pet_map_segmentation_cpu_2026-12-03.json"


def noise_floor_note(path: Path = NOISE_FLOOR) -> str:
    """A sentence on the training noise the patient-level tests ignore, read off the control of
    ``benchmarks/pet_map_segmentation.py`` (the real-only arm rerun on inputs that differ by float rounding)."""
    if not path.is_file():
        return ""
    control = json.loads(path.read_text(encoding="utf-8")).get("control_vs_experiment") or {}
    rows = control.get("table") or {}
    if not rows:
        return ""
    parts = ", ".join(
        f"{r['patient_diff']:+.3f} (p = {r['p_patient_t']:.2g}"
        + (f"; patients × seeds p = {r['p_crossed']:.2g}" if "p_crossed" in r else "")
        + f") at N = {k.removeprefix('n')}"
        for k, r in sorted(rows.items(), key=lambda kv: int(kv[0].removeprefix("n")))
    )
    return (
        " The test-patient tests hold the trained segmenters fixed: rerunning the real-only arm on inputs that "
        f"differ only by float rounding moved Dice over the test patients by {parts} (the control of "
        "`benchmarks/pet_map_segmentation.py`, [data.md](data.md#which-map-the-segmenter)), so by them differences "
        "of about 0.02 are within training noise whatever their p-value; the patients × seeds test counts that noise."
    )


def label_first_note(root: Path, s: Any, pools: list[dict]) -> str:
    """The report's bullet on the label-first pools (issue 14): their generators and how the masks were given."""
    infos = sorted((i for i in pools if "conditioning" in i), key=lambda i: i["n_real"])
    if not s.label_first_ratios or not infos:
        return ""
    tuned = []
    for info in infos:
        summary = root / "generators" / Path(info["generator"]).stem / "finetune.json"
        if summary.is_file():
            f = json.loads(summary.read_text(encoding="utf-8"))
            tuned.append(f"{f['name']}: {f['iterations']} steps in {f['seconds'] / 60:.0f} min")
    per_pool = "; ".join(
        f"N = {i['n_real']}: {i['generator']}, masks given {i['conditioning']}, "
        f"{i['placement_fallbacks']} of {i['candidates']} placements fell back to the original position"
        for i in infos
    )
    return (
        "- **Label-first pools** (arms `label_first_r*`). 4P masks drawn from the arm's own tumour masks "
        "(rotated, scaled, elastically deformed, placed inside the body of their slice), CT + PET generated for "
        "them by a per-modality-timestep generator fine-tuned from the arm's joint generator with "
        "`independent_timestep_prob` 0.5 on the same patients"
        + (f" ({'; '.join(tuned)})" if tuned else "")
        + "; the same filter keeps P. Per pool: "
        + per_pool
        + ". The fine-tuning adds training steps the joint generators did not get: the label-first arms "
        "compare a recipe, not the conditioning alone.\n"
    )


def report_section(
    root: Path,
    s: Any,
    table: dict[str, Any],
    pools: list[dict],
    results: list[dict],
    minutes: str,
    preview: str = "",
) -> str:
    import platform

    import downstream
    import torch

    split = json.loads((root / "split.json").read_text(encoding="utf-8"))
    counts = split["slices_per_patient"]
    test_slices = sum(counts[p] for p in split["test"])
    train_slices = ", ".join(f"N = {n}: {sum(counts[p] for p in train_patients(split, n))}" for n in s.n_real)
    gens = root / "generators" / "generators.json"
    gen_note = ""
    if gens.is_file():
        runs = json.loads(gens.read_text(encoding="utf-8"))
        gen_note = "; ".join(
            f"{name}: {r['iterations']} steps in {r['wall_seconds'] / 60:.0f} min (last-epoch loss "
            f"{r['last_epoch_metrics'].get('loss', float('nan')):.3f})"
            for name, r in sorted(runs.items(), key=lambda kv: kv[1]["n_real"])
        )
    return f"""## Real patients: 36 FDG-PET/CT soft-tissue sarcomas

Written by `experiments/real_patients.py` (do not edit by hand: rerun it). The same question and protocol as
above, on the real patients of `../shared/data/sts_pet_ct` (TCIA Soft-tissue-Sarcoma via the IBSI set, CC BY
3.0; extremity sarcomas, not head and neck).

- **Patients.** A seeded permutation (seed {split["split_seed"]}) fixes **{len(split["test"])} test patients**
  ({test_slices} tumour slices, 64×64 at 4 mm) and a training pool of {len(split["train_pool"])} patients; the
  arm with N real patients trains on the first N of the pool (tumour slices: {train_slices}). Test patients:
  {", ".join(split["test"])}.
- **Generators.** One per N, trained only on those N patients by `python -m monai_pairsynth.engines.train`
  with the bundle's recipe (v-prediction, cosine, Min-SNR 5, tumour weight 4, batch 16, lr 5e-4, EMA 0.005,
  augmentation), CPU default widths, **on CPU, one thread each, three at once on 2 cores, for a wall-time
  budget** ({gen_note or "see generators.json"}). A CPU budget, not a converged generator: the {len(s.seeds)} seeds
  share the generator and the pool of their N (they vary the segmenter's initialisation, data order,
  augmentation and the draws from the pool), so the seed spread does not include generator or pool
  variability. `benchmarks/gpu_session.sh`
  is where longer generator training belongs when a GPU is lent.
- **Pools.** {s.sampler.upper()}-{s.sampler_steps}: 4P candidates per N, P = {s.pool_sizes[0][1]}; the filtered
  pool keeps P with the feature-centroid filter (segmenter fitted on the arm's patients only, plausibility
  rules {"on" if s.plausibility else "off"}), the unfiltered pool is the first P candidates.
{label_first_note(root, s, pools)}- **Segmentation.** As above (MONAI `UNet`, DiceCE, Adam {s.seg_lr:g}, batch {s.seg_batch}, {s.seg_steps} steps
  in every arm; the pretraining arm {s.seg_steps} on the filtered pool then {s.seg_steps} on real). Input CT + PET.
- **Statistics, by patient.** Dice per test slice, averaged per test patient and over the {len(s.seeds)} seeds
  before any test: paired t-test and Wilcoxon over the {len(split["test"])} test patients, the mean
  difference over patients with its 95 % t confidence interval and Cohen's d_z; a paired t-test over the
  {len(s.seeds)} seed means; and the test with the test patients and the seeds both random (patients × seeds:
  `monai_pairsynth.metrics.compare_dice_crossed`, a two-way analysis of each seed's per-patient differences, as
  readers and cases in MRMC studies). "reading" applies the patients × seeds test at 5 %.{noise_floor_note()}

### What came out

{downstream.outcome(s, table)}
{baseline_caveat(s, table)}

### Test Dice

{downstream.dice_tables(s, table)}
### Pools

{downstream.pool_table(pools)}

![real and synthetic triplets]({preview})

*Top row: real training slices of the N = {max(s.n_real)} arm; then the first filtered and unfiltered pool
triplets of its generator and, where built, of its label-first pool (CT, PET, mask contour).*

### How to reproduce

```bash
python experiments/real_patients.py prepare    --root {root}
python experiments/real_patients.py generators --root {root} --max-minutes 65 --jobs 3
python experiments/real_patients.py conditional --root {root} --max-minutes 35 --jobs 3
python experiments/real_patients.py all        --root {root} --jobs 2 --results-md docs/results.md
```

Wall times: {minutes}. Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__}.
"""


def write_preview(root: Path, data: Any, n_real: int, path: Path, per_row: int = 4) -> Path:
    """A PNG: ``per_row`` real training slices of the ``n_real`` arm, then as many filtered and unfiltered pool
    triplets (CT and PET with the mask as a contour), and the label-first pool's where it exists, so a reader
    sees what was mixed in."""
    import downstream
    import torch

    from monai_pairsynth.visualize import save_triplet_grid

    real = data.train(n_real, 0)
    step = max(len(real) // per_row, 1)
    pools = torch.load(root / "pools" / f"{data.pool_name(n_real, 0)}.pt", weights_only=True)
    samples, titles = [], []
    for i in range(per_row):
        samples.append(real[i * step])
        titles.append(f"real {i + 1}")
    label_first = downstream.pool_file(root, data.pool_name(n_real, 0), "label_first")
    if label_first.is_file():
        pools["label-first"] = torch.load(label_first, weights_only=True)["label_first"]
    for kind in ("filtered", "unfiltered", "label-first"):
        if kind not in pools:
            continue
        for i in range(per_row):
            samples.append({k: v[i] for k, v in pools[kind].items()})
            titles.append(f"{kind} {i + 1}")
    return save_triplet_grid(samples, path, titles=titles, samples_per_row=per_row)


def run_rest(root: Path, stage: str, *, quick: bool, jobs: int, results_md: str | None) -> dict[str, Any]:
    """Pools, segmentation runs and the report (``stage``: pools | segment | report | all)."""
    import downstream

    from monai_pairsynth.utils import atomic_write_json, atomic_write_text

    s = settings(quick)
    data = RealData(root, tag="_quick" if quick else "")
    t0 = time.perf_counter()
    pools: list[dict] = []
    if stage in ("pools", "all", "report"):
        jobs_ = [(downstream.build_pools, (root, n, s.seeds[0], s, data)) for n in s.n_real]  # one pool per N
        if s.label_first_ratios:
            jobs_ += [(downstream.build_label_first_pool, j[1]) for j in jobs_]
        if stage == "report":  # the report reads what exists, it builds nothing
            jobs_ = [
                j
                for j in jobs_
                if downstream.pool_file(
                    root,
                    data.pool_name(j[1][1], j[1][2]),
                    "label_first" if "label_first" in j[0].__name__ else "",
                ).is_file()
            ]
        # the joint pools first: they fit each N's filter, which the label-first pools then reuse
        joint = [j for j in jobs_ if j[0] is downstream.build_pools]
        later = [j for j in jobs_ if j[0] is not downstream.build_pools]
        n_jobs = 1 if stage == "report" else jobs
        pools = downstream.run_jobs(joint, n_jobs) + downstream.run_jobs(later, n_jobs)
    results: list[dict] = []
    if stage in ("segment", "all", "report"):
        jobs_ = [
            (downstream.run_arm, (root, n, seed, arm, s, data))
            for n in sorted(s.n_real, reverse=True)
            for seed in s.seeds
            for arm in downstream.arms(s)
        ]
        if stage == "report":
            jobs_ = [
                j
                for j in jobs_
                if (root / "segment" / f"n{j[1][1]}_s{j[1][2]}_{j[1][3]['arm']}.json").is_file()
            ]
        results = downstream.run_jobs(jobs_, 1 if stage == "report" else jobs)
    summary: dict[str, Any] = {"pools": pools}
    if stage in ("report", "all"):
        table = downstream.summarise(results, s)
        seconds = sum(r["seconds"] for r in results) + sum(
            i["sample_seconds"] + i["filter_seconds"] for i in pools
        )
        minutes = f"pools and segmentation runs {seconds / 60:.1f} min (sum of per-run times)"
        timing = root / ("all_wall_seconds_quick.json" if quick else "all_wall_seconds.json")
        if stage == "all":
            atomic_write_json(timing, {"seconds": time.perf_counter() - t0, "jobs": jobs})
        if timing.is_file():
            recorded = json.loads(timing.read_text(encoding="utf-8"))
            minutes += (
                f", the last `all` call (it runs only what is not cached) {recorded['seconds'] / 60:.1f} min with "
                f"{recorded['jobs']} processes"
            )
        out = Path(results_md) if results_md else root / "results.md"
        preview = out.parent / ("results_real_preview.png" if results_md else "real_preview.png")
        write_preview(root, data, max(s.n_real), preview)
        body = report_section(root, s, table, pools, results, minutes, preview.name)
        text = out.read_text(encoding="utf-8") if out.is_file() else ""
        atomic_write_text(out, downstream.replace_section(text, body))
        summary.update(settings=asdict(s), table=table)
        atomic_write_json(root / ("summary_quick.json" if quick else "summary.json"), summary)
        print(body)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "stage", choices=("prepare", "generators", "conditional", "pools", "segment", "report", "all")
    )
    p.add_argument("--root", default="runs/real")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-minutes", type=float, default=60.0, help="wall-time budget per generator (this call)"
    )
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--quick", action="store_true", help="a rehearsal: 2 training and 2 test patients, tiny sizes"
    )
    p.add_argument(
        "--n-real", type=int, nargs="+", default=list(N_REAL), help="generators to train / fine-tune"
    )
    p.add_argument("--epochs", type=int, default=100_000, help="cap on each generator's epochs (total)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="default: on with CUDA")
    p.add_argument("--autocast", default=None, choices=("bfloat16",), help="bf16 autocast (no GradScaler)")
    p.add_argument("--results-md", default=None, help="file that receives the real-patient section")
    args = p.parse_args(argv)
    root = Path(args.root)
    prepare(root, data_dir(args.data_dir))
    if args.stage == "generators":
        train_generators(
            root,
            n_real=tuple(args.n_real),
            device=args.device,
            max_minutes=args.max_minutes,
            jobs=args.jobs,
            threads=args.threads,
            epochs=args.epochs,
            precision=(() if args.amp is None else ("--amp" if args.amp else "--no-amp",))
            + (("--autocast", args.autocast) if args.autocast else ()),
        )
    elif args.stage == "conditional":
        import downstream

        jobs_ = [
            (finetune_conditional, (root, n, args.max_minutes, args.threads, args.device))
            for n in args.n_real
        ]
        for summary in downstream.run_jobs(jobs_, args.jobs):
            print(json.dumps(summary))
    elif args.stage != "prepare":
        run_rest(root, args.stage, quick=args.quick, jobs=args.jobs, results_md=args.results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
