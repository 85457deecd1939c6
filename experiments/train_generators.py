"""Stage 1 of the downstream experiment: one linked diffusion generator per (N_real, seed) arm.

Each generator sees only the real training cases of its arm (``downstream_splits.train_seeds``): a
generator trained on more real data than its segmenter would fake the gain. Every generator is trained
by the package's own command line (``python -m monai_pairsynth.engines.train``) at the CPU default model
size, in parallel processes, then exported to a slim fp16 sampling checkpoint ``gen_n{N}_s{seed}.pt``.

Usage::

    # what produced docs/results.md (one H200, all six in parallel, 6 minutes each):
    python experiments/train_generators.py --out runs/downstream/generators --device cuda --max-minutes 6
    # the same on a CPU (slow: about 3.7 s per step on one core, so give it hours)
    python experiments/train_generators.py --out runs/downstream/generators --device cpu --max-minutes 240

``--max-minutes`` bounds each run's wall time (training stops at the first epoch end past it); ``--steps``
caps the number of optimiser steps. ``summary.json`` in each run folder records the epochs, steps and
seconds per step reached, and ``generators.json`` collects them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from downstream_splits import generator_name, train_base_seed  # noqa: E402

# the bundle's train_diffusion.json settings, so arm generators and the demo checkpoint train alike
BATCH_SIZE = 16
LEARNING_RATE = 5e-4
EMA_MOMENTUM = 0.005
EMA_WARMUP_ITERS = 100
#: the objective of train_diffusion.json (chosen by benchmarks/convergence.py, docs/training.md)
RECIPE = [
    "--prediction-type", "v_prediction",
    "--schedule", "cosine",
    "--perceptual-weight", "0",
    "--snr-gamma", "5",
    "--foreground-weight", "label=4",
    "--device-loader",
]  # fmt: skip


def train_command(
    out_dir: Path,
    n_real: int,
    seed: int,
    *,
    device: str,
    steps: int,
    max_minutes: float | None,
    threads: int,
    amp: bool | None = None,
    autocast: str | None = None,
    independent_timestep_prob: float = 0.0,
) -> list[str]:
    """The ``monai_pairsynth.engines.train`` command of one arm's generator (with
    ``independent_timestep_prob`` > 0: the per-modality-timestep generator of the label-first arms)."""
    steps_per_epoch = max(n_real // BATCH_SIZE, 1)
    epochs = max(steps // steps_per_epoch, 1)
    cmd = [
        sys.executable,
        "-m",
        "monai_pairsynth.engines.train",
        "--output-dir",
        str(out_dir),
        "--num-cases",
        str(n_real),
        "--seed",
        str(train_base_seed(seed)),
        "--augment",
        "--batch-size",
        str(BATCH_SIZE),
        "--lr",
        str(LEARNING_RATE),
        "--epochs",
        str(epochs),
        "--ema-momentum",
        str(EMA_MOMENTUM),
        "--ema-warmup-iters",
        str(EMA_WARMUP_ITERS),
        *RECIPE,
        "--checkpoint-every",
        str(max(200 // steps_per_epoch, 1)),
        "--log-every",
        "0",
        "--no-progress",
        "--no-tensorboard",
        "--threads",
        str(threads),
        "--device",
        device,
    ]
    if independent_timestep_prob > 0:
        cmd += ["--independent-timestep-prob", str(independent_timestep_prob)]
    if max_minutes is not None:
        cmd += ["--max-minutes", str(max_minutes)]
    if amp is not None:
        cmd += ["--amp" if amp else "--no-amp"]
    if autocast is not None:
        cmd += ["--autocast", autocast]
    return cmd


@dataclass(frozen=True)
class TrainingJob:
    """One generator's training command, its run folder and what to add to its summary."""

    name: str
    run_dir: Path
    command: list[str]
    extra: dict


def run_training_jobs(
    jobs: list[TrainingJob], out: Path, parallel: int, *, log_mode: str = "a", poll_seconds: float = 2.0
) -> tuple[dict[str, dict], list[str]]:
    """Run the training commands, at most ``parallel`` at once (each logs to ``<run_dir>/train.log``); export
    every finished run's checkpoint to the slim fp16 ``<out>/<name>.pt`` and return ``({name: summary + extra +
    wall_seconds}, [names of failed runs])``."""
    from monai_pairsynth.engines import export_sampling_checkpoint

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pending = list(jobs)
    running: dict[str, tuple[TrainingJob, subprocess.Popen, float, Any]] = {}
    results: dict[str, dict] = {}
    failed: list[str] = []
    while pending or running:
        while pending and len(running) < max(parallel, 1):
            job = pending.pop(0)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            log = open(job.run_dir / "train.log", log_mode, encoding="utf-8")
            print(f"[{job.name}] {' '.join(job.command[1:])}", flush=True)
            proc = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[job.name] = (job, proc, time.time(), log)
        time.sleep(poll_seconds)
        for name, (job, proc, started, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            if proc.returncode != 0:
                failed.append(name)
                print(
                    f"[{name}] FAILED (exit {proc.returncode}); see {job.run_dir / 'train.log'}", flush=True
                )
                continue
            export_sampling_checkpoint(job.run_dir / "checkpoint.pt", out / f"{name}.pt", half=True)
            summary = json.loads((job.run_dir / "summary.json").read_text(encoding="utf-8"))
            summary.update(job.extra, wall_seconds=round(time.time() - started, 1))
            results[name] = summary
            print(
                f"[{name}] {summary['iterations']} steps, {summary['epochs']} epochs, "
                f"{summary['seconds_per_iteration'] * 1000:.1f} ms/step, {summary['wall_seconds']:.0f} s",
                flush=True,
            )
    return results, failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the run folders and the exported checkpoints")
    p.add_argument("--n-real", type=int, nargs="+", default=[16, 64])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=100_000, help="cap on optimiser steps per generator")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget per generator")
    p.add_argument("--jobs", type=int, default=0, help="parallel runs (0: all at once)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="default: on with CUDA")
    p.add_argument("--autocast", default=None, choices=("bfloat16",), help="bf16 autocast (no GradScaler)")
    p.add_argument(
        "--conditional",
        action="store_true",
        help="train the per-modality-timestep generators of the label-first arms instead (<name>_cond.pt, "
        "independent_timestep_prob 0.5; their summaries go to generators_cond.json)",
    )
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for n in args.n_real:
        for s in args.seeds:
            name = generator_name(n, s) + ("_cond" if args.conditional else "")
            cmd = train_command(
                out / name,
                n,
                s,
                device=args.device,
                steps=args.steps,
                max_minutes=args.max_minutes,
                threads=args.threads,
                amp=args.amp,
                autocast=args.autocast,
                independent_timestep_prob=0.5 if args.conditional else 0.0,
            )
            jobs.append(TrainingJob(name, out / name, cmd, {"n_real": n, "seed": s}))
    results, failed = run_training_jobs(jobs, out, args.jobs or len(jobs), log_mode="w")
    summaries = out / ("generators_cond.json" if args.conditional else "generators.json")
    summaries.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
