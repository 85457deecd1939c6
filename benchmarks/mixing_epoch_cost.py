"""Cost of pool-backed synthetic mixing: one segmentation epoch real-only vs ``MixedDataset`` at ratio r.

Both variants run the same MONAI pipeline (intensity scaling, channel concatenation, random flips; a MONAI
``UNet`` with ``DiceCELoss`` and Adam in a ``SupervisedTrainer``) on the 2D phantom, real cases held in memory
(as after a ``CacheDataset``). The mixed variant wraps them in ``MixedDataset(real, pool, ratio=r)`` and attaches
``PoolRefreshHandler`` (counting the synthetic flags, setting the epoch; its refresh is timed separately
because generation cost belongs to the generator, not to the mixing). A third variant trains real-only on as
many real cases as the mixed epoch has samples (same number of batches), which isolates the pool's overhead
from the fixed per-epoch cost. Epochs of the variants are interleaved (the order reversed every other round)
after a warm-up epoch each; the median and the minimum (the least disturbed run on a shared machine) are
reported, of wall time and (with ``--workers 0``) of the process's CPU time, which is less sensitive to other
load. A per-item micro-measurement (CPU time of a pool read, of a real and of a synthetic item through the
transforms) gives the overhead independently of epoch-to-epoch noise.

The mixed epoch holds ``1 + r`` times as many samples, so the per-epoch ratio is about ``1 + r`` by
construction; the target of ARCHITECTURE.md §7 (at most 1.10x) is the per-sample ratio: time per sample with
pool-backed mixing over time per real sample, i.e. the overhead of reading from the pool.

Usage::

    python benchmarks/mixing_epoch_cost.py                       # 64x64, 32 real cases, r = 0.5, 15 repeats
    python benchmarks/mixing_epoch_cost.py --size 128 --repeats 5 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import Compose, ConcatItemsd, RandFlipd, ScaleIntensityRanged
from monai.utils import set_determinism

from monai_pairsynth.data.phantom import PhantomDataset
from monai_pairsynth.mixing import PoolRefreshHandler
from monai_pairsynth.mixing.mixed_dataset import MixedDataset
from monai_pairsynth.mixing.synthesis_pool import PhantomPoolSource, SynthesisPool


def build_trainer(dataset, args, seed: int) -> SupervisedTrainer:
    torch.manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    net = UNet(2, 2, 1, channels=args.channels, strides=(2,) * (len(args.channels) - 1), num_res_units=1)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=DiceCELoss(sigmoid=True),
    )


def timed_epoch(trainer: SupervisedTrainer) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one more epoch on the same trainer."""
    trainer.state.max_epochs = trainer.state.epoch + 1
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="phantom slice size (square)")
    parser.add_argument("--num-real", type=int, default=32, help="real training cases")
    parser.add_argument("--ratio", type=float, default=0.5, help="augmentation ratio r = N_syn / N_real")
    parser.add_argument("--pool-capacity", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=15, help="timed epochs per variant")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_determinism(0)
    logging.getLogger("monai_pairsynth").setLevel(logging.WARNING)

    size, spacing = (args.size, args.size), 256.0 / args.size  # same field of view at every size
    num_mixed = args.num_real + round(args.ratio * args.num_real)
    phantom = PhantomDataset(num_mixed, base_seed=0, spatial_size=size, spacing=spacing)
    all_cases = [phantom[i] for i in range(len(phantom))]
    real_cases = all_cases[: args.num_real]
    n_real_cases = len(real_cases)
    transform = Compose(
        [
            ScaleIntensityRanged("ct", a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=True),
            ScaleIntensityRanged("pet", a_min=0, a_max=15, b_min=0, b_max=1, clip=True),
            ConcatItemsd(["ct", "pet"], "image"),
            RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        ]
    )
    pool = SynthesisPool(
        args.pool_capacity,
        spatial_shape=size,
        spacing=spacing,
        source=PhantomPoolSource(size, spacing=spacing),
    )
    fill = pool.fill()

    real_ds = Dataset(real_cases, transform=transform)
    mixed_ds = MixedDataset(real_cases, pool, ratio=args.ratio, seed=0, transform=transform)
    equal_ds = Dataset(all_cases, transform=transform)  # real-only with as many samples as the mixed epoch
    real_trainer = build_trainer(real_ds, args, seed=1)
    mixed_trainer = build_trainer(mixed_ds, args, seed=1)
    equal_trainer = build_trainer(equal_ds, args, seed=1)
    handler = PoolRefreshHandler(
        pool, every_n_epochs=10**9, dataset=mixed_ds
    )  # counts + set_epoch, no refresh
    handler.attach(mixed_trainer)

    for trainer in (real_trainer, mixed_trainer, equal_trainer):
        timed_epoch(trainer)  # warm-up (allocator, worker start-up, first-call overheads)
    timings: dict[str, list[tuple[float, float]]] = {"real": [], "mixed": [], "equal": []}
    for rep in range(args.repeats):
        order = [(real_trainer, "real"), (mixed_trainer, "mixed"), (equal_trainer, "equal")]
        for trainer, name in order if rep % 2 == 0 else order[::-1]:
            timings[name].append(timed_epoch(trainer))

    def per_call_ms(fn, n: int = 300) -> float:
        start = time.process_time()
        for i in range(n):
            fn(i)
        return (time.process_time() - start) / n * 1e3

    read_ms = per_call_ms(lambda i: pool[i % len(pool)])
    real_item_ms = per_call_ms(lambda i: real_ds[i % n_real_cases])
    synthetic_item_ms = per_call_ms(lambda i: mixed_ds[n_real_cases + i % (len(mixed_ds) - n_real_cases)])

    refill_start = time.perf_counter()
    refill = pool.refill(0.25)
    refill_seconds = time.perf_counter() - refill_start

    n_real, n_mixed, n_equal = len(real_ds), len(mixed_ds), len(equal_ds)
    seen = handler.history[-1]
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"DataLoader workers {args.workers}, no GPU used")  # fmt: skip
    print(f"phantom {args.size}x{args.size}, UNet channels {tuple(args.channels)}, batch {args.batch_size}, "
          f"pool {len(pool)}/{pool.capacity} (filled in {fill.seconds:.2f}s); synthetic seen in the last mixed "
          f"epoch {seen['synthetic_seen']}/{seen['seen']}")  # fmt: skip
    # CPU time of this process is robust to other load on a shared machine, but misses worker processes
    clocks = [("wall", 0)] + ([("cpu", 1)] if args.workers == 0 else [])
    for clock, c in clocks:
        for name, n in (("real", n_real), ("mixed", n_mixed), ("equal", n_equal)):
            runs = ", ".join(f"{t[c]:.3f}" for t in timings[name])
            label = {"real": "real-only", "mixed": f"mixed r={args.ratio}", "equal": "real-only"}[name]
            print(f"[{clock}] {label:<12} {n:4d} samples/epoch, {args.repeats} epochs: {runs}")
        # the median is the usual summary; the minimum is the least disturbed run on a shared machine
        for stat_name, stat in (("median", statistics.median), ("min", min)):
            v = {name: stat(t[c] for t in times) for name, times in timings.items()}
            print(f"[{clock} {stat_name:>6}] real-{n_real} {v['real']:.3f}s, mixed {v['mixed']:.3f}s, "
                  f"real-{n_equal} {v['equal']:.3f}s | per-epoch ratio {v['mixed'] / v['real']:.3f} "
                  f"(x{n_mixed / n_real:.2f} samples), per-sample ratio "
                  f"{(v['mixed'] / n_mixed) / (v['real'] / n_real):.3f} (target <= 1.10), "
                  f"equal-length ratio {v['mixed'] / v['equal']:.3f}")  # fmt: skip
    print(f"[cpu] per item: pool read {read_ms:.3f} ms; real item through the transforms {real_item_ms:.3f} ms; "
          f"synthetic item through MixedDataset + transforms {synthetic_item_ms:.3f} ms; training "
          f"{statistics.median(t[1] for t in timings['equal']) / n_equal * 1e3:.2f} ms per sample (real-only epoch)")  # fmt: skip
    print(f"pool refresh of {refill.accepted} triplets from the phantom source: {refill_seconds:.3f}s "
          "(generator cost, outside the epoch unless refreshed synchronously)")  # fmt: skip


if __name__ == "__main__":
    main()
