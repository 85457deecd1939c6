"""Acceptance rates of the quality filter on real phantom triplets and constructed misgenerations.

For each seed: train the feature segmenter on ``--num-train`` phantom cases, fit a
:class:`~monai_pairsynth.quality.FeatureCentroidFilter` (thresholds calibrated on ``--num-calibration``
held-out cases), then score ``--num-test`` further held-out cases, four corruptions of them (mask shifted off
the tumour, tumour uptake removed from PET, pure noise, CT mirrored against its PET) and near-copies of
training cases (CT and PET plus Gaussian noise of sigma 0.01 on the [-1, 1] scale). Reports, per case type,
the median scores, the streaming acceptance rate with the rejection reasons, and for pool mode (N = 16, r = 0.5: pools of 4rN = 32 candidates,
16 real + 16 of the case type, 8 kept) the share of real triplets among the kept ones (0.5 = chance).

Usage::

    python benchmarks/filter_acceptance.py                 # the table in docs/quality_filter.md
    python benchmarks/filter_acceptance.py --seeds 0 --json /tmp/acceptance.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from monai_pairsynth.data import NormalizeModalitiesd, PhantomDataset
from monai_pairsynth.quality import FeatureCentroidFilter, corrupt_triplets, train_feature_segmenter

KEYS = ("ct", "pet", "label")
CORRUPTIONS = ("shifted_mask", "tumour_removed_pet", "pure_noise", "flipped_ct")
CASES = ("real", *CORRUPTIONS, "near_copy")


def phantom(num: int, base_seed: int, size: int, spacing: float) -> list[dict[str, torch.Tensor]]:
    ds = PhantomDataset(
        num,
        base_seed=base_seed,
        spatial_size=(size, size),
        spacing=spacing,
        transform=NormalizeModalitiesd(list(KEYS)),
    )
    cases = [ds[i] for i in range(len(ds))]  # index: PhantomDataset has no end for a `for` loop
    return [{k: c[k].as_tensor() for k in KEYS} for c in cases]


def stack(cases: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([c[k] for c in cases]) for k in KEYS}


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    base = 1_000_000 * seed
    train = phantom(args.num_train, base, args.size, args.spacing)
    calibration = phantom(args.num_calibration, base + 500_000, args.size, args.spacing)
    test = stack(phantom(args.num_test, base + 600_000, args.size, args.spacing))
    start = time.perf_counter()
    network = train_feature_segmenter(
        train,
        channels=tuple(args.channels),
        num_res_units=0,
        dropout=0.2,
        epochs=args.epochs,
        batch_size=8,
        learning_rate=2e-2,
        seed=seed,
    )
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    filt = FeatureCentroidFilter(
        network, mc_passes=args.mc_passes, num_strata=args.num_strata, strata=args.strata, seed=seed
    ).fit(train, calibration=calibration)
    fit_s = time.perf_counter() - start

    batches = {"real": test}
    for kind in CORRUPTIONS:
        batches[kind] = corrupt_triplets(test, kind, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    copies = stack(train[: args.num_test])
    for key in ("ct", "pet"):
        copies[key] = (copies[key] + 0.01 * torch.randn(copies[key].shape, generator=g)).clamp(-1, 1)
    batches["near_copy"] = copies

    out: dict = {"seed": seed, "train_s": train_s, "fit_s": fit_s, "cases": {}}
    scores = {}
    score_s = 0.0
    for name, batch in batches.items():
        start = time.perf_counter()
        scores[name] = filt.score(batch)
        score_s += time.perf_counter() - start
    out["score_samples_per_s"] = sum(len(s["distance"]) for s in scores.values()) / score_s
    for name in CASES:
        s = scores[name]
        result = filt.select(scores=s)
        entry = {
            "n": len(result),
            "median_distance": float(s["distance"].median()),
            "median_certainty": float(s["certainty"].median()),
            "median_nearest_real": float(s["nearest_real"].median()),
            "accepted": result.num_accepted / len(result),
            "reasons": {k: v for k, v in result.reason_counts().items() if v and k != "accepted"},
        }
        if name != "real":
            kept = total = 0
            n = min(len(scores["real"]["distance"]), len(s["distance"]))
            for start in range(0, n - 15, 16):
                pool = {
                    k: torch.cat([scores["real"][k][start : start + 16], s[k][start : start + 16]]) for k in s
                }
                pooled = filt.select(scores=pool, mode="pool", ratio=0.5, num_real=16)
                kept += int((pooled.indices < 16).sum())
                total += pooled.num_accepted
            entry["pool_real_share"] = kept / total
        if name in CORRUPTIONS:  # paired with the real case it was made from
            entry["distance_above_original"] = float(
                (s["distance"] > scores["real"]["distance"]).float().mean()
            )
        out["cases"][name] = entry
    out["thresholds"] = filt.thresholds
    # the same centroid with thresholds calibrated in-sample (on the training cases) instead of held-out ones:
    # the share of real held-out cases beyond the distance threshold in each case
    in_sample = FeatureCentroidFilter(
        network, mc_passes=args.mc_passes, num_strata=args.num_strata, strata=args.strata, seed=seed
    ).fit(train)
    real = scores["real"]
    beyond = {}
    for label, f in (("held_out_calibration", filt), ("in_sample_calibration", in_sample)):
        limit = torch.tensor(f.thresholds["distance"])[real["stratum"].clamp_min(0)]
        beyond[label] = float((real["distance"] > limit).float().mean())
    out["real_beyond_distance_threshold"] = beyond
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-train", type=int, default=128)
    parser.add_argument("--num-calibration", type=int, default=32)
    parser.add_argument("--num-test", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--spacing", type=float, default=4.0)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--mc-passes", type=int, default=4)
    parser.add_argument("--num-strata", type=int, default=1)
    parser.add_argument("--strata", default="kmeans")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy 2-core box)"
    )
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = []
    wall = time.perf_counter()
    for seed in args.seeds:
        run = run_seed(seed, args)
        runs.append(run)
        print(
            f"seed {seed}: train {run['train_s']:.1f} s, fit {run['fit_s']:.1f} s, "
            f"scoring {run['score_samples_per_s']:.0f} samples/s, thresholds {run['thresholds']}",
            flush=True,
        )

    def agg(name: str, field: str) -> str:
        values = [r["cases"][name][field] for r in runs]
        mean = statistics.fmean(values)
        if len(values) == 1:
            return f"{mean:.2f}"
        return f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})"

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; torch {torch.__version__}, "
        f"{args.threads} thread(s); python {platform.python_version()}"
    )
    print(
        f"setup: {args.num_train} train / {args.num_calibration} calibration / {args.num_test} test phantom cases, "
        f"{args.size}x{args.size} at {args.spacing:g} mm; UNet channels {tuple(args.channels)}, {args.epochs} epochs; "
        f"K = {args.mc_passes}, strata = {args.num_strata} ({args.strata}); seeds {args.seeds}; "
        "mean (min-max) over seeds"
    )
    print()
    print(
        "| case | median distance | distance above its original | median certainty | median nearest_real | "
        "streaming: accepted | streaming: rejected as | pool: real share of kept |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in CASES:
        reasons: dict[str, int] = {}
        for r in runs:
            for k, v in r["cases"][name]["reasons"].items():
                reasons[k] = reasons.get(k, 0) + v
        n = sum(r["cases"][name]["n"] for r in runs)
        why = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "-"
        pool = agg(name, "pool_real_share") if name != "real" else "-"
        above = agg(name, "distance_above_original") if name in CORRUPTIONS else "-"
        print(
            f"| {name} | {agg(name, 'median_distance')} | {above} | {agg(name, 'median_certainty')} | "
            f"{agg(name, 'median_nearest_real')} | {agg(name, 'accepted')} | {why} | {pool} |"
        )
    timing = ", ".join(f"{k} {statistics.fmean(r[k] for r in runs):.1f}" for k in ("train_s", "fit_s"))
    print(
        f"\ntimings (mean over seeds): {timing}, scoring "
        f"{statistics.fmean(r['score_samples_per_s'] for r in runs):.0f} samples/s"
    )
    for label in ("held_out_calibration", "in_sample_calibration"):
        values = [r["real_beyond_distance_threshold"][label] for r in runs]
        print(
            f"real held-out cases beyond the distance threshold ({args.num_test} per seed), {label}: "
            f"{statistics.fmean(values):.2f} ({min(values):.2f}-{max(values):.2f})"
        )
    print(f"total wall time {time.perf_counter() - wall:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
