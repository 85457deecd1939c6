"""Cost of one training iteration of the engine against the bare network step, today and at a baseline revision.

Two questions of issue 12, answered side by side in one run:

1. **Engine overhead at a real size** (default 64x64, batch 8, the CPU-default widths): the whole iteration of
   :func:`~monai_pairsynth.engines.create_paired_trainer` (batch fetch, prepare-batch, noising, forward,
   loss, backward, clipping, optimiser, EMA, handlers) against the bare ``forward + backward + optimiser
   step`` of the same networks with the same optimiser. Target: ratio <= 1.10.
2. **Non-network overhead** at a size where the networks cost almost nothing (16x16, batch 1): engine
   iteration minus bare ``forward + backward``, today and at ``--baseline-ref`` (default: the revision before
   the fast path; its whole package is extracted with ``git archive`` and imported in its own processes, fed
   the way its bundle fed it: a MONAI ``DataLoader`` over per-sample MetaTensor augmentation). Target: cut
   by >= 5x.

Every measurement runs in its own process (one torch thread unless ``--threads``), the implementations
alternate (current, baseline, current, ...) ``--repeats`` times, and the medians are reported with their
ratios. Times are process CPU seconds (``time.process_time``) of steady-state iterations (after warm-up): with
one torch thread that is the iteration's own compute, which other jobs on a shared machine barely change
(wall time would count their share of the cores).

Usage::

    python benchmarks/training_iteration.py                     # both questions, 5 repeats
    python benchmarks/training_iteration.py --repeats 3 --json /tmp/iter.json
    python benchmarks/training_iteration.py --quick             # a rehearsal: tiny sizes, few iterations
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE_REF = "3c2737b"
MODS = ("ct", "pet", "label")
WIDTHS = {
    "channels": (16, 32, 32),
    "attention_levels": (False, False, True),
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "num_head_channels": 8,
}


# ----------------------------------------------------------------------------------------------------------------
# worker side (runs inside one process, with whichever monai_pairsynth is first on sys.path)
# ----------------------------------------------------------------------------------------------------------------
def _slices(n: int, size: int) -> list[dict]:
    """``n`` phantom slices in [-1, 1] at ``size x size`` (the training dataset's own builder; in the baseline too)."""
    from monai_pairsynth.engines import build_training_dataset

    ds = build_training_dataset(num_cases=n, spatial_size=(size, size), spacing=4.0 * 64 / size)
    return [ds[i] for i in range(len(ds))]


def _bare_times(
    model: Any, optimizer: Any, size: int, batch: int, iters: int, warmup: int
) -> dict[str, float]:
    """Median seconds of forward+backward, and of forward+backward+optimiser step, on random inputs."""
    import time

    import torch

    g = torch.Generator().manual_seed(0)
    noisy = {m: torch.randn(batch, 1, size, size, generator=g) for m in MODS}
    target = {m: torch.randn(batch, 1, size, size, generator=g) for m in MODS}
    t = torch.randint(0, 1000, (batch,), generator=g)

    def fb() -> None:
        out = model(noisy, t)
        loss = sum(torch.nn.functional.mse_loss(out[m], target[m]) for m in MODS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def step() -> None:
        fb()
        optimizer.step()

    res = {}
    for name, fn in (("forward_backward", fb), ("forward_backward_step", step)):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        res[name] = statistics.median(times)
    return res


def worker(impl: str, size: int, batch: int, iters: int, warmup: int, threads: int) -> dict[str, Any]:
    import time

    import torch
    from ignite.engine import Events

    import monai_pairsynth
    from monai_pairsynth.engines import create_paired_trainer
    from monai_pairsynth.networks import PairedDiffusionModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = PairedDiffusionModel(MODS, spatial_dims=2, **WIDTHS)
    n = max(batch * (iters + warmup), batch)
    samples = _slices(min(n, 64), size)
    if impl == "current":
        from monai_pairsynth.engines import DeviceTripletLoader

        loader = DeviceTripletLoader.from_samples(samples, batch, modality_specs=MODS, seed=0, augment=True)
    else:  # the baseline's own data path: per-sample MetaTensor augmentation in a DataLoader
        from monai.data import Dataset

        from monai_pairsynth.data import augmentation_transforms
        from monai_pairsynth.engines import paired_data_loader

        dataset = Dataset(samples, transform=augmentation_transforms(MODS))
        loader = paired_data_loader(dataset, batch_size=batch, seed=0, drop_last=True)
    trainer = create_paired_trainer(
        model,
        loader,
        max_epochs=1,
        device="cpu",
        lr=1e-4,
        noise_scheduler={
            "num_train_timesteps": 1000,
            "schedule": "cosine",
            "prediction_type": "v_prediction",
        },
        ema_momentum=0.005,
        ema_warmup_iters=100,
        stats_log=True,
        log_every=0,
        progress_bar=False,
        tensorboard=False,
        epoch_length=iters + warmup,
    )
    times: list[float] = []
    tic = [0.0]
    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda e: tic.__setitem__(0, time.process_time()))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: times.append(time.process_time() - tic[0])
    )
    trainer.run()
    engine = statistics.median(times[warmup:])
    bare = _bare_times(model, trainer.paired.optimizer, size, batch, iters, warmup)
    return {
        "impl": impl,
        "package": str(Path(monai_pairsynth.__file__).parent),
        "size": size,
        "batch": batch,
        "engine_iteration": engine,
        **bare,
        "overhead": engine - bare["forward_backward"],
    }


# ----------------------------------------------------------------------------------------------------------------
# driver side
# ----------------------------------------------------------------------------------------------------------------
def extract_revision(ref: str) -> Path:
    """The package at git revision ``ref``, extracted with ``git archive`` into a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="pairsynth_baseline_"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "monai_pairsynth"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run_worker(impl: str, path: Path, size: int, batch: int, iters: int, warmup: int, threads: int) -> dict:
    code = (
        "import json, sys; sys.path[:0] = sys.argv[1:3]; from training_iteration import worker; "
        "a = sys.argv[3:]; print('RESULT ' + json.dumps(worker(a[0], *map(int, a[1:]))))"
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    argv = [str(path), str(Path(__file__).parent), impl, *map(str, (size, batch, iters, warmup, threads))]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {impl} {size}x{size} b{batch} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    if Path(result["package"]).resolve() != (path / "monai_pairsynth").resolve():
        raise RuntimeError(f"worker {impl} imported {result['package']}, not the package under {path}.")
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    baseline_path = extract_revision(args.baseline_ref)
    impls = {"current": ROOT, "baseline": baseline_path}
    configs = {"real": (args.size, args.batch), "tiny": (args.tiny_size, 1)}
    rows: dict[str, dict[str, list[dict]]] = {c: {i: [] for i in impls} for c in configs}
    for r in range(args.repeats):
        for cname, (size, batch) in configs.items():
            order = list(impls) if r % 2 == 0 else list(impls)[::-1]
            for impl in order:
                if cname == "real" and impl == "baseline" and not args.baseline_real:
                    continue
                res = run_worker(impl, impls[impl], size, batch, args.iters, args.warmup, args.threads)
                rows[cname][impl].append(res)
                print(
                    f"  repeat {r + 1}: {impl:8s} {size}x{size} b{batch}: engine {res['engine_iteration'] * 1e3:.1f} ms, "
                    f"fwd+bwd {res['forward_backward'] * 1e3:.1f} ms, +step {res['forward_backward_step'] * 1e3:.1f} ms",
                    flush=True,
                )

    def med(cname: str, impl: str, key: str) -> float:
        return statistics.median(x[key] for x in rows[cname][impl])

    out: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s)",
        "baseline_ref": args.baseline_ref,
        "repeats": args.repeats,
        "iters": args.iters,
        "rows": rows,
    }
    s, b = configs["real"]
    out["real"] = {
        "size": s,
        "batch": b,
        "engine_ms": med("real", "current", "engine_iteration") * 1e3,
        "bare_step_ms": med("real", "current", "forward_backward_step") * 1e3,
        "ratio_engine_to_bare_step": statistics.median(
            x["engine_iteration"] / x["forward_backward_step"] for x in rows["real"]["current"]
        ),
    }
    if rows["real"]["baseline"]:
        out["real"]["baseline_engine_ms"] = med("real", "baseline", "engine_iteration") * 1e3
        out["real"]["ratio_baseline_to_current_engine"] = med("real", "baseline", "engine_iteration") / med(
            "real", "current", "engine_iteration"
        )
    out["tiny"] = {
        "size": configs["tiny"][0],
        "batch": 1,
        "current_overhead_ms": med("tiny", "current", "overhead") * 1e3,
        "baseline_overhead_ms": med("tiny", "baseline", "overhead") * 1e3,
        "current_engine_ms": med("tiny", "current", "engine_iteration") * 1e3,
        "baseline_engine_ms": med("tiny", "baseline", "engine_iteration") * 1e3,
        "current_forward_backward_ms": med("tiny", "current", "forward_backward") * 1e3,
    }
    out["tiny"]["overhead_cut"] = out["tiny"]["baseline_overhead_ms"] / max(
        out["tiny"]["current_overhead_ms"], 1e-9
    )
    return out


def report(out: dict[str, Any]) -> str:
    r, t = out["real"], out["tiny"]
    lines = [
        f"machine: {out['machine']}; baseline {out['baseline_ref']}; medians of {out['repeats']} processes x "
        f"{out['iters']} iterations",
        "",
        "| question | measured | target |",
        "|---|---|---|",
        f"| engine iteration / bare fwd+bwd+AdamW, {r['size']}x{r['size']} batch {r['batch']} | "
        f"{r['ratio_engine_to_bare_step']:.3f} ({r['engine_ms']:.1f} vs {r['bare_step_ms']:.1f} ms) | <= 1.10 |",
        f"| non-network overhead per iteration, {t['size']}x{t['size']} batch 1: baseline / current | "
        f"{t['overhead_cut']:.1f}x ({t['baseline_overhead_ms']:.1f} -> {t['current_overhead_ms']:.1f} ms; "
        f"fwd+bwd {t['current_forward_backward_ms']:.1f} ms) | >= 5x |",
    ]
    if "ratio_baseline_to_current_engine" in r:
        lines.append(
            f"| engine iteration {r['size']}x{r['size']} batch {r['batch']}: baseline / current | "
            f"{r['ratio_baseline_to_current_engine']:.2f}x ({r['baseline_engine_ms']:.1f} -> {r['engine_ms']:.1f} ms) | - |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline-ref", default=DEFAULT_BASELINE_REF)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tiny-size", type=int, default=16)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--baseline-real",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the baseline engine at the real size",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quick", action="store_true", help="rehearsal: 32x32 batch 2, 4 iterations, 1 repeat")
    return p


def apply_quick(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.size, args.batch, args.iters, args.warmup, args.repeats = 32, 2, 4, 2, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = apply_quick(build_parser().parse_args(argv))
    out = measure(args)
    print(report(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
