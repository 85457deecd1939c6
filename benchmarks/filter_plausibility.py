"""How many of the demo generator's candidates each plausibility rule of the quality filter rejects.

The candidates are generated the way the bundle's ``generate.json`` makes its pool: a
:class:`~monai_pairsynth.inferers.DiffusionPoolSource` on the demo checkpoint
(``bundles/pet_ct_pairsynth/models/diffusion_demo.pt``), strided DDPM with ``--steps`` (100) steps, called in
chunks of ``--batch-size`` (16) with a CPU generator seeded with ``--seed`` (as ``SynthesisPool`` seeds it), in
physical units. The filter is fitted on ``--num-train`` real phantom triplets at the checkpoint's grid (64×64,
4 mm; ``real_samples``, the bundle's training split) with a feature segmenter trained on them (the settings of
``benchmarks/filter_acceptance.py``), ``units="physical"``, every rule at its default.

Reported per rule (``mask_outside_body``, ``empty_mask``, ``no_pet_uptake``):

- ``alone``: candidates whose measurement fails the rule's threshold, whatever the other rules say;
- ``rejected as``: the reason ``select`` reports (the first failing check, rules in this order, after
  ``non_finite``), streaming mode;
- ``real``: the same rule on ``--num-test`` held-out real phantom triplets (false rejections);

and after the rules, what the network checks reject (``memorised``, ``uncertain``, ``far_from_centroid``, the
centroid test last), in streaming mode and in the bundle's pool mode (``r = 1``, ``N = candidates / 4``: a
quarter kept), each next to the same selection without the rules (``select(..., plausibility=False)``); and
how many of the accepted candidates have an empty mask, with and without the rules.

Usage::

    python benchmarks/filter_plausibility.py                          # 64 candidates, DDPM-100
    python benchmarks/filter_plausibility.py --num-candidates 32 --json /tmp/plausibility.json
    python benchmarks/filter_plausibility.py --num-candidates 8 --steps 5   # a rehearsal only
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from monai_pairsynth.bundle_checks import check_generator_checkpoint
from monai_pairsynth.data.sources import real_samples
from monai_pairsynth.inferers import DiffusionPoolSource
from monai_pairsynth.quality import FeatureCentroidFilter, train_feature_segmenter

KEYS = ("ct", "pet", "label")
RULES = (
    ("mask_outside_body", "mask_in_body", "min_mask_in_body"),
    ("empty_mask", "mask_voxels", "min_mask_voxels"),
    ("no_pet_uptake", "pet_uptake", "min_pet_uptake"),
)
NETWORK_CHECKS = ("non_finite", "memorised", "uncertain", "far_from_centroid")
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "bundles/pet_ct_pairsynth/models/diffusion_demo.pt"


def generate(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], float]:
    """``--num-candidates`` triplets in physical units, as the bundle's pool source makes them."""
    source = DiffusionPoolSource(
        str(args.checkpoint),
        num_inference_steps=args.steps,
        scheduler=args.sampler,
        batch_size=args.batch_size,
        device="cpu",
    )
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    parts = []
    start = time.perf_counter()
    for first in range(0, args.num_candidates, args.batch_size):  # the chunks _ProgressSource asks for
        n = min(args.batch_size, args.num_candidates - first)
        parts.append(source(n, generator))
        print(
            f"  generated {first + n}/{args.num_candidates} ({time.perf_counter() - start:.0f} s)", flush=True
        )
    return {k: torch.cat([p[k] for p in parts]).cpu() for k in KEYS}, time.perf_counter() - start


def stack(samples: list[dict]) -> dict[str, torch.Tensor]:
    def plain(v):
        return v.as_tensor() if hasattr(v, "as_tensor") else v

    return {k: torch.stack([plain(s[k]) for s in samples]) for k in KEYS}


def fit_filter(args: argparse.Namespace, size: list[int], spacing: float) -> FeatureCentroidFilter:
    real = real_samples(
        None,
        "train",
        spatial_size=size,
        spacing=spacing,
        num_phantom_cases=args.num_train,
        phantom_seed=args.seed,
    )
    real = [{k: s[k].as_tensor() for k in KEYS} for s in real]
    network = train_feature_segmenter(
        real,
        channels=tuple(args.channels),
        num_res_units=0,
        dropout=0.2,
        epochs=args.epochs,
        batch_size=8,
        learning_rate=2e-2,
        seed=args.seed,
        units="physical",
    )
    return FeatureCentroidFilter(network, mc_passes=args.mc_passes, units="physical", seed=args.seed).fit(
        real
    )


def summarise(filt: FeatureCentroidFilter, candidates: dict, real: dict) -> dict:
    scores = filt.score(candidates)
    real_scores = filt.score(real)
    thresholds = filt.thresholds
    n = int(scores["distance"].shape[0])
    streaming = filt.select(scores=scores)
    unruled = filt.select(scores=scores, plausibility=False)
    pool = pool_unruled = None
    if n % 4 == 0:
        pool = filt.select(scores=scores, mode="pool", ratio=1.0, num_real=n // 4)
        pool_unruled = filt.select(scores=scores, mode="pool", ratio=1.0, num_real=n // 4, plausibility=False)
    empty = (candidates["label"] > 0.5).flatten(1).sum(1) == 0
    counts, counts_unruled = streaming.reason_counts(), unruled.reason_counts()
    rules = {}
    for reason, key, name in RULES:
        limit = thresholds[name]
        rule = filt.plausibility_rules[reason]
        entry = {"threshold": limit, "note": rule["note"], "rejected_as": counts[reason]}
        if limit is not None and key in scores:
            values = scores[key]
            entry["alone"] = int((values < limit).sum())
            entry["real"] = int((real_scores[key] < limit).sum())
            finite = values[torch.isfinite(values)]
            entry["candidate_median"] = float(finite.median()) if finite.numel() else None
            entry["real_median"] = float(real_scores[key][torch.isfinite(real_scores[key])].median())
        else:
            entry.update(alone=0, real=0, candidate_median=None, real_median=None)
        if pool is not None:
            entry["pool_rejected_as"] = pool.reason_counts()[reason]
        rules[reason] = entry
    network = {
        check: {
            "after_rules": counts[check],
            "without_rules": counts_unruled[check],
            **(
                {
                    "pool": pool.reason_counts()[check],
                    "pool_without_rules": pool_unruled.reason_counts()[check],
                }
                if pool is not None
                else {}
            ),
        }
        for check in NETWORK_CHECKS
    }
    return {
        "num_candidates": n,
        "num_real": int(real_scores["distance"].shape[0]),
        "rules": rules,
        "network_checks": network,
        "accepted": {
            "streaming": streaming.num_accepted,
            "streaming_without_rules": unruled.num_accepted,
            **(
                {"pool": pool.num_accepted, "pool_without_rules": pool_unruled.num_accepted}
                if pool is not None
                else {}
            ),
        },
        "empty_masks": int(empty.sum()),
        # empty-mask candidates among the accepted: the network checks alone let these through (certainty is
        # 1 when the generated and the predicted mask are both empty)
        "accepted_empty": {
            "streaming": int(empty[streaming.mask].sum()),
            "streaming_without_rules": int(empty[unruled.mask].sum()),
            **(
                {
                    "pool": int(empty[pool.mask].sum()),
                    "pool_without_rules": int(empty[pool_unruled.mask].sum()),
                }
                if pool is not None
                else {}
            ),
        },
    }


def markdown(out: dict) -> str:
    n, m = out["num_candidates"], out["num_real"]
    lines = [
        f"| check | threshold | candidates failing it (of {n}) | rejected as, streaming (of {n}) | "
        f"rejected as, pool (of {n}) | real phantom failing it (of {m}) | median: candidates / real |",
        "|---|---|---|---|---|---|---|",
    ]
    for reason, entry in out["rules"].items():
        thr = "off" if entry["threshold"] is None else f"{entry['threshold']:.3g}"
        cand, real = entry["candidate_median"], entry["real_median"]
        med = "-" if real is None else f"{'n/a' if cand is None else f'{cand:.3g}'} / {real:.3g}"
        lines.append(
            f"| `{reason}` | {thr} | {entry['alone']} | {entry['rejected_as']} | "
            f"{entry.get('pool_rejected_as', '-')} | {entry['real']} | {med} |"
        )
    for check, entry in out["network_checks"].items():
        pool = f"{entry['pool']} ({entry['pool_without_rules']})" if "pool" in entry else "-"
        lines.append(
            f"| `{check}` (without the rules) | - | - | {entry['after_rules']} ({entry['without_rules']}) | "
            f"{pool} | - | - |"
        )
    acc, empty = out["accepted"], out["accepted_empty"]
    pool = f"{acc['pool']} ({acc['pool_without_rules']})" if "pool" in acc else "-"
    pool_empty = f"{empty['pool']} ({empty['pool_without_rules']})" if "pool" in empty else "-"
    lines.append(
        f"| accepted (without the rules) | - | - | {acc['streaming']} ({acc['streaming_without_rules']}) | "
        f"{pool} | - | - |"
    )
    lines.append(
        f"| of those with an empty mask (without the rules) | - | - | {empty['streaming']} "
        f"({empty['streaming_without_rules']}) | {pool_empty} | - | - |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--num-candidates", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="strided DDPM steps (the bundle's 100)")
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--num-train", type=int, default=128, help="real phantom triplets the filter is fitted on"
    )
    parser.add_argument(
        "--num-test", type=int, default=64, help="held-out real phantom triplets (false rejections)"
    )
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--mc-passes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.num_candidates < 1:
        parser.error(f"--num-candidates must be >= 1, got {args.num_candidates}")
    torch.set_num_threads(args.threads)
    info = check_generator_checkpoint(args.checkpoint)
    size, spacing = info["spatial_size"], info["spacing"]
    print(
        f"checkpoint {args.checkpoint} ({size}, {spacing} mm); fitting the filter on {args.num_train} real",
        flush=True,
    )
    start = time.perf_counter()
    filt = fit_filter(args, size, spacing)
    fit_s = time.perf_counter() - start
    for reason, rule in filt.plausibility_rules.items():
        print(f"  {reason}: {rule['note']}")
    print(f"generating {args.num_candidates} candidates ({args.sampler}, {args.steps} steps)", flush=True)
    candidates, generate_s = generate(args)
    test = real_samples(
        None,
        "test",
        spatial_size=size,
        spacing=spacing,
        num_phantom_cases=args.num_test,
        phantom_seed=args.seed,
    )
    out = summarise(filt, candidates, stack(test))
    out["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out["timings_s"] = {"fit": round(fit_s, 1), "generate": round(generate_s, 1)}
    out["machine"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.machine(),
    }
    print(json.dumps(out, indent=2))
    print()
    print(markdown(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
