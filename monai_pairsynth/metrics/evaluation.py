"""Evaluate a set of synthetic PET/CT/mask triplets against real ones: one call, one folder of results.

Python::

    from monai_pairsynth.metrics.evaluation import evaluate
    metrics = evaluate("phantom", "synthetic/datalist.json", "runs/eval", num_real=64)

Command line::

    python -m monai_pairsynth.metrics.evaluation --real phantom --synthetic synthetic/datalist.json --output-dir runs/eval \\
        [--num-real 64 --real-seed 0] [--feature-network runs/eval/feature_segmenter.pt] [--device cpu]

Sources (``--real`` / ``--synthetic``, read by :func:`load_triplet_set`: a pool file here, everything else by
:func:`monai_pairsynth.data.sources.load_samples`; in Python also a dataset, a list of sample dicts or a batched dict in
physical units):

- ``phantom``: ``num_real`` (``num_synthetic``) built-in phantom cases from seed ``real_seed``
  (``synthetic_seed``), at the synthetic set's grid;
- the ``datalist.json`` written by :func:`monai_pairsynth.inferers.generate.generate` (already final samples in HU,
  SUV and {0, 1});
- a ``SynthesisPool`` file (``.pt``, :meth:`monai_pairsynth.mixing.SynthesisPool.save`);
- a MONAI datalist JSON or a HECKTOR folder of real cases: preprocessed like the training data
  (:func:`monai_pairsynth.data.preprocessing_transforms`) onto the synthetic set's grid and spacing, unless
  ``real_preprocessed`` says its files are already final samples.

What is computed (:mod:`monai_pairsynth.metrics`, ``docs/metrics.md``): feature FID and MMD^2 on this
package's own feature network (a small tumour segmenter trained on the real set with a fixed seed, unless
one is given), each beside the real-vs-real value of two **patient-disjoint** halves of the real set at matched
sizes; MS-SSIM diversity per image modality (synthetic beside real, real pairs of different patients only);
pairedness (the score and its terms, averaged per patient first for the real set; real triplets are the
ceiling); memorisation (nearest real training sample in feature space against the real nearest neighbours
*of other patients*).

Statistics by patient: a real sample's patient is its ``patient_id``, else the patient of its ``case_id``
(:func:`monai_pairsynth.metrics.patient_ids`); the slices of one real patient are never treated as independent
samples. Synthetic samples are independent draws, each its own unit. ``metrics.json`` records the unit of every
number (``units``).

Written into ``output_dir`` (each file atomically; existing files of these names are replaced)::

    metrics.json            every number, per-sample values, the configuration and timings
    metrics.md              a markdown table of the headline numbers
    samples.png             real samples (first row) above synthetic samples (second row)
    feature_segmenter.pt    the feature network trained here (absent when one was given)
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_pairsynth.data.sources import PHANTOM
from monai_pairsynth.modalities import ModalitySpec
from monai_pairsynth.quality import save_feature_segmenter
from monai_pairsynth.utils import atomic_write_json, atomic_write_text

from ._evaluation_steps import (
    _check_counts,
    _check_keys,
    _counts_and_units,
    _distance_records,
    _diversity,
    _feature_metrics,
    _feature_network,
    _json_safe,
    _load_sets,
    _memorisation_record,
    _pairedness_summary,
    _per_sample_record,
    _save_sample_grid,
    load_triplet_set,
)
from .diversity import MS_SSIM_KERNEL_SIZE, MS_SSIM_WEIGHTS
from .report import metrics_markdown

__all__ = ["PHANTOM", "evaluate", "load_triplet_set", "main", "metrics_markdown"]


def evaluate(
    real: Any,
    synthetic: Any,
    output_dir: str | os.PathLike,
    feature_network: nn.Module | str | os.PathLike | None = None,
    *,
    image_keys: Sequence[str] = ("ct", "pet"),
    label_key: str = "label",
    ct_key: str | None = "ct",
    pet_key: str | None = "pet",
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    real_train: Any | None = None,
    num_real: int = 16,
    real_seed: int = 0,
    num_synthetic: int = 16,
    synthetic_seed: int = 100_000,
    spatial_size: Sequence[int] | None = None,
    spacing: float | None = None,
    real_preprocessed: bool = False,
    foreground_values: Sequence[float] | None = (1, 2),
    feature_layers: Sequence[str] | None = None,
    feature_channels: Sequence[int] = (8, 16, 32, 64),
    feature_epochs: int = 20,
    feature_batch_size: int = 8,
    seed: int = 0,
    max_pairs: int | None = 300,
    percentiles: Sequence[float] = (1.0, 5.0),
    grid_samples: int = 4,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Compute every metric of :mod:`monai_pairsynth.metrics` for a synthetic set against a real set.

    Args:
        real: the real set (see the module docstring for sources); with no ``real_train`` it is also the
            generator's training set for the memorisation check and the feature network's training data.
        synthetic: the synthetic set.
        output_dir: folder for ``metrics.json``, ``metrics.md``, ``samples.png`` (and ``feature_segmenter.pt``).
        feature_network: a trained network taking ``image_keys`` as channels (e.g. from
            :func:`monai_pairsynth.quality.train_feature_segmenter`), or the path of one saved with
            :func:`monai_pairsynth.quality.save_feature_segmenter`; ``None`` trains one on ``real`` (seeded).
        image_keys: image modalities (network input channels, diversity).
        label_key: the tumour mask.
        ct_key, pet_key: keys of CT (HU) and PET (SUV) for the pairedness; ``None`` skips the pairedness
            (for other modality sets).
        specs: modality specs (default: recorded by the source, else ``DEFAULT_MODALITY_SPECS``).
        real_train: the generator's real training set, if not ``real``: the memorisation reference.
        num_real, real_seed: phantom cases for ``real="phantom"``.
        num_synthetic, synthetic_seed: phantom cases for ``synthetic="phantom"`` (a reference run).
        spatial_size, spacing: grid of phantom sets and of preprocessed real volumes; default: the synthetic
            set's grid when known, else ``(128, 128)`` at 2 mm.
        real_preprocessed: a real datalist JSON / HECKTOR folder holds final samples (no preprocessing).
        foreground_values: label values of real volumes merged into the tumour (``(1, 2)``; ``(1,)`` keeps
            the primary tumour only; ``None`` requires a binary label).
        feature_layers: layers pooled into features (default: the UNet encoder).
        feature_channels, feature_epochs, feature_batch_size: the feature segmenter trained when
            ``feature_network`` is None.
        seed: seeds the feature segmenter, the real half split and the MS-SSIM pair subsample.
        max_pairs: MS-SSIM pairs per set and modality.
        percentiles: memorisation percentiles of the real NN distances.
        grid_samples: samples of each set drawn in ``samples.png``.
        batch_size: samples per feature-network pass.
        device: where the feature network runs (default: CUDA if available, else CPU).
        verbose: print progress.

    Returns:
        The content of ``metrics.json`` (NaN/Inf written as ``null``).

    Raises:
        ValueError / KeyError / FileNotFoundError: empty sets, missing keys, different spatial shapes of the
            two sets, unreadable sources (named), before anything is written.
    """
    start = time.perf_counter()
    image_keys, keys, paired_keys = _check_keys(image_keys, label_key, ct_key, pet_key)
    _check_counts(feature_epochs=feature_epochs, grid_samples=grid_samples, batch_size=batch_size)

    def log(message: str) -> None:
        if verbose:
            print(f"[evaluate {time.perf_counter() - start:7.1f} s] {message}", flush=True)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sets = _load_sets(
        real, synthetic, real_train, keys, label_key, specs, num_real, real_seed, num_synthetic,
        synthetic_seed, spatial_size, spacing, real_preprocessed, foreground_values,
    )  # fmt: skip
    timings["load"] = time.perf_counter() - t0
    log(f"loaded {len(sets.real)} real and {len(sets.synthetic)} synthetic samples of size {sets.grid}")

    t0 = time.perf_counter()
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"output_dir {str(output_dir)!r} exists and is not a folder.")
    if feature_network is None:
        log(f"training the feature segmenter on the real set ({feature_epochs} epochs)")
    network, description, trained_path = _feature_network(
        feature_network, sets, image_keys, label_key, feature_channels, feature_epochs, feature_batch_size,
        dev, seed, output_dir,
    )  # fmt: skip
    timings["feature_network"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    features = _feature_metrics(network, sets, feature_layers, image_keys, batch_size, seed, percentiles)
    timings["features"] = time.perf_counter() - t0
    log(
        f"features {tuple(features['real'].shape[1:])}: FID {features['fid']:.4f}, MMD² {features['mmd']:.4f}"
    )

    t0 = time.perf_counter()
    diversity = _diversity(sets, image_keys, max_pairs, seed)
    timings["diversity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    paired, paired_per_sample = None, None
    if paired_keys is not None:
        real_summary, real_values = _pairedness_summary(
            sets.real, paired_keys, sets.pair_spacing, sets.real_patients
        )
        syn_summary, syn_values = _pairedness_summary(
            sets.synthetic, paired_keys, sets.pair_spacing, sets.syn_patients
        )
        paired = {"real": real_summary, "synthetic": syn_summary}
        paired_per_sample = {"real": real_values, "synthetic": syn_values}
    timings["pairedness"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    if trained_path is not None:
        save_feature_segmenter(network, trained_path)
    grid_path = _save_sample_grid(sets, keys, grid_samples, output_dir)
    timings["write_png"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start

    metrics = _json_safe(
        {
            **_counts_and_units(sets, real_train is not None, features["several_train_patients"]),
            "spatial_size": list(sets.grid),
            "spacing": sets.pair_spacing,
            "device": str(dev),
            "real": sets.real_info,
            "synthetic": sets.syn_info,
            "real_train": None if real_train is None else sets.train_info,
            "feature_network": {
                "description": description,
                "num_features": int(features["real"].shape[1]),
                "layers": list(feature_layers) if feature_layers is not None else "unet encoder",
                "saved_to": None if trained_path is None else str(trained_path),
            },
            **_distance_records(features),
            "diversity": diversity,
            "pairedness": paired,
            "memorisation": _memorisation_record(features["memorisation"], percentiles),
            "per_sample": _per_sample_record(sets, features["memorisation"], paired_per_sample),
            "config": {
                "image_keys": image_keys,
                "label_key": label_key,
                "ct_key": ct_key,
                "pet_key": pet_key,
                "seed": int(seed),
                "max_pairs": max_pairs,
                "ms_ssim": {
                    "weights": list(MS_SSIM_WEIGHTS),
                    "kernel_size": MS_SSIM_KERNEL_SIZE,
                    "kernel_sigma": 1.5,
                },
                "feature_epochs": feature_epochs if feature_network is None else None,
                "feature_channels": list(feature_channels) if feature_network is None else None,
            },
            "files": {
                "metrics_json": str(output_dir / "metrics.json"),
                "metrics_md": str(output_dir / "metrics.md"),
                "samples_png": None if grid_path is None else str(grid_path),
            },
            "timings": timings,
        }
    )
    atomic_write_json(output_dir / "metrics.json", metrics)
    atomic_write_text(output_dir / "metrics.md", metrics_markdown(metrics))
    log(f"wrote {output_dir / 'metrics.json'}")
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: ``python -m monai_pairsynth.evaluate --real ... --synthetic ... --output-dir ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_pairsynth.evaluate",
        description="Evaluate synthetic PET/CT/mask triplets against real ones: feature FID and MMD, MS-SSIM "
        "diversity, pairedness, memorisation. Writes metrics.json, metrics.md and samples.png.",
    )
    parser.add_argument(
        "--real", required=True, help="'phantom', a datalist JSON, a HECKTOR folder or a pool .pt"
    )
    parser.add_argument(
        "--synthetic", required=True, help="generate's datalist.json, a SynthesisPool .pt or 'phantom'"
    )
    parser.add_argument("--output-dir", required=True, help="folder for the results")
    parser.add_argument(
        "--feature-network", default=None, help="saved feature segmenter (.pt); default: train one"
    )
    parser.add_argument("--real-train", default=None, help="the generator's real training set, if not --real")
    parser.add_argument("--num-real", type=int, default=16, help="phantom cases for --real phantom (16)")
    parser.add_argument("--real-seed", type=int, default=0, help="seed of the first real phantom case (0)")
    parser.add_argument(
        "--num-synthetic", type=int, default=16, help="phantom cases for --synthetic phantom (16)"
    )
    parser.add_argument(
        "--synthetic-seed", type=int, default=100_000, help="seed of the first 'synthetic' phantom case"
    )
    parser.add_argument(
        "--spatial-size",
        type=int,
        nargs="+",
        default=None,
        help="grid, e.g. 128 128 (default: the synthetic set's)",
    )
    parser.add_argument(
        "--spacing", type=float, default=None, help="voxel size in mm (default: the synthetic set's)"
    )
    parser.add_argument(
        "--real-preprocessed", action="store_true", help="the real datalist holds final samples"
    )
    parser.add_argument(
        "--foreground-values",
        nargs="+",
        default=["1", "2"],
        help="label values of real volumes that are tumour (1 2: HECKTOR GTVp + GTVn; 1: primary only; "
        "none: the label must be binary)",
    )
    parser.add_argument("--feature-epochs", type=int, default=20, help="epochs of the feature segmenter (20)")
    parser.add_argument(
        "--feature-channels", type=int, nargs="+", default=[8, 16, 32, 64], help="its UNet widths"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--max-pairs", type=int, default=300, help="MS-SSIM pairs per set and modality (300)")
    parser.add_argument("--grid-samples", type=int, default=4, help="samples per set in samples.png (4)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per feature pass (32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    metrics = evaluate(
        args.real,
        args.synthetic,
        args.output_dir,
        feature_network=args.feature_network,
        real_train=args.real_train,
        num_real=args.num_real,
        real_seed=args.real_seed,
        num_synthetic=args.num_synthetic,
        synthetic_seed=args.synthetic_seed,
        spatial_size=args.spatial_size,
        spacing=args.spacing,
        real_preprocessed=args.real_preprocessed,
        foreground_values=None
        if [v.lower() for v in args.foreground_values] == ["none"]
        else [float(v) for v in args.foreground_values],
        feature_epochs=args.feature_epochs,
        feature_channels=args.feature_channels,
        seed=args.seed,
        max_pairs=args.max_pairs,
        grid_samples=args.grid_samples,
        batch_size=args.batch_size,
        device=args.device,
        verbose=not args.quiet,
    )
    print(metrics_markdown(metrics))
    return metrics


if __name__ == "__main__":
    main()
