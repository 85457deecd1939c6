"""How the metrics read on phantom data: a perfect generator beside generators with known defects.

Every "synthetic" set here is built from phantom cases, so the right answer is known: independent phantom
cases are what a perfect generator would produce; the other sets break one property each (near-copies of the
real training cases, one case repeated, masks swapped between cases, a CT flipped against its PET, shifted
intensities). Each set is scored by :func:`monai_pairsynth.metrics.evaluation.evaluate` against the same real set with
one feature segmenter trained on that real set. ``docs/metrics.md`` shows the table this prints::

    python benchmarks/phantom_reference.py --num-real 32 --num-synthetic 32 --size 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from monai_pairsynth.data import make_phantom_case
from monai_pairsynth.metrics.evaluation import evaluate
from monai_pairsynth.quality import train_feature_segmenter

__all__ = ["PHANTOM_VARIANTS", "main", "phantom_reference_table"]


def _noisy_copies(real: list[dict], synthetic: list[dict], g: torch.Generator) -> list[dict]:
    return [
        {
            **c,
            "ct": c["ct"] + 2.0 * torch.randn(c["ct"].shape, generator=g),
            "pet": c["pet"] * (1.0 + 0.01 * torch.randn(c["pet"].shape, generator=g)),
        }
        for c in (real[i % len(real)] for i in range(len(synthetic)))
    ]


def _one_case_repeated(real: list[dict], synthetic: list[dict], g: torch.Generator) -> list[dict]:
    c = synthetic[0]
    return [{**c, "ct": c["ct"] + 2.0 * torch.randn(c["ct"].shape, generator=g)} for _ in synthetic]


def _shuffled_masks(real: list[dict], synthetic: list[dict], g: torch.Generator) -> list[dict]:
    n = len(synthetic)
    return [{**c, "label": synthetic[(i + n // 2) % n]["label"]} for i, c in enumerate(synthetic)]


def _flipped_ct(real: list[dict], synthetic: list[dict], g: torch.Generator) -> list[dict]:
    return [{**c, "ct": c["ct"].flip(-1)} for c in synthetic]  # anterior-posterior


def _shifted_intensities(real: list[dict], synthetic: list[dict], g: torch.Generator) -> list[dict]:
    return [{**c, "ct": c["ct"] + 150.0, "pet": c["pet"] * 1.5} for c in synthetic]


#: name -> make(real, independent_phantoms, generator) -> the "synthetic" set
PHANTOM_VARIANTS: dict[str, Callable[[list[dict], list[dict], torch.Generator], list[dict]]] = {
    "independent phantoms (perfect generator)": lambda real, synthetic, g: synthetic,
    "near-copies of real training cases": _noisy_copies,
    "one case repeated (mode collapse)": _one_case_repeated,
    "masks swapped between cases": _shuffled_masks,
    "CT flipped anterior-posterior": _flipped_ct,
    "CT +150 HU, PET x1.5": _shifted_intensities,
}


def phantom_reference_table(
    num_real: int = 32,
    num_synthetic: int = 32,
    size: int = 128,
    feature_epochs: int = 10,
    feature_channels: Sequence[int] = (8, 16, 32, 64),
    seed: int = 0,
    max_pairs: int | None = 300,
    variants: Sequence[str] | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Score every variant of :data:`PHANTOM_VARIANTS` against one real phantom set.

    Args:
        num_real: real phantom cases (seeds ``0 .. num_real - 1``); the feature segmenter is trained on them.
        num_synthetic: cases per synthetic set (independent phantoms: seeds from 100000).
        size: square grid size; the spacing keeps the 256 mm field of view (2 mm at 128).
        feature_epochs, feature_channels: the feature segmenter.
        seed: seeds the feature segmenter, the copies' noise and the subsamples.
        max_pairs: MS-SSIM pairs per set and modality.
        variants: names of :data:`PHANTOM_VARIANTS` to run (default: all).
        verbose: print progress.

    Returns:
        One dict per variant: ``name`` and the headline numbers (``fid``, ``fid_real``, ``mmd``, ``mmd_real``,
        ``ms_ssim_ct``, ``ms_ssim_ct_real``, ``ms_ssim_pet``, ``ms_ssim_pet_real``, ``score`` (pairedness),
        ``score_real``, ``lesion_dice``,
        ``lesion_dice_real``, ``body_dice``, ``body_dice_real``, ``flagged_fraction``, ``median_ratio``,
        ``seconds``).
    """
    names = list(PHANTOM_VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in PHANTOM_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(PHANTOM_VARIANTS)}.")
    if num_real < 4 or num_synthetic < 2:
        raise ValueError(f"need num_real >= 4 and num_synthetic >= 2, got {num_real} and {num_synthetic}.")
    spacing = 256.0 / size
    real = [make_phantom_case(s, spatial_size=(size, size), spacing=spacing) for s in range(num_real)]
    independent = [
        make_phantom_case(100_000 + s, spatial_size=(size, size), spacing=spacing)
        for s in range(num_synthetic)
    ]
    start = time.perf_counter()
    network = train_feature_segmenter(
        real, channels=feature_channels, epochs=feature_epochs, batch_size=8, seed=seed, units="physical"
    )
    if verbose:
        print(f"feature segmenter: {time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        synthetic = PHANTOM_VARIANTS[name](real, independent, torch.Generator().manual_seed(seed))
        with tempfile.TemporaryDirectory() as tmp:
            m = evaluate(real, synthetic, tmp, network, seed=seed, max_pairs=max_pairs, grid_samples=0)
        paired, diversity, memo = m["pairedness"], m["diversity"], m["memorisation"]
        rows.append(
            {
                "name": name,
                "fid": m["fid"]["reference"]["synthetic_vs_real"],
                "fid_real": m["fid"]["reference"]["real_vs_real"],
                "mmd": m["mmd"]["reference"]["synthetic_vs_real"],
                "mmd_real": m["mmd"]["reference"]["real_vs_real"],
                "ms_ssim_ct": diversity["ct"]["synthetic"],
                "ms_ssim_ct_real": diversity["ct"]["real"],
                "ms_ssim_pet": diversity["pet"]["synthetic"],
                "ms_ssim_pet_real": diversity["pet"]["real"],
                "score": paired["synthetic"]["score"]["mean"],
                "score_real": paired["real"]["score"]["mean"],
                "lesion_dice": paired["synthetic"]["lesion_dice"]["mean"],
                "lesion_dice_real": paired["real"]["lesion_dice"]["mean"],
                "body_dice": paired["synthetic"]["body_dice"]["mean"],
                "body_dice_real": paired["real"]["body_dice"]["mean"],
                "flagged_fraction": memo["num_flagged"] / m["num_synthetic"],
                "median_ratio": memo["median_ratio"],
                "seconds": time.perf_counter() - t0,
            }
        )
        if verbose:
            print(f"{name}: {rows[-1]['seconds']:.1f} s", flush=True)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    lines = [
        "| synthetic set | FID (matched) | MMD² (matched) | MS-SSIM CT | MS-SSIM PET | pairedness score "
        "| 40 % SUVmax Dice | body Dice | flagged copies | NN distance ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| *real half vs real half / real set (reference)* | {first['fid_real']:.4f} | {first['mmd_real']:.4f} | "
        f"{first['ms_ssim_ct_real']:.3f} | {first['ms_ssim_pet_real']:.3f} | {first['score_real']:.3f} | "
        f"{first['lesion_dice_real']:.3f} | {first['body_dice_real']:.3f} | - | - |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['fid']:.4f} | {r['mmd']:.4f} | {r['ms_ssim_ct']:.3f} | {r['ms_ssim_pet']:.3f} | "
            f"{r['score']:.3f} | {r['lesion_dice']:.3f} | {r['body_dice']:.3f} | {r['flagged_fraction']:.2f} | "
            f"{r['median_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command line: print the reference table (markdown)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_pairsynth.metrics.phantom_reference",
        description="Score phantom 'synthetic' sets with known defects against real phantom cases.",
    )
    parser.add_argument("--num-real", type=int, default=32, help="real phantom cases (32)")
    parser.add_argument("--num-synthetic", type=int, default=32, help="cases per synthetic set (32)")
    parser.add_argument("--size", type=int, default=128, help="grid size per side (128; 2 mm)")
    parser.add_argument("--feature-epochs", type=int, default=10, help="feature segmenter epochs (10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--max-pairs", type=int, default=300, help="MS-SSIM pairs per set (300)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = phantom_reference_table(
        args.num_real,
        args.num_synthetic,
        args.size,
        args.feature_epochs,
        seed=args.seed,
        max_pairs=args.max_pairs,
        verbose=True,
    )
    print(_markdown(rows))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return rows


if __name__ == "__main__":
    main()
