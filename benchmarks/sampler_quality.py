"""Quality of the fast samplers against DDPM-1000 on a trained generator (feature FID and pairedness).

Every sampler generates the same samples from the same initial noise (``sample_seeds``: sample ``i`` starts
from seed ``i`` whatever the sampler, batch or worker), from the trained demo checkpoint of the bundle by
default. Each set is compared with the DDPM-1000 set (the reference of ARCHITECTURE.md §7) and with real
phantom triplets on the checkpoint's grid, in the feature space of this package's feature network
(:func:`monai_pairsynth.quality.train_feature_segmenter`, trained here on other phantom cases, seeded):

- **feature FID** (:func:`monai_pairsynth.metrics.feature_fid`) of each sampler's set against the DDPM-1000 set
  and against ``N`` real phantom triplets (seeds ``0 .. N-1``); the noise floor at the same ``N`` is the FID
  of ``N`` other real phantom triplets (seeds from 100000) against the same real set. FID is biased upwards
  at small ``N``: compare only numbers of one run (equal ``N``).
- **pairedness** (:func:`monai_pairsynth.metrics.pairedness`): lesion Dice (mask vs PET >= 40 % SUVmax) and
  body Dice (CT vs PET outline), mean over the set; real triplets are the ceiling. Samples with an empty
  mask have no lesion Dice (counted in ``empty masks``).
- **CT mean absolute gradient** (HU per pixel, between neighbouring pixels): speckle and noise raise it far
  above the real value.

The verdict "within 10 % of DDPM-1000" holds when the sampler's FID against the real set is at most 1.10x
DDPM-1000's and both pairedness means are at least 0.90x DDPM-1000's.

The cost of each sampler is the process CPU time of the sampling calls per triplet (summed over workers,
so it does not depend on ``--workers``), next to the wall time of the whole set.

Usage::

    python benchmarks/sampler_quality.py                       # 24 samples per sampler, 2 worker processes
    python benchmarks/sampler_quality.py --num-samples 16 --workers 1 --json /tmp/quality.json
    python benchmarks/sampler_quality.py --quick               # 4 samples, a few steps: a rehearsal only
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "bundles" / "pet_ct_pairsynth" / "models" / "diffusion_demo.pt"

#: (scheduler, steps); the first one is the reference
SAMPLERS: tuple[tuple[str, int], ...] = (("ddpm", 1000), ("ddpm", 100), ("ddim", 50), ("dpmpp", 20))
#: the rehearsal of ``--quick``: the same samplers with a few steps
QUICK_SAMPLERS: tuple[tuple[str, int], ...] = (("ddpm", 20), ("ddpm", 10), ("ddim", 5), ("dpmpp", 4))
SCHEDULER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM-Solver++"}
TOLERANCE = 0.10
REAL_REFERENCE_SEED = 100_000
FEATURE_TRAINING_SEED = 200_000


def sampler_label(scheduler: str, steps: int) -> str:
    """``"DPM-Solver++-20"`` for ``("dpmpp", 20)``."""
    if scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose from {sorted(SCHEDULER_NAMES)}.")
    return f"{SCHEDULER_NAMES[scheduler]}-{steps}"


_WORKER_CACHE: dict[str, Any] = {}


def _load(checkpoint: str):
    if checkpoint not in _WORKER_CACHE:
        from monai_pairsynth.inferers import PairedDiffusionInferer

        _WORKER_CACHE[checkpoint] = PairedDiffusionInferer.from_checkpoint(checkpoint)
    return _WORKER_CACHE[checkpoint]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def generate_chunk(
    checkpoint: str, scheduler: str, steps: int, seeds: Sequence[int], threads: int = 1
) -> dict[str, Any]:
    """Samples for ``seeds`` (one batch) with one sampler: plain tensors in HU / SUV / {0, 1}, CPU seconds.

    Runs in the calling process (or a worker); the checkpoint is loaded once per process.
    """
    torch.set_num_threads(threads)
    inferer, model = _load(checkpoint)
    cpu, wall = time.process_time(), time.perf_counter()
    with torch.no_grad():
        out = inferer.sample(
            model,
            scheduler=scheduler,
            num_inference_steps=steps,
            sample_seeds=list(seeds),
            batch_size=len(seeds),
        )
    return {
        "samples": {k: v.as_tensor().clone() for k, v in out.items()},
        "cpu_seconds": time.process_time() - cpu,
        "wall_seconds": time.perf_counter() - wall,
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def eps_diagnostic(
    checkpoint: str | Path, num_cases: int = 16, timesteps: Sequence[int] = (999, 500, 100), seed: int = 0
) -> list[dict[str, Any]]:
    """How an error of the noise prediction becomes an error of the clean-image estimate, per timestep.

    Real phantom triplets (seeds ``0 .. num_cases - 1``, normalised to [-1, 1]) are noised to ``t`` with seeded
    Gaussian noise ``eps``; the network predicts ``eps_hat``; the clean estimate of every deterministic step is
    ``x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``, so its error is the prediction error times
    ``sqrt(1 - abar_t) / sqrt(abar_t)`` (before any clipping). Returns one row per ``t``: ``abar``, that
    amplification, the eps MSE (all modalities), the RMS error of ``x0_hat`` and its largest magnitude.
    """
    from monai_pairsynth.data import make_phantom_case
    from monai_pairsynth.modalities import resolve_specs

    inferer, model = _load(str(checkpoint))
    specs = inferer.specs if inferer.specs is not None else resolve_specs(tuple(model.modalities))
    ckpt_grid = {"spatial_size": tuple(inferer.spatial_shape), "spacing": float(inferer.spacing)}
    cases = _stack([make_phantom_case(s, **ckpt_grid) for s in range(num_cases)])
    x0 = {m: specs[m].normalize(cases[m]) for m in model.modalities}
    abar_all = inferer.noise_schedule.alphas_cumprod
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps:
        abar = float(abar_all[t])
        eps = {m: torch.randn(x0[m].shape, generator=g) for m in model.modalities}
        xt = {m: abar**0.5 * x0[m] + (1 - abar) ** 0.5 * eps[m] for m in model.modalities}
        with torch.no_grad():
            pred = model(xt, torch.full((num_cases,), t, dtype=torch.long))
        err = torch.cat([(pred[m] - eps[m]).flatten() for m in model.modalities])
        x0_hat = torch.cat(
            [((xt[m] - (1 - abar) ** 0.5 * pred[m]) / abar**0.5).flatten() for m in model.modalities]
        )
        x0_true = torch.cat([x0[m].flatten() for m in model.modalities])
        rows.append(
            {
                "t": int(t),
                "alphabar": abar,
                "amplification": ((1 - abar) / abar) ** 0.5,
                "eps_mse": float(err.pow(2).mean()),
                "x0_rms_error": float((x0_hat - x0_true).pow(2).mean().sqrt()),
                "x0_max_abs": float(x0_hat.abs().max()),
            }
        )
    return rows


def diagnostic_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`eps_diagnostic`."""
    lines = [
        "| t | alphabar_t | sqrt((1 - alphabar_t) / alphabar_t) | eps-prediction MSE | RMS error of the x0 "
        "estimate | largest \\|x0 estimate\\| (data in [-1, 1]) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['t']} | {r['alphabar']:.3g} | {r['amplification']:.1f} | {r['eps_mse']:.4f} | "
            f"{r['x0_rms_error']:.2f} | {r['x0_max_abs']:.1f} |"
        )
    return "\n".join(lines)


def _ct_gradient(ct: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring CT pixels (HU per pixel) over the set."""
    dy = (ct[..., 1:, :] - ct[..., :-1, :]).abs().mean()
    dx = (ct[..., :, 1:] - ct[..., :, :-1]).abs().mean()
    return float((dx + dy) / 2)


def _set_metrics(batch: dict[str, torch.Tensor], spacing: float) -> dict[str, Any]:
    from monai_pairsynth.metrics import pairedness, summarize

    p = pairedness(batch, spacing=spacing)
    lesion, body = summarize(p["lesion_dice"]), summarize(p["body_dice"])
    return {
        "lesion_dice": lesion["mean"],
        "lesion_dice_sd": lesion["sd"],
        "body_dice": body["mean"],
        "body_dice_sd": body["sd"],
        "empty_masks": int(p["mask_empty"].sum()),
        "ct_gradient": _ct_gradient(batch["ct"]),
        "ct_std": float(batch["ct"].std()),
    }


def _stack(cases: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(c[k]).float() for c in cases]) for k in ("ct", "pet", "label")}


def run_quality(
    checkpoint: str | Path = DEFAULT_CHECKPOINT,
    num_samples: int = 24,
    batch_size: int = 6,
    workers: int = 2,
    samplers: Sequence[tuple[str, int]] = SAMPLERS,
    feature_cases: int = 64,
    feature_epochs: int = 10,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, Any]:
    """Generate ``num_samples`` triplets with every sampler and score them (see the module docstring).

    Returns:
        ``{"checkpoint", "num_samples", "batch_size", "workers", "spatial_size", "spacing", "reference",
        "samplers": [{"label", "scheduler", "steps", "cpu_seconds_per_triplet", "wall_seconds",
        "fid_vs_reference", "fid_vs_real", "lesion_dice", "body_dice", ..., "within_tolerance"}],
        "real": {... the real reference row ...}, "feature_seconds", "max_rss_kib"}``.
    """
    from monai_pairsynth.data import make_phantom_case
    from monai_pairsynth.metrics import extract_global_features, feature_fid
    from monai_pairsynth.quality import train_feature_segmenter

    checkpoint = str(checkpoint)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no generator checkpoint at {checkpoint}.")
    if num_samples < 2 or batch_size < 1 or workers < 1:
        raise ValueError(
            f"need num_samples >= 2, batch_size >= 1, workers >= 1; got {num_samples}, {batch_size}, {workers}."
        )
    if not samplers:
        raise ValueError("give at least one sampler.")
    for name, steps in samplers:
        sampler_label(name, steps)  # validates the name
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    size = tuple(int(s) for s in ckpt["spatial_size"])
    spacing = float(ckpt["spacing"])
    del ckpt

    chunks = [list(range(i, min(i + batch_size, num_samples))) for i in range(0, num_samples, batch_size)]
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(1,),
        )
    generated: dict[str, dict[str, Any]] = {}
    max_rss = 0
    try:
        for name, steps in samplers:
            label = sampler_label(name, steps)
            start = time.perf_counter()
            if pool is None:
                parts = [generate_chunk(checkpoint, name, steps, c, torch.get_num_threads()) for c in chunks]
            else:
                futures = [pool.submit(generate_chunk, checkpoint, name, steps, c, 1) for c in chunks]
                parts = [f.result() for f in futures]
            wall = time.perf_counter() - start
            samples = {k: torch.cat([p["samples"][k] for p in parts]) for k in ("ct", "pet", "label")}
            for k, v in samples.items():
                if not torch.isfinite(v).all():
                    raise RuntimeError(f"{label}: non-finite values in the {k} samples.")
            cpu = sum(p["cpu_seconds"] for p in parts)
            max_rss = max([max_rss] + [p["max_rss_kib"] for p in parts])
            generated[label] = {
                "scheduler": name,
                "steps": steps,
                "samples": samples,
                "cpu_seconds_per_triplet": cpu / num_samples,
                "wall_seconds": wall,
            }
            if verbose:
                print(
                    f"{label}: {num_samples} triplets, {wall:.1f} s wall, {cpu / num_samples:.2f} s CPU per triplet",
                    flush=True,
                )
    finally:
        if pool is not None:
            pool.shutdown()

    t0 = time.perf_counter()
    diagnostic = eps_diagnostic(checkpoint, num_cases=min(16, num_samples), seed=seed)
    phantom = {"spatial_size": size, "spacing": spacing}
    train_cases = [make_phantom_case(FEATURE_TRAINING_SEED + s, **phantom) for s in range(feature_cases)]
    network = train_feature_segmenter(
        train_cases,
        channels=(8, 16, 32, 64),
        epochs=feature_epochs,
        batch_size=8,
        seed=seed,
        units="physical",
    )
    real = _stack([make_phantom_case(s, **phantom) for s in range(num_samples)])
    real_other = _stack([make_phantom_case(REAL_REFERENCE_SEED + s, **phantom) for s in range(num_samples)])
    feats_real = extract_global_features(network, real, units="physical", name="real phantoms")
    feats_other = extract_global_features(network, real_other, units="physical", name="other real phantoms")
    feats = {
        label: extract_global_features(network, g["samples"], units="physical", name=label)
        for label, g in generated.items()
    }
    reference = next(iter(generated))
    rows = []
    for label, g in generated.items():
        row = {
            "label": label,
            "scheduler": g["scheduler"],
            "steps": g["steps"],
            "cpu_seconds_per_triplet": g["cpu_seconds_per_triplet"],
            "wall_seconds": g["wall_seconds"],
            "fid_vs_reference": None if label == reference else feature_fid(feats[reference], feats[label]),
            "fid_vs_real": feature_fid(feats_real, feats[label]),
            **_set_metrics(g["samples"], spacing),
        }
        rows.append(row)
    ref_row = rows[0]
    for row in rows[1:]:
        row.update(within_tolerance(row, ref_row))
    real_row = {
        "label": "real phantom triplets (other seeds)",
        "fid_vs_reference": feature_fid(feats[reference], feats_other),
        "fid_vs_real": feature_fid(feats_real, feats_other),
        **_set_metrics(real_other, spacing),
    }
    return {
        "checkpoint": str(Path(checkpoint).resolve().relative_to(ROOT))
        if Path(checkpoint).resolve().is_relative_to(ROOT)
        else checkpoint,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "workers": workers,
        "spatial_size": list(size),
        "spacing": spacing,
        "reference": reference,
        "samplers": rows,
        "real": real_row,
        "eps_diagnostic": diagnostic,
        "feature_network": f"train_feature_segmenter, channels (8, 16, 32, 64), {feature_epochs} epochs, "
        f"{feature_cases} phantom cases (seeds from {FEATURE_TRAINING_SEED}), seed {seed}",
        "feature_seconds": time.perf_counter() - t0,
        "max_rss_kib": max(max_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
    }


def within_tolerance(row: dict[str, Any], reference: dict[str, Any], tolerance: float = TOLERANCE) -> dict:
    """``{"fid_ratio", "lesion_ratio", "body_ratio", "within_tolerance"}`` of ``row`` against ``reference``.

    Within tolerance: FID against the real set at most ``1 + tolerance`` times the reference's, both
    pairedness means at least ``1 - tolerance`` times the reference's (a NaN anywhere is not within).
    """

    def ratio(a: float, b: float) -> float:
        return a / b if b not in (0.0, None) and a is not None else float("nan")

    fid_ratio = ratio(row["fid_vs_real"], reference["fid_vs_real"])
    lesion_ratio = ratio(row["lesion_dice"], reference["lesion_dice"])
    body_ratio = ratio(row["body_dice"], reference["body_dice"])
    ok = fid_ratio <= 1 + tolerance and lesion_ratio >= 1 - tolerance and body_ratio >= 1 - tolerance
    return {
        "fid_ratio": fid_ratio,
        "lesion_ratio": lesion_ratio,
        "body_ratio": body_ratio,
        "within_tolerance": bool(ok),
    }


def _f(value: Any, digits: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def quality_table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run_quality`'s result."""
    ref = result["reference"]
    lines = [
        f"| sampler | CPU s per triplet | feature FID vs {ref} | feature FID vs real | lesion Dice | "
        f"body Dice | empty masks | CT mean abs gradient (HU/px) | within 10 % of {ref} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["samplers"]:
        verdict = "reference" if r["label"] == ref else ("yes" if r["within_tolerance"] else "**no**")
        if r["label"] != ref:
            verdict += (
                f" (FID ×{_f(r['fid_ratio'], 2)}, lesion Dice ×{_f(r['lesion_ratio'], 2)}, "
                f"body Dice ×{_f(r['body_ratio'], 2)})"
            )
        lines.append(
            f"| {r['label']} | {_f(r['cpu_seconds_per_triplet'], 2)} | {_f(r['fid_vs_reference'], 4)} | "
            f"{_f(r['fid_vs_real'], 4)} | {_f(r['lesion_dice'], 3)} ± {_f(r['lesion_dice_sd'], 3)} | "
            f"{_f(r['body_dice'], 3)} ± {_f(r['body_dice_sd'], 3)} | {r['empty_masks']} / {result['num_samples']} | "
            f"{_f(r['ct_gradient'], 1)} | {verdict} |"
        )
    real = result["real"]
    lines.append(
        f"| *{real['label']}: noise floor / ceiling* | — | {_f(real['fid_vs_reference'], 4)} | "
        f"{_f(real['fid_vs_real'], 4)} | {_f(real['lesion_dice'], 3)} ± {_f(real['lesion_dice_sd'], 3)} | "
        f"{_f(real['body_dice'], 3)} ± {_f(real['body_dice_sd'], 3)} | {real['empty_masks']} / "
        f"{result['num_samples']} | {_f(real['ct_gradient'], 1)} | — |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="generator checkpoint")
    parser.add_argument("--num-samples", type=int, default=24, help="samples per sampler (default 24)")
    parser.add_argument("--batch-size", type=int, default=6, help="samples per sampling call (default 6)")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes, one thread each (default 2)"
    )
    parser.add_argument("--feature-epochs", type=int, default=10, help="feature segmenter epochs")
    parser.add_argument("--quick", action="store_true", help="4 samples and a few steps per sampler")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kwargs: dict[str, Any] = {}
    if args.quick:
        kwargs = {"num_samples": 4, "batch_size": 4, "samplers": QUICK_SAMPLERS, "feature_cases": 16}
        kwargs["feature_epochs"] = 2
    result = run_quality(
        **{
            "checkpoint": args.checkpoint,
            "num_samples": args.num_samples,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "feature_epochs": args.feature_epochs,
            **kwargs,
        },
        verbose=True,
    )
    print(quality_table(result))
    print()
    print(diagnostic_table(result["eps_diagnostic"]))
    if args.json:
        from monai_pairsynth.utils import atomic_write_json

        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
