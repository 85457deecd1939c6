"""CPU time of one training step (forward + backward + Adam) and one sampling forward of PairedDiffusionModel.

Prints the parameter counts (total, per denoiser, UNet vs conditional pathway) and the time per step of
the linked model next to the same number of plain MONAI ``DiffusionModelUNet`` s of the same widths. Times
are process CPU times (``time.process_time``, so other jobs on a shared machine do not count); the two
sides alternate step by step (and which goes first), and the ratio is the median of the per-step ratios.

Usage::

    python benchmarks/network_step_time.py                      # defaults: 3 modalities, 2D, 64x64, batch 8
    python benchmarks/network_step_time.py --size 32 --spatial-dims 3 --batch 2
    python benchmarks/network_step_time.py --channels 16 32 32  # the CPU training default's widths
    python benchmarks/network_step_time.py --baseline-ref ef36dac  # + the networks of that revision
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from monai.networks.nets import DiffusionModelUNet

from monai_pairsynth.networks import PairedDiffusionModel


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def time_steps(step, steps: int, warmup: int) -> list[float]:
    """Process CPU seconds of each of ``steps`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modalities", nargs="+", default=["ct", "pet", "label"])
    parser.add_argument("--spatial-dims", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="UNet channels per level")
    parser.add_argument(
        "--cond-channels", type=int, nargs="+", default=None, help="conditional-encoder channels per level"
    )
    parser.add_argument(
        "--baseline-ref",
        default=None,
        help="also time the linked model built by monai_pairsynth/networks of this git revision (same weights)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    kwargs = {}
    if args.channels is not None:
        kwargs["channels"] = args.channels
    if args.cond_channels is not None:
        kwargs["cond_channels"] = args.cond_channels
    model = PairedDiffusionModel(args.modalities, spatial_dims=args.spatial_dims, **kwargs)
    config = model.get_config()
    unets = torch.nn.ModuleList(
        DiffusionModelUNet(
            spatial_dims=args.spatial_dims,
            in_channels=1,
            out_channels=1,
            channels=config["channels"],
            attention_levels=config["attention_levels"],
            num_res_blocks=config["num_res_blocks"],
            norm_num_groups=config["norm_num_groups"],
            num_head_channels=config["num_head_channels"],
            use_flash_attention=config["use_flash_attention"],
        )
        for _ in args.modalities
    )
    den = model.denoiser(args.modalities[0])
    cond = sum(p.numel() for n, p in den.named_parameters() if n.startswith("cond_"))
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch threads {args.threads}, no GPU used"
    )
    print(f"config: {config}")
    print(f"parameters: total {count(model):,} ({len(args.modalities)} denoisers)")
    print(f"  per denoiser {count(den):,} = UNet {count(den.unet):,} + conditional pathway {cond:,}")

    shape = (args.batch, 1) + (args.size,) * args.spatial_dims
    g = torch.Generator().manual_seed(args.seed)
    noisy = {m: torch.randn(shape, generator=g) for m in args.modalities}
    noise = {m: torch.randn(shape, generator=g) for m in args.modalities}
    timesteps = torch.randint(0, 1000, (args.batch,), generator=g)

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def linked_step() -> None:
        out = model(noisy, timesteps)
        loss = sum(torch.nn.functional.mse_loss(out[m], noise[m]) for m in args.modalities)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    opt_plain = torch.optim.Adam(unets.parameters(), lr=1e-4)

    def plain_step() -> None:
        loss = sum(
            torch.nn.functional.mse_loss(u(noisy[m], timesteps), noise[m])
            for u, m in zip(unets, args.modalities)
        )
        opt_plain.zero_grad(set_to_none=True)
        loss.backward()
        opt_plain.step()

    baseline = None
    if args.baseline_ref is not None:
        from sampling_cost import load_baseline_networks  # same folder

        baseline = load_baseline_networks(args.baseline_ref).PairedDiffusionModel(**config)
        baseline.load_state_dict(model.state_dict(), strict=True)
        opt_baseline = torch.optim.Adam(baseline.parameters(), lr=1e-4)

        def baseline_step() -> None:
            out = baseline(noisy, timesteps)
            loss = sum(torch.nn.functional.mse_loss(out[m], noise[m]) for m in args.modalities)
            opt_baseline.zero_grad(set_to_none=True)
            loss.backward()
            opt_baseline.step()

        @torch.no_grad()
        def baseline_forward() -> None:
            baseline(noisy, timesteps)

    @torch.no_grad()
    def linked_forward() -> None:
        model(noisy, timesteps)

    @torch.no_grad()
    def plain_forward() -> None:
        for u, m in zip(unets, args.modalities):
            u(noisy[m], timesteps)

    size = "x".join([str(args.size)] * args.spatial_dims)
    for title, linked_fn, plain_fn, baseline_fn in (
        ("training step (forward + backward + Adam)", linked_step, plain_step, baseline and baseline_step),
        ("sampling step (forward, no grad)", linked_forward, plain_forward, baseline and baseline_forward),
    ):
        # interleave the sides (alternating which goes first) so that load from other processes hits all alike
        sides = {"linked": linked_fn, "plain": plain_fn}
        if baseline_fn:
            sides["baseline"] = baseline_fn
        times: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(args.steps):
            for k in list(sides) if i % 2 == 0 else reversed(list(sides)):
                times[k] += time_steps(sides[k], 1, args.warmup if not times[k] else 0)
        linked, plain = times["linked"], times["plain"]
        ratios = [a / b for a, b in zip(linked, plain)]
        print(f"{title}, {size}, batch {args.batch}, {args.steps} timed steps, process CPU time:")
        print(f"  linked model: median {statistics.median(linked):.3f} s, min {min(linked):.3f} s")
        print(
            f"  {len(args.modalities)} plain UNets: median {statistics.median(plain):.3f} s, min {min(plain):.3f} s"
        )
        print(
            f"  ratio linked / plain: median of per-step ratios {statistics.median(ratios):.3f}, "
            f"ratio of medians {statistics.median(linked) / statistics.median(plain):.3f}"
        )
        if "baseline" in times:
            old = times["baseline"]
            print(
                f"  linked model of {args.baseline_ref}: median {statistics.median(old):.3f} s; per-step ratio "
                f"current / {args.baseline_ref}: median {statistics.median(a / b for a, b in zip(linked, old)):.3f}"
            )


if __name__ == "__main__":
    main()
