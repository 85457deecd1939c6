"""FLOPs per generated triplet (torch's flop counter) and, on a GPU, triplets per second against the floor
those FLOPs imply.

Usage::

    python benchmarks/generation_throughput.py                       # FLOPs only (any machine)
    python benchmarks/generation_throughput.py --device cuda --amp bf16 --batch 64 256 --json out.json

The FLOPs of one linked sampling step are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a
batch of one (every denoiser, the conditional pathway, attention; the counter counts matrix products and
convolutions, which is where nearly all the work is), times the number of steps. On CUDA the bf16 matrix
rate of this GPU is measured in the same run (an 8192^3 bf16 product), and ``floor`` is the triplets/s that
rate would allow if every counted FLOP ran at it: ``rate / FLOPs per triplet``. The measured throughput is
``PairedDiffusionInferer.sample`` end to end (DPM-Solver++, scheduler arithmetic in float32, the network
under bf16 autocast), after one warm-up run, the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from monai_pairsynth.engines import DEFAULT_CPU_MODEL_KWARGS
from monai_pairsynth.inferers import PairedDiffusionInferer
from monai_pairsynth.networks import PairedDiffusionModel


def build_model(config: str) -> PairedDiffusionModel:
    """``default``: ``PairedDiffusionModel()``; ``cpu``: the CPU default widths."""
    if config == "default":
        return PairedDiffusionModel()
    if config == "cpu":
        return PairedDiffusionModel(**DEFAULT_CPU_MODEL_KWARGS)
    raise ValueError(f"config must be 'default' or 'cpu', got {config!r}.")


def flops_per_step(model: PairedDiffusionModel, size: int) -> int:
    """FLOPs of one linked denoising step for one triplet at ``size x size`` (counted, not estimated)."""
    x = {m: torch.randn(1, 1, size, size) for m in model.modalities}
    t = torch.tensor([500])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return int(counter.get_total_flops())


def matmul_rate(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """Measured bf16 matrix-product rate of ``device`` in FLOP/s (random data, after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2.0 * n**3 * repeats / (time.perf_counter() - start)


def sampling_throughput(
    model: PairedDiffusionModel,
    device: torch.device,
    size: int,
    steps: int,
    batch: int,
    amp: str | None,
    repeats: int,
) -> dict[str, float]:
    """Triplets/s of ``PairedDiffusionInferer.sample`` (DPM-Solver++, ``steps`` steps, one batch of ``batch``)."""
    inferer = PairedDiffusionInferer(spatial_shape=(size, size), spacing=2.0)
    model = model.to(device).eval()
    gen = torch.Generator(device=device)

    def run() -> float:
        gen.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = inferer.sample(
            model,
            num_samples=batch,
            scheduler="dpmpp",
            num_inference_steps=steps,
            generator=gen,
            batch_size=batch,
            amp_dtype=amp,
            device=device,
            decode=False,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        assert all(bool(torch.isfinite(v).all()) for v in out.values()), "non-finite samples"
        return time.perf_counter() - start

    run()  # warm-up (cuDNN autotuning, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [run() for _ in range(repeats)]
    seconds = statistics.median(times)
    result = {"batch": batch, "seconds": seconds, "triplets_per_s": batch / seconds}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="default", choices=("default", "cpu"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default=None, help="cuda to time sampling; default: FLOPs only")
    p.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"))
    p.add_argument("--batch", type=int, nargs="+", default=[64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = build_model(args.config)
    step_flops = flops_per_step(model, args.size)
    triplet_flops = step_flops * args.steps
    result: dict = {
        "config": args.config,
        "size": args.size,
        "steps": args.steps,
        "flops_per_step": step_flops,
        "flops_per_triplet": triplet_flops,
        "torch": torch.__version__,
        "machine": platform.platform(),
    }
    print(
        f"model {args.config} at {args.size}x{args.size}: {step_flops / 1e9:.2f} GFLOP per linked step, "
        f"{triplet_flops / 1e9:.1f} GFLOP per triplet at {args.steps} steps"
    )
    if args.device is not None:
        device = torch.device(args.device)
        amp = None if args.amp == "none" else args.amp
        if device.type == "cuda":
            rate = matmul_rate(device)
            result.update(device_name=torch.cuda.get_device_name(device), bf16_matmul_flops=rate)
            result["floor_triplets_per_s"] = rate / triplet_flops
            print(
                f"{result['device_name']}: bf16 matrix product {rate / 1e12:.0f} TFLOP/s measured -> floor "
                f"{result['floor_triplets_per_s']:.0f} triplets/s"
            )
        result["runs"] = []
        for batch in args.batch:
            r = sampling_throughput(model, device, args.size, args.steps, batch, amp, args.repeats)
            if "floor_triplets_per_s" in result:
                r["fraction_of_floor"] = r["triplets_per_s"] / result["floor_triplets_per_s"]
            result["runs"].append(r)
            print(
                f"batch {batch}: {r['triplets_per_s']:.1f} triplets/s ({r['seconds']:.2f} s per batch"
                + (f", peak {r['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in r else "")
                + (
                    f", {100 * r['fraction_of_floor']:.1f}% of the floor)"
                    if "fraction_of_floor" in r
                    else ")"
                )
            )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
