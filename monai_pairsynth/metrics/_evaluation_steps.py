"""The steps of :func:`monai_pairsynth.metrics.evaluation.evaluate`: loading, features, diversity, records."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_pairsynth.data.sources import describe_sample_set, load_samples
from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
from monai_pairsynth.modalities import ModalitySpec, resolve_specs
from monai_pairsynth.quality import load_feature_segmenter, train_feature_segmenter
from monai_pairsynth.visualize import save_triplet_grid

from .by_patient import patient_disjoint_halves, patient_ids, summarize_by_patient
from .distribution_distance import feature_fid, mmd
from .diversity import MS_SSIM_KERNEL_SIZE, MS_SSIM_WEIGHTS, diversity_report
from .global_features import extract_global_features
from .memorisation import memorisation_report
from .pairedness import pairedness

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
