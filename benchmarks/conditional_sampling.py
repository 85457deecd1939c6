"""Conditional sampling: per-modality timesteps (known modalities clean at t = 0) against replacement clamping,
on the same training budget (issue 14, item 3).

Two generators are trained (or fine-tuned from ``--init-checkpoint``) with the same data, seed, recipe and
number of optimiser steps, differing only in the timestep draw:

- ``shared``: shared timesteps only (``independent_timestep_prob = 0``, today's recipe); conditional sampling
  clamps the known modalities (RePaint-style replacement);
- ``per_modality``: ``independent_timestep_prob = p`` (default 0.5) with ``clean_prob`` (0.5) and a model built
  with ``condition_timesteps=True``; conditional sampling feeds the known modalities clean at t = 0. The
  same model sampled with clamping is reported too (``per_modality, clamp``), to separate what the training
  and what the conditioning bring.

The training recipe is the bundle's (``bundles/pet_ct_pairsynth/configs/train_diffusion.json``: network
widths, noise schedule, Min-SNR, foreground weight, learning rate, EMA, batch size, grid, phantom cases and
epochs), with ``--epochs`` / ``--num-train-cases`` / ``--batch-size`` to change the budget. The sampling
checkpoints are the EMA weights.

Evaluation on held-out phantom cases (seeds from 400000, disjoint from the training phantoms), with each
sampler (default: the bundle's DPM-Solver++-20 and strided DDPM-100), every sample with its own fixed seed:

- **mask -> CT + PET** (``known={"label": mask}``): ``mask_in_body``, the fraction of the given mask pixels
  (pooled over the cases) inside the generated CT's body outline (``fill_holes(largest_component(CT > -500
  HU))``, :func:`monai_pairsynth.metrics.body_outline`; target >= 0.95); ``pet_contrast``, mean SUV inside the
  mask over mean SUV of the body outside the mask dilated by 10 mm (``convergence.tumour_contrast``, mean over
  cases) and ``contrast_ratio`` to the same on the real cases (target >= 0.8);
- **CT -> PET + mask** (``known={"ct": ct}``): ``mask_dice``, Dice of the generated mask against the true one
  (cases with a true mask; a generative segmenter for free, to compare with the segmentation arm's Dice);
  ``pet_mae`` (SUV) against the true PET, over the image and inside the true body (``pet_mae_body``);
- **joint** sampling: the feature-free metrics of ``convergence.set_metrics`` (lesion and body Dice, empty
  masks, bone, PET contrast, mask in body) and, unless ``--feature-epochs 0``, the feature FID against the
  held-out real cases (this package's feature network, trained on phantom seeds from 200000, as in
  ``sampler_quality.py``); the per-modality model should not be worse than the shared one.

Usage::

    # the full comparison (trains two models on the bundle's budget: CPU hours; see docs/sampling.md)
    python benchmarks/conditional_sampling.py --json docs/conditional_sampling.json --markdown docs/conditional_sampling.md
    # fine-tune both variants from a shared-timestep checkpoint on the same budget
    python benchmarks/conditional_sampling.py --init-checkpoint bundles/pet_ct_pairsynth/models/diffusion_demo.pt --epochs 10
    # a rehearsal: a tiny model on 16x16 phantoms, a few steps (seconds; what the tests run)
    python benchmarks/conditional_sampling.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # benchmarks/ holds scripts, not a package

import convergence  # noqa: E402

from monai_pairsynth.data import make_phantom_case  # noqa: E402
from monai_pairsynth.engines import (  # noqa: E402
    DeviceTripletLoader,
    build_training_dataset,
    create_paired_trainer,
    load_paired_checkpoint,
)
from monai_pairsynth.inferers import PairedDiffusionInferer  # noqa: E402
from monai_pairsynth.metrics import body_outline  # noqa: E402
from monai_pairsynth.networks import PairedDiffusionModel  # noqa: E402
from monai_pairsynth.schedulers import DEFAULT_SAMPLER, DEFAULT_SAMPLER_STEPS  # noqa: E402

BUNDLE_CONFIG = ROOT / "bundles" / "pet_ct_pairsynth" / "configs" / "train_diffusion.json"
EVAL_SEED = 400_000
FEATURE_SEED = 200_000
MODALITIES = ("ct", "pet", "label")
SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM-Solver++"}
JSON_FORMAT = "monai_pairsynth.conditional_sampling_benchmark"
#: the rehearsal of ``--quick``: a tiny model on 16x16 phantoms
QUICK = {
    "model": {
        "channels": [8, 16],
        "attention_levels": [False, False],
        "norm_num_groups": 4,
        "num_head_channels": 4,
    },
    "noise_scheduler": {"num_train_timesteps": 50, "schedule": "cosine", "prediction_type": "v_prediction"},
    "spatial_size": [16, 16],
    "spacing": 16.0,
    "num_train_cases": 4,
    "epochs": 1,
    "batch_size": 2,
    "num_eval_cases": 2,
    "samplers": [("ddpm", 3), ("dpmpp", 2)],
    "ema_warmup_iters": 1,
}


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------
def bundle_recipe(path: str | Path = BUNDLE_CONFIG) -> dict[str, Any]:
    """The training recipe of the bundle's ``train_diffusion.json`` (plain values only)."""
    cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    net = cfg["network_def"]
    return {
        "model": {
            k: net[k]
            for k in (
                "channels",
                "attention_levels",
                "num_res_blocks",
                "norm_num_groups",
                "num_head_channels",
            )
        },
        "noise_scheduler": dict(cfg["noise_scheduler"]),
        "snr_gamma": cfg["snr_gamma"],
        "foreground_weight": cfg["foreground_weight"],
        "offset_noise_scale": cfg["offset_noise_scale"],
        "lr": cfg["learning_rate"],
        "ema_momentum": cfg["ema_momentum"],
        "ema_warmup_iters": cfg["ema_warmup_iters"],
        "batch_size": cfg["batch_size"],
        "spatial_size": list(cfg["spatial_size"]),
        "spacing": float(cfg["spacing"]),
        "num_train_cases": cfg["num_phantom_cases"],
        "epochs": cfg["epochs"],
    }


def parse_sampler(text: str) -> tuple[str, int]:
    """``"ddpm:100"`` -> ``("ddpm", 100)``."""
    name, _, steps = text.partition(":")
    if name not in SAMPLER_NAMES or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(
            f"a sampler is NAME:STEPS with NAME in {sorted(SAMPLER_NAMES)}, got {text!r}."
        )
    return name, int(steps)


def sampler_label(name: str, steps: int) -> str:
    return f"{SAMPLER_NAMES[name]}-{steps}"


# ----------------------------------------------------------------------------------------------------------------
# metrics (batched tensors in physical units, (B, 1, H, W))
# ----------------------------------------------------------------------------------------------------------------
def mask_in_body_pooled(label: torch.Tensor, ct: torch.Tensor) -> float | None:
    """Fraction of all given mask pixels (over the batch) inside the CT's filled body outline."""
    inside, total = 0, 0
    for b in range(label.shape[0]):
        m = label[b, 0].detach().cpu().numpy() > convergence.MASK_THRESHOLD
        if not m.any():
            continue
        body = body_outline(ct[b, 0], convergence.BODY_HU)
        inside += int((m & body).sum())
        total += int(m.sum())
    return inside / total if total else None


def dice_per_case(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Dice of the masks (``> 0.5``); NaN where the true mask is empty."""
    p = convergence._per_sample(pred) > convergence.MASK_THRESHOLD
    t = convergence._per_sample(true) > convergence.MASK_THRESHOLD
    inter = (p & t).sum(1).double()
    denom = (p.sum(1) + t.sum(1)).double()
    dice = 2 * inter / denom.clamp(min=1)
    return torch.where(t.sum(1) > 0, dice, torch.full_like(dice, float("nan")))


def mask_to_images_metrics(
    gen: Mapping[str, torch.Tensor], real: Mapping[str, torch.Tensor], spacing: float
) -> dict:
    """mask -> CT + PET: the given mask inside the generated body, and the generated PET's tumour contrast."""
    contrast = convergence.tumour_contrast(gen["pet"], real["label"], gen["ct"], spacing)
    real_contrast = convergence.tumour_contrast(real["pet"], real["label"], real["ct"], spacing)
    mean, real_mean = convergence._nanmean(contrast), convergence._nanmean(real_contrast)
    return {
        "mask_in_body": mask_in_body_pooled(real["label"], gen["ct"]),
        "mask_in_body_real": mask_in_body_pooled(real["label"], real["ct"]),
        "pet_contrast": mean,
        "pet_contrast_real": real_mean,
        "contrast_ratio": convergence._ratio(mean, real_mean),
    }


def ct_to_pet_mask_metrics(gen: Mapping[str, torch.Tensor], real: Mapping[str, torch.Tensor]) -> dict:
    """CT -> PET + mask: Dice of the generated mask and the PET error, against the true case."""
    dice = dice_per_case(gen["label"], real["label"])
    err = (gen["pet"] - real["pet"]).abs()
    body = torch.stack(
        [
            torch.as_tensor(body_outline(real["ct"][b, 0], convergence.BODY_HU))
            for b in range(real["ct"].shape[0])
        ]
    ).unsqueeze(1)
    return {
        "mask_dice": convergence._nanmean(dice),
        "mask_dice_n": int((~torch.isnan(dice)).sum()),
        "pet_mae": float(err.mean()),
        "pet_mae_body": float(err[body].mean()) if body.any() else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# training and sampling
# ----------------------------------------------------------------------------------------------------------------
def train_variant(
    name: str,
    prob: float,
    cfg: Mapping[str, Any],
    output_dir: Path,
    device: torch.device,
    init_state: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train (or fine-tune from ``init_state``) one variant; returns its checkpoint path, steps and seconds."""
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    kwargs = dict(cfg["model"])
    if prob > 0:
        kwargs["condition_timesteps"] = True
    model = PairedDiffusionModel(MODALITIES, **kwargs)
    if init_state is not None:
        missing, unexpected = model.load_state_dict(dict(init_state), strict=False)
        if unexpected or any(".time_projections." not in k for k in missing):
            raise ValueError(
                f"--init-checkpoint does not fit the model: missing {missing}, unexpected {unexpected}."
            )
    dataset = build_training_dataset(
        num_cases=int(cfg["num_train_cases"]),
        spatial_size=cfg["spatial_size"],
        spacing=float(cfg["spacing"]),
        seed=seed,
    )
    loader = DeviceTripletLoader.from_samples(
        dataset, int(cfg["batch_size"]), modality_specs=MODALITIES, device=device, seed=seed, drop_last=False
    )
    trainer = create_paired_trainer(
        model,
        loader,
        max_epochs=int(cfg["epochs"]),
        device=device,
        lr=float(cfg["lr"]),
        noise_scheduler=cfg["noise_scheduler"],
        snr_gamma=cfg["snr_gamma"],
        foreground_weight=cfg["foreground_weight"],
        offset_noise_scale=float(cfg["offset_noise_scale"]),
        ema_momentum=cfg["ema_momentum"],
        ema_warmup_iters=cfg["ema_warmup_iters"],
        independent_timestep_prob=prob,
        clean_prob=float(cfg["clean_prob"]),
        generator=torch.Generator(device=device).manual_seed(seed + 1),
        output_dir=output_dir / name,
        modality_specs=MODALITIES,
        spatial_size=cfg["spatial_size"],
        spacing=float(cfg["spacing"]),
        stats_log=False,
        progress_bar=False,
        tensorboard=False,
    )
    start = time.perf_counter()
    trainer.run()
    return {
        "checkpoint": str(output_dir / name / "checkpoint.pt"),
        "independent_timestep_prob": prob,
        "iterations": int(trainer.state.iteration),
        "train_seconds": time.perf_counter() - start,
    }


def held_out_cases(n: int, spatial_size: Sequence[int], spacing: float) -> dict[str, torch.Tensor]:
    """``n`` phantom cases (seeds from :data:`EVAL_SEED`) stacked, physical units."""
    cases = [make_phantom_case(EVAL_SEED + i, spatial_size=spatial_size, spacing=spacing) for i in range(n)]
    return {k: torch.stack([torch.as_tensor(c[k]).float() for c in cases]) for k in MODALITIES}


def _sample(
    inferer, model, sampler, n, batch_size, **kwargs
) -> tuple[dict[str, torch.Tensor], float, str | None]:
    name, steps = sampler
    start = time.perf_counter()
    out = inferer.sample(
        model,
        num_samples=n,
        scheduler=name,
        num_inference_steps=steps,
        sample_seeds=list(range(n)),
        batch_size=batch_size,
        **kwargs,
    )
    plain = {m: v.as_tensor().cpu() for m, v in out.items()}
    for m, v in plain.items():
        if not torch.isfinite(v).all():
            raise RuntimeError(f"non-finite values in the generated {m}.")
    return plain, time.perf_counter() - start, inferer.last_conditioning


def _feature_fid(
    cfg: Mapping[str, Any], real: Mapping[str, torch.Tensor], sets: Mapping[str, Mapping]
) -> dict:
    """Feature FID of every set against the real held-out cases (``{}`` when ``feature_epochs`` is 0)."""
    if int(cfg["feature_epochs"]) <= 0:
        return {}
    from monai_pairsynth.metrics import extract_global_features, feature_fid
    from monai_pairsynth.quality import train_feature_segmenter

    grid = {"spatial_size": cfg["spatial_size"], "spacing": float(cfg["spacing"])}
    cases = [make_phantom_case(FEATURE_SEED + s, **grid) for s in range(int(cfg["feature_cases"]))]
    network = train_feature_segmenter(
        cases,
        channels=(8, 16, 32, 64),
        epochs=int(cfg["feature_epochs"]),
        batch_size=8,
        seed=int(cfg["seed"]),
        units="physical",
    )
    ref = extract_global_features(network, dict(real), units="physical", name="real")
    return {
        label: feature_fid(ref, extract_global_features(network, dict(batch), units="physical", name=label))
        for label, batch in sets.items()
    }


def run(
    cfg: Mapping[str, Any], output_dir: Path, device: torch.device, verbose: bool = True
) -> dict[str, Any]:
    """Train both variants, sample every task with every sampler, score; returns the result dict."""
    say = print if verbose else (lambda *a, **k: None)
    init_state = None
    if cfg.get("init_checkpoint"):
        init_model, _ = load_paired_checkpoint(cfg["init_checkpoint"], use_ema=True)
        init_state = init_model.state_dict()
    variants = {"shared": 0.0, "per_modality": float(cfg["independent_timestep_prob"])}
    trained = {}
    for name, prob in variants.items():
        trained[name] = train_variant(name, prob, cfg, output_dir, device, init_state)
        say(
            f"trained {name}: {trained[name]['iterations']} steps, {trained[name]['train_seconds']:.1f} s",
            flush=True,
        )
    real = held_out_cases(int(cfg["num_eval_cases"]), cfg["spatial_size"], float(cfg["spacing"]))
    n, spacing, bs = int(cfg["num_eval_cases"]), float(cfg["spacing"]), int(cfg["sample_batch_size"])
    rows: list[dict[str, Any]] = []
    joint_sets: dict[str, dict[str, torch.Tensor]] = {}
    for name in variants:
        inferer, model = PairedDiffusionInferer.from_checkpoint(
            trained[name]["checkpoint"], map_location=device
        )
        modes = ["auto"] if name == "shared" else ["auto", "clamp"]
        for sampler in cfg["samplers"]:
            label = sampler_label(*sampler)
            for mode in modes:
                for task, known in (
                    ("mask -> CT + PET", {"label": real["label"]}),
                    ("CT -> PET + mask", {"ct": real["ct"]}),
                ):
                    gen, seconds, used = _sample(
                        inferer, model, sampler, n, bs, known=known, conditioning=mode
                    )
                    metrics = (
                        mask_to_images_metrics(gen, real, spacing)
                        if task.startswith("mask")
                        else ct_to_pet_mask_metrics(gen, real)
                    )
                    rows.append(
                        {
                            "task": task,
                            "model": name,
                            "conditioning": used,
                            "sampler": label,
                            "seconds": seconds,
                            **metrics,
                        }
                    )
                    say(
                        f"{task:18s} {name:13s} {used:6s} {label:16s} {json.dumps(convergence._clean(metrics))}",
                        flush=True,
                    )
            gen, seconds, _ = _sample(inferer, model, sampler, n, bs)
            joint_sets[f"{name} {label}"] = gen
            rows.append(
                {
                    "task": "joint",
                    "model": name,
                    "conditioning": None,
                    "sampler": label,
                    "seconds": seconds,
                    **convergence.set_metrics(gen, spacing),
                }
            )
    fids = _feature_fid(cfg, real, joint_sets)
    for row in rows:
        if row["task"] == "joint" and fids:
            row["fid_vs_real"] = fids[f"{row['model']} {row['sampler']}"]
    return convergence._clean(
        {
            "format": JSON_FORMAT,
            "config": {k: v for k, v in cfg.items() if k != "samplers"}
            | {"samplers": [sampler_label(*s) for s in cfg["samplers"]]},
            "variants": trained,
            "real": convergence.set_metrics(real, spacing),
            "rows": rows,
        }
    )


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------
def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_table(result: Mapping[str, Any]) -> str:
    """Markdown tables of a :func:`run` result."""
    rows = result["rows"]
    steps = {v: result["variants"][v]["iterations"] for v in result["variants"]}
    lines = [
        f"Training budget: {steps['shared']} steps each (shared: p = 0; per_modality: p = "
        f"{result['config']['independent_timestep_prob']}, clean_prob {result['config']['clean_prob']}); "
        f"{result['config']['num_eval_cases']} held-out phantom cases.",
        "",
        "| mask -> CT + PET | sampler | mask pixels in generated body (target >= 0.95) | PET contrast in mask | "
        "vs real (target >= 0.8) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["task"] == "mask -> CT + PET":
            lines.append(
                f"| {r['model']}, {r['conditioning']} | {r['sampler']} | {_f(r['mask_in_body'])} | "
                f"{_f(r['pet_contrast'], 2)} (real {_f(r['pet_contrast_real'], 2)}) | {_f(r['contrast_ratio'], 2)} |"
            )
    lines += [
        "",
        "| CT -> PET + mask | sampler | mask Dice | PET MAE (SUV) | PET MAE in body (SUV) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["task"] == "CT -> PET + mask":
            lines.append(
                f"| {r['model']}, {r['conditioning']} | {r['sampler']} | {_f(r['mask_dice'])} (n = {r['mask_dice_n']}) | "
                f"{_f(r['pet_mae'])} | {_f(r['pet_mae_body'])} |"
            )
    lines += [
        "",
        "| joint | sampler | feature FID vs real | lesion Dice | body Dice | empty masks | PET contrast |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["task"] == "joint":
            lines.append(
                f"| {r['model']} | {r['sampler']} | {_f(r.get('fid_vs_real'), 1)} | {_f(r['lesion_dice'])} | "
                f"{_f(r['body_dice'])} | {r['empty_masks']} / {r['n']} | {_f(r['pet_contrast'], 2)} |"
            )
    real = result["real"]
    lines.append(
        f"| real held-out cases | | | {_f(real['lesion_dice'])} | {_f(real['body_dice'])} | "
        f"{real['empty_masks']} / {real['n']} | {_f(real['pet_contrast'], 2)} |"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--init-checkpoint", default=None, help="fine-tune both variants from this checkpoint's EMA weights"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs of each variant (default: the bundle's)"
    )
    p.add_argument(
        "--num-train-cases", type=int, default=None, help="training phantom cases (default: the bundle's)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the bundle's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the bundle's)")
    p.add_argument(
        "--independent-timestep-prob", type=float, default=0.5, help="p of the per_modality variant"
    )
    p.add_argument("--clean-prob", type=float, default=0.5)
    p.add_argument("--num-eval-cases", type=int, default=16, help="held-out phantom cases")
    p.add_argument(
        "--samplers",
        type=parse_sampler,
        nargs="+",
        default=None,
        help=f"NAME:STEPS (default: {DEFAULT_SAMPLER}:{DEFAULT_SAMPLER_STEPS} ddpm:100)",
    )
    p.add_argument("--sample-batch-size", type=int, default=16)
    p.add_argument("--feature-cases", type=int, default=64, help="phantom cases of the feature network (FID)")
    p.add_argument("--feature-epochs", type=int, default=10, help="epochs of the feature network; 0: no FID")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; --quick: 1)"
    )
    p.add_argument(
        "--output-dir", default=None, help="checkpoints of both variants (default: a temporary folder)"
    )
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--markdown", default=None, help="write the tables here")
    p.add_argument(
        "--quick", action="store_true", help="rehearsal: tiny model, 16x16 phantoms, a few steps, no FID"
    )
    p.add_argument("--quiet", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    cfg = bundle_recipe()
    cfg["samplers"] = [(DEFAULT_SAMPLER, DEFAULT_SAMPLER_STEPS), ("ddpm", 100)]
    if args.init_checkpoint:
        from monai_pairsynth.engines import read_paired_checkpoint

        ckpt = read_paired_checkpoint(args.init_checkpoint)
        model_cfg = dict(ckpt["model_config"])
        if tuple(model_cfg.get("modalities", MODALITIES)) != MODALITIES:
            raise ValueError(
                f"--init-checkpoint must be a {MODALITIES} model, got {model_cfg.get('modalities')}."
            )
        cfg["model"] = {k: v for k, v in model_cfg.items() if k not in ("modalities", "condition_timesteps")}
        cfg["noise_scheduler"] = dict(ckpt["noise_scheduler"])
        cfg["spatial_size"] = list(ckpt["spatial_size"])
        cfg["spacing"] = float(ckpt["spacing"])
        cfg["init_checkpoint"] = str(args.init_checkpoint)
    if args.quick:
        from_init = ("model", "noise_scheduler", "spatial_size", "spacing") if args.init_checkpoint else ()
        cfg.update({k: v for k, v in QUICK.items() if k not in from_init})
        cfg["feature_epochs"] = 0
    else:
        cfg["feature_epochs"] = args.feature_epochs
    for key in ("epochs", "num_train_cases", "batch_size", "lr", "samplers"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if not args.quick:
        cfg["num_eval_cases"] = args.num_eval_cases
    cfg.update(
        {
            "independent_timestep_prob": args.independent_timestep_prob,
            "clean_prob": args.clean_prob,
            "sample_batch_size": args.sample_batch_size,
            "feature_cases": args.feature_cases,
            "seed": args.seed,
        }
    )
    if not 0 < cfg["independent_timestep_prob"] <= 1:
        raise ValueError(
            f"--independent-timestep-prob must be in (0, 1], got {cfg['independent_timestep_prob']}."
        )
    return cfg


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # a tiny model on a shared machine: one thread is the fastest
    try:
        with tempfile.TemporaryDirectory() as tmp:
            output_dir = Path(args.output_dir) if args.output_dir else Path(tmp)
            result = run(cfg, output_dir, device, verbose=not args.quiet)
    finally:
        torch.set_num_threads(previous)
    table = render_table(result)
    if not args.quiet:
        print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
