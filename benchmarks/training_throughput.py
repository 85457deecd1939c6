"""Training iterations per second of the engine, as the bundle trains, on any device (the GPU target of issue 12).

The model is the CPU-default linked model (``DEFAULT_CPU_MODEL_KWARGS``) unless ``--config default``; the data
are phantom slices materialised once on the device (:class:`~monai_pairsynth.engines.DeviceTripletLoader`,
batched augmentation there), the trainer is :func:`~monai_pairsynth.engines.create_paired_trainer` with the
bundle's recipe (v-prediction, cosine schedule, Min-SNR 5, label foreground weight 4, EMA, per-denoiser
clipping). Each variant (``--variants``: ``fp32``, ``bf16`` (autocast), ``bf16-compile`` (plus
``torch.compile``)) runs ``--warmup`` iterations, then ``--iters`` timed ones; the time runs from the first
timed batch fetch to the end of the last iteration, with a device synchronisation at both ends, so it is the
whole iteration, data included. Target on an H100/H200-class GPU: >= 20 iterations/s at batch 64, 64x64.

Usage::

    python benchmarks/training_throughput.py --device cuda --batch 64 --json out.json
    python benchmarks/training_throughput.py --device cpu --size 16 --batch 2 --iters 3 --warmup 1 --variants fp32
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events

from monai_pairsynth.engines import (
    DEFAULT_CPU_MODEL_KWARGS,
    DeviceTripletLoader,
    build_training_dataset,
    create_paired_trainer,
)
from monai_pairsynth.networks import PairedDiffusionModel

MODS = ("ct", "pet", "label")
VARIANTS = {"fp32": (None, False), "bf16": ("bfloat16", False), "bf16-compile": ("bfloat16", True)}


def phantom_tensors(num: int, size: int) -> dict[str, torch.Tensor]:
    ds = build_training_dataset(num_cases=num, spatial_size=(size, size), spacing=4.0 * 64 / size)
    return {m: torch.stack([torch.as_tensor(ds[i][m]) for i in range(len(ds))]) for m in MODS}


def measure(
    variant: str, device: str, size: int, batch: int, iters: int, warmup: int, config: str, num_cases: int
) -> dict[str, Any]:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}.")
    autocast, compile_network = VARIANTS[variant]
    torch.manual_seed(0)
    model = PairedDiffusionModel(
        MODS, spatial_dims=2, **({} if config == "default" else DEFAULT_CPU_MODEL_KWARGS)
    )
    loader = DeviceTripletLoader(phantom_tensors(num_cases, size), batch, modality_specs=MODS, device=device)
    trainer = create_paired_trainer(
        model,
        loader,
        max_epochs=1,
        epoch_length=warmup + iters,
        device=device,
        lr=5e-4,
        noise_scheduler={
            "num_train_timesteps": 1000,
            "schedule": "cosine",
            "prediction_type": "v_prediction",
        },
        snr_gamma=5.0,
        foreground_weight={"label": 4.0},
        ema_momentum=0.005,
        autocast_dtype=autocast,
        compile_network=compile_network,
        stats_log=True,
        log_every=0,
        progress_bar=False,
        tensorboard=False,
    )
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    marks: dict[str, float] = {}

    def start(engine: Any) -> None:
        if engine.state.iteration == warmup:  # the batch fetch of the first timed iteration
            sync()
            marks["start"] = time.perf_counter()

    trainer.add_event_handler(Events.GET_BATCH_STARTED, start)
    first = time.perf_counter()
    trainer.run()
    sync()
    end = time.perf_counter()
    seconds = end - marks["start"]
    return {
        "variant": variant,
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "size": size,
        "batch": batch,
        "iters": iters,
        "warmup_seconds": marks["start"] - first,
        "iterations_per_s": iters / seconds,
        "samples_per_s": iters * batch / seconds,
        "final_loss": float(trainer.state.output["loss"].detach()),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--num-cases", type=int, default=512)
    p.add_argument("--config", choices=("cpu", "default"), default="cpu")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for v in args.variants:
        try:
            row = measure(
                v, args.device, args.size, args.batch, args.iters, args.warmup, args.config, args.num_cases
            )
        except (
            Exception
        ) as err:  # a variant that cannot run here (e.g. compile without a compiler) is reported
            row = {"variant": v, "error": f"{type(err).__name__}: {err}"[:500]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}")
    print("| variant | iterations/s | samples/s | target |")
    print("|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | failed: {r['error'][:80]} | | |")
        else:
            print(
                f"| {r['variant']} | {r['iterations_per_s']:.1f} | {r['samples_per_s']:.0f} | >= 20 it/s at batch 64 (GPU) |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
