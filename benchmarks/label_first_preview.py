"""Preview of a label-first pool (issue 14, item 4): real phantom masks moved by ``MaskPlacement`` and the CT + PET
the shipped demo checkpoint generates for them (``LabelFirstPoolSource``), for docs/sampling.md.

Each row: the real case the mask came from (CT, its own mask outlined), the placed mask (over that case's body
outline), the generated CT and the generated PET (the given mask outlined on both). Also printed: how many masks
were placed or fell back, the conditioning the sampler used, and the fraction of the given mask pixels inside
the generated CT's body outline (``monai_pairsynth.metrics.body_outline``, CT > -500 HU, as in the
conditional-sampling measurement of docs/sampling.md).

Usage::

    python benchmarks/label_first_preview.py --output docs/label_first_preview.png
    python benchmarks/label_first_preview.py --scheduler ddpm --num-inference-steps 100 --num-samples 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from monai_pairsynth.data.sources import real_samples
from monai_pairsynth.engines import read_paired_checkpoint
from monai_pairsynth.inferers import LabelFirstPoolSource, MaskPlacement
from monai_pairsynth.metrics import body_outline
from monai_pairsynth.quality import body_mask

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "bundles" / "pet_ct_pairsynth" / "models" / "diffusion_demo.pt"


def _outline(ax, mask: np.ndarray, colour: str) -> None:
    if mask.any():
        ax.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=1.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(DEMO))
    parser.add_argument("--output", default=str(ROOT / "docs" / "label_first_preview.png"))
    parser.add_argument(
        "--num-cases", type=int, default=16, help="phantom training cases the masks come from"
    )
    parser.add_argument(
        "--num-samples", type=int, default=16, help="triplets generated (the fraction is over all)"
    )
    parser.add_argument("--rows", type=int, default=4, help="triplets shown")
    parser.add_argument("--scheduler", default="dpmpp")
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--conditioning", default="auto", choices=["auto", "clean", "clamp"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    ckpt = read_paired_checkpoint(args.checkpoint)
    size = [int(s) for s in ckpt["spatial_size"]]
    spacing = float(np.atleast_1d(ckpt["spacing"])[0])
    cases = real_samples(None, "train", spatial_size=size, spacing=spacing, num_phantom_cases=args.num_cases)
    source = LabelFirstPoolSource(
        args.checkpoint,
        cases=cases,
        placement=MaskPlacement(),
        conditioning=args.conditioning,
        scheduler=args.scheduler,
        num_inference_steps=args.num_inference_steps,
        batch_size=8,
        device="cpu",
    )
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    parts, indices = [], []
    for first in range(0, args.num_samples, 8):  # one call per 8: keep the case index of every mask
        parts.append(source(min(8, args.num_samples - first), gen))
        indices += source.last_case_indices
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    seconds = time.perf_counter() - start

    inside = total = 0
    for ct, mask in zip(out["ct"], out["label"], strict=True):
        body = body_outline(ct[0], -500.0)
        m = mask[0].numpy() > 0.5
        inside += int((m & body).sum())
        total += int(m.sum())
    result = {
        "checkpoint": str(Path(args.checkpoint).relative_to(ROOT))
        if Path(args.checkpoint).resolve().is_relative_to(ROOT)
        else args.checkpoint,
        "sampler": f"{args.scheduler}:{args.num_inference_steps}",
        "conditioning": source.last_conditioning,
        "samples": args.num_samples,
        **source.placement_counts(),
        "mask_in_generated_body": inside / max(total, 1),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(result, indent=2))

    rows = min(args.rows, args.num_samples)
    fig = Figure(figsize=(10, 2.6 * rows))
    FigureCanvasAgg(fig)
    titles = ["real case (its mask)", "placed mask (case body)", "generated CT", "generated PET"]
    for r in range(rows):
        case = cases[indices[r]]
        ct_real = case["ct"][0].numpy()
        real_mask = case["label"][0].numpy() > 0.5
        body = body_mask(torch.as_tensor(case["ct"]).float()[None], -500.0, dilation=0)[0, 0].numpy()
        given = out["label"][r, 0].numpy() > 0.5
        panels = [
            (ct_real, "gray", (-1000, 1000), real_mask, "red"),
            (body.astype(float) * 0.3 + given.astype(float) * 0.7, "gray", (0, 1), None, None),
            (out["ct"][r, 0].numpy(), "gray", (-1000, 1000), given, "red"),
            (out["pet"][r, 0].numpy(), "hot", (0, 10), given, "cyan"),
        ]
        for c, (img, cmap, (lo, hi), outline, colour) in enumerate(panels):
            ax = fig.add_subplot(rows, 4, r * 4 + c + 1)
            ax.imshow(img.T, cmap=cmap, vmin=lo, vmax=hi, origin="lower")
            if outline is not None:
                _outline(ax, outline, colour)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{case['case_id']}", fontsize=8)
    fig.suptitle(
        f"label-first: demo checkpoint, {result['sampler']}, conditioning {result['conditioning']}; "
        f"mask in generated body {result['mask_in_generated_body']:.3f} over {args.num_samples}",
        fontsize=9,
    )
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
