"""All performance benchmarks of ARCHITECTURE.md §7 in one command: prints markdown, writes docs/benchmarks.md.

Usage::

    python benchmarks/collect.py                   # full run (about 20-25 min on 2 CPU cores), writes docs/benchmarks.md
    python benchmarks/collect.py --quick --output /tmp/benchmarks.md   # rehearsal (about 1-2 min), tiny sizes
    python benchmarks/collect.py --json /tmp/benchmarks.json           # also the raw results
    python benchmarks/collect.py --from-json /tmp/benchmarks.json      # re-render those, no measuring

What it measures, each with the functions of the single-topic scripts beside it:

- FLOPs per triplet (``generation_throughput.flops_per_step``, torch's ``FlopCounterMode``) of the package
  default model at 128x128 and of the CPU default model at 64x64, 20 steps;
- the linked / independent sampling-step CPU ratio of both models (``sampling_cost.time_step``);
- per-triplet sampler cost of the package default model (``sampling_cost.time_samplers``, first steps timed
  and extrapolated) and of the trained demo generator (full runs, from the quality run);
- sampler quality against DDPM-1000 on the trained demo generator (``sampler_quality.run_quality``);
- the per-sample segmentation-epoch ratio with pool mixing at r = 0.5 (``mixing_epoch_cost.py``, run as a
  subprocess: it has no importable entry point; its printed ``[cpu median]`` line is parsed);
- GPU triplets/s at 128x128, 20 steps, bf16 beside the FLOP floor (``generation_throughput.main`` when a CUDA
  device is present, else the stored results of the last GPU session, labelled as such);
- peak memory: peak RSS of this process and of its child processes (``resource.getrusage``), and the CUDA peak.

Everything runs with one torch thread per process (the sampler-quality workers included). The markdown is
written atomically (``monai_pairsynth.utils.atomic_write_text``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the single-topic scripts are siblings, not a package

import torch  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = HERE / "results"
STORED_GPU = {
    "default": RESULTS / "h200_generation_throughput.json",
    "cpu": RESULTS / "h200_generation_throughput_cpu_model.json",
}
STORED_GPU_COMMAND = "MINUTES=6 bash benchmarks/gpu_session.sh"
GPU_COMMANDS = {
    "default": "python benchmarks/generation_throughput.py --device cuda --amp bf16 --batch 64 256",
    "cpu": "python benchmarks/generation_throughput.py --config cpu --size 64 --device cuda --amp bf16 --batch 256",
}
STEP_TARGET = 1.25
MIXING_TARGET = 1.10
ITERATION_TARGET = 1.10
OVERHEAD_CUT_TARGET = 5.0
FLOP_SIZES = (("default", 128), ("cpu", 64))


def _kib_to_mib(kib: float) -> float:
    return kib / 1024.0  # ru_maxrss is in KiB on Linux


def _self_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, torch version, thread count, load average (now), GPU if any."""
    try:
        load = list(os.getloadavg())
    except OSError:  # not available
        load = None
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": load,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def measure_flops(steps: int = 20) -> list[dict[str, Any]]:
    """FLOPs of one linked step and of a ``steps``-step triplet for both model configurations."""
    from generation_throughput import build_model, flops_per_step

    rows = []
    for config, size in FLOP_SIZES:
        torch.manual_seed(0)
        model = build_model(config).eval()
        per_step = flops_per_step(model, size)
        rows.append(
            {
                "config": config,
                "size": size,
                "steps": steps,
                "parameters": sum(p.numel() for p in model.parameters()),
                "flops_per_step": per_step,
                "flops_per_triplet": per_step * steps,
                "command": f"python benchmarks/generation_throughput.py --config {config} --size {size} --steps {steps}",
            }
        )
    return rows


def measure_step_ratio(repeats: int, inner: int, size: int = 64, batch: int = 4) -> list[dict[str, Any]]:
    """Linked / independent CPU ratio of one sampling step (``sampling_cost.time_step``) for both models."""
    from sampling_cost import CONFIGS, time_step

    from monai_pairsynth.networks import PairedDiffusionModel

    rows = []
    for config in ("default", "cpu"):
        torch.manual_seed(0)
        model = PairedDiffusionModel(**CONFIGS[config]).eval()
        step = time_step(model, size, batch, repeats, inner, breakdown=False)
        q1, median, q3 = step["ratio"]
        rows.append(
            {
                "config": config,
                "channels": list(model.get_config()["channels"]),
                "size": size,
                "batch": batch,
                "repeats": repeats,
                "inner": inner,
                "linked_cpu_ms": 1e3 * step["cpu"]["linked"],
                "independent_cpu_ms": 1e3 * step["cpu"]["independent"],
                "ratio": median,
                "ratio_q1": q1,
                "ratio_q3": q3,
                "ratio_of_medians": step["ratio_of_medians"],
            }
        )
    return rows


def measure_sampler_cost(quick_steps: int, size: int = 64, batch: int = 4) -> list[dict[str, Any]]:
    """Per-triplet cost of DDPM-1000 / DDIM-50 / DPM-Solver++-20 for the package default model (untrained).

    Each sampler is timed on its first ``quick_steps`` steps and extrapolated (``sampling_cost.time_samplers``).
    """
    from sampling_cost import time_samplers

    from monai_pairsynth.networks import PairedDiffusionModel

    torch.manual_seed(0)
    model = PairedDiffusionModel().eval()
    with torch.no_grad():
        rows = time_samplers(model, size, batch, quick_steps)
    return [
        {
            "sampler": f"{label}-{steps}",
            "steps": steps,
            "steps_timed": timed,
            "cpu_seconds_per_triplet": cpu / batch,
            "wall_seconds_per_triplet": wall / batch,
        }
        for label, steps, timed, wall, cpu in rows
    ]


_MIX_LINE = re.compile(
    r"\[cpu median\] real-(\d+) ([\d.]+)s, mixed ([\d.]+)s, real-(\d+) ([\d.]+)s \| per-epoch ratio ([\d.]+) .*"
    r"per-sample ratio ([\d.]+)"
)


def parse_mixing_output(text: str) -> dict[str, float]:
    """The ``[cpu median]`` line of ``mixing_epoch_cost.py``: epoch seconds and the per-sample ratio."""
    m = _MIX_LINE.search(text)
    if m is None:
        raise ValueError(f"no '[cpu median]' line in the output of mixing_epoch_cost.py:\n{text}")
    return {
        "real_samples": int(m.group(1)),
        "real_epoch_cpu_s": float(m.group(2)),
        "mixed_epoch_cpu_s": float(m.group(3)),
        "per_epoch_ratio": float(m.group(6)),
        "per_sample_ratio": float(m.group(7)),
    }


def measure_mixing(repeats: int) -> dict[str, Any]:
    """Runs ``mixing_epoch_cost.py --repeats N`` (64x64, r = 0.5, no workers) and parses its CPU medians."""
    args = ["benchmarks/mixing_epoch_cost.py", "--repeats", str(repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mixing_epoch_cost.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = parse_mixing_output(proc.stdout)
    result.update(
        ratio=0.5,
        size=64,
        repeats=repeats,
        command="python " + " ".join(args),
        max_rss_kib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,  # the only child so far
    )
    return result


def measure_training_iteration(quick: bool) -> dict[str, Any]:
    """``training_iteration.measure``: engine vs bare step at 64x64 b8, overhead at 16x16 b1 vs the baseline."""
    import training_iteration

    argv = ["--quick"] if quick else ["--repeats", "3"]
    args = training_iteration.build_parser().parse_args(argv)
    training_iteration.apply_quick(args)
    out = training_iteration.measure(args)
    out["command"] = "python benchmarks/training_iteration.py " + " ".join(argv)
    return out


def _git_date(path: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%cs", "--", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = ""
    return out or datetime.date.fromtimestamp(path.stat().st_mtime).isoformat()


def gpu_throughput(flops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GPU triplets/s beside the floor: measured now on a CUDA device, else the stored GPU-session results."""
    rows = []
    if torch.cuda.is_available():
        from generation_throughput import main as throughput_main

        for command in GPU_COMMANDS.values():
            argv = command.split()[2:]
            r = throughput_main(argv)
            r.update(
                command=command,
                source=f"measured now on {r.get('device_name')} on {datetime.date.today().isoformat()} by "
                f"`{command}`",
                stored=False,
            )
            rows.append(r)
        return rows
    counted = {(f["config"], f["size"]): f["flops_per_triplet"] for f in flops}
    for config, path in STORED_GPU.items():
        if not path.is_file():
            rows.append({"config": config, "missing": str(path.relative_to(ROOT))})
            continue
        r = json.loads(path.read_text(encoding="utf-8"))
        r.update(
            command=GPU_COMMANDS[config],
            source=f"measured on {r.get('device_name', 'a GPU')} on {_git_date(path)} by `{STORED_GPU_COMMAND}` "
            f"(`{GPU_COMMANDS[config]}`; stored in `{path.relative_to(ROOT)}`, torch {r.get('torch')})",
            stored=True,
            flops_per_triplet_now=counted.get((r["config"], r["size"])),
        )
        rows.append(r)
    return rows


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every measurement; returns the raw results (see :func:`render_markdown`)."""
    import sampler_quality

    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": bool(args.quick),
        "command": "python benchmarks/collect.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "timings": {},
        "rss_kib": {},
    }
    if args.num_samples is not None:
        results["command"] += f" --num-samples {args.num_samples}"
    if args.workers is not None:
        results["command"] += f" --workers {args.workers}"

    def stage(name: str, fn):
        start = time.perf_counter()
        print(f"[collect] {name} ...", file=sys.stderr, flush=True)
        value = fn()
        results["timings"][name] = time.perf_counter() - start
        results["rss_kib"][name] = _self_rss_kib()
        print(f"[collect] {name}: {results['timings'][name]:.1f} s", file=sys.stderr, flush=True)
        return value

    # the subprocess first: RUSAGE_CHILDREN is then its own peak
    results["mixing"] = stage("mixing epoch", lambda: measure_mixing(3 if args.quick else 15))
    results["flops"] = stage("flops", measure_flops)
    repeats, inner = (3, 1) if args.quick else (15, 3)
    results["step_ratio"] = stage("step ratio", lambda: measure_step_ratio(repeats, inner))
    results["step_ratio_command"] = (
        f"python benchmarks/sampling_cost.py --step-only --config both --no-breakdown --repeats {repeats} "
        f"--inner {inner}"
    )
    quick_steps = 2 if args.quick else 10
    results["sampler_cost"] = stage("sampler cost", lambda: measure_sampler_cost(quick_steps))
    results["sampler_cost_command"] = "python benchmarks/sampling_cost.py" + (
        " --quick" if quick_steps <= 5 else ""
    )
    results["sampler_cost_quick_steps"] = quick_steps

    # 24 samples in 4 batches of 6 over 2 workers: DDPM-1000 is two rounds of 6 x 1000 steps per worker
    qkw: dict[str, Any] = {"num_samples": 24, "batch_size": 6, "workers": 2}
    if args.quick:
        qkw = {
            "num_samples": 4,
            "batch_size": 4,
            "workers": 1,
            "samplers": sampler_quality.QUICK_SAMPLERS,
            "feature_cases": 16,
            "feature_epochs": 2,
        }
    if args.num_samples is not None:
        qkw["num_samples"] = args.num_samples
    if args.workers is not None:
        qkw["workers"] = args.workers
    results["quality"] = stage("sampler quality", lambda: sampler_quality.run_quality(verbose=True, **qkw))
    results["quality_command"] = (
        f"python benchmarks/sampler_quality.py --num-samples {qkw['num_samples']} "
        f"--batch-size {qkw['batch_size']} --workers {qkw['workers']}" + (" --quick" if args.quick else "")
    )
    results["training_iteration"] = stage(
        "training iteration", lambda: measure_training_iteration(args.quick)
    )
    results["gpu"] = stage("gpu throughput", lambda: gpu_throughput(results["flops"]))
    results["rss_kib"]["children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    results["total_seconds"] = sum(results["timings"].values())
    return results


# ---------------------------------------------------------------------------------------------------- rendering


def status(value: float | None, target: float, higher_is_better: bool = False) -> str:
    """``"met"`` / ``"not met"`` / ``"not measured"`` of a value against a target bound."""
    if value is None or value != value:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**not met**"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def _targets(r: dict[str, Any]) -> list[str]:
    lines = [
        "| target | measured | status | command |",
        "|---|---|---|---|",
    ]
    for s in r["step_ratio"]:
        lines.append(
            f"| linked sampling step ≤ {STEP_TARGET:.2f}× three independent MONAI `DiffusionModelUNet`s of the "
            f"same widths (`{s['config']}` model, channels {tuple(s['channels'])}) | {s['ratio']:.3f}× "
            f"[IQR {s['ratio_q1']:.3f}, {s['ratio_q3']:.3f}], CPU time, median of {s['repeats']} interleaved "
            f"repeats | {status(s['ratio'], STEP_TARGET)} | `{r['step_ratio_command']}` |"
        )
    mix = r["mixing"]
    lines.append(
        f"| segmentation epoch with pool-backed mixing at r = {mix['ratio']} ≤ {MIXING_TARGET:.2f}× the "
        f"real-only epoch, per sample | {mix['per_sample_ratio']:.3f}× (CPU time, median of {mix['repeats']}; "
        f"per epoch {mix['per_epoch_ratio']:.3f}× for 1.5× the samples) | "
        f"{status(mix['per_sample_ratio'], MIXING_TARGET)} | `{mix['command']}` |"
    )
    t = r.get("training_iteration")
    if t:
        real, tiny = t["real"], t["tiny"]
        lines.append(
            f"| training iteration of the engine ≤ {ITERATION_TARGET:.2f}× the bare forward + backward + AdamW "
            f"step of the same networks ({real['size']}×{real['size']}, batch {real['batch']}, CPU default model) | "
            f"{real['ratio_engine_to_bare_step']:.3f}× ({real['engine_ms']:.0f} vs {real['bare_step_ms']:.0f} ms "
            f"CPU time) | {status(real['ratio_engine_to_bare_step'], ITERATION_TARGET)} | `{t['command']}` |"
        )
        lines.append(
            f"| non-network overhead per training iteration ({tiny['size']}×{tiny['size']}, batch 1) cut ≥ "
            f"{OVERHEAD_CUT_TARGET:.0f}× from {t['baseline_ref']} | {tiny['overhead_cut']:.1f}× "
            f"({tiny['baseline_overhead_ms']:.1f} → {tiny['current_overhead_ms']:.1f} ms CPU time) | "
            f"{status(tiny['overhead_cut'], OVERHEAD_CUT_TARGET, higher_is_better=True)} | `{t['command']}` |"
        )
    q = r["quality"]
    fast = [s for s in q["samplers"] if s["scheduler"] == "dpmpp"]
    if fast:
        s = fast[-1]
        verdict = "met" if s["within_tolerance"] else "**not met**"
        lines.append(
            f"| {s['label']} within 10 % of {q['reference']} (feature FID against real, pairedness) | FID "
            f"{_fmt(s['fid_ratio'])}×, lesion Dice {_fmt(s['lesion_ratio'])}×, body Dice "
            f"{_fmt(s['body_ratio'])}× {q['reference']}'s ({q['num_samples']} samples each, demo generator) | "
            f"{verdict} | `{r['quality_command']}` |"
        )
    for g in r["gpu"]:
        if g.get("config") != "default":
            continue
        if "missing" in g:
            lines.append(
                f"| GPU triplets/s at 128×128, 20 steps, bf16, beside the FLOP floor | no GPU here and no "
                f"stored result (`{g['missing']}`) | not measured | `{GPU_COMMANDS['default']}` |"
            )
            continue
        best = max(g["runs"], key=lambda x: x["triplets_per_s"])
        where = "stored GPU-session result" if g["stored"] else "measured in this run"
        lines.append(
            f"| GPU triplets/s at {g['size']}×{g['size']}, {g['steps']} steps, bf16, beside the FLOP floor | "
            f"{best['triplets_per_s']:.1f} triplets/s (batch {best['batch']}) vs floor "
            f"{g['floor_triplets_per_s']:,.0f} ({100 * best['fraction_of_floor']:.1f} %) on {g['device_name']} "
            f"({where}) | reported (no bound) | `{g['command']}` |"
        )
    return lines


def _sampling_cost(r: dict[str, Any]) -> list[str]:
    q = r["quality"]
    demo = {s["label"]: s for s in q["samplers"]}
    lines = [
        "| sampler | steps | CPU s per triplet, package default model (untrained, 64×64, batch 4) | "
        "wall s per triplet, same | CPU s per triplet, trained demo generator (CPU default widths, "
        f"{q['spatial_size'][0]}×{q['spatial_size'][1]}, batch {q['batch_size']}, full runs) |",
        "|---|---|---|---|---|",
    ]
    seen = set()
    for c in r["sampler_cost"]:
        d = demo.get(c["sampler"])
        seen.add(c["sampler"])
        lines.append(
            f"| {c['sampler'].rsplit('-', 1)[0]} | {c['steps']} | {_fmt(c['cpu_seconds_per_triplet'])} | "
            f"{_fmt(c['wall_seconds_per_triplet'])} | {_fmt(d['cpu_seconds_per_triplet']) if d else '—'} |"
        )
    for label, d in demo.items():
        if label not in seen:
            lines.append(
                f"| {label.rsplit('-', 1)[0]} | {d['steps']} | — | — | {_fmt(d['cpu_seconds_per_triplet'])} |"
            )
    lines.append("")
    lines.append(
        f"Package default model: each sampler timed on its first {r['sampler_cost_quick_steps']} steps and "
        "extrapolated (`sampling_cost.time_samplers`; the standalone `python benchmarks/sampling_cost.py --quick` "
        "times the first 5 steps, without `--quick` full runs). Demo generator: process CPU time of the whole "
        f"sampling calls of the quality run below, per triplet (`{r['quality_command']}`)."
    )
    return lines


def _step_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "| model | linked step, CPU ms | independent UNets, CPU ms | ratio: median of per-repeat ratios [IQR] "
        "| ratio of the medians |",
        "|---|---|---|---|---|",
    ]
    for s in r["step_ratio"]:
        lines.append(
            f"| `{s['config']}`, channels {tuple(s['channels'])} | {s['linked_cpu_ms']:.1f} | "
            f"{s['independent_cpu_ms']:.1f} | **{s['ratio']:.3f}×** [{s['ratio_q1']:.3f}, {s['ratio_q3']:.3f}] "
            f"| {s['ratio_of_medians']:.3f}× |"
        )
    s0 = r["step_ratio"][0]
    lines += [
        "",
        f"One DPM-Solver++ step (forward + per-modality update) at {s0['size']}×{s0['size']}, batch "
        f"{s0['batch']}, {s0['repeats']} interleaved repeats of {s0['inner']} steps per side, untrained weights "
        f"(`sampling_cost.time_step`; command `{r['step_ratio_command']}`).",
    ]
    return lines


def _flops_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "| model | parameters | size | GFLOP per linked step | GFLOP per triplet (20 steps) | command |",
        "|---|---|---|---|---|---|",
    ]
    for f in r["flops"]:
        lines.append(
            f"| `{f['config']}` | {f['parameters']:,} | {f['size']}×{f['size']} | {f['flops_per_step'] / 1e9:.2f} "
            f"| {f['flops_per_triplet'] / 1e9:.1f} | `{f['command']}` |"
        )
    return lines


def _gpu_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "| model, size | device | batch | triplets/s | floor (triplets/s) | fraction of floor | CUDA peak memory "
        "(GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    sources = []
    for g in r["gpu"]:
        if "missing" in g:
            sources.append(f"- `{g['config']}`: no GPU in this run and no stored result at `{g['missing']}`.")
            continue
        for run in g["runs"]:
            lines.append(
                f"| `{g['config']}`, {g['size']}×{g['size']}, {g['steps']} steps | {g['device_name']} | "
                f"{run['batch']} | {run['triplets_per_s']:.1f} | {g['floor_triplets_per_s']:,.0f} | "
                f"{100 * run['fraction_of_floor']:.1f} % | {_fmt(run.get('peak_memory_gib'))} |"
            )
        extra = ""
        now = g.get("flops_per_triplet_now")
        if g.get("stored") and now is not None:
            extra = (
                f" FLOPs per triplet then {g['flops_per_triplet'] / 1e9:.1f} G, counted in this run "
                f"{now / 1e9:.1f} G."
            )
        sources.append(
            f"- `{g['config']}`: {g['source']}; bf16 matrix rate {g['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s "
            f"measured in that run.{extra}"
        )
    return [*lines, "", *sources]


def _quality_section(r: dict[str, Any]) -> list[str]:
    import sampler_quality

    q = r["quality"]
    lines = [
        sampler_quality.quality_table(q),
        "",
        f"{q['num_samples']} samples per sampler from `{q['checkpoint']}` "
        f"({q['spatial_size'][0]}×{q['spatial_size'][1]}, {q['spacing']:g} mm), the same initial noise for "
        f"every sampler (`sample_seeds` 0..{q['num_samples'] - 1}). Real set: {q['num_samples']} phantom "
        f"triplets (seeds 0..{q['num_samples'] - 1}); the last row is {q['num_samples']} other phantom triplets "
        f"(seeds from {sampler_quality.REAL_REFERENCE_SEED}): the FID noise floor at this N and the pairedness "
        f'ceiling. Feature network: {q["feature_network"]}. "Within 10 %": FID against the real set at most '
        f"1.10× {q['reference']}'s and both pairedness means at least 0.90× {q['reference']}'s. FID at "
        f"N = {q['num_samples']} with 120 features is biased upwards: compare only within this table. Lesion "
        "Dice is the mean over the samples with a non-empty mask only (see the empty-mask column), so a sampler "
        "that draws fewer lesions is averaged over fewer samples. "
        f"Command: `{r['quality_command']}`.",
    ]
    if q.get("eps_diagnostic"):
        lines += [
            "",
            "Why a deterministic sampler can fail on an early checkpoint: every DDIM / DPM-Solver++ step builds "
            "on the clean-image estimate `x0 = (x_t - sqrt(1 - alphabar_t) eps_hat) / sqrt(alphabar_t)`, whose "
            "error is the noise-prediction error times `sqrt((1 - alphabar_t) / alphabar_t)`. Measured on "
            f"{min(16, q['num_samples'])} real phantom triplets noised to t with seeded noise "
            "(`sampler_quality.eps_diagnostic`, same run):",
            "",
            sampler_quality.diagnostic_table(q["eps_diagnostic"]),
            "",
            "At t = 999 a small prediction error becomes an estimate far outside the data range. The "
            "estimate is clipped to [-1, 1], but DDIM and DPM-Solver++ follow it deterministically from there "
            "on, while DDPM adds fresh noise at every step, which washes part of an early error out: consistent "
            "with strided DDPM recovering where the deterministic samplers do not, while the network is still "
            "inaccurate at high t (an explanation, not a measurement of the trajectories).",
        ]
    return lines


def _memory(r: dict[str, Any]) -> list[str]:
    rss = r["rss_kib"]
    q = r["quality"]
    lines = [
        "| process | peak RSS (MiB) |",
        "|---|---|",
        f"| collector process after FLOP counting (default model at 128×128, CPU model at 64×64) | "
        f"{_kib_to_mib(rss['flops']):.0f} |",
        f"| collector process after the step ratio and sampler-cost timings (64×64, batch 4) | "
        f"{_kib_to_mib(rss['sampler cost']):.0f} |",
        f"| sampler-quality sampling (demo generator, batch {q['batch_size']}, largest worker or this process) | "
        f"{_kib_to_mib(q['max_rss_kib']):.0f} |",
        f"| `mixing_epoch_cost.py` subprocess (segmentation epochs, 64×64) | "
        f"{_kib_to_mib(r['mixing']['max_rss_kib']):.0f} |",
        f"| collector process at the end | {_kib_to_mib(rss['gpu throughput']):.0f} |",
    ]
    for g in r["gpu"]:
        for run in g.get("runs", []):
            if run.get("peak_memory_gib") is not None:
                lines.append(
                    f"| CUDA peak allocated, `{g['config']}` model, {g['size']}×{g['size']}, batch {run['batch']}, "
                    f"{g['device_name']}{' (stored)' if g.get('stored') else ''} | "
                    f"{run['peak_memory_gib'] * 1024:.0f} |"
                )
    return [*lines, "", "Peak RSS is `resource.getrusage(...).ru_maxrss` (high-water mark, so cumulative)."]


def _machine(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"]) if m["load_average"] else "n/a"
    return [
        f"- date: {r['date']}; command: `{r['command']}`; total {r['total_seconds'] / 60:.1f} min",
        f"- platform: {m['platform']}; CPU: {m['cpu']}, {m['cpu_count']} logical CPUs; GPU: {m['gpu'] or 'none'}",
        f"- Python {m['python']}, torch {m['torch']}, {m['torch_threads']} intra-op thread per process",
        f"- load average (1, 5, 15 min) at the start: {load}",
        "- stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings"].items()),
    ]


def render_markdown(r: dict[str, Any]) -> str:
    """docs/benchmarks.md from the results of :func:`collect`."""
    m = r["machine"]
    quick = (
        "\n> **Rehearsal (`--quick`)**: tiny sample counts and step counts; these numbers are not benchmarks.\n"
        if r.get("quick")
        else ""
    )
    load = f"{m['load_average'][0]:.2f}" if m.get("load_average") else "n/a"
    gpu_note = (
        ", except the stored GPU rows, whose source is written beside them."
        if any(g.get("stored") for g in r["gpu"])
        else "."
    )
    intro = (
        f"Every table below was produced by one command, `{r['command']}`, on {r['date']} on "
        f"{'a ' + m['gpu'] if m['gpu'] else 'a CPU-only machine'} ({m['cpu_count']} logical CPUs, "
        f"torch {m['torch']}, one intra-op thread per process; 1-minute load average at the start {load})"
        f"{gpu_note} Ratios are measured side by side in one process (interleaved repeats, medians of process "
        "CPU time), so both sides see the same load; absolute times on a shared machine are inflated by other "
        "jobs."
    )
    for u in r.get("updates", []):
        lu = u["machine"].get("load_average")
        intro += (
            f" **Re-measured later**: the `{u['stage']}` stage on {u['date']} (`python benchmarks/collect.py "
            f"--from-json ... --update {u['stage']}`, same kind of machine, 1-minute load average at its start "
            f"{lu[0]:.2f})."
            if lu
            else f" **Re-measured later**: the `{u['stage']}` stage on {u['date']}."
        )
    parts = [
        "# Benchmarks",
        "",
        f"<!-- generated by `{r['command']}`; edit benchmarks/collect.py, not this file -->",
        quick,
        intro,
        "",
        "Single-topic scripts with breakdowns: `benchmarks/sampling_cost.py`, `benchmarks/mixing_epoch_cost.py`, "
        "`benchmarks/generation_throughput.py`, `benchmarks/sampler_quality.py`, "
        "`benchmarks/network_step_time.py`, `benchmarks/filter_acceptance.py`. Topic pages: "
        "[sampling](sampling.md#measured-cost-cpu), [networks](networks.md), [training](training.md), "
        "[integration](integration.md#cost-of-pool-backed-mixing), "
        "[quality filter](quality_filter.md#acceptance-rates-on-constructed-cases), [metrics](metrics.md).",
        "",
        "## Targets (ARCHITECTURE.md §7)",
        "",
        *_targets(r),
        "",
        "## Sampling cost per triplet",
        "",
        *_sampling_cost(r),
        "",
        "## Linked step vs three independent UNets",
        "",
        *_step_table(r),
        "",
        f"## Sampler quality against {r['quality']['reference']}",
        "",
        *_quality_section(r),
        "",
        "## FLOPs per triplet",
        "",
        *_flops_table(r),
        "",
        "Counted with `torch.utils.flop_counter.FlopCounterMode` on one triplet (matrix products, convolutions, "
        "attention), `generation_throughput.flops_per_step` × 20 steps.",
        "",
        "## GPU throughput beside the FLOP floor",
        "",
        *_gpu_table(r),
        "",
        "Floor = measured bf16 matrix-product rate of the GPU / FLOPs per triplet: the triplets/s if every "
        "counted FLOP ran at that rate. Throughput is `PairedDiffusionInferer.sample` end to end "
        "(DPM-Solver++, network under bf16 autocast), median of 3 runs after a warm-up.",
        "",
        "## Peak memory",
        "",
        *_memory(r),
        "",
        "## Not collected here",
        "",
        "Measured by their own commands, with the numbers on the topic pages: the training step "
        "([training.md](training.md); `python -m monai_pairsynth.engines.train --output-dir /tmp/bench1 --epochs 1 "
        "--num-cases 48 --log-every 0 --no-progress --threads 1`), the quality filter "
        "([quality_filter.md](quality_filter.md#acceptance-rates-on-constructed-cases); "
        "`python benchmarks/filter_acceptance.py`), per-network step times ([networks.md](networks.md); "
        "`python benchmarks/network_step_time.py`), phantom generation ([data.md](data.md)), which PET intensity "
        "map a segmenter learns best from on real patients ([data.md](data.md#which-map-the-segmenter); "
        "`python benchmarks/pet_map_segmentation.py`, `benchmarks/results/pet_map_segmentation_cpu_2026-12-03.json`: "
        "no difference beyond training noise; the generator half is not measured).",
        "",
        "## Machine",
        "",
        *_machine(r),
        "",
    ]
    return "\n".join(parts)


#: stages that ``--update`` can re-measure on top of an earlier run
UPDATABLE = ("training_iteration", "quality")


def update(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Re-measure ``args.update`` stages into ``results`` (a copy), recording the date of each."""
    import sampler_quality

    torch.set_num_threads(1)
    out = json.loads(json.dumps(results))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out.setdefault("updates", [])
    for name in args.update:
        start = time.perf_counter()
        if name == "training_iteration":
            out["training_iteration"] = measure_training_iteration(args.quick)
        else:
            qkw: dict[str, Any] = {
                "num_samples": args.num_samples or 24,
                "batch_size": 6,
                "workers": args.workers or 2,
            }
            out["quality"] = sampler_quality.run_quality(verbose=True, **qkw)
            out["quality_command"] = (
                f"python benchmarks/sampler_quality.py --num-samples {qkw['num_samples']} "
                f"--batch-size {qkw['batch_size']} --workers {qkw['workers']}"
            )
        out["timings"][name] = time.perf_counter() - start
        # a stage measured again replaces its earlier note (the page names the latest measurement only)
        out["updates"] = [u for u in out["updates"] if u.get("stage") != name]
        out["updates"].append({"stage": name, "date": now, "machine": machine_info()})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a rehearsal with tiny sizes (about 1-2 min)")
    parser.add_argument("--output", default=None, help=f"markdown file (default {DOC.relative_to(ROOT)})")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--num-samples", type=int, default=None, help="samples per sampler (default 24)")
    parser.add_argument(
        "--workers", type=int, default=None, help="sampler-quality worker processes (default 2)"
    )
    parser.add_argument(
        "--from-json", default=None, help="render the results of an earlier --json run instead of measuring"
    )
    parser.add_argument(
        "--update",
        nargs="+",
        default=None,
        choices=sorted(UPDATABLE),
        help="with --from-json: re-measure only these stages (e.g. after a new demo checkpoint or a faster "
        "engine), keep the others, and say on the page which stages were measured when",
    )
    args = parser.parse_args(argv)
    if args.update and not args.from_json:
        parser.error("--update needs --from-json (the earlier results it updates)")
    if args.num_samples is not None and args.num_samples < 2:
        parser.error("--num-samples must be at least 2")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")

    from monai_pairsynth.utils import atomic_write_json, atomic_write_text

    if args.from_json:
        path = Path(args.from_json)
        if not path.is_file():
            parser.error(f"--from-json: no file at {path}")
        results = json.loads(path.read_text(encoding="utf-8"))
        if args.update:
            results = update(results, args)
    else:
        results = collect(args)
    text = render_markdown(results)
    print(text)
    out = Path(args.output) if args.output else DOC
    atomic_write_text(out, text)
    print(f"[collect] wrote {out}", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
