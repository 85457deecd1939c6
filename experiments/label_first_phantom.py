"""Label-first against joint mixing on the phantom, with demo-scale generators (issue 14, item 5, phantom half).

The phantom experiment proper (``downstream.py``) trains one generator per (N_real, seed) on a GPU; those are not
on this machine. This variant answers the label-first question on the phantom with what the CPU allows, and says
how it differs:

- **Generators.** The two fine-tunes of ``benchmarks/conditional_sampling.py`` (docs/sampling.md): both start from
  the bundle's demo checkpoint (2,280 steps on phantom seeds 0-319) and train 160 more steps on the same data, one
  with shared timesteps (``shared``: the joint pools), one with per-modality timesteps (``per_modality``: the
  label-first pools, masks given clean). Same budget, so joint and label-first differ only in the recipe. Unlike
  ``downstream.py`` the generators were trained on 320 other phantom patients, not on the arm's own cases (seeds
  disjoint from every training and test case of the experiment, see ``downstream_splits.py``).
- **Pools, segmentation, statistics**: ``downstream.py``'s stages (N_real = 16, 3 seeds, 256 held-out test
  slices, one pool per kind shared by the seeds, DDPM-50, 4P candidates -> P = 16), by patient.

Usage::

    python benchmarks/conditional_sampling.py --init-checkpoint bundles/pet_ct_pairsynth/models/diffusion_demo.pt \\
        --epochs 8 --samplers ddpm:100 --feature-epochs 0 --threads 1 --output-dir runs/cond/models
    python experiments/label_first_phantom.py --root runs/label_first_phantom \\
        --shared runs/cond/models/shared/checkpoint.pt --per-modality runs/cond/models/per_modality/checkpoint.pt \\
        --jobs 2 --results-md docs/results.md

Finished pools and runs are cached under ``--root``; a repeated command resumes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import downstream  # noqa: E402

SECTION = "label-first-phantom"
SETTINGS = downstream.Settings(
    n_real=(16,),
    seeds=(0, 1, 2),
    num_test=256,
    pool_sizes=((16, 16),),
    ratios=(0.5, 1.0),
    ct_only=False,
    label_first_ratios=(0.5, 1.0),
)
QUICK = downstream.Settings(
    n_real=(16,),
    seeds=(0,),
    num_test=8,
    pool_sizes=((16, 4),),
    sampler_steps=2,
    seg_steps=2,
    filter_epochs=1,
    plausibility=False,
    ratios=(0.5,),
    ct_only=False,
    label_first_ratios=(0.5,),
)


@dataclass(frozen=True)
class DemoGenerators(downstream.PhantomData):
    """The phantom cases of ``downstream.py`` with one pair of generators for every seed: ``<root>/generators/
    demo.pt`` (joint) and ``demo_cond.pt`` (per-modality timesteps, for the label-first pool)."""

    def generator_file(self, root: Path, n_real: int, seed: int) -> Path:
        return root / "generators" / "demo.pt"

    def pool_name(self, n_real: int, seed: int) -> str:
        return f"demo_n{n_real}"  # one pool per kind, shared by the seeds (a CPU budget)

    def sample_seeds(self, n_real: int, seed: int, count: int) -> list[int]:
        return [5_000_000 + i for i in range(count)]


def export_generators(root: Path, shared: Path, per_modality: Path) -> None:
    """Slim sampling copies of the two fine-tunes under ``<root>/generators`` (kept when already there)."""
    from monai_pairsynth.engines import export_sampling_checkpoint, read_paired_checkpoint

    for src, name in ((shared, "demo.pt"), (per_modality, "demo_cond.pt")):
        dst = root / "generators" / name
        if dst.is_file():
            continue
        if not src.is_file():
            raise FileNotFoundError(f"no checkpoint at {src}: run benchmarks/conditional_sampling.py first")
        timesteps = read_paired_checkpoint(src).get("per_modality_timesteps") or {}
        if (name == "demo_cond.pt") != (float(timesteps.get("independent_timestep_prob", 0.0)) > 0):
            raise ValueError(
                f"{src} is not the {'per-modality' if name == 'demo_cond.pt' else 'shared'} variant"
            )
        export_sampling_checkpoint(src, dst, half=True)


def section(root: Path, s: downstream.Settings, table: dict, pools: list[dict], results: list[dict]) -> str:
    import torch

    seconds = sum(r["seconds"] for r in results) + sum(
        i["sample_seconds"] + i["filter_seconds"] for i in pools
    )
    given = "; ".join(
        f"{i['name']}: masks given {i['conditioning']}, {i['placement_fallbacks']} of {i['candidates']} placements "
        "fell back to the original position"
        for i in pools
        if "conditioning" in i
    )
    return f"""## Label-first against joint mixing on the phantom (demo-scale generators)

Written by `experiments/label_first_phantom.py` (do not edit by hand: rerun it). Issue 14's question on the
phantom: are synthetic triplets made *from a real mask* (label-first) better to mix in than jointly sampled ones?
The GPU-trained per-arm generators of the experiment above are not on this machine, so this variant differs:

- **Generators.** Both start from the bundle's demo checkpoint (2,280 steps on phantom patients 0-319, none of
  them a training or test case here) and were fine-tuned 160 more steps on the same data by
  `benchmarks/conditional_sampling.py` (docs/sampling.md): `shared` (shared timesteps) makes the joint pools,
  `per_modality` (per-modality timesteps, masks given clean) the label-first pool. The same budget: joint and
  label-first differ only in the recipe. They saw 320 phantom patients, more than the arm's N = 16.
- **Pools.** {s.sampler.upper()}-{s.sampler_steps}, 4P candidates, P = {s.pool_sizes[0][1]}, one pool per kind
  shared by the {len(s.seeds)} seeds; the filtered pools keep P with the feature-centroid filter (segmenter
  fitted on the arm's 16 cases). Label-first masks come from the arm's 16 real masks (rotated, scaled,
  deformed, placed inside the body of their case){f" ({given})" if given else ""}.
- **Segmentation and statistics** as above: MONAI `UNet`, {s.seg_steps} steps in every arm, CT + PET input,
  {s.num_test} held-out test patients (one slice each), Dice averaged over the seeds per patient, paired
  t-test and Wilcoxon over patients, 95 % CI, a t-test over the {len(s.seeds)} seed means, and the test with
  the patients and the seeds both random (patients × seeds), which "reading" applies at 5 %.

### What came out

{downstream.outcome(s, table)}

### Test Dice

{downstream.dice_tables(s, table)}
### Pools

{downstream.pool_table(pools)}

### How to reproduce

```bash
python benchmarks/conditional_sampling.py --init-checkpoint bundles/pet_ct_pairsynth/models/diffusion_demo.pt \\
    --epochs 8 --samplers ddpm:100 --feature-epochs 0 --threads 1 --output-dir runs/cond/models
python experiments/label_first_phantom.py --root {root} --shared runs/cond/models/shared/checkpoint.pt \\
    --per-modality runs/cond/models/per_modality/checkpoint.pt --jobs 2 --results-md docs/results.md
```

Pools and segmentation runs {seconds / 60:.1f} min (sum of per-run times). Machine: {platform.platform()},
{os.cpu_count()} CPU cores, torch {torch.__version__}.
"""


def run(root: Path, s: downstream.Settings, jobs: int, results_md: Path | None) -> dict[str, Any]:
    """Pools, segmentation runs and the section (written into ``results_md``, else ``<root>/results.md``)."""
    from monai_pairsynth.utils import atomic_write_json, atomic_write_text

    data = DemoGenerators(s.num_test)
    t0 = time.perf_counter()
    n, seed = s.n_real[0], s.seeds[0]
    job = (root, n, seed, s, data)  # joint pool first: it fits the filter the label-first pool reuses
    pools = [downstream.build_pools(*job), downstream.build_label_first_pool(*job)]
    results = downstream.run_jobs(
        [(downstream.run_arm, (root, n, sd, arm, s, data)) for sd in s.seeds for arm in downstream.arms(s)],
        jobs,
    )
    table = downstream.summarise(results, s)
    out = results_md or root / "results.md"
    text = out.read_text(encoding="utf-8") if out.is_file() else ""
    body = section(root, s, table, pools, results)
    atomic_write_text(out, downstream.replace_section(text, body, SECTION))
    summary = {"table": table, "pools": pools, "wall_seconds": time.perf_counter() - t0}
    atomic_write_json(root / "summary.json", summary)
    print(body)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/label_first_phantom")
    p.add_argument("--shared", required=True, help="the shared-timestep fine-tune (joint pools)")
    p.add_argument(
        "--per-modality", required=True, help="the per-modality-timestep fine-tune (label-first pool)"
    )
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument(
        "--results-md", default=None, help="page that receives the section (default <root>/results.md)"
    )
    p.add_argument("--quick", action="store_true", help="a rehearsal: tiny sizes")
    args = p.parse_args(argv)
    root = Path(args.root)
    export_generators(root, Path(args.shared), Path(args.per_modality))
    run(
        root, QUICK if args.quick else SETTINGS, args.jobs, Path(args.results_md) if args.results_md else None
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
