"""Sampling cost on the CPU: wall time per triplet for DDPM / DDIM / DPM-Solver++, and the cost of one linked
sampling step against three independent MONAI ``DiffusionModelUNet`` s of the same widths.

Usage::

    python benchmarks/sampling_cost.py                  # full run (DDPM-1000 takes minutes on a 2-core CPU)
    python benchmarks/sampling_cost.py --quick          # every sampler timed on its first steps, extrapolated
    python benchmarks/sampling_cost.py --step-only --config both --repeats 41   # the 1.25x target only
    python benchmarks/sampling_cost.py --step-only --config both --baseline-ref ef36dac  # before / after

Prints markdown tables. Everything is measured in this one run. The linked / independent comparison measures
process CPU time (``time.process_time``: user + system time of this process, so other jobs on a shared
machine do not count), interleaves the two sides in every repeat (alternating which goes first) and reports
the median over repeats of the per-repeat ratio with its interquartile range, next to the ratio of the median
times. Weights are untrained: the cost of a forward pass does not depend on their values.

``--config`` picks the model: ``default`` is ``PairedDiffusionModel()`` (UNet channels (32, 64, 64)),
``cpu`` is ``monai_pairsynth.engines.DEFAULT_CPU_MODEL_KWARGS`` (channels (16, 32, 32)), ``both`` runs the
step comparison for each; ``--cond-channels`` overrides the conditional-encoder widths.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def _system_seconds() -> float:
    """System CPU seconds of this process so far (page faults are most of it here); 0 where unavailable."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


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
    """Callables running one part of the conditional pathway of every denoiser (for the cost breakdown).

    Each part runs exactly as ``LinkedDenoiser.conditional_residuals`` runs it: the conditions of one denoiser
    stacked along the channels, the filters through one FFT pair, the encoders as grouped convolutions.
    """
    from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

    from monai_pairsynth.networks import ConditionalEncoder, TimestepLowPassFilter

    dens = {m: model.denoisers[m] for m in model.modalities}
    conds = {m: [x[o] for o in d.condition_names] for m, d in dens.items()}
    temb = {m: d.cond_time_embed(get_timestep_embedding(t, d.cond_channels[0])) for m, d in dens.items()}

    def filters(m: str) -> list[torch.Tensor]:
        d = dens[m]
        return TimestepLowPassFilter.filter_jointly(
            [d.cond_filters[n] for n in d.condition_names], conds[m], temb[m]
        )

    def encoders(m: str) -> list[list[torch.Tensor]]:
        d = dens[m]
        return ConditionalEncoder.encode_jointly([d.cond_encoders[n] for n in d.condition_names], filtered[m])

    filtered = {m: filters(m) for m in dens}
    stacked = {
        m: [torch.cat(list(level), dim=1) for level in zip(*encoders(m))] for m in dens
    }  # per level (B, K * C_l, ...)

    def fuse(m: str) -> list[torch.Tensor]:
        d = dens[m]
        return [
            cbam(conv(features), temb[m])
            for features, conv, cbam in zip(stacked[m], d.cond_fusion_convs, d.cond_fusion_cbams)
        ]

    fused = {m: fuse(m) for m in dens}
    parts: dict[str, Callable[[], object]] = {
        "timestep embeddings": lambda: [
            d.cond_time_embed(get_timestep_embedding(t, d.cond_channels[0])) for d in dens.values()
        ],
        "low-pass filters": lambda: [filters(m) for m in dens],
        "conditional encoders": lambda: [encoders(m) for m in dens],
    }
    if all(d.cond_attention is not None for d in dens.values()):
        parts["cross-encoder attention"] = lambda: [
            d.cond_attention.attend_stacked(stacked[m][-1]) for m, d in dens.items()
        ]
    parts["fusion convs + timestep CBAM"] = lambda: [fuse(m) for m in dens]
    parts["zero-init residual projections"] = lambda: [d._project(fused[m]) for m, d in dens.items()]
    return parts


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """``(first quartile, median, third quartile)``."""
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return q1, statistics.median(values), q3


def independent_unets(model: PairedDiffusionModel) -> dict[str, DiffusionModelUNet]:
    """One plain MONAI ``DiffusionModelUNet`` per modality, configured exactly like the linked model's UNets."""
    cfg = model.get_config()
    return {
        m: DiffusionModelUNet(
            spatial_dims=cfg["spatial_dims"],
            in_channels=cfg["in_channels"],
            out_channels=cfg["in_channels"],
            channels=cfg["channels"],
            attention_levels=cfg["attention_levels"],
            num_res_blocks=cfg["num_res_blocks"],
            norm_num_groups=cfg["norm_num_groups"],
            num_head_channels=cfg["num_head_channels"],
            use_flash_attention=cfg.get("use_flash_attention", False),  # identical UNet configuration
        ).eval()
        for m in model.modalities
    }


def load_baseline_networks(ref: str):
    """``monai_pairsynth.networks`` as it was at git revision ``ref``, imported under another module name.

    Only that sub-package is taken from ``ref`` (its files are read with ``git show`` into a temporary
    folder and its self-imports renamed), so the current and the old networks can run side by side, in one
    process, on the same weights.
    """
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout

    name = "_baseline_networks_" + re.sub(r"\W", "_", ref)
    folder = Path(tempfile.mkdtemp()) / name
    folder.mkdir()
    for path in git("ls-tree", "--name-only", ref, "monai_pairsynth/networks/").split():
        if path.endswith(".py"):
            source = git("show", f"{ref}:{path}").replace("monai_pairsynth.networks", name)
            (folder / Path(path).name).write_text(source)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module(name)


def time_step(
    model: PairedDiffusionModel,
    size: int,
    batch: int,
    repeats: int,
    inner: int,
    breakdown: bool = True,
    baseline: torch.nn.Module | None = None,
) -> dict[str, object]:
    """CPU cost of one sampling step (forward + per-modality DPM-Solver++ update), linked vs independent.

    Every repeat times ``inner`` steps of each callable, in alternating order, with ``time.process_time``;
    the linked / independent pair (and ``baseline``, another build of the linked model, e.g. from an older
    revision, with the same weights) is measured first, on its own, then (``breakdown``) the linked model's
    parts.

    Returns:
        ``{"cpu": {name: median CPU seconds per step}, "wall": {name: median wall seconds per step},
        "system": {name: median system CPU seconds per step (part of "cpu")},
        "ratio": (q1, median, q3) of the per-repeat CPU ratio linked / independent,
        "ratio_of_medians": float}`` (and ``"baseline_ratio"`` with a ``baseline``); names are ``linked``,
        ``independent``, ``baseline`` and, with ``breakdown``, the linked model's parts (UNets with injected
        residuals, conditional pathway, ``part:*``).
    """
    unets = independent_unets(model)
    g = torch.Generator().manual_seed(0)
    spatial = (size,) * model.spatial_dims
    x = {m: torch.randn(batch, model.in_channels, *spatial, generator=g) for m in model.modalities}
    sched = {m: make_scheduler("dpmpp") for m in model.modalities}
    for s in sched.values():
        s.set_timesteps(20)
    # a step at timesteps[0] restarts the multistep solver: no state builds up between repeats
    t_int = int(sched[model.modalities[0]].timesteps[0])
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

    def measure(fns: dict[str, Callable[[], object]], samples: dict[str, list[tuple[float, float]]]) -> None:
        for fn in fns.values():  # warm-up
            fn()
        order = list(fns)
        for r in range(repeats):
            for k in order if r % 2 == 0 else reversed(order):
                system = _system_seconds()
                timings = [_timed(fns[k]) for _ in range(inner)]
                samples.setdefault(k, []).append(
                    (sum(w for w, _ in timings) / inner, sum(c for _, c in timings) / inner)
                )
                system_time.setdefault(k, []).append((_system_seconds() - system) / inner)

    samples: dict[str, list[tuple[float, float]]] = {}
    system_time: dict[str, list[float]] = {}
    with torch.no_grad():
        # the headline comparison runs alone: the breakdown below keeps intermediate tensors alive, which
        # changes how the allocator reuses memory (page faults are a visible part of the CPU time)
        headline: dict[str, Callable[[], object]] = {"linked": linked, "independent": independent}
        if baseline is not None:

            def linked_baseline() -> None:
                out = baseline(x, t)
                for m in model.modalities:
                    sched[m].step(out[m], t_int, x[m])

            # same weights, so the same outputs (a regression check on the way)
            new, old = model(x, t), baseline(x, t)
            for m in model.modalities:
                torch.testing.assert_close(new[m], old[m], rtol=1e-4, atol=1e-5)
            headline["baseline"] = linked_baseline
        measure(headline, samples)
        ratios = [a[1] / b[1] for a, b in zip(samples["linked"], samples["independent"])]
        baseline_ratios = [a[1] / b[1] for a, b in zip(samples.get("baseline", []), samples["independent"])]
        if breakdown:
            residuals = {}
            for m in model.modalities:
                down, mid = model.denoisers[m].conditional_residuals(
                    t, {o: x[o] for o in model.modalities if o != m}
                )
                residuals[m] = (tuple(down), mid)
            parts: dict[str, Callable[[], object]] = {
                "linked_unets": linked_unets_only,
                "cond": conditional_pathway,
            }
            parts.update({f"part:{k}": v for k, v in _conditional_parts(model, x, t).items()})
            measure(parts, samples)
    cpu = {k: statistics.median(c for _, c in v) for k, v in samples.items()}
    wall = {k: statistics.median(w for w, _ in v) for k, v in samples.items()}
    result = {
        "cpu": cpu,
        "wall": wall,
        "system": {k: statistics.median(v) for k, v in system_time.items()},
        "ratio": _quartiles(ratios),
        "ratio_of_medians": cpu["linked"] / cpu["independent"],
    }
    if baseline_ratios:
        result["baseline_ratio"] = _quartiles(baseline_ratios)
    return result


def print_step_table(
    step: dict[str, object], label: str, repeats: int, inner: int, batch: int, baseline_ref: str | None = None
) -> None:
    """Markdown table of :func:`time_step`'s result."""
    cpu, wall = step["cpu"], step["wall"]
    q1, median, q3 = step["ratio"]

    def row(name: str, key: str, digits: int = 0) -> str:
        return f"| {name} | {1e3 * wall[key]:.{digits}f} | {1e3 * cpu[key]:.{digits}f} |"

    print(f"| one sampling step, {label} | median wall time (ms) | median CPU time (ms) |")
    print("|---|---|---|")
    print(row("linked `PairedDiffusionModel` (forward + DPM-Solver++ updates)", "linked"))
    print(row("independent MONAI `DiffusionModelUNet`s (one per modality)", "independent"))
    print(
        f"| **CPU ratio linked / independent** (target <= 1.25): median of per-repeat ratios [IQR] | | "
        f"**{median:.3f}x** [{q1:.3f}, {q3:.3f}] |"
    )
    print(f"| ratio of the median CPU times | | {step['ratio_of_medians']:.3f}x |")
    if "baseline_ratio" in step:
        b1, b2, b3 = step["baseline_ratio"]
        print(row(f"linked model of `{baseline_ref}` (same weights, interleaved)", "baseline"))
        print(
            f"| CPU ratio linked of `{baseline_ref}` / independent [IQR] | | {b2:.3f}x [{b1:.3f}, {b3:.3f}] |"
        )
    system = step["system"]
    print(
        f"| system time inside the CPU times (page faults of fresh tensor memory), linked / independent | | "
        f"{1e3 * system['linked']:.0f} / {1e3 * system['independent']:.0f} |"
    )
    if "linked_unets" in cpu:
        print("| *breakdown, measured afterwards in its own interleaved loop:* | | |")
        print(row("the UNets inside the linked model (with injected residuals)", "linked_unets"))
        print(row("the conditional pathways (all denoisers)", "cond"))
        for key in cpu:
            if key.startswith("part:"):
                print(row(f"&nbsp;&nbsp;of which: {key[5:]} (all denoisers)", key, digits=1))
    print(f"\n({repeats} interleaved repeats of {inner} steps each, batch {batch}.)\n")


CONFIGS = {
    "default": {},
    "cpu": {
        "channels": (16, 32, 32),
        "attention_levels": (False, False, True),
        "num_res_blocks": 1,
        "norm_num_groups": 8,
        "num_head_channels": 8,
    },
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="time the first steps of each sampler and extrapolate"
    )
    parser.add_argument(
        "--step-only", action="store_true", help="only the linked / independent step comparison"
    )
    parser.add_argument(
        "--config", choices=("default", "cpu", "both"), default="default", help="model widths (see above)"
    )
    parser.add_argument(
        "--cond-channels", type=int, nargs="+", default=None, help="conditional-encoder widths per level"
    )
    parser.add_argument("--no-breakdown", action="store_true", help="time the two totals only")
    parser.add_argument(
        "--baseline-ref",
        default=None,
        help="also time the linked model built by monai_pairsynth/networks of this git revision (same weights)",
    )
    parser.add_argument("--size", type=int, default=64, help="image size (square), default 64")
    parser.add_argument("--batch", type=int, default=4, help="triplets per batch, default 4")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, default 1")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats of the step comparison"
    )
    parser.add_argument("--inner", type=int, default=None, help="steps per repeat and side")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats or (5 if args.quick else 15)
    inner = args.inner or (2 if args.quick else 3)
    quick_steps = 5 if args.quick else None

    from monai_pairsynth.engines import DEFAULT_CPU_MODEL_KWARGS

    # keep the benchmark's copy of the CPU default honest
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in DEFAULT_CPU_MODEL_KWARGS.items()} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in CONFIGS["cpu"].items()
    }, "DEFAULT_CPU_MODEL_KWARGS changed: update CONFIGS['cpu']"
    names = ["default", "cpu"] if args.config == "both" else [args.config]
    print(
        f"# Sampling cost — {args.size}x{args.size}, batch {args.batch}, torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs\n"
    )
    models = {}
    for name in names:
        kwargs = dict(CONFIGS[name])
        if args.cond_channels is not None:
            kwargs["cond_channels"] = args.cond_channels
        model = PairedDiffusionModel(**kwargs).eval()
        models[name] = model
        cfg = model.get_config()
        cond_channels = tuple(model.denoisers[model.modalities[0]].cond_channels)
        label = (
            f"`{name}` model: UNet channels {tuple(cfg['channels'])}, conditional encoders {cond_channels}"
        )
        baseline = None
        if args.baseline_ref is not None:
            old = load_baseline_networks(args.baseline_ref)
            baseline = old.PairedDiffusionModel(**model.get_config()).eval()
            baseline.load_state_dict(model.state_dict(), strict=True)
        step = time_step(
            model, args.size, args.batch, repeats, inner, breakdown=not args.no_breakdown, baseline=baseline
        )
        print_step_table(step, label, repeats, inner, args.batch, args.baseline_ref)
        median = step["ratio"][1]
        if median > 1.25:
            print(
                f"NOTE: the linked step costs {median:.2f}x (CPU) the independent UNets, above the 1.25x target.\n"
            )

    if args.step_only:
        return
    model = models[names[0]]
    rows = time_samplers(model, args.size, args.batch, quick_steps)
    print(f"Samplers, `{names[0]}` model:\n")
    print("| sampler | steps | wall time per triplet (s) | CPU time per triplet (s) | measured |")
    print("|---|---|---|---|---|")
    for label, steps, timed, wall, cpu in rows:
        how = f"full run of {args.batch} triplets" if timed == steps else f"first {timed} steps, extrapolated"
        print(f"| {label} | {steps} | {wall / args.batch:.2f} | {cpu / args.batch:.2f} | {how} |")


if __name__ == "__main__":
    main()
