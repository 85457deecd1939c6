"""Command line: ``python -m monai_pairsynth.engines.train --output-dir runs/x --epochs 2``.

With no ``--datalist`` it trains on the built-in phantom at the CPU-sized default (64x64 at 4 mm, small
widths). ``--lr`` takes one value or per-modality values (``--lr ct=1e-4,pet=2e-4,label=2e-4``). See
``docs/training.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import torch

from monai_pairsynth.modalities import modality_specs_for

from .paired_training import DEFAULT_CPU_MODEL_KWARGS, train_paired_diffusion

__all__ = ["build_parser", "main"]


def _per_modality(text: str) -> float | dict[str, float]:
    """``"2e-4"`` -> 2e-4; ``"ct=1e-4,pet=2e-4"`` -> ``{"ct": 1e-4, "pet": 2e-4}``."""
    if "=" not in text:
        return float(text)
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs separated by commas, got {text!r}.")
        out[name.strip()] = float(value)
    return out


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool | None, help: str) -> None:
    parser.add_argument(
        f"--{name}",
        dest=name.replace("-", "_"),
        action=argparse.BooleanOptionalAction,
        default=default,
        help=help,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m monai_pairsynth.engines.train",
        description="Train the linked (paired) diffusion model on the phantom or on a datalist.",
    )
    p.add_argument(
        "--output-dir", required=True, help="folder for checkpoint.pt, run_config.json, summary.json"
    )
    p.add_argument(
        "--datalist",
        default=None,
        help="datalist JSON ({'training': [{'ct':..,'pet':..,'label':..}]}); default: phantom",
    )
    p.add_argument(
        "--modalities", nargs="+", default=["ct", "pet", "label"], help="modality keys (default specs)"
    )
    p.add_argument(
        "--pet-intensity",
        default="linear",
        choices=("linear", "log"),
        help="PET map to [-1, 1]: linear 0-15 SUV (default) or the log map 0-60 SUV (PET_LOG_SPEC)",
    )
    p.add_argument(
        "--use-fov-mask",
        action="store_true",
        help="carry the field-of-view mask with each sample; the loss ignores what preprocessing padded",
    )
    p.add_argument("--num-cases", type=int, default=32, help="phantom cases")
    p.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--spatial-size", type=int, nargs="+", default=[64, 64])
    p.add_argument("--spacing", type=float, default=4.0, help="voxel size in mm")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--lr", type=_per_modality, default=2e-4, help="learning rate, or ct=1e-4,pet=2e-4,label=2e-4"
    )
    p.add_argument("--weight-decay", type=_per_modality, default=0.0)
    p.add_argument("--channels", type=int, nargs="+", default=list(DEFAULT_CPU_MODEL_KWARGS["channels"]))
    p.add_argument(
        "--attention-levels",
        type=int,
        nargs="+",
        default=[int(a) for a in DEFAULT_CPU_MODEL_KWARGS["attention_levels"]],
        help="0/1 per level",
    )
    p.add_argument("--num-res-blocks", type=int, default=DEFAULT_CPU_MODEL_KWARGS["num_res_blocks"])
    p.add_argument("--norm-num-groups", type=int, default=DEFAULT_CPU_MODEL_KWARGS["norm_num_groups"])
    p.add_argument("--num-head-channels", type=int, default=DEFAULT_CPU_MODEL_KWARGS["num_head_channels"])
    p.add_argument("--num-train-timesteps", type=int, default=1000)
    p.add_argument("--schedule", default="linear_beta")
    p.add_argument("--prediction-type", default="epsilon", choices=("epsilon", "v_prediction", "sample"))
    p.add_argument("--offset-noise-scale", type=float, default=0.1)
    p.add_argument(
        "--independent-timestep-prob",
        type=float,
        default=0.0,
        help="probability of per-modality timesteps per sample, some modalities given clean at t = 0 (conditional "
        "sampling with known modalities then feeds them clean); default 0: shared timesteps",
    )
    p.add_argument(
        "--clean-prob",
        type=float,
        default=0.5,
        help="in such a sample, probability that a modality is given clean",
    )
    p.add_argument("--perceptual-weight", type=float, default=0.1, help="0 disables the perceptual term")
    p.add_argument("--perceptual-start-epoch", type=int, default=50)
    p.add_argument("--perceptual-mode", default="cross_modal", choices=("cross_modal", "reconstruction"))
    p.add_argument("--feature-weights", default=None, help="local state dict of a pretrained feature network")
    p.add_argument(
        "--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting (e.g. 5); default off"
    )
    p.add_argument(
        "--foreground-weight",
        type=_per_modality,
        default=None,
        help="weight of foreground pixels per modality, e.g. label=4; default off",
    )
    p.add_argument(
        "--autocast", default=None, choices=("bfloat16",), help="network under bf16 autocast (any device)"
    )
    _bool_flag(p, "device-loader", False, "2D: slices materialised on the device, batched augmentation there")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip; <= 0 disables")
    p.add_argument("--ema-momentum", type=float, default=1e-3, help="EMA momentum; <= 0 disables")
    p.add_argument("--ema-warmup-iters", type=int, default=200)
    p.add_argument("--device", default=None)
    _bool_flag(p, "amp", None, "mixed precision (default: on with CUDA)")
    _bool_flag(p, "augment", False, "random rotation/shift/flip")
    _bool_flag(p, "deterministic", False, "deterministic cuDNN (monai.utils.set_determinism)")
    _bool_flag(p, "progress", None, "tqdm progress bar (default: when stderr is a terminal)")
    _bool_flag(p, "tensorboard", None, "TensorBoard logs (default: when tensorboard is installed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's choice)"
    )
    p.add_argument("--resume-from", default=None, help="checkpoint to continue from")
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--keep-epoch-checkpoints", action="store_true")
    p.add_argument("--log-every", type=int, default=10, help="iteration-log interval (0: epoch logs only)")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop at the first epoch end past this many minutes (--epochs still caps it)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if isinstance(args.foreground_weight, float):
        print(
            f"error: --foreground-weight needs MODALITY=WEIGHT pairs (e.g. label=4), got {args.foreground_weight}",
            file=sys.stderr,
        )
        return 2
    model_kwargs = {
        "channels": tuple(args.channels),
        "attention_levels": tuple(bool(a) for a in args.attention_levels),
        "num_res_blocks": args.num_res_blocks,
        "norm_num_groups": args.norm_num_groups,
        "num_head_channels": args.num_head_channels,
    }
    try:
        path = train_paired_diffusion(
            args.output_dir,
            data=args.datalist,
            modality_specs=modality_specs_for(tuple(args.modalities), args.pet_intensity),
            num_cases=args.num_cases,
            spatial_dims=args.spatial_dims,
            spatial_size=tuple(args.spatial_size),
            spacing=args.spacing,
            augment=args.augment,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            model_kwargs=model_kwargs,
            noise_scheduler={
                "num_train_timesteps": args.num_train_timesteps,
                "schedule": args.schedule,
                "prediction_type": args.prediction_type,
            },
            offset_noise_scale=args.offset_noise_scale,
            independent_timestep_prob=args.independent_timestep_prob,
            clean_prob=args.clean_prob,
            perceptual_weight=args.perceptual_weight,
            perceptual_start_epoch=args.perceptual_start_epoch,
            perceptual_mode=args.perceptual_mode,
            feature_weights_path=args.feature_weights,
            snr_gamma=args.snr_gamma,
            foreground_weight=args.foreground_weight,
            use_fov_mask=args.use_fov_mask,
            amp=args.amp,
            autocast_dtype=args.autocast,
            device_loader=args.device_loader,
            grad_clip_norm=args.grad_clip if args.grad_clip > 0 else None,
            ema_momentum=args.ema_momentum if args.ema_momentum > 0 else None,
            ema_warmup_iters=args.ema_warmup_iters,
            device=args.device,
            seed=args.seed,
            deterministic=args.deterministic,
            num_workers=args.num_workers,
            resume_from=args.resume_from,
            checkpoint_every=args.checkpoint_every,
            keep_epoch_checkpoints=args.keep_epoch_checkpoints,
            log_every=args.log_every,
            progress_bar=args.progress,
            tensorboard=args.tensorboard,
            max_minutes=args.max_minutes,
        )
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = json.loads((path.parent / "summary.json").read_text(encoding="utf-8"))
    print(
        f"checkpoint: {path}\n"
        f"epochs: {summary['epochs']}, iterations: {summary['iterations']}, "
        f"{summary['seconds_per_iteration']:.3f} s per training step "
        f"(process CPU time {summary['cpu_seconds_per_iteration']:.3f} s; batch {summary['batch_size']}, "
        f"{summary['device']}, {summary['torch_threads']} threads)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
