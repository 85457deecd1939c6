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
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_pairsynth.data.sources import PHANTOM, describe_sample_set, load_samples
from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
from monai_pairsynth.modalities import ModalitySpec, resolve_specs
from monai_pairsynth.quality import load_feature_segmenter, save_feature_segmenter, train_feature_segmenter
from monai_pairsynth.utils import atomic_write_json, atomic_write_text
from monai_pairsynth.visualize import save_triplet_grid

from .by_patient import patient_disjoint_halves, patient_ids, summarize_by_patient
from .distribution_distance import feature_fid, mmd
from .diversity import MS_SSIM_KERNEL_SIZE, MS_SSIM_WEIGHTS, diversity_report
from .global_features import extract_global_features
from .memorisation import memorisation_report
from .pairedness import pairedness
from .report import metrics_markdown

__all__ = ["PHANTOM", "evaluate", "load_triplet_set", "main", "metrics_markdown"]

_MIN_MS_SSIM_SIZE = MS_SSIM_KERNEL_SIZE * 2 ** (len(MS_SSIM_WEIGHTS) - 1)


# ---------------------------------------------------------------------------------------------- loading
def load_triplet_set(
    source: Any,
    keys: Sequence[str] = ("ct", "pet", "label"),
    label_key: str = "label",
    name: str = "data",
    num_phantom: int = 16,
    phantom_seed: int = 0,
    spatial_size: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    preprocessed: bool = False,
    foreground_values: Sequence[float] | None = (1, 2),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a set of triplets into a list of per-sample dicts in physical units.

    A ``SynthesisPool`` file (``.pt`` / ``.pth``) is read here; every other source (``"phantom"``, a generated
    or real datalist JSON, a HECKTOR folder, in-memory samples) by :func:`monai_pairsynth.data.sources.load_samples`,
    whose arguments, return value and errors this shares.
    """
    if (
        isinstance(source, (str, os.PathLike))
        and Path(source).suffix in (".pt", ".pth")
        and Path(source).exists()
    ):
        return _pool_samples(Path(source), [str(k) for k in keys], name)
    return load_samples(
        source,
        keys,
        label_key,
        name,
        num_phantom,
        phantom_seed,
        spatial_size,
        spacing,
        specs,
        preprocessed,
        foreground_values,
    )


def _pool_samples(path: Path, keys: list[str], name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pool = SynthesisPool.load(path)
    missing = [k for k in keys if k not in pool.keys]
    if missing:
        raise KeyError(f"SynthesisPool file {str(path)!r} has keys {list(pool.keys)}, not {missing}.")
    if len(pool) == 0:
        raise ValueError(f"the SynthesisPool file {str(path)!r} is empty (0 triplets).")
    samples = [{**pool.get(i, units="physical"), "case_id": f"pool-{i:04d}"} for i in range(len(pool))]
    info: dict[str, Any] = {"source": str(path), "kind": "pool", "spacing": list(pool.spacing)}
    return describe_sample_set(samples, info, keys, {k: pool.specs[k] for k in keys}, name)


def _json_safe(obj: Any) -> Any:
    """NaN/Inf -> None, tensors -> lists, tuples -> lists, non-string keys -> strings."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):
        return _json_safe(obj.item())
    return obj


def _matched_reference(
    real_features: torch.Tensor, synthetic_features: torch.Tensor, seed: int, real_patients: Sequence[str]
) -> dict[str, Any] | None:
    """FID and MMD of (synthetic subset vs real half A) beside (real half B vs real half A), equal sizes.

    The halves are patient-disjoint (:func:`monai_pairsynth.metrics.patient_disjoint_halves`): with slices of
    one patient on both sides the real-vs-real value would measure near-copies, not two sets of patients.
    """
    n = real_features.shape[0]
    if n < 4 or synthetic_features.shape[0] < 2:
        return None
    index_a, index_b = patient_disjoint_halves(real_patients, seed)
    if len(index_a) < 2 or len(index_b) < 2:
        return None  # fewer than two patients (or a half of one sample): no patient-disjoint reference
    g = torch.Generator().manual_seed(int(seed))
    half_a, half_b = real_features[index_a], real_features[index_b]
    k = min(half_b.shape[0], synthetic_features.shape[0])
    syn = synthetic_features[torch.randperm(synthetic_features.shape[0], generator=g)[:k]]
    keep_b = torch.randperm(half_b.shape[0], generator=g)[:k]
    half_b = half_b[keep_b]
    patients_a = len({real_patients[i] for i in index_a})
    patients_b = len({real_patients[index_b[i]] for i in keep_b.tolist()})
    common = {
        "n_reference": int(half_a.shape[0]),
        "n_compared": int(k),
        "num_patients_reference": patients_a,
        "num_patients_compared": patients_b,
        "unit": "patient-disjoint halves of the real set",
    }
    return {
        "fid": {
            **common,
            "real_vs_real": feature_fid(half_a, half_b),
            "synthetic_vs_real": feature_fid(half_a, syn),
        },
        "mmd": {**common, "real_vs_real": mmd(half_a, half_b), "synthetic_vs_real": mmd(half_a, syn)},
    }


_PAIREDNESS_TERMS = ("score", "lesion_score", "structure_score", "lesion_dice", "body_dice")


def _pairedness_summary(
    samples: list[dict[str, Any]], keys: tuple[str, str, str], spacing, patients: Sequence[str]
) -> tuple[dict, dict]:
    """Every pairedness term averaged per patient first, then summarised over patients."""
    result = pairedness(samples, ct_key=keys[0], pet_key=keys[1], label_key=keys[2], spacing=spacing)
    summary: dict[str, Any] = {
        term: summarize_by_patient(result[term], patients) for term in _PAIREDNESS_TERMS
    }
    summary["num_empty_masks"] = int(result["mask_empty"].sum())
    summary["num_patients"] = len(set(patients))
    summary["unit"] = "patient"
    per_sample = {term: result[term] for term in (*_PAIREDNESS_TERMS, "suvmax")}
    return summary, per_sample


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


# ---------------------------------------------------------------------------------------------- steps
def _check_keys(
    image_keys: Sequence[str], label_key: str, ct_key: str | None, pet_key: str | None
) -> tuple[list[str], list[str], tuple[str, str, str] | None]:
    """``(image_keys, all keys, pairedness keys or None)``; raises ``ValueError`` for inconsistent keys."""
    image_keys = [str(k) for k in image_keys]
    if not image_keys or label_key in image_keys:
        raise ValueError(
            f"image_keys must be non-empty and not contain label_key {label_key!r}, got {image_keys}."
        )
    paired_keys = None
    if ct_key is not None and pet_key is not None:
        missing = [k for k in (ct_key, pet_key) if k not in image_keys]
        if missing:
            raise ValueError(
                f"ct_key/pet_key {missing} are not among image_keys {image_keys}; pass ct_key=None to skip pairedness."
            )
        paired_keys = (ct_key, pet_key, label_key)
    return image_keys, [*image_keys, label_key], paired_keys


def _check_counts(**counts: Any) -> None:
    for name, value in counts.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < (0 if name == "grid_samples" else 1)
        ):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@dataclass
class _Sets:
    """The loaded sets of one evaluation, their grid, specs and patients."""

    real: list[dict[str, Any]]
    real_info: dict[str, Any]
    synthetic: list[dict[str, Any]]
    syn_info: dict[str, Any]
    train: list[dict[str, Any]]
    train_info: dict[str, Any]
    grid: tuple[int, ...]
    spec_map: dict[str, ModalitySpec]
    pair_spacing: Any
    real_patients: list[str] = field(default_factory=list)
    syn_patients: list[str] = field(default_factory=list)
    train_patients: list[str] = field(default_factory=list)


def _load_sets(
    real: Any,
    synthetic: Any,
    real_train: Any | None,
    keys: list[str],
    label_key: str,
    specs: Mapping[str, Any] | None,
    num_real: int,
    real_seed: int,
    num_synthetic: int,
    synthetic_seed: int,
    spatial_size: Sequence[int] | None,
    spacing: float | None,
    real_preprocessed: bool,
    foreground_values: Sequence[float] | None,
) -> _Sets:
    """Both sets (the synthetic one first: it defines the grid of phantom / preprocessed real data)."""
    syn_samples, syn_info = load_triplet_set(
        synthetic,
        keys,
        label_key,
        "synthetic set",
        num_synthetic,
        synthetic_seed,
        spatial_size,
        spacing,
        specs,
    )
    grid = tuple(spatial_size) if spatial_size is not None else tuple(syn_info["spatial_size"])
    mm = spacing if spacing is not None else (syn_info["spacing"][0] if syn_info.get("spacing") else None)
    spec_map = (
        resolve_specs(syn_info["specs"]) if specs is None else resolve_specs({k: specs.get(k) for k in keys})
    )

    def load_real(source: Any, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return load_triplet_set(
            source, keys, label_key, name, num_real, real_seed, grid, mm, spec_map, real_preprocessed,
            foreground_values=foreground_values,
        )  # fmt: skip

    real_samples, real_info = load_real(real, "real set")
    if real_info["spatial_size"] != syn_info["spatial_size"]:
        raise ValueError(
            f"the real set has spatial size {tuple(real_info['spatial_size'])} but the synthetic set "
            f"{tuple(syn_info['spatial_size'])}; evaluate them on one grid (spatial_size=...)."
        )
    train_samples, train_info = real_samples, real_info
    if real_train is not None:
        train_samples, train_info = load_real(real_train, "real training set")
    if mm is None:
        mm = real_info["spacing"][0] if real_info.get("spacing") else None
    pair_spacing = syn_info.get("spacing") or real_info.get("spacing") or (mm if mm is not None else None)
    real_patients = patient_ids(real_samples, prefix="real")
    return _Sets(
        real=real_samples,
        real_info=real_info,
        synthetic=syn_samples,
        syn_info=syn_info,
        train=train_samples,
        train_info=train_info,
        grid=grid,
        spec_map=spec_map,
        pair_spacing=pair_spacing,
        real_patients=real_patients,
        syn_patients=[f"synthetic-{i}" for i in range(len(syn_samples))],  # independent draws: one unit each
        train_patients=real_patients if real_train is None else patient_ids(train_samples, prefix="train"),
    )


def _feature_network(
    feature_network: nn.Module | str | os.PathLike | None,
    sets: _Sets,
    image_keys: list[str],
    label_key: str,
    feature_channels: Sequence[int],
    feature_epochs: int,
    feature_batch_size: int,
    device: torch.device,
    seed: int,
    output_dir: Path,
) -> tuple[nn.Module, str, Path | None]:
    """``(network, description, path to save it to or None)``: trained on the real set, loaded or given."""
    if feature_network is None:
        network = train_feature_segmenter(
            sets.real,
            spatial_dims=len(sets.grid),
            image_keys=image_keys,
            label_key=label_key,
            channels=feature_channels,
            epochs=feature_epochs,
            batch_size=feature_batch_size,
            device=device,
            seed=seed,
            units="physical",
            specs=sets.spec_map,
        )
        description = (
            f"feature segmenter trained here on the real set (UNet channels {tuple(feature_channels)}, "
            f"{feature_epochs} epochs, seed {seed})"
        )
        return network, description, output_dir / "feature_segmenter.pt"
    if isinstance(feature_network, (str, os.PathLike)):
        network = load_feature_segmenter(feature_network, map_location=device)
        return network, f"loaded from {os.fspath(feature_network)}", None
    if isinstance(feature_network, nn.Module):
        return feature_network, f"given {type(feature_network).__name__}", None
    raise ValueError(
        f"feature_network must be None, a path or a torch.nn.Module, got {type(feature_network).__name__}."
    )


def _feature_metrics(
    network: nn.Module,
    sets: _Sets,
    feature_layers: Sequence[str] | None,
    image_keys: list[str],
    batch_size: int,
    seed: int,
    percentiles: Sequence[float],
) -> dict[str, Any]:
    """Features of each set, FID and MMD (with their patient-disjoint real reference) and memorisation."""

    def features(samples: list[dict[str, Any]], name: str) -> torch.Tensor:
        return extract_global_features(
            network, samples, feature_layers, image_keys, "physical", sets.spec_map, batch_size, name=name
        )

    real_f = features(sets.real, "real set")
    syn_f = features(sets.synthetic, "synthetic set")
    train_f = real_f if sets.train is sets.real else features(sets.train, "real training set")
    enough = min(len(real_f), len(syn_f)) >= 2
    several_train_patients = len(set(sets.train_patients)) >= 2
    memo = memorisation_report(
        syn_f, train_f, percentiles, real_patients=sets.train_patients if several_train_patients else None
    )
    return {
        "real": real_f,
        "fid": feature_fid(real_f, syn_f) if enough else float("nan"),
        "mmd": mmd(real_f, syn_f) if enough else float("nan"),
        "reference": _matched_reference(real_f, syn_f, seed, sets.real_patients),
        "memorisation": memo,
        "several_train_patients": several_train_patients,
    }


def _diversity(sets: _Sets, image_keys: list[str], max_pairs: int | None, seed: int) -> dict[str, Any]:
    if min(sets.grid) < _MIN_MS_SSIM_SIZE:
        return {
            "skipped": f"spatial size {sets.grid} is below the {_MIN_MS_SSIM_SIZE} pixels MS-SSIM needs per side"
        }
    if len(sets.synthetic) < 2 or len(set(sets.real_patients)) < 2:
        return {"skipped": "needs at least 2 synthetic samples and 2 real patients"}
    return diversity_report(
        sets.synthetic,
        sets.real,
        image_keys,
        sets.spec_map,
        "physical",
        max_pairs=max_pairs,
        seed=seed,
        real_patients=sets.real_patients,
    )


def _save_sample_grid(sets: _Sets, keys: list[str], grid_samples: int, output_dir: Path) -> Path | None:
    if grid_samples <= 0:
        return None
    k = min(grid_samples, len(sets.real), len(sets.synthetic))
    shown = sets.real[:k] + sets.synthetic[:k]
    titles = [f"real {s.get('case_id') or i}" for i, s in enumerate(sets.real[:k])] + [
        f"synthetic {s.get('case_id') or i}" for i, s in enumerate(sets.synthetic[:k])
    ]
    return save_triplet_grid(
        shown, output_dir / "samples.png", keys=keys, specs=sets.spec_map, titles=titles, samples_per_row=k
    )


def _case_ids(samples: list[dict[str, Any]]) -> list[str]:
    return [str(s.get("case_id") or i) for i, s in enumerate(samples)]


def _counts_and_units(sets: _Sets, has_real_train: bool, several_train_patients: bool) -> dict[str, Any]:
    return {
        "num_real": len(sets.real),
        "num_synthetic": len(sets.synthetic),
        "num_real_train": len(sets.train),
        "num_real_patients": len(set(sets.real_patients)),
        "num_synthetic_patients": len(set(sets.syn_patients)),
        "num_real_train_patients": len(set(sets.train_patients)),
        "units": {
            "real": "patient: slices are averaged per patient first; references use patient-disjoint sets",
            "synthetic": "sample (each synthetic sample is an independent draw)",
            "fid_mmd_reference": "patient-disjoint halves of the real set",
            "diversity_real": "pairs of slices of different patients",
            "memorisation_reference": (
                "nearest real sample of another patient"
                if several_train_patients
                else "nearest other real sample (one training patient: no patient-disjoint reference)"
            ),
            "pairedness": "mean over patients of per-patient means",
        },
    }


def _distance_records(features: Mapping[str, Any]) -> dict[str, Any]:
    reference = features["reference"]
    return {
        "fid": {
            "synthetic_vs_real": features["fid"],
            "reference": None if reference is None else reference["fid"],
        },
        "mmd": {
            "synthetic_vs_real": features["mmd"],
            "reference": None if reference is None else reference["mmd"],
        },
    }


def _memorisation_record(memo: Mapping[str, Any], percentiles: Sequence[float]) -> dict[str, Any]:
    return {
        "percentiles": [float(p) for p in percentiles],
        "thresholds": {f"{p:g}": v for p, v in memo["thresholds"].items()},
        "fraction_below": {f"{p:g}": v for p, v in memo["fraction_below"].items()},
        "flag_percentile": memo["flag_percentile"],
        "flag_threshold": memo["flag_threshold"],
        "num_flagged": memo["num_flagged"],
        "median_nearest_real": memo["median_nearest_real"],
        "median_real_nn": memo["median_real_nn"],
        "median_ratio": memo["median_ratio"],
        "reference_unit": memo["reference_unit"],
    }


def _per_sample_record(
    sets: _Sets, memo: Mapping[str, Any], paired_per_sample: dict[str, Any] | None
) -> dict[str, Any]:
    train_ids = _case_ids(sets.train)
    return {
        "real_case_ids": _case_ids(sets.real),
        "real_patient_ids": sets.real_patients,
        "synthetic_case_ids": _case_ids(sets.synthetic),
        "pairedness": paired_per_sample,
        "nearest_real_distance": memo["nearest_real_distance"],
        "nearest_real_case_id": [train_ids[i] for i in memo["nearest_real_index"].tolist()],
        "flagged": memo["flagged"],
        "real_nn_distance": memo["real_nn_distance"],
    }


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
