"""The downstream experiment on phantom data: does mixing synthetic triplets into segmentation training help?

Stage 1 (``experiments/train_generators.py``) trains one linked diffusion generator per (N_real, seed) on that
arm's real training cases only. This script runs the rest and writes ``docs/results.md``:

``pools``
    For each generator: fit the quality filter (its feature segmenter trained on the arm's real cases only),
    sample ``4 P`` candidate triplets, keep ``P`` of them with the filter in pool mode (the method: 4rN -> 2rN
    -> rN) for the *filtered* pool; the *unfiltered* pool is the first ``P`` candidates (same samples, no
    selection).
``segment``
    For each seed and N_real, train a MONAI ``UNet`` (DiceCE, Adam) for the same number of optimiser steps in
    every arm, and record the Dice of every test slice:

    - ``real``: real cases only (r = 0);
    - ``unfiltered``: real + unfiltered pool, r = 0.5;
    - ``filtered_r{r}``: real + filtered pool, r in {0.25, 0.5, 1, 2} (the ratio sweep; r = 0 is ``real``);
    - ``pretrain``: the same number of steps on the filtered pool alone, then on real cases alone;
    - ``ct_real`` / ``ct_filtered_r0.5``: the harder CT-only input (no PET channel), real only and mixed.

    Mixing goes through the package's ``MixedDataset`` (r·N synthetic items per epoch next to the N real ones,
    re-drawn from the pool every epoch by ``MixedDatasetEpochHandler``), inside a MONAI ``SupervisedTrainer``.
``report``
    Mean ± sd over seeds, paired tests against ``real`` via ``monai_pairsynth.metrics.compare_dice``: t-test
    over the seed means, and t-test and Wilcoxon over the test patients (each test patient's Dice averaged
    over its slices and the seeds first: a patient seen by 3 seeds is one observation, not 3), a plot of Dice
    against r, and the markdown page.

Usage::

    python experiments/train_generators.py --out runs/downstream/generators --device cuda --max-minutes 6
    python experiments/downstream.py all --root runs/downstream --jobs 2
    python experiments/downstream.py all --root /tmp/ds --quick      # a two-minute rehearsal

Each run's result is a JSON file under ``<root>/segment``; finished runs are skipped when the command is
repeated, so an interrupted experiment resumes.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from downstream_splits import generator_name, held_out_seeds, train_base_seed, train_seeds  # noqa: E402

RATIOS = (0.25, 0.5, 1.0, 2.0)
IMAGE_KEYS = ("ct", "pet")
SPATIAL_SIZE = (64, 64)
SPACING = 4.0


@dataclass(frozen=True)
class Settings:
    """Sizes of one experiment run (``FULL`` or ``QUICK``)."""

    n_real: tuple[int, ...] = (16, 64)
    seeds: tuple[int, ...] = (0, 1, 2)
    num_test: int = 256
    pool_sizes: tuple[tuple[int, int], ...] = ((16, 16), (64, 32))  # (N_real, P): filtered keeps P of 4P
    sampler: str = "ddpm"
    sampler_steps: int = 50
    seg_steps: int = 300
    seg_batch: int = 8
    seg_lr: float = 1e-3
    filter_epochs: int = 30
    plausibility: bool = (
        True  # the filter's plausibility rules (empty mask, mask outside body, no PET uptake)
    )
    ratios: tuple[float, ...] = RATIOS  # the filtered-pool ratios swept (r = 0 is the ``real`` arm)
    ct_only: bool = True  # the CT-only input variant (``ct_real``, ``ct_filtered_r0.5``)
    label_first_ratios: tuple[float, ...] = (0.5, 1.0)  # label-first mixing arms (issue 14); () to leave out

    def pool_size(self, n_real: int) -> int:
        return dict(self.pool_sizes)[n_real]


FULL = Settings()
QUICK = Settings(
    n_real=(16,),
    seeds=(0,),
    num_test=16,
    pool_sizes=((16, 4),),
    sampler_steps=4,
    seg_steps=6,
    filter_epochs=2,
    plausibility=False,  # the rehearsal's 1-step generator draws no tumours: every candidate would be rejected
)


def arms(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every arm of ``settings`` (default ``FULL``): name, ratio, pool (``None``/``"filtered"``/``"unfiltered"``),
    input keys, pretraining."""
    settings = settings or FULL
    out = [
        {"arm": "real", "ratio": 0.0, "pool": None, "keys": IMAGE_KEYS, "pretrain": False},
        {"arm": "unfiltered", "ratio": 0.5, "pool": "unfiltered", "keys": IMAGE_KEYS, "pretrain": False},
    ]
    out += [
        {"arm": f"filtered_r{r:g}", "ratio": r, "pool": "filtered", "keys": IMAGE_KEYS, "pretrain": False}
        for r in settings.ratios
    ]
    out.append({"arm": "pretrain", "ratio": 0.0, "pool": "filtered", "keys": IMAGE_KEYS, "pretrain": True})
    out += [
        {
            "arm": f"label_first_r{r:g}",
            "ratio": r,
            "pool": "label_first",
            "keys": IMAGE_KEYS,
            "pretrain": False,
        }
        for r in settings.label_first_ratios
    ]
    if settings.ct_only:
        out += [
            {"arm": "ct_real", "ratio": 0.0, "pool": None, "keys": ("ct",), "pretrain": False},
            {"arm": "ct_filtered_r0.5", "ratio": 0.5, "pool": "filtered", "keys": ("ct",), "pretrain": False},
        ]
    return out


# ------------------------------------------------------------------------------------------------ data
def phantom_samples(seeds: list[int]) -> list[dict[str, Any]]:
    """Phantom triplets in physical units, ``{ct, pet, label}`` tensors ``(1, 64, 64)`` only.

    Cached per process (the 9 arms of a seed share their real cases and every run shares the test set); each
    call returns fresh dicts around the shared tensors, which the (non in-place) MONAI transforms only read.
    """
    return [dict(case) for case in _phantom_cases(tuple(seeds))]


@functools.lru_cache(maxsize=4)
def _phantom_cases(seeds: tuple[int, ...]) -> tuple[dict[str, Any], ...]:
    from monai_pairsynth.data import make_phantom_case

    out = []
    for s in seeds:
        case = make_phantom_case(s, spatial_size=SPATIAL_SIZE, spacing=SPACING)
        out.append({k: case[k].as_tensor().clone() for k in ("ct", "pet", "label")})
    return tuple(out)


@dataclass(frozen=True)
class PhantomData:
    """Where the pool and segmentation stages get their cases: the phantom splits of ``downstream_splits``.

    ``experiments/real_patients.py`` passes its own provider with the same methods (real patients)."""

    num_test: int

    def train(self, n_real: int, seed: int) -> list[dict[str, Any]]:
        return phantom_samples(train_seeds(n_real, seed))

    def test(self) -> list[dict[str, Any]]:
        return phantom_samples(held_out_seeds(self.num_test))

    def test_patients(self) -> list[str] | None:
        """The patient of each test sample (``None``: one slice per simulated patient, see ``_test_patients``)."""
        return None

    def generator_file(self, root: Path, n_real: int, seed: int) -> Path:
        return root / "generators" / f"{generator_name(n_real, seed)}.pt"

    def pool_name(self, n_real: int, seed: int) -> str:
        return generator_name(n_real, seed)

    def sample_seeds(self, n_real: int, seed: int, count: int) -> list[int]:
        return [train_base_seed(seed) * 100 + i for i in range(count)]  # one seed per candidate


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ pools
def arm_filter(root: Path, name: str, real: list[dict[str, Any]], settings: Settings, seed: int) -> Any:
    """The quality filter of the arm whose pools are ``name``: fitted once on the arm's real cases and kept in
    ``<root>/pools/<name>_filter.pt`` (+ ``_segmenter.pt``), so the joint and label-first pools share it."""
    from monai_pairsynth.mixing.pool_builder import train_quality_filter
    from monai_pairsynth.quality import FeatureCentroidFilter, load_feature_segmenter, save_feature_segmenter

    state, net = root / "pools" / f"{name}_filter.pt", root / "pools" / f"{name}_segmenter.pt"
    if state.is_file() and net.is_file():
        return FeatureCentroidFilter.load(state, load_feature_segmenter(str(net), map_location="cpu"))
    quality_filter = train_quality_filter(real, epochs=settings.filter_epochs, seed=seed, device="cpu")
    save_feature_segmenter(quality_filter.feature_network, net)
    quality_filter.save(state)
    return quality_filter


def _keep_filtered(
    quality_filter: Any, candidates: dict[str, Any], p: int, settings: Settings, what: str
) -> tuple[Any, dict[str, Any]]:
    """The indices of the ``p`` candidates the filter keeps in pool mode, and the pool info's selection fields;
    an error naming ``what`` when it keeps fewer than ``p``."""
    selection = quality_filter.select(
        candidates, mode="pool", ratio=1.0, num_real=p, plausibility=settings.plausibility
    )
    keep = selection.indices[:p]
    if len(keep) < p:
        raise RuntimeError(
            f"the quality filter kept {len(keep)} of {4 * p} candidates of {what}, fewer than the pool size {p}; "
            f"rejections: {dict(selection.reason_counts())}. Train the generator longer."
        )
    return keep, {
        "pool_size": p,
        "candidates": 4 * p,
        "accepted": int(selection.num_accepted),
        "rejections": {str(k): int(v) for k, v in selection.reason_counts().items()},
        "sampler": f"{settings.sampler}-{settings.sampler_steps}",
    }


def build_pools(root: Path, n_real: int, seed: int, settings: Settings, data: Any = None) -> dict[str, Any]:
    """Sample 4P candidates from the arm's generator, fit the filter on the arm's real cases, keep P."""
    import torch

    from monai_pairsynth.inferers import PairedDiffusionInferer
    from monai_pairsynth.utils import atomic_save_torch

    _one_thread()
    data = data or PhantomData(settings.num_test)
    name = data.pool_name(n_real, seed)
    out_file = root / "pools" / f"{name}.pt"
    if out_file.is_file():
        return torch.load(out_file, weights_only=True)["info"]
    checkpoint = data.generator_file(root, n_real, seed)
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"generator {checkpoint} is missing: run the generator stage first (experiments/train_generators.py "
            "or experiments/real_patients.py generators)"
        )
    p = settings.pool_size(n_real)
    start = time.perf_counter()
    real = data.train(n_real, seed)
    quality_filter = arm_filter(root, data.pool_name(n_real, seed), real, settings, seed)
    filter_seconds = time.perf_counter() - start

    start = time.perf_counter()
    inferer, model = PairedDiffusionInferer.from_checkpoint(checkpoint)
    seeds = data.sample_seeds(n_real, seed, 4 * p)
    candidates = inferer.sample(
        model,
        num_samples=4 * p,
        scheduler=settings.sampler,
        num_inference_steps=settings.sampler_steps,
        sample_seeds=seeds,
        batch_size=32,
    )
    candidates = {k: v.as_tensor() for k, v in candidates.items()}
    sample_seconds = time.perf_counter() - start
    keep, selected = _keep_filtered(quality_filter, candidates, p, settings, f"generator {checkpoint.name}")
    info = {
        "name": name,
        "generator": checkpoint.name,
        "n_real": n_real,
        "seed": seed,
        **selected,
        "filter_seconds": round(filter_seconds, 1),
        "sample_seconds": round(sample_seconds, 1),
    }
    pools = {
        "filtered": {k: v[keep].clone() for k, v in candidates.items()},
        "unfiltered": {k: v[:p].clone() for k, v in candidates.items()},
        "info": info,
    }
    atomic_save_torch(pools, out_file)
    print(f"[pools {name}] {info}", flush=True)
    return info


def label_first_generator(root: Path, n_real: int, seed: int, data: Any) -> Path:
    """The generator of the label-first pool: the arm's per-modality-timestep generator (``<name>_cond.pt``,
    sampled with the masks given clean) where it exists, else the arm's joint generator (the masks are then
    clamped); the pool's info records which one and the conditioning used."""
    joint = data.generator_file(root, n_real, seed)
    conditional = joint.with_name(f"{joint.stem}_cond{joint.suffix}")
    return conditional if conditional.is_file() else joint


def build_label_first_pool(
    root: Path, n_real: int, seed: int, settings: Settings, data: Any = None
) -> dict[str, Any]:
    """Label-first candidates (issue 14): 4P masks drawn from the arm's real masks (deformed, scaled, rotated and
    placed inside the body of their case), CT + PET generated for them; the same filter as the joint pools
    keeps P. Written to ``<root>/pools/<name>_label_first.pt`` beside the joint pools."""
    import torch

    from monai_pairsynth.inferers import LabelFirstPoolSource
    from monai_pairsynth.utils import atomic_save_torch

    _one_thread()
    data = data or PhantomData(settings.num_test)
    name = f"{data.pool_name(n_real, seed)}_label_first"
    out_file = root / "pools" / f"{name}.pt"
    if out_file.is_file():
        return torch.load(out_file, weights_only=True)["info"]
    checkpoint = label_first_generator(root, n_real, seed, data)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"generator {checkpoint} is missing: run the generator stage first")
    p = settings.pool_size(n_real)
    start = time.perf_counter()
    real = data.train(n_real, seed)
    quality_filter = arm_filter(root, data.pool_name(n_real, seed), real, settings, seed)
    filter_seconds = time.perf_counter() - start
    start = time.perf_counter()
    source = LabelFirstPoolSource(
        str(checkpoint),
        cases=real,
        scheduler=settings.sampler,
        num_inference_steps=settings.sampler_steps,
        batch_size=32,
        device="cpu",
    )
    generator = torch.Generator().manual_seed(data.sample_seeds(n_real, seed, 1)[0] + 500_000)
    candidates = source(4 * p, generator)
    sample_seconds = time.perf_counter() - start
    keep, selected = _keep_filtered(
        quality_filter, candidates, p, settings, f"label-first generator {checkpoint.name}"
    )
    info = {
        "name": name,
        "generator": checkpoint.name,
        "n_real": n_real,
        "seed": seed,
        **selected,
        "conditioning": source.last_conditioning,
        "placement_fallbacks": int(source.fallbacks),
        "filter_seconds": round(filter_seconds, 1),
        "sample_seconds": round(sample_seconds, 1),
    }
    atomic_save_torch(
        {"label_first": {k: v[keep].clone() for k, v in candidates.items()}, "info": info}, out_file
    )
    print(f"[pools {name}] {info}", flush=True)
    return info


def pool_file(root: Path, name: str, pool: str) -> Path:
    """Where the pool ``pool`` (``filtered`` / ``unfiltered`` / ``label_first``) of the generator ``name`` lies."""
    return root / "pools" / (f"{name}_label_first.pt" if pool == "label_first" else f"{name}.pt")


def make_pool(tensors: dict[str, Any]) -> Any:
    """A ``SynthesisPool`` holding exactly these triplets (physical units)."""
    from monai_pairsynth.mixing.synthesis_pool import SynthesisPool

    n = int(next(iter(tensors.values())).shape[0])
    cursor = [0]

    def source(num: int, generator: Any) -> dict[str, Any]:
        idx = [(cursor[0] + i) % n for i in range(num)]
        cursor[0] += num
        return {k: v[idx] for k, v in tensors.items()}

    pool = SynthesisPool(n, keys=tuple(tensors), spatial_shape=SPATIAL_SIZE, source=source, request_size=n)
    pool.fill()
    return pool


# ------------------------------------------------------------------------------------------------ segmentation
def _transforms(keys: tuple[str, ...], train: bool) -> Any:
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        DeleteItemsd,
        EnsureTyped,
        RandAffined,
        RandFlipd,
        ScaleIntensityRanged,
    )

    t: list[Any] = [
        ScaleIntensityRanged("ct", -1000.0, 1000.0, -1.0, 1.0, clip=True),
        ScaleIntensityRanged("pet", 0.0, 15.0, -1.0, 1.0, clip=True),
        ConcatItemsd(list(keys), "image", dim=0),
        DeleteItemsd(["ct", "pet"]),
    ]
    if train:
        t += [
            RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
            RandAffined(
                ["image", "label"],
                prob=0.5,
                rotate_range=(0.17,),
                translate_range=(4, 4),
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
        ]
    t.append(EnsureTyped(["image", "label"], track_meta=False))
    return Compose(t)


def _network(in_channels: int) -> Any:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=2,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=2,
        norm="batch",
    )


def _train(network: Any, dataset: Any, steps: int, settings: Settings, seed: int) -> None:
    """``steps`` optimiser steps of a MONAI ``SupervisedTrainer`` over ``dataset`` (reshuffled per epoch)."""
    import torch
    from ignite.engine import Events
    from monai.data import DataLoader
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceCELoss

    from monai_pairsynth.mixing import MixedDataset, MixedDatasetEpochHandler

    loader = DataLoader(
        dataset,
        batch_size=settings.seg_batch,
        shuffle=True,
        drop_last=len(dataset) > settings.seg_batch,
        generator=torch.Generator().manual_seed(seed),
    )
    per_epoch = max(len(loader), 1)
    handlers: list[Any] = []
    if isinstance(dataset, MixedDataset):
        handlers.append(MixedDatasetEpochHandler(dataset))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=-(-steps // per_epoch),
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=settings.seg_lr),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=handlers,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=steps), lambda e: e.terminate())
    trainer.run()


def _test_dice(
    network: Any, keys: tuple[str, ...], test: list[dict[str, Any]], transform: Any = None
) -> list[float]:
    """Dice of every test slice (tumour class), the inputs mapped by ``transform`` (default: the arm's test
    transform of ``keys``)."""
    import torch
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    transform = transform or _transforms(keys, train=False)
    data = [transform(dict(s)) for s in test]
    image = torch.stack([d["image"] for d in data])
    label = torch.stack([d["label"] for d in data])
    network.eval()
    with torch.no_grad():
        pred = torch.cat(
            [network(image[i : i + 32]).argmax(1, keepdim=True) for i in range(0, len(image), 32)]
        )
    metric = DiceMetric(include_background=False, reduction="none")
    dice = metric(one_hot(pred, 2), one_hot(label.long(), 2))
    return [float(v) for v in dice.reshape(-1)]


def run_arm(
    root: Path, n_real: int, seed: int, arm: dict[str, Any], settings: Settings, data: Any = None
) -> dict[str, Any]:
    """Train and test one arm; the result is cached as JSON."""
    import torch
    from monai.utils import set_determinism

    from monai_pairsynth.mixing import MixedDataset
    from monai_pairsynth.utils import atomic_write_json

    _one_thread()
    out_file = root / "segment" / f"n{n_real}_s{seed}_{arm['arm']}.json"
    if out_file.is_file():
        return json.loads(out_file.read_text(encoding="utf-8"))
    start = time.perf_counter()
    set_determinism(seed=seed)
    keys = tuple(arm["keys"])
    data = data or PhantomData(settings.num_test)
    real = data.train(n_real, seed)
    test = data.test()
    pool = None
    if arm["pool"] is not None:
        tensors = torch.load(pool_file(root, data.pool_name(n_real, seed), arm["pool"]), weights_only=True)
        pool = make_pool(tensors[arm["pool"]])
    network = _network(len(keys))
    train_tf = _transforms(keys, train=True)
    if arm["pretrain"]:
        synthetic_only = [pool.get(i) for i in range(len(pool))]
        synthetic_only = [
            {k: v.as_tensor() for k, v in s.items() if k in ("ct", "pet", "label")} for s in synthetic_only
        ]
        from monai.data import Dataset

        _train(network, Dataset(synthetic_only, transform=train_tf), settings.seg_steps, settings, seed)
        network.train()
    dataset = MixedDataset(real, pool, ratio=arm["ratio"], seed=seed, transform=train_tf)
    _train(network, dataset, settings.seg_steps, settings, seed)
    dice = _test_dice(network, keys, test)
    result = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in arm.items()},
        "n_real": n_real,
        "seed": seed,
        "dice": dice,
        "test_patients": data.test_patients(),
        "mean_dice": sum(dice) / len(dice),
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(out_file, result)
    print(
        f"[n{n_real} s{seed} {arm['arm']}] Dice {result['mean_dice']:.4f} ({result['seconds']:.0f} s)",
        flush=True,
    )
    return result


def _call(job: tuple) -> Any:
    fn, args = job
    return fn(*args)


def run_jobs(jobs: list[tuple], processes: int) -> list[Any]:
    if processes <= 1:
        return [_call(j) for j in jobs]
    with mp.get_context("spawn").Pool(processes, initializer=_one_thread, maxtasksperchild=4) as pool:
        return pool.map(_call, jobs, chunksize=1)


# ------------------------------------------------------------------------------------------------ report
def _fmt(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}"


def _test_patients(run: dict[str, Any]) -> list[str]:
    """The test patient of each Dice of a run: its recorded ``test_patients``, else the test slice's index
    (the phantom test set has one slice per simulated patient, in the same order in every run)."""
    return [str(p) for p in run.get("test_patients") or [f"test-{i}" for i in range(len(run["dice"]))]]


def patient_effect(comparison: dict[str, Any]) -> dict[str, float]:
    """The effect over test patients from a ``compare_dice`` result: the mean paired difference (arm − baseline),
    its 95 % t confidence interval and Cohen's d_z (mean / sd of the differences; NaN when they do not vary)."""
    import math

    from scipy import stats

    n, mean, sd = int(comparison["n"]), float(comparison["mean_diff"]), float(comparison["sd_diff"])
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {
        "patient_diff": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "effect_dz": mean / sd if sd > 0 else float("nan"),
    }


def crossed(base_runs: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Arm ``runs`` against ``base_runs`` with the test patients and the seeds both random
    (:func:`monai_pairsynth.metrics.compare_dice_crossed`; the runs are paired by seed)."""
    from monai_pairsynth.metrics import compare_dice_crossed

    by_seed = {r["seed"]: r for r in base_runs}
    base = [by_seed[r["seed"]] for r in runs]
    return compare_dice_crossed(
        [d for r in base for d in r["dice"]],
        [d for r in runs for d in r["dice"]],
        patient_ids=[pid for r in runs for pid in _test_patients(r)],
        run_ids=[r["seed"] for r in runs for _ in r["dice"]],
    )


def summarise(results: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Per (N_real, arm): mean ± sd of the seed means and paired tests against ``real`` (or ``ct_real``)."""
    import numpy as np

    from monai_pairsynth.metrics import compare_dice

    by = {(r["n_real"], r["arm"], r["seed"]): r for r in results}
    table: dict[str, Any] = {}
    for n in settings.n_real:
        for arm in arms(settings):
            name = arm["arm"]
            base = "ct_real" if name.startswith("ct_") else "real"
            runs = [by.get((n, name, s)) for s in settings.seeds]
            if any(r is None for r in runs):
                continue
            means = [r["mean_dice"] for r in runs]
            row = {
                "n_real": n,
                "arm": name,
                "ratio": arm["ratio"],
                "mean": float(np.mean(means)),
                "sd": float(np.std(means, ddof=1)) if len(means) > 1 else 0.0,
                "seed_means": means,
                "baseline": base,
            }
            if name != base:
                base_runs = [by[(n, base, s)] for s in settings.seeds]
                seeds_cmp = compare_dice([r["mean_dice"] for r in base_runs], means)
                patients_cmp = compare_dice(
                    [d for r in base_runs for d in r["dice"]],
                    [d for r in runs for d in r["dice"]],
                    patient_ids=[pid for r in runs for pid in _test_patients(r)],
                )
                both = crossed(base_runs, runs)
                row.update(
                    **patient_effect(patients_cmp),
                    p_crossed=both["t_pvalue"],
                    crossed_ci_low=both["ci_low"],
                    crossed_ci_high=both["ci_high"],
                    diff=seeds_cmp["mean_diff"],
                    p_seed_t=seeds_cmp["t_pvalue"],
                    p_patient_t=patients_cmp["t_pvalue"],
                    p_patient_wilcoxon=patients_cmp["wilcoxon_pvalue"],
                    n_patients=patients_cmp["n"],
                    n_slices=patients_cmp["num_entries"],
                )
            joint = f"filtered_r{arm['ratio']:g}"
            if arm["pool"] == "label_first" and all((n, joint, s) in by for s in settings.seeds):
                # the issue's other question: label-first against joint mixing at the same ratio, by patient
                joint_runs = [by[(n, joint, s)] for s in settings.seeds]
                vs = compare_dice(
                    [d for r in joint_runs for d in r["dice"]],
                    [d for r in runs for d in r["dice"]],
                    patient_ids=[pid for r in runs for pid in _test_patients(r)],
                )
                effect = patient_effect(vs)
                row["vs_joint"] = {
                    "arm": joint,
                    "patient_diff": effect["patient_diff"],
                    "ci_low": effect["ci_low"],
                    "ci_high": effect["ci_high"],
                    "p_patient_t": vs["t_pvalue"],
                    "p_crossed": crossed(joint_runs, runs)["t_pvalue"],
                    "p_seed_t": compare_dice([r["mean_dice"] for r in joint_runs], means)["t_pvalue"],
                }
            table[f"n{n}/{name}"] = row
    return table


def plot(table: dict[str, Any], settings: Settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for n in settings.n_real:
        xs, ys, es = [], [], []
        for r in (0.0, *settings.ratios):
            key = f"n{n}/real" if r == 0 else f"n{n}/filtered_r{r:g}"
            if key in table:
                xs.append(r)
                ys.append(table[key]["mean"])
                es.append(table[key]["sd"])
        line = ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"N_real = {n}")
        lf = [
            (r, table[k]) for r in settings.label_first_ratios if (k := f"n{n}/label_first_r{r:g}") in table
        ]
        if lf and f"n{n}/real" in table:  # label-first arms: dashed, from the same real-only point
            rows = [(0.0, table[f"n{n}/real"]), *lf]
            ax.errorbar(
                [r for r, _ in rows],
                [row["mean"] for _, row in rows],
                yerr=[row["sd"] for _, row in rows],
                marker="s",
                capsize=3,
                linestyle="--",
                color=line[0].get_color(),
                label=f"N_real = {n}, label-first",
            )
    ax.set_xlabel("synthetic ratio r (filtered pool)")
    ax.set_ylabel(f"test Dice (mean ± sd over {len(settings.seeds)} seeds)")
    ax.set_xticks([0.0, *settings.ratios])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _p(value: Any) -> str:
    if value is None:
        return ""
    return "n/a" if value != value else (f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}")


def _verdict(row: dict[str, Any]) -> str:
    """A mechanical reading of one arm against its baseline at the 5 % level: the test with test patients and
    seeds both random (``p_crossed``), else, for a table from before it existed, the t-test over test patients."""
    p = row.get("p_crossed", row.get("p_patient_t"))
    if p is None or p != p:
        return "not testable"
    if p >= 0.05:
        return "no significant difference"
    return "significant gain" if row["diff"] > 0 else "significant loss"


LABELS = {
    "real": "real only (r = 0)",
    "unfiltered": "real + unfiltered synthetic, r = 0.5",
    "filtered_r0.25": "real + filtered synthetic, r = 0.25",
    "filtered_r0.5": "real + filtered synthetic, r = 0.5",
    "filtered_r1": "real + filtered synthetic, r = 1",
    "filtered_r2": "real + filtered synthetic, r = 2",
    "pretrain": "synthetic pretraining, then real fine-tuning",
    "ct_real": "CT-only input: real only",
    "ct_filtered_r0.5": "CT-only input: real + filtered synthetic, r = 0.5",
    "label_first_r0.5": "real + label-first synthetic (filtered), r = 0.5",
    "label_first_r1": "real + label-first synthetic (filtered), r = 1",
}


def arm_label(arm: str) -> str:
    """The report's words for an arm (label-first arms at any ratio)."""
    if arm not in LABELS and arm.startswith("label_first_r"):
        return f"real + label-first synthetic (filtered), r = {arm.removeprefix('label_first_r')}"
    return LABELS[arm]


def dice_tables(settings: Settings, table: dict[str, Any]) -> str:
    lines = []
    for n in settings.n_real:
        lines += [
            f"### N_real = {n}",
            "",
            "| arm | test Dice, mean ± sd over seeds | Δ vs baseline | Δ over test patients [95 % CI], d_z | "
            "p (t, seed means) | p (t, test patients) | p (Wilcoxon, test patients) | "
            "p (patients × seeds) [95 % CI] | reading |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for arm in arms(settings):
            row = table.get(f"n{n}/{arm['arm']}")
            if row is None:
                continue
            diff = f"{row['diff']:+.3f}" if "diff" in row else "(baseline)"
            reading = _verdict(row) if "diff" in row else ""
            effect = (
                f"{row['patient_diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], {row['effect_dz']:+.2f}"
                if "patient_diff" in row
                else ""
            )
            both = (
                f"{_p(row['p_crossed'])} [{row['crossed_ci_low']:+.3f}, {row['crossed_ci_high']:+.3f}]"
                if "p_crossed" in row
                else ""
            )
            lines.append(
                f"| {arm_label(arm['arm'])} | {_fmt(row['mean'], row['sd'])} | {diff} | {effect} | "
                f"{_p(row.get('p_seed_t'))} | {_p(row.get('p_patient_t'))} | {_p(row.get('p_patient_wilcoxon'))} | "
                f"{both} | {reading} |"
            )
        lines.append("")
    return "\n".join(lines)


def outcome(settings: Settings, table: dict[str, Any]) -> str:
    """Plain sentences read off the table (mechanically: t-test over test patients at 5 %, and the seed means)."""
    out = []
    for n in settings.n_real:
        rows = {k.split("/")[1]: v for k, v in table.items() if v["n_real"] == n}
        if "real" not in rows:
            continue
        gains = [arm_label(a) for a, r in rows.items() if "diff" in r and _verdict(r) == "significant gain"]
        losses = [arm_label(a) for a, r in rows.items() if "diff" in r and _verdict(r) == "significant loss"]
        best = max((r for a, r in rows.items() if not a.startswith("ct_")), key=lambda r: r["mean"])
        text = f"- **N_real = {n}**: real only {_fmt(rows['real']['mean'], rows['real']['sd'])}. "
        text += f"Best two-channel arm: {arm_label(best['arm'])} ({_fmt(best['mean'], best['sd'])}). "
        text += ("Significant gains: " + "; ".join(gains) + ". ") if gains else "No arm gains significantly. "
        text += (
            ("Significant losses: " + "; ".join(losses) + ".") if losses else "No arm loses significantly."
        )
        if "filtered_r0.5" in rows and "unfiltered" in rows:
            f, u = rows["filtered_r0.5"]["mean"], rows["unfiltered"]["mean"]
            text += f" Filtered vs unfiltered at r = 0.5: {f:.3f} vs {u:.3f}."
        versus = [
            f"r = {r['ratio']:g}: {v['patient_diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}], "
            f"p = {_p(v['p_patient_t'])} (patients × seeds p = {_p(v.get('p_crossed'))}; seed means p = "
            f"{_p(v['p_seed_t'])})"
            for r in rows.values()
            if (v := r.get("vs_joint"))
        ]
        if versus:
            text += (
                " Label-first minus joint (filtered) mixing over test patients, " + "; ".join(versus) + "."
            )
        out.append(text)
    seed_level = [
        f"{arm_label(r['arm'])} (N_real = {r['n_real']})"
        for r in table.values()
        if r.get("p_seed_t") is not None and r["p_seed_t"] == r["p_seed_t"] and r["p_seed_t"] < 0.05
    ]
    k = len(settings.seeds)
    out.append(
        f"- Over the seed means (paired t-test, n = {k}): "
        + (
            "significant at 5 % for " + "; ".join(seed_level)
            if seed_level
            else "no difference is significant at 5 %"
        )
        + f". With {k} seeds only large effects can be. The test-patient p-values treat the test patients as the"
        " sample (each patient's Dice averaged over seeds first) and the trained segmenters as fixed; the readings"
        " use the test with both random (patients × seeds), which counts the retraining noise as well."
    )
    return "\n".join(out)


def pool_table(pools: list[dict]) -> str:
    lines = [
        "| generator | real cases | candidates | kept (filtered pool) | filter decisions | sampling time | filter fit |",
        "|---|---|---|---|---|---|---|",
    ]
    for info in sorted(pools, key=lambda i: (i["n_real"], i["seed"])):
        rej = ", ".join(f"{k} {v}" for k, v in info["rejections"].items() if v)
        lines.append(
            f"| {info.get('name') or generator_name(info['n_real'], info['seed'])} | {info['n_real']} | {info['candidates']} | "
            f"{info['pool_size']} | {rej or '—'} | {info['sample_seconds']:.0f} s | {info['filter_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def generator_table(root: Path) -> str:
    path = root / "generators" / "generators.json"
    if not path.is_file():
        return "(no generators.json next to the generators)"
    runs = json.loads(path.read_text(encoding="utf-8"))
    lines = [
        "| generator | real cases | optimiser steps (batch 16) | epochs | s per step | wall time | last-epoch loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(runs, key=lambda k: (runs[k]["n_real"], runs[k]["seed"])):
        r = runs[name]
        lines.append(
            f"| {name} | {r['n_real']} | {r['iterations']} | {r['epochs']} | {r['seconds_per_iteration']:.3f} | "
            f"{r['wall_seconds']:.0f} s | {r['last_epoch_metrics'].get('loss', float('nan')):.3f} |"
        )
    return "\n".join(lines)


SECTION_START = "<!-- real-patients:start (written by experiments/real_patients.py) -->"
SECTION_END = "<!-- real-patients:end -->"


def _markers(name: str) -> tuple[str, str]:
    if name == "real-patients":
        return SECTION_START, SECTION_END
    return f"<!-- {name}:start (written by experiments/) -->", f"<!-- {name}:end -->"


def replace_section(text: str, body: str, name: str = "real-patients") -> str:
    """``text`` with the section ``name`` (default: the real-patient one) replaced by ``body`` (appended when
    absent)."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        return head + block + rest.split(end, 1)[1].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + block


def kept_section(text: str, name: str = "real-patients") -> str:
    """The section ``name`` of an existing page (``""`` when it has none), so rewriting the phantom page keeps it."""
    start, end = _markers(name)
    if start in text and end in text:
        return start + text.split(start, 1)[1].split(end, 1)[0] + end + "\n"
    return ""


#: the sections other scripts write into the phantom page, kept when it is rewritten
KEPT_SECTIONS = ("label-first-phantom", "real-patients")


def label_first_setup(s: Settings, pools: list[dict]) -> str:
    """The set-up bullet of the label-first arms (issue 14), with how each pool gave its masks."""
    infos = [i for i in pools if "conditioning" in i]
    if not s.label_first_ratios:
        return ""
    how = "; ".join(
        f"{i['name']}: {i['generator']}, masks given {i['conditioning']}, {i['placement_fallbacks']} of "
        f"{i['candidates']} placements fell back to the original position"
        for i in sorted(infos, key=lambda i: (i["n_real"], i["seed"]))
    )
    return (
        "- **Label-first pools** (arms `label_first_r*`, r = "
        + ", ".join(f"{r:g}" for r in s.label_first_ratios)
        + "). 4P masks drawn from the arm's real masks (rotated, scaled, elastically deformed and placed inside "
        "the body of their case by `monai_pairsynth.inferers.LabelFirstPoolSource`), CT + PET generated for "
        "them by the arm's per-modality-timestep generator (`<name>_cond.pt`, masks given clean at t = 0) or, "
        "where there is none, its joint generator (masks clamped); the same filter keeps P. "
        + (f"Pools: {how}.\n" if how else "No label-first pool was built in this run.\n")
    )


def write_report(
    root: Path,
    settings: Settings,
    table: dict[str, Any],
    pools: list[dict],
    results: list[dict],
    seconds: dict[str, float],
    machine_note: str,
    png_name: str,
) -> str:
    """The whole ``docs/results.md`` page."""
    import torch

    s = settings
    total_runs = len(results)
    return f"""# Results: the downstream experiment on phantom data

This page is written by `experiments/downstream.py` (do not edit by hand: rerun it). It answers the
product's question on the built-in phantom: do aligned synthetic PET/CT/mask triplets, mixed into the
training of an ordinary MONAI segmentation network, raise its test Dice when real annotated cases are
few? Every number below was measured by the commands in [How to reproduce](#how-to-reproduce).

## Set-up

- **Real data.** Phantom head-and-neck slices (64×64 at 4 mm; one slice per simulated patient, so the
  case sets are patient-disjoint by construction). Low-data regimes N_real = {", ".join(map(str, s.n_real))}
  training cases per seed ({len(s.seeds)} seeds; seed k uses its own cases, and the 16-case set is the first
  16 of the 64-case set). Test set: {s.num_test} held-out slices, the same for every arm and seed
  (`experiments/downstream_splits.py`).
- **Generators.** One linked diffusion model per (N_real, seed), trained only on that arm's real cases
  (`experiments/train_generators.py`, the CPU default widths (16, 32, 32), batch 16, lr 5e-4, EMA 0.005,
  augmentation on). {machine_note}
- **Pools.** From each generator, {s.sampler.upper()} ({s.sampler_steps} strided steps; the deterministic
  samplers are not used, see [sampling.md](sampling.md#which-sampler-deterministic-solvers-need-a-well-trained-generator))
  draws 4P candidates; the *filtered* pool keeps P of them with the feature-centroid filter in pool mode
  (its segmenter trained on the arm's real cases only), the *unfiltered* pool is the first P candidates.
  P = {", ".join(f"{p} for N_real = {n}" for n, p in s.pool_sizes)}; mixing draws r·N synthetic items per
  epoch from it (with replacement across epochs, so at r ≥ 1 entries repeat, under random augmentation).
{label_first_setup(s, pools)}- **Segmentation.** MONAI `UNet` (channels 16–128, 2 residual units, batch norm), `DiceCELoss`, Adam lr
  {s.seg_lr:g}, batch {s.seg_batch}, random flip and affine; **{s.seg_steps} optimiser steps in every arm**
  (so mixed arms see fewer real samples per step and no extra compute), through MONAI's
  `SupervisedTrainer` with the package's `MixedDataset` + `MixedDatasetEpochHandler`. The pretraining arm
  runs {s.seg_steps} steps on the filtered pool alone, then {s.seg_steps} on real cases. Input: CT + PET
  (two channels), or CT alone in the CT-only variant. The network after the last step is tested (no
  model selection on test data; no validation split is used).
- **Statistics, by patient.** Dice per test slice (tumour, background excluded; every test slice contains
  tumour; here one slice per simulated patient). "mean ± sd over seeds" is over the {len(s.seeds)} per-seed
  mean Dice values. p-values compare each arm with its baseline (`real`, or `ct_real` for the CT-only arm):
  paired t-test over the seed means (n = {len(s.seeds)}, low power), paired t-test and Wilcoxon
  signed-rank over the test patients (n = {s.num_test}; each patient's Dice averaged over its slices and the
  {len(s.seeds)} seeds first, so no patient counts twice; the trained networks are held fixed), and the test
  with test patients and seeds both random (`compare_dice_crossed`: two-way analysis of the per-seed,
  per-patient differences, as readers and cases in MRMC studies). "reading" applies that last test at the
  5 % level.

## What came out

{outcome(s, table)}

## Test Dice

{dice_tables(s, table)}
![Dice against the synthetic ratio]({png_name})

*Test Dice against r for the filtered pool (r = 0 is real only), mean ± sd over seeds.*

## Generators (stage 1)

{generator_table(root)}

## Pools

{pool_table(pools)}

## How to reproduce

```bash
# stage 1: one generator per (N_real, seed), on that arm's real cases only
python experiments/train_generators.py --out {root}/generators --device cuda --max-minutes 6
# stages 2-4: pools, {total_runs} segmentation runs, this page (2 processes, one torch thread each)
python experiments/downstream.py all --root {root} --jobs 2 --results-md docs/results.md
```

Wall times: {", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())}. Machine of stages 2–4:
{platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, one torch thread per process.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("pools", "segment", "report", "all"))
    p.add_argument("--root", default="runs/downstream", help="holds generators/ (stage 1) and all outputs")
    p.add_argument("--jobs", type=int, default=2, help="parallel processes (one torch thread each)")
    p.add_argument("--quick", action="store_true", help="tiny rehearsal sizes")
    p.add_argument("--results-md", default=None, help="write the report here (default: <root>/results.md)")
    p.add_argument(
        "--machine-note",
        default="",
        help="where and how stage 1 ran, for the report (e.g. 'on one NVIDIA H200, 6 minutes each')",
    )
    args = p.parse_args(argv)
    settings = QUICK if args.quick else FULL
    root = Path(args.root)
    _one_thread()
    t0 = time.perf_counter()
    pools: list[dict] = []
    if args.stage in ("pools", "all", "report"):
        jobs = [(build_pools, (root, n, s, settings)) for n in settings.n_real for s in settings.seeds]
        if args.stage == "report":
            import torch

            pools = [
                torch.load(path, weights_only=True)["info"]
                for n in settings.n_real
                for s in settings.seeds
                for kind in ("filtered", "label_first")
                if (path := pool_file(root, generator_name(n, s), kind)).is_file()
            ]
        else:
            pools = run_jobs(jobs, args.jobs)
            if settings.label_first_ratios:  # after the joint pools: they fitted the filter these reuse
                pools += run_jobs([(build_label_first_pool, j[1]) for j in jobs], args.jobs)
    results: list[dict] = []
    if args.stage in ("segment", "all", "report"):
        jobs = [
            (run_arm, (root, n, s, arm, settings))
            for n in sorted(settings.n_real, reverse=True)  # the longer N = 64 runs first
            for s in settings.seeds
            for arm in arms(settings)
        ]
        if args.stage == "report":
            results = [
                _call(j)
                for j in jobs
                if (root / "segment" / f"n{j[1][1]}_s{j[1][2]}_{j[1][3]['arm']}.json").is_file()
            ]
        else:
            results = run_jobs(jobs, args.jobs)
    if args.stage in ("report", "all"):
        from monai_pairsynth.utils import atomic_write_json, atomic_write_text

        table = summarise(results, settings)
        out = Path(args.results_md) if args.results_md else root / "results.md"
        png = out.parent / ("results_dice_vs_ratio.png" if args.results_md else "dice_vs_ratio.png")
        plot(table, settings, png)
        atomic_write_json(
            root / "summary.json", {"settings": asdict(settings), "table": table, "pools": pools}
        )
        seconds = {
            "segmentation runs (sum of per-run wall times)": sum(r["seconds"] for r in results),
            "pool building (sum)": sum(i["sample_seconds"] + i["filter_seconds"] for i in pools),
        }
        timing_file = root / "all_wall_seconds.json"
        if args.stage == "all":
            atomic_write_json(timing_file, {"seconds": time.perf_counter() - t0, "jobs": args.jobs})
        if timing_file.is_file():
            timing = json.loads(timing_file.read_text(encoding="utf-8"))
            seconds[f"the whole `all` command with {timing['jobs']} processes"] = timing["seconds"]
        text = write_report(root, settings, table, pools, results, seconds, args.machine_note, png.name)
        old_text = out.read_text(encoding="utf-8") if out.is_file() else ""
        real_section = "\n".join(filter(None, (kept_section(old_text, n) for n in KEPT_SECTIONS)))
        atomic_write_text(out, text.rstrip("\n") + "\n\n" + real_section if real_section else text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
