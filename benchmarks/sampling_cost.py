"""Sampling cost on the CPU: wall time per triplet for DDPM / DDIM / DPM-Solver++, and the cost of one linked
sampling step against three independent MONAI ``DiffusionModelUNet`` s of the same widths.

Usage::

    python benchmarks/sampling_cost.py            # full run (DDPM-1000 takes minutes on a 2-core CPU)
    python benchmarks/sampling_cost.py --quick    # every sampler timed on its first steps, then extrapolated

Prints two markdown tables. Everything is measured in this one run; the linked / independent comparison
interleaves the two (alternating which goes first) and reports medians. Weights are untrained: the cost of
a forward pass does not depend on their values.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from monai.networks.nets import DiffusionModelUNet

from monai_pairsynth.inferers import PairedDiffusionInferer
from monai_pairsynth.networks import PairedDiffusionModel
from monai_pairsynth.schedulers import make_scheduler

SAMPLERS = (("ddpm", 1000, "DDPM"), ("ddim", 50, "DDIM"), ("dpmpp", 20, "DPM-Solver++"))


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class _StepLimit(Exception):
    pass


class _CountingModel(torch.nn.Module):
    """Forwards to a model and stops the run after ``limit`` calls (to time the first steps of a long run)."""

    def __init__(self, model: PairedDiffusionModel, limit: int | None) -> None:
        super().__init__()
        self.model, self.limit, self.calls = model, limit, 0
        self.modalities, self.spatial_dims = model.modalities, model.spatial_dims
        self.in_channels, self.downsample_factor = model.in_channels, model.downsample_factor

    def forward(self, noisy, timesteps):
        if self.limit is not None and self.calls >= self.limit:
            raise _StepLimit
        self.calls += 1
        return self.model(noisy, timesteps)


def time_samplers(
    model: PairedDiffusionModel, size: int, batch: int, quick_steps: int | None
) -> list[tuple[str, int, int, float, float]]:
    """``[(label, steps, steps_timed, wall seconds, CPU seconds)]`` for the whole run of ``batch`` triplets."""
    inferer = PairedDiffusionInferer(spacing=2.0, spatial_shape=(size, size))
    rows = []
    for name, steps, label in SAMPLERS:
        counting = _CountingModel(model, quick_steps)

        def run(counting: _CountingModel = counting, name: str = name, steps: int = steps) -> None:
            try:
                inferer.sample(
                    counting,
                    batch,
                    scheduler=name,
                    num_inference_steps=steps,
                    batch_size=batch,
                    generator=torch.Generator().manual_seed(0),
                )
            except _StepLimit:
                pass

        wall, cpu = _timed(run)
        timed = counting.calls
        rows.append((label, steps, timed, wall * steps / timed, cpu * steps / timed))
    return rows


def _conditional_parts(
    model: PairedDiffusionModel, x: dict[str, torch.Tensor], t: torch.Tensor
) -> dict[str, Callable[[], object]]:
    """Callables running one part of the conditional pathway of every denoiser (for the cost breakdown)."""
    from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

    dens = {m: model.denoisers[m] for m in model.modalities}
    conds = {m: {o: x[o] for o in model.modalities if o != m} for m in model.modalities}
    temb = {m: d.cond_time_embed(get_timestep_embedding(t, d.cond_channels[0])) for m, d in dens.items()}
    filtered = {
        m: {n: d.cond_filters[n](conds[m][n], temb[m]) for n in d.condition_names} for m, d in dens.items()
    }
    encoded = {m: [d.cond_encoders[n](filtered[m][n]) for n in d.condition_names] for m, d in dens.items()}

    def fuse(m: str) -> list[torch.Tensor]:
        d = dens[m]
        return [
            cbam(conv(torch.cat([f[level] for f in encoded[m]], dim=1)), temb[m])
            for level, (conv, cbam) in enumerate(zip(d.cond_fusion_convs, d.cond_fusion_cbams))
        ]

    fused = {m: fuse(m) for m in dens}

    def project(m: str) -> None:
        d = dens[m]
        for proj, level in zip(d.cond_residual_projections, d.residual_levels):
            proj(fused[m][level])
        d.cond_mid_projection(fused[m][-1])

    parts: dict[str, Callable[[], object]] = {
        "low-pass filters": lambda: [
            d.cond_filters[n](conds[m][n], temb[m]) for m, d in dens.items() for n in d.condition_names
        ],
        "conditional encoders": lambda: [
            d.cond_encoders[n](filtered[m][n]) for m, d in dens.items() for n in d.condition_names
        ],
    }
    if all(d.cond_attention is not None for d in dens.values()):
        parts["cross-encoder attention"] = lambda: [
            d.cond_attention([f[-1] for f in encoded[m]]) for m, d in dens.items()
        ]
    parts["fusion convs + timestep CBAM"] = lambda: [fuse(m) for m in dens]
    parts["zero-init residual projections"] = lambda: [project(m) for m in dens]
    return parts


def time_step(
    model: PairedDiffusionModel, size: int, batch: int, repeats: int, inner: int
) -> dict[str, tuple[float, float]]:
    """Median ``(wall, CPU)`` seconds of one sampling step (forward + per-modality DPM-Solver++ update), linked
    vs independent, and the linked model's breakdown (UNets with injected residuals, conditional pathway and
    its parts)."""
    cfg = model.get_config()
    unets = {
        m: DiffusionModelUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=cfg["channels"],
            attention_levels=cfg["attention_levels"],
            num_res_blocks=cfg["num_res_blocks"],
            norm_num_groups=cfg["norm_num_groups"],
            num_head_channels=cfg["num_head_channels"],
            use_flash_attention=cfg.get("use_flash_attention", False),  # identical UNet configuration
        ).eval()
        for m in model.modalities
    }
    g = torch.Generator().manual_seed(0)
    x = {m: torch.randn(batch, 1, size, size, generator=g) for m in model.modalities}
    sched = {m: make_scheduler("dpmpp") for m in model.modalities}
    for s in sched.values():
        s.set_timesteps(20)
    t_int = int(
        sched[model.modalities[0]].timesteps[0]
    )  # a step at timesteps[0] restarts: no state builds up
    t = torch.full((batch,), t_int, dtype=torch.long)

    def linked() -> None:
        out = model(x, t)
        for m in model.modalities:
            sched[m].step(out[m], t_int, x[m])

    def independent() -> None:
        for m in model.modalities:
            out = unets[m](x[m], t)
            sched[m].step(out, t_int, x[m])

    def linked_unets_only() -> None:  # the UNet part of the linked model (residual injection included)
        for m in model.modalities:
            down, mid = residuals[m]
            model.denoisers[m].unet(
                x[m], t, down_block_additional_residuals=down, mid_block_additional_residual=mid
            )

    def conditional_pathway() -> None:
        for m in model.modalities:
            model.denoisers[m].conditional_residuals(t, {o: x[o] for o in model.modalities if o != m})

    with torch.no_grad():
        residuals = {}
        for m in model.modalities:
            down, mid = model.denoisers[m].conditional_residuals(
                t, {o: x[o] for o in model.modalities if o != m}
            )
            residuals[m] = (tuple(down), mid)
        fns: dict[str, Callable[[], object]] = {
            "linked": linked,
            "independent": independent,
            "linked_unets": linked_unets_only,
            "cond": conditional_pathway,
        }
        try:
            fns.update({f"part:{k}": v for k, v in _conditional_parts(model, x, t).items()})
        except AttributeError:  # the conditional pathway's internals changed: report the totals only
            pass
        for fn in fns.values():  # warm-up
            fn()
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
        order = list(fns)
        for r in range(repeats):
            for k in order if r % 2 == 0 else reversed(order):
                timings = [_timed(fns[k]) for _ in range(inner)]
                samples[k].append((sum(w for w, _ in timings) / inner, sum(c for _, c in timings) / inner))
    return {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for k, v in samples.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="time the first steps of each sampler and extrapolate"
    )
    parser.add_argument("--size", type=int, default=64, help="image size (square), default 64")
    parser.add_argument("--batch", type=int, default=4, help="triplets per batch, default 4")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, default 1")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats of the step comparison"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats or (5 if args.quick else 15)
    inner = 2 if args.quick else 3
    quick_steps = 5 if args.quick else None

    # default widths: channels (32, 64, 64), attention at the last level
    model = PairedDiffusionModel().eval()
    cfg = model.get_config()
    cond_channels = tuple(model.denoisers[model.modalities[0]].cond_channels)
    print(
        f"# Sampling cost — {args.size}x{args.size}, batch {args.batch}, default PairedDiffusionModel "
        f"(channels {tuple(cfg['channels'])}, conditional encoders {cond_channels}), torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs\n"
    )
    step = time_step(model, args.size, args.batch, repeats, inner)
    wall_ratio = step["linked"][0] / step["independent"][0]
    cpu_ratio = step["linked"][1] / step["independent"][1]

    def row(label: str, key: str) -> str:
        wall, cpu = step[key]
        return f"| {label} | {1e3 * wall:.0f} | {1e3 * cpu:.0f} |"

    print(
        "| one sampling step (forward + 3 DPM-Solver++ updates) | median wall time (ms) | median CPU time (ms) |"
    )
    print("|---|---|---|")
    print(row("linked `PairedDiffusionModel` (3 linked denoisers)", "linked"))
    print(row("3 independent MONAI `DiffusionModelUNet`", "independent"))
    print(
        f"| **ratio linked / independent** (target <= 1.25) | **{wall_ratio:.2f}x** | **{cpu_ratio:.2f}x** |"
    )
    print(row("breakdown: the 3 UNets inside the linked model (with injected residuals)", "linked_unets"))
    print(row("breakdown: the 3 conditional pathways", "cond"))
    for key in step:
        if key.startswith("part:"):
            print(row(f"&nbsp;&nbsp;of which: {key[5:]} (all denoisers)", key))
    print(f"\n({repeats} interleaved repeats of {inner} steps each, batch {args.batch}.)\n")

    rows = time_samplers(model, args.size, args.batch, quick_steps)
    print("| sampler | steps | wall time per triplet (s) | CPU time per triplet (s) | measured |")
    print("|---|---|---|---|---|")
    for label, steps, timed, wall, cpu in rows:
        how = f"full run of {args.batch} triplets" if timed == steps else f"first {timed} steps, extrapolated"
        print(f"| {label} | {steps} | {wall / args.batch:.2f} | {cpu / args.batch:.2f} | {how} |")
    if wall_ratio > 1.25 or cpu_ratio > 1.25:
        print(
            f"\nNOTE: the linked step costs {wall_ratio:.2f}x (wall) / {cpu_ratio:.2f}x (CPU) three independent "
            "UNets, above the 1.25x target."
        )


if __name__ == "__main__":
    main()
