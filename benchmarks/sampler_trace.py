"""Trace a deterministic sampling trajectory: per step, the sample's standard deviation and the range of the
x0 estimate, per modality, with x0 clipping off (what docs/sampling.md's "Which sampler" section quotes).

Usage::

    python benchmarks/sampler_trace.py                                   # the bundle's demo checkpoint, DDIM-50
    python benchmarks/sampler_trace.py --sampler dpmpp --steps 20 --clip

The network is stepped in lock-step exactly as ``PairedDiffusionInferer.sample`` does (every modality's
scheduler on its own sample, the model conditioned on all of them), from plain Gaussian noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from monai_pairsynth.inferers import PairedDiffusionInferer
from monai_pairsynth.schedulers import make_scheduler

DEMO = Path(__file__).resolve().parents[1] / "bundles" / "pet_ct_pairsynth" / "models" / "diffusion_demo.pt"


def trace(
    checkpoint: str | Path, sampler: str, steps: int, clip: bool, num_samples: int = 8, seed: int = 0
) -> list[dict]:
    """One row per step: ``{"t", modality: {"x_std", "x0_min", "x0_max"}}``."""
    inferer, model = PairedDiffusionInferer.from_checkpoint(checkpoint)
    model.eval()
    sched = {
        m: make_scheduler(
            sampler,
            num_train_timesteps=inferer.num_train_timesteps,
            schedule=inferer.schedule,
            prediction_type=inferer.prediction_type,
            clip_sample=clip,
            **inferer.schedule_args,
        )
        for m in model.modalities
    }
    for s in sched.values():
        s.set_timesteps(steps)
    shape = (num_samples, model.in_channels, *inferer.spatial_shape)
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(shape, generator=g) for m in model.modalities}
    rows = []
    with torch.no_grad():
        for t in sched[model.modalities[0]].timesteps.tolist():
            out = model(x, torch.full((num_samples,), t, dtype=torch.long))
            row: dict = {"t": int(t)}
            for m in model.modalities:
                x[m], x0 = sched[m].step(out[m], t, x[m])
                row[m] = {"x_std": float(x[m].std()), "x0_min": float(x0.min()), "x0_max": float(x0.max())}
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEMO))
    p.add_argument("--sampler", default="ddim", choices=("ddim", "dpmpp", "ddpm"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--clip", action="store_true", help="clip the x0 estimate to [-1, 1] (the inferer does)")
    p.add_argument("--every", type=int, default=5, help="print every k-th step (and the last)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = trace(args.checkpoint, args.sampler, args.steps, args.clip)
    modalities = [k for k in rows[0] if k != "t"]
    print("| t | " + " | ".join(f"{m}: std of x, x0 range" for m in modalities) + " |")
    print("|---|" + "---|" * len(modalities))
    for i, row in enumerate(rows):
        if i % args.every == 0 or i == len(rows) - 1:
            cells = [
                f"{row[m]['x_std']:.2f}, [{row[m]['x0_min']:.1f}, {row[m]['x0_max']:.1f}]" for m in modalities
            ]
            print(f"| {row['t']} | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    main()
