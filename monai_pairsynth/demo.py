"""The main job: the ``pet_ct_pairsynth`` bundle end to end on the built-in phantom, on a CPU, in a few minutes.

Command line::

    python -m monai_pairsynth.demo [--quick] [--output-dir runs/demo] [--checkpoint PATH] [--threads 1]

Four ``python -m monai.bundle run`` commands on the bundle's own configs, each printed before it runs:

1. ``train_segmentation.json`` with ``synthetic_ratio 0`` (real only), in the background while step 2 runs;
2. ``generate.json``: train the quality filter's segmenter on the real training cases, generate candidates with
   the demo diffusion checkpoint (DPM-Solver++, 20 steps), keep the filtered ones in a pool; writes ``pool.pt``,
   the filter, ``preview.png`` and ``counts.json``;
3. ``train_segmentation.json`` with ``synthetic_ratio 0.5`` and the pool (same seed, same real data);
4. ``evaluate.json``: test Dice of both (paired over the test cases) and the pool's generation metrics.

Every process uses ``--threads`` torch threads (1 by default: two single-threaded processes use two cores
without the oversubscription that makes multi-threaded small convolutions slow on a busy machine). It ends with a
table (Dice real only vs mixed, pool accepted/rejected, generation time) and the path of the preview PNG. Each
step's log is in ``<output-dir>/logs/``; progress bars go to the terminal. The sizes are a toy-scale
demonstration of the pipeline (16 real training cases, 60 epochs), not a benchmark result.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_pairsynth.bundle_checks import check_generator_checkpoint
from monai_pairsynth.metrics.report import format_results_table

__all__ = ["DemoSettings", "bundle_commands", "main", "run_demo"]

_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "pet_ct_pairsynth"
_DEMO_CHECKPOINT = "models/diffusion_demo.pt"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (the full demo and ``--quick``)."""

    num_train_cases: int
    num_val_cases: int
    num_test_cases: int
    synthetic_ratio: float
    num_inference_steps: int
    segmenter_epochs: int
    epochs: int
    val_interval: int
    feature_epochs: int

    @property
    def pool_size(self) -> int:
        """r·N: the method keeps r·N of 4·r·N candidates."""
        return max(1, round(self.synthetic_ratio * self.num_train_cases))


FULL = DemoSettings(
    num_train_cases=16,
    num_val_cases=8,
    num_test_cases=32,
    synthetic_ratio=0.5,
    num_inference_steps=20,
    segmenter_epochs=30,
    epochs=60,
    val_interval=5,
    feature_epochs=20,
)
QUICK = DemoSettings(
    num_train_cases=8,
    num_val_cases=4,
    num_test_cases=8,
    synthetic_ratio=0.5,
    num_inference_steps=10,
    segmenter_epochs=5,
    epochs=4,
    val_interval=2,
    feature_epochs=3,
)


def _arg(value: Any) -> str:
    """A config override as ``monai.bundle``'s command line (python-fire) reads it."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_arg(v) for v in value) + "]"
    return str(value)


def bundle_commands(
    output_dir: Path,
    checkpoint: Path,
    spatial_size: Sequence[int],
    spacing: float,
    settings: DemoSettings,
    device: str = "cpu",
    seed: int = 0,
    threads: int = 1,
) -> list[tuple[str, str, list[str]]]:
    """``[(step name, log name, argv)]`` of the four bundle runs, in the order of the module docstring.

    The argv run in the bundle folder; paths are absolute.
    """
    base = [sys.executable, "-m", "monai.bundle", "run"]

    def common(config: str) -> list[str]:
        return [
            *base,
            "--config_file",
            f"configs/{config}",
            "--logging_file",
            "configs/logging.conf",
            "--spatial_size",
            _arg(list(spatial_size)),
            "--spacing",
            _arg(float(spacing)),
            "--device",
            device,
            "--seed",
            str(seed),
            "--num_threads",
            str(threads),
        ]

    gen_dir, real_dir, mixed_dir = (
        output_dir / "generate",
        output_dir / "seg_real_only",
        output_dir / "seg_mixed",
    )
    pool_file = gen_dir / "pool.pt"
    seg = [
        "--num_train_cases",
        str(settings.num_train_cases),
        "--num_val_cases",
        str(settings.num_val_cases),
        "--epochs",
        str(settings.epochs),
        "--val_interval",
        str(settings.val_interval),
    ]
    generate = (
        "generate and filter a synthesis pool",
        "generate",
        [
            *common("generate.json"),
            "--diffusion_checkpoint",
            str(checkpoint),
            "--num_train_cases",
            str(settings.num_train_cases),
            "--pool_size",
            str(settings.pool_size),
            "--num_inference_steps",
            str(settings.num_inference_steps),
            "--segmenter_epochs",
            str(settings.segmenter_epochs),
            "--output_dir",
            str(gen_dir),
        ],
    )
    real_only = (
        "train the segmentation UNet on real data only (in the background; no progress bar)",
        "seg_real_only",
        [
            *common("train_segmentation.json"),
            *seg,
            "--synthetic_ratio",
            "0",
            "--progress",
            "False",
            "--output_dir",
            str(real_dir),
        ],
    )
    mixed = (
        f"train it again with synthetic mixing (ratio {settings.synthetic_ratio}, the same seed and real data)",
        "seg_mixed",
        [
            *common("train_segmentation.json"),
            *seg,
            "--synthetic_ratio",
            _arg(settings.synthetic_ratio),
            "--pool_file",
            str(pool_file),
            "--output_dir",
            str(mixed_dir),
        ],
    )
    evaluate = (
        "evaluate both on the held-out test cases, and the pool",
        "evaluate",
        [
            *common("evaluate.json"),
            "--num_train_cases",
            str(settings.num_train_cases),
            "--num_test_cases",
            str(settings.num_test_cases),
            "--baseline_checkpoint",
            str(real_dir / "model.pt"),
            "--baseline_name",
            "real only",
            "--segmentation_checkpoint",
            str(mixed_dir / "model.pt"),
            "--segmentation_name",
            f"mixed (r = {settings.synthetic_ratio})",
            "--pool_file",
            str(pool_file),
            "--feature_epochs",
            str(settings.feature_epochs),
            "--output_dir",
            str(output_dir / "evaluate"),
        ],
    )
    return [real_only, generate, mixed, evaluate]


def _shell(argv: Sequence[str]) -> str:
    shown = ["python" if a == sys.executable else a for a in argv]
    return " ".join(shlex.quote(a) for a in shown)


def _missing_checkpoint_message(path: Path, bundle_dir: Path) -> str:
    return (
        f"The demo diffusion checkpoint {path} is missing.\n"
        "Make it (about an hour on 2 CPU cores; see bundles/pet_ct_pairsynth/docs/README.md, 'Demo checkpoint'):\n"
        f"    cd {bundle_dir} && python -m monai.bundle run --config_file configs/train_diffusion.json "
        "--logging_file configs/logging.conf\n"
        "or point the demo at another checkpoint with --checkpoint PATH."
    )


def run_demo(
    output_dir: str | os.PathLike = "runs/demo",
    quick: bool = False,
    checkpoint: str | os.PathLike | None = None,
    bundle_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """Run the four bundle steps and return the evaluation (``evaluate/evaluation.json``) with timings added.

    Raises:
        FileNotFoundError: no bundle folder or no diffusion checkpoint (the message says how to make one).
        RuntimeError: a bundle step failed (the message names its log file and shows its last lines).
    """
    start = time.perf_counter()
    bundle = Path(bundle_dir) if bundle_dir is not None else _BUNDLE
    if not (bundle / "configs" / "generate.json").is_file():
        raise FileNotFoundError(f"no pet_ct_pairsynth bundle at {bundle} (pass --bundle-dir).")
    ckpt = Path(checkpoint) if checkpoint is not None else bundle / _DEMO_CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(_missing_checkpoint_message(ckpt, bundle))
    ckpt = ckpt.resolve()
    info = check_generator_checkpoint(ckpt)
    if info["spatial_size"] is None or info["spacing"] is None:
        raise ValueError(f"checkpoint {ckpt} records no training spatial_size / spacing.")
    settings = QUICK if quick else FULL
    out = Path(output_dir).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    size_text = "x".join(map(str, info["spatial_size"]))
    print(
        f"monai_pairsynth demo{' (--quick)' if quick else ''}: the pet_ct_pairsynth bundle end to end on the "
        f"built-in phantom, {size_text} slices at {info['spacing']} mm, on {device}.\n"
        f"This is a toy-scale DEMO of the pipeline ({settings.num_train_cases} real training cases, "
        f"{settings.epochs} epochs, a pool of {settings.pool_size} synthetic triplets): its numbers show that "
        "everything runs, not what synthetic mixing achieves at full scale.\n"
        f"Generator: {ckpt}\nOutput: {out}\n",
        flush=True,
    )
    env = dict(os.environ)
    # the bundle's own configs: MONAI's warning about running untrusted configs is not useful here
    env["PYTHONWARNINGS"] = ",".join(
        w for w in (env.get("PYTHONWARNINGS"), "ignore:parsing config_file:UserWarning") if w
    )
    steps = bundle_commands(
        out, ckpt, info["spatial_size"], info["spacing"], settings, device=device, seed=seed, threads=threads
    )
    timings: dict[str, float] = {}
    started: dict[str, float] = {}
    logs_of = {name: logs / f"{name}.log" for _, name, _ in steps}

    def announce(i: int, title: str, name: str, argv: list[str]) -> None:
        print(
            f"[{i}/{len(steps)}] {title}\n  (cd {bundle} && {_shell(argv)})\n  log: {logs_of[name]}",
            flush=True,
        )

    def check(i: int, name: str, returncode: int, ended: float | None = None) -> None:
        timings[name] = (ended if ended is not None else time.perf_counter()) - started[name]
        if returncode != 0:
            lines = logs_of[name].read_text(encoding="utf-8", errors="replace").splitlines()
            raise RuntimeError(
                f"step {i} ({name}) failed with exit code {returncode}; log {logs_of[name]}:\n"
                + "\n".join(lines[-15:])
            )
        print(f"  {name}: done in {timings[name]:.0f} s\n", flush=True)

    # step 1 runs in the background (quiet) while step 2 generates the pool (with its progress bar)
    (title1, name1, argv1), (title2, name2, argv2) = steps[0], steps[1]
    announce(1, title1, name1, argv1)
    started[name1] = time.perf_counter()
    with open(logs_of[name1], "w", encoding="utf-8") as log1:
        background = subprocess.Popen(argv1, cwd=bundle, stdout=log1, stderr=subprocess.STDOUT, env=env)
        ended: list[float] = []
        watcher = threading.Thread(
            target=lambda: (background.wait(), ended.append(time.perf_counter())), daemon=True
        )
        watcher.start()
        try:
            announce(2, title2, name2, argv2)
            started[name2] = time.perf_counter()
            with open(logs_of[name2], "w", encoding="utf-8") as log2:
                code2 = subprocess.run(
                    argv2, cwd=bundle, stdout=log2, stderr=None, env=env, check=False
                ).returncode
            check(2, name2, code2)
            if background.poll() is None:
                print(f"  waiting for {name1} ...", flush=True)
            code1 = background.wait()
            watcher.join()
            check(1, name1, code1, ended[0] if ended else None)
        finally:
            if background.poll() is None:
                background.terminate()
                background.wait()
    for i, (title, name, argv) in enumerate(steps[2:], start=3):
        announce(i, title, name, argv)
        started[name] = time.perf_counter()
        with open(logs_of[name], "w", encoding="utf-8") as log:
            code = subprocess.run(argv, cwd=bundle, stdout=log, stderr=None, env=env, check=False).returncode
        check(i, name, code)
    results = json.loads((out / "evaluate" / "evaluation.json").read_text(encoding="utf-8"))
    timings["total"] = time.perf_counter() - start
    pool = results.get("pool") or {}
    preview = (pool.get("files") or {}).get("preview") or str(out / "generate" / "preview.png")
    results["extra_rows"] = {
        "sampler": f"DPM-Solver++(2M), {settings.num_inference_steps} steps, {device}",
        "wall time: train real only (parallel to generate) / generate / train mixed / evaluate": " / ".join(
            f"{timings[n]:.0f} s" for n in ("seg_real_only", "generate", "seg_mixed", "evaluate")
        ),
        "torch threads per process": str(threads),
    }
    results["timings"] = timings
    print(
        f"Results ({size_text} phantom slices; {settings.num_train_cases} real training cases, "
        f"{settings.num_test_cases} test cases, {settings.epochs} epochs; toy-scale demo):\n"
    )
    print(format_results_table(results))
    print(f"\nPreview of the synthetic pool: {preview}")
    print(
        f"Full results: {out / 'evaluate' / 'evaluation.md'}; total time {timings['total']:.0f} s.",
        flush=True,
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_pairsynth.demo",
        description="Run the pet_ct_pairsynth bundle end to end on the built-in phantom (CPU, a few minutes): "
        "generate and filter a synthetic pool, train a segmentation UNet real-only and with mixing, evaluate both.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute), e.g. for tests")
    parser.add_argument("--output-dir", default="runs/demo", help="where everything is written (runs/demo)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="diffusion checkpoint (default: the bundle's models/diffusion_demo.pt)",
    )
    parser.add_argument(
        "--bundle-dir", default=None, help="the pet_ct_pairsynth bundle folder (default: this clone's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of every step (0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each bundle process (1)")
    args = parser.parse_args(argv)
    try:
        run_demo(
            args.output_dir,
            quick=args.quick,
            checkpoint=args.checkpoint,
            bundle_dir=args.bundle_dir,
            device=args.device,
            seed=args.seed,
            threads=args.threads,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"demo stopped: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
