"""Evaluate a set of synthetic PET/CT/mask triplets against real ones: one call, one folder of results.

Python::

    from monai_pairsynth.evaluate import evaluate
    metrics = evaluate("phantom", "synthetic/datalist.json", "runs/eval", num_real=64)

Command line::

    python -m monai_pairsynth.evaluate --real phantom --synthetic synthetic/datalist.json --output-dir runs/eval \\
        [--num-real 64 --real-seed 0] [--feature-network runs/eval/feature_segmenter.pt] [--device cpu]

Sources (``--real`` / ``--synthetic``; in Python also a dataset, a list of sample dicts or a batched dict in
physical units):

- ``phantom``: ``num_real`` (``num_synthetic``) built-in phantom cases from seed ``real_seed``
  (``synthetic_seed``), at the synthetic set's grid;
- the ``datalist.json`` written by :func:`monai_pairsynth.generate.generate` (already final samples in HU,
  SUV and {0, 1});
- a ``SynthesisPool`` file (``.pt``, :meth:`monai_pairsynth.data.SynthesisPool.save`);
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
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from monai_pairsynth.metrics import (
    diversity_report,
    extract_global_features,
    feature_fid,
    memorisation_report,
    mmd,
    pairedness,
    patient_disjoint_halves,
    patient_ids,
    summarize_by_patient,
)
from monai_pairsynth.metrics.diversity import MS_SSIM_KERNEL_SIZE, MS_SSIM_WEIGHTS
from monai_pairsynth.modalities import ModalitySpec, resolve_specs
from monai_pairsynth.utils import atomic_write_json, atomic_write_text

__all__ = ["evaluate", "load_triplet_set", "main", "metrics_markdown"]

PHANTOM = "phantom"
_DEFAULT_SIZE_2D = (128, 128)
_DEFAULT_SPACING = 2.0
_MIN_MS_SSIM_SIZE = MS_SSIM_KERNEL_SIZE * 2 ** (len(MS_SSIM_WEIGHTS) - 1)


# ---------------------------------------------------------------------------------------------- loading


def _plain_sample(sample: Mapping[str, Any], keys: Sequence[str], name: str, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        if key not in sample:
            raise KeyError(
                f"{name} sample {index} has no key {key!r} (it has keys {sorted(map(str, sample))})."
            )
        value = sample[key]
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if value.ndim not in (3, 4) or value.shape[0] != 1:
            raise ValueError(
                f"{name} sample {index} key {key!r} must be channel-first (1, H, W[, D]), got shape {tuple(value.shape)}."
            )
        out[key] = value.float() if not value.is_floating_point() else value
    for id_key in ("case_id", "patient_id"):
        if id_key in sample and sample[id_key] is not None:
            out[id_key] = str(sample[id_key])
    return out


def _as_sample_list(data: Any, keys: Sequence[str], name: str) -> list[dict[str, Any]]:
    """Any supported container -> a list of per-sample dicts ``{key: (1, *spatial)}``."""
    if isinstance(data, Mapping):  # a batched dict
        sizes = {int(data[k].shape[0]) for k in keys if k in data and hasattr(data[k], "shape")}
        missing = [k for k in keys if k not in data]
        if missing:
            raise KeyError(f"the {name} has no key(s) {missing} (it has keys {sorted(map(str, data))}).")
        if len(sizes) != 1:
            raise ValueError(f"the {name}'s keys {list(keys)} have different batch sizes {sorted(sizes)}.")
        n = sizes.pop()
        samples = [{k: data[k][i] for k in keys} for i in range(n)]
    elif isinstance(data, DataLoader):
        samples = []
        for batch in data:
            samples += _as_sample_list(batch, keys, name)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        samples = [data[i] for i in range(len(data))]
    else:
        raise ValueError(
            f"the {name} must be 'phantom', a path, a dataset, a list of sample dicts, a DataLoader or a batched "
            f"dict, got {type(data).__name__}."
        )
    if not samples:
        raise ValueError(f"the {name} is empty (0 samples).")
    out = []
    for i, s in enumerate(samples):
        if not isinstance(s, Mapping):
            raise ValueError(f"{name} sample {i} is a {type(s).__name__}, not a dict of tensors.")
        out.append(_plain_sample(s, keys, name, i))
    return out


def _isotropic(spacing: float | Sequence[float] | None, what: str) -> float | None:
    if spacing is None:
        return None
    values = [float(spacing)] if isinstance(spacing, (int, float)) else [float(v) for v in spacing]
    if not values or len(set(values)) != 1 or not values[0] > 0:
        raise ValueError(f"{what} needs one positive isotropic spacing in mm, got {spacing!r}.")
    return values[0]


def _spacing_of_sample(sample: Mapping[str, Any], key: str) -> tuple[float, ...] | None:
    pixdim = getattr(sample.get(key), "pixdim", None)
    if pixdim is None:
        return None
    return tuple(float(v) for v in (pixdim.tolist() if hasattr(pixdim, "tolist") else pixdim))


def _load_final_files(items: list[dict[str, Any]], keys: Sequence[str], name: str) -> list[dict[str, Any]]:
    """Read datalist entries whose files are already final samples (HU, SUV, {0, 1}) as (1, *spatial)."""
    from monai_pairsynth.data import LoadCaseImaged

    loader = LoadCaseImaged(list(keys), image_only=True, ensure_channel_first=True)
    samples = []
    for item in items:
        loaded = loader(item)
        samples.append({**{k: loaded[k] for k in keys}, "case_id": str(item.get("case_id", ""))})
    return samples


def _preprocess(
    items: list[Any],
    keys: Sequence[str],
    label_key: str,
    spatial_size: Sequence[int],
    spacing: float | Sequence[float],
    specs: Mapping[str, ModalitySpec],
    load: bool,
    foreground_values: Sequence[float] | None = (1, 2),
) -> list[dict[str, Any]]:
    from monai_pairsynth.data import DenormalizeModalitiesd, preprocess_datalist, preprocessing_transforms

    transform = preprocessing_transforms(
        keys=list(keys),
        label_key=label_key,
        spacing=spacing,
        spatial_size=spatial_size,
        specs=dict(specs),
        extract_slices=len(spatial_size) == 2,
        load=load,
        foreground_values=foreground_values,
    )
    samples = preprocess_datalist(items, transform)
    to_physical = DenormalizeModalitiesd(list(keys), dict(specs))
    return [to_physical(s) for s in samples]


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

    Args:
        source: ``"phantom"``, a path (generated ``datalist.json``, a MONAI datalist JSON, a HECKTOR folder, a
            ``SynthesisPool`` ``.pt`` file), or an in-memory dataset / list of sample dicts / batched dict /
            ``DataLoader`` (physical units).
        keys: modality keys of a triplet.
        label_key: the mask key (for preprocessing real volumes).
        name: what the set is, for messages (``"real set"``).
        num_phantom, phantom_seed: for ``"phantom"``: number of cases and the seed of case 0.
        spatial_size, spacing: the grid for ``"phantom"`` and for preprocessed real volumes (default
            ``(128, 128)`` at 2 mm).
        specs: modality specs (default: from the source when it records them, else ``DEFAULT_MODALITY_SPECS``).
        preprocessed: a datalist JSON / HECKTOR folder holds final samples (no preprocessing).
        foreground_values: label values merged into the tumour when preprocessing real volumes (HECKTOR: GTVp
            1 and GTVn 2; ``(1,)`` for the primary only); ``None`` requires a binary label.

    Returns:
        ``(samples, info)``: ``samples[i] = {key: (1, *spatial) tensor, "case_id": ...}``; ``info`` has
        ``source``, ``kind``, ``spatial_size``, ``spacing`` (None if unknown) and ``specs``.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError / KeyError: an empty set, a missing key, an unreadable file (named).
    """
    keys = [str(k) for k in keys]
    spec_map = resolve_specs({k: (specs or {}).get(k) for k in keys})
    info: dict[str, Any] = {
        "source": str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    }
    if isinstance(source, str) and source == PHANTOM:
        from monai_pairsynth.data import PhantomDataset

        if sorted(keys) != ["ct", "label", "pet"]:
            raise ValueError(f"the phantom has keys ['ct', 'pet', 'label']; cannot produce keys {keys}.")
        size = tuple(int(s) for s in (spatial_size or _DEFAULT_SIZE_2D))
        mm = _isotropic(spacing, "the phantom")
        ds = PhantomDataset(
            int(num_phantom),
            base_seed=int(phantom_seed),
            spatial_dims=len(size),
            spatial_size=size,
            spacing=_DEFAULT_SPACING if mm is None else mm,
        )
        samples = [
            _plain_sample(ds[i], keys, name, i) for i in range(len(ds))
        ]  # (iterating it would not stop)
        info.update(kind="phantom", seed=int(phantom_seed))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"the {name} source {str(path)!r} does not exist (expected 'phantom', a datalist "
                "JSON, a HECKTOR folder or a SynthesisPool .pt file)."
            )
        if path.is_dir():
            from monai_pairsynth.data import hecktor_datalist

            items = hecktor_datalist(path)
            info["kind"] = "hecktor"
            if preprocessed:
                samples = _load_final_files(items, keys, name)
            else:
                size = tuple(int(s) for s in (spatial_size or _DEFAULT_SIZE_2D))
                samples = _preprocess(
                    items,
                    keys,
                    label_key,
                    size,
                    spacing or _DEFAULT_SPACING,
                    spec_map,
                    load=True,
                    foreground_values=foreground_values,
                )
        elif path.suffix in (".pt", ".pth"):
            from monai_pairsynth.mixing.synthesis_pool import SynthesisPool

            pool = SynthesisPool.load(path)
            missing = [k for k in keys if k not in pool.keys]
            if missing:
                raise KeyError(f"SynthesisPool file {str(path)!r} has keys {list(pool.keys)}, not {missing}.")
            if len(pool) == 0:
                raise ValueError(f"the SynthesisPool file {str(path)!r} is empty (0 triplets).")
            spec_map = {k: pool.specs[k] for k in keys}
            samples = [pool.get(i, units="physical") for i in range(len(pool))]
            samples = [{**s, "case_id": f"pool-{i:04d}"} for i, s in enumerate(samples)]
            info.update(kind="pool", spacing=list(pool.spacing))
        else:
            from monai_pairsynth.data import load_datalist_json

            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"cannot read the {name} datalist JSON {str(path)!r}: {err}") from err
            items = load_datalist_json(path, keys=keys)
            generation = content.get("generation") if isinstance(content, Mapping) else None
            if isinstance(content, Mapping) and isinstance(content.get("modalities"), Mapping):
                recorded = content["modalities"]
                spec_map = resolve_specs({k: recorded.get(k, spec_map[k]) for k in keys})
            if generation is not None or preprocessed:
                samples = _load_final_files(items, keys, name)
                info["kind"] = "generated" if generation is not None else "datalist"
                if generation is not None and generation.get("spacing") is not None:
                    info["spacing"] = [float(v) for v in generation["spacing"]]
            else:
                size = tuple(int(s) for s in (spatial_size or _DEFAULT_SIZE_2D))
                samples = _preprocess(
                    items,
                    keys,
                    label_key,
                    size,
                    spacing or _DEFAULT_SPACING,
                    spec_map,
                    load=True,
                    foreground_values=foreground_values,
                )
                info["kind"] = "datalist"
        samples = [_plain_sample(s, keys, name, i) for i, s in enumerate(samples)]
    else:
        samples = _as_sample_list(source, keys, name)
        info["kind"] = "in-memory"
    if not samples:
        raise ValueError(f"the {name} is empty (0 samples).")
    shapes = {tuple(s[k].shape) for s in samples for k in keys}
    if len(shapes) != 1:
        raise ValueError(f"the {name} holds samples/modalities of different shapes {sorted(shapes)}.")
    info["spatial_size"] = list(shapes.pop()[1:])
    if info.get("spacing") is None:
        found = _spacing_of_sample(samples[0], keys[0])
        info["spacing"] = list(found[: len(info["spatial_size"])]) if found is not None else None
    info["num_samples"] = len(samples)
    info["specs"] = {k: spec_map[k].to_dict() for k in keys}
    return samples, info


# ---------------------------------------------------------------------------------------------- reporting


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


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _ordinal(p: float | str) -> str:
    value = float(p)
    if value != int(value):
        return f"{value:g}th"
    n = int(value)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _pm(stats: Mapping[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{_fmt(stats['mean'], 3)} ± {_fmt(stats['sd'], 3)}"


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """The headline numbers of an :func:`evaluate` result as a markdown document with one table."""
    n_real, n_syn = metrics["num_real"], metrics["num_synthetic"]
    n_patients = metrics.get("num_real_patients", n_real)
    lines = [
        "# Synthetic triplet evaluation",
        "",
        f"Real: {n_real} samples of {n_patients} patients ({metrics['real']['kind']}: {metrics['real']['source']}); "
        f"synthetic: {n_syn} samples ({metrics['synthetic']['kind']}: {metrics['synthetic']['source']}); grid "
        f"{' x '.join(map(str, metrics['spatial_size']))}"
        + (f" at {metrics['spacing']} mm" if metrics.get("spacing") else "")
        + f". Feature network: {metrics['feature_network']['description']}.",
        "",
        "Units: real values are averaged per patient first and real-vs-real references use patient-disjoint sets "
        "(slices of one patient are not independent); each synthetic sample is one unit.",
        "",
        "| metric | synthetic | real reference | how to read |",
        "|---|---|---|---|",
    ]
    fid, mm = metrics["fid"], metrics["mmd"]
    lines.append(
        f"| feature FID (all samples) | {_fmt(fid['synthetic_vs_real'])} | - | lower is closer; biased by N, compare at equal N |"
    )
    ref = fid.get("reference")
    if ref:
        halves = (
            f"{ref['n_compared']} vs {ref['n_reference']} real samples; real halves of "
            f"{ref.get('num_patients_compared', '?')} / {ref.get('num_patients_reference', '?')} patients"
        )
        lines.append(
            f"| feature FID, matched ({halves}) | {_fmt(ref['synthetic_vs_real'])} | "
            f"{_fmt(ref['real_vs_real'])} (patient-disjoint real halves) | "
            "the nearer the real-vs-real value, the more alike the sets |"
        )
    else:
        lines.append("| feature FID, matched | n/a | n/a | needs at least 2 real patients per half |")
    lines.append(
        f"| MMD² (RBF, median bandwidth) | {_fmt(mm['synthetic_vs_real'])} | - | about 0 for one distribution |"
    )
    ref = mm.get("reference")
    if ref:
        lines.append(
            f"| MMD², matched (n = {ref['n_compared']} samples) | {_fmt(ref['synthetic_vs_real'])} | "
            f"{_fmt(ref['real_vs_real'])} (patient-disjoint real halves) | as for FID |"
        )
    diversity = metrics.get("diversity") or {}
    if "skipped" in diversity:
        lines.append(f"| MS-SSIM diversity | n/a | n/a | skipped: {diversity['skipped']} |")
    for key, entry in diversity.items():
        if key == "skipped":
            continue
        lines.append(
            f"| mean pairwise MS-SSIM, {key} | {_fmt(entry['synthetic'])} | {_fmt(entry['real'])} (pairs of "
            f"different real patients) | 1 = no diversity; diversity ratio (1-s)/(1-r) = "
            f"{_fmt(entry['diversity_ratio'], 3)} |"
        )
    paired = metrics.get("pairedness")
    if paired:
        unit = f"(ceiling; mean ± sd over {paired['real'].get('num_patients', '?')} patients)"
        rows = (
            ("score", "pairedness score (lesion x structure)", "higher is better; real is the ceiling"),
            (
                "lesion_score",
                "pairedness: lesion (mask vs PET above local background)",
                "a flat PET scores 0",
            ),
            (
                "structure_score",
                "pairedness: structure (CT/PET gradient alignment)",
                "0 for unrelated images",
            ),
            (
                "lesion_dice",
                "earlier lesion Dice (mask vs PET ≥ 40 % SUVmax)",
                "mostly mask size on real tumours",
            ),
            ("body_dice", "earlier body Dice (CT vs PET outline)", "near 1 when CT and PET are aligned"),
        )
        for term, label, reading in rows:
            if term in paired["synthetic"]:
                lines.append(
                    f"| {label} | {_pm(paired['synthetic'][term])} (over samples) | {_pm(paired['real'][term])} "
                    f"{unit} | {reading} |"
                )
        empty = paired["synthetic"]["num_empty_masks"]
        if empty:
            lines.append(
                f"| synthetic samples with an empty mask | {empty} | {paired['real']['num_empty_masks']} | lesion term undefined for them |"
            )
    mem = metrics["memorisation"]
    for p, fraction in mem["fraction_below"].items():
        lines.append(
            f"| memorisation: fraction closer than the {_ordinal(p)} percentile of real NN distances | {_fmt(fraction, 3)} | "
            f"{float(p) / 100:.3f} (expected without copying) | far above the expected value: near-copies |"
        )
    lines.append(
        f"| memorisation: flagged near-copies | {mem['num_flagged']} of {n_syn} | - | "
        f"closer than the {_ordinal(mem['flag_percentile'])} percentile |"
    )
    lines.append(
        f"| median nearest-real feature distance | {_fmt(mem['median_nearest_real'])} | "
        f"{_fmt(mem['median_real_nn'])} (real, {mem.get('reference_unit', 'leave one sample out')}) | ratio {_fmt(mem['median_ratio'], 3)}: about 1 without "
        "copying, near 0 for copies |"
    )
    lines += [
        "",
        f"Computed by `monai_pairsynth.evaluate` in {metrics['timings']['total']:.1f} s on {metrics['device']}.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- evaluate


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
    from monai_pairsynth.quality import (
        load_feature_segmenter,
        save_feature_segmenter,
        train_feature_segmenter,
    )
    from monai_pairsynth.visualize import save_triplet_grid

    start = time.perf_counter()
    timings: dict[str, float] = {}
    image_keys = [str(k) for k in image_keys]
    if not image_keys or label_key in image_keys:
        raise ValueError(
            f"image_keys must be non-empty and not contain label_key {label_key!r}, got {image_keys}."
        )
    keys = [*image_keys, label_key]
    paired_keys = None
    if ct_key is not None and pet_key is not None:
        missing = [k for k in (ct_key, pet_key) if k not in image_keys]
        if missing:
            raise ValueError(
                f"ct_key/pet_key {missing} are not among image_keys {image_keys}; pass ct_key=None to skip pairedness."
            )
        paired_keys = (ct_key, pet_key, label_key)
    for name, value in (
        ("feature_epochs", feature_epochs),
        ("grid_samples", grid_samples),
        ("batch_size", batch_size),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < (0 if name == "grid_samples" else 1)
        ):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")

    def log(message: str) -> None:
        if verbose:
            print(f"[evaluate {time.perf_counter() - start:7.1f} s] {message}", flush=True)

    # ---- load both sets (the synthetic one first: it defines the grid of phantom / preprocessed real data)
    t0 = time.perf_counter()
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
    real_samples, real_info = load_triplet_set(
        real,
        keys,
        label_key,
        "real set",
        num_real,
        real_seed,
        grid,
        mm,
        spec_map,
        real_preprocessed,
        foreground_values=foreground_values,
    )
    if real_info["spatial_size"] != syn_info["spatial_size"]:
        raise ValueError(
            f"the real set has spatial size {tuple(real_info['spatial_size'])} but the synthetic set "
            f"{tuple(syn_info['spatial_size'])}; evaluate them on one grid (spatial_size=...)."
        )
    train_samples, train_info = real_samples, real_info
    if real_train is not None:
        train_samples, train_info = load_triplet_set(
            real_train,
            keys,
            label_key,
            "real training set",
            num_real,
            real_seed,
            grid,
            mm,
            spec_map,
            real_preprocessed,
            foreground_values=foreground_values,
        )
    if mm is None:
        mm = real_info["spacing"][0] if real_info.get("spacing") else None
    pair_spacing = syn_info.get("spacing") or real_info.get("spacing") or (mm if mm is not None else None)
    timings["load"] = time.perf_counter() - t0
    log(f"loaded {len(real_samples)} real and {len(syn_samples)} synthetic samples of size {grid}")

    # ---- feature network
    t0 = time.perf_counter()
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"output_dir {str(output_dir)!r} exists and is not a folder.")
    trained_path = None
    if feature_network is None:
        log(f"training the feature segmenter on the real set ({feature_epochs} epochs)")
        network = train_feature_segmenter(
            real_samples,
            spatial_dims=len(grid),
            image_keys=image_keys,
            label_key=label_key,
            channels=feature_channels,
            epochs=feature_epochs,
            batch_size=feature_batch_size,
            device=dev,
            seed=seed,
            units="physical",
            specs=spec_map,
        )
        description = (
            f"feature segmenter trained here on the real set (UNet channels {tuple(feature_channels)}, "
            f"{feature_epochs} epochs, seed {seed})"
        )
        trained_path = output_dir / "feature_segmenter.pt"
    elif isinstance(feature_network, (str, os.PathLike)):
        network = load_feature_segmenter(feature_network, map_location=dev)
        description = f"loaded from {os.fspath(feature_network)}"
    elif isinstance(feature_network, nn.Module):
        network = feature_network
        description = f"given {type(feature_network).__name__}"
    else:
        raise ValueError(
            f"feature_network must be None, a path or a torch.nn.Module, got {type(feature_network).__name__}."
        )
    timings["feature_network"] = time.perf_counter() - t0

    # ---- features, FID, MMD, memorisation
    t0 = time.perf_counter()

    def features(samples: list[dict[str, Any]], name: str) -> torch.Tensor:
        return extract_global_features(
            network, samples, feature_layers, image_keys, "physical", spec_map, batch_size, name=name
        )

    real_patients = patient_ids(real_samples, prefix="real")
    syn_patients = [f"synthetic-{i}" for i in range(len(syn_samples))]  # independent draws: one unit each
    train_patients = real_patients if real_train is None else patient_ids(train_samples, prefix="train")
    real_f = features(real_samples, "real set")
    syn_f = features(syn_samples, "synthetic set")
    train_f = real_f if real_train is None else features(train_samples, "real training set")
    fid_all = feature_fid(real_f, syn_f) if min(len(real_f), len(syn_f)) >= 2 else float("nan")
    mmd_all = mmd(real_f, syn_f) if min(len(real_f), len(syn_f)) >= 2 else float("nan")
    reference = _matched_reference(real_f, syn_f, seed, real_patients)
    several_train_patients = len(set(train_patients)) >= 2
    memo = memorisation_report(
        syn_f, train_f, percentiles, real_patients=train_patients if several_train_patients else None
    )
    timings["features"] = time.perf_counter() - t0
    log(f"features {tuple(real_f.shape[1:])}: FID {fid_all:.4f}, MMD² {mmd_all:.4f}")

    # ---- diversity
    t0 = time.perf_counter()
    if min(grid) < _MIN_MS_SSIM_SIZE:
        diversity: dict[str, Any] = {
            "skipped": f"spatial size {grid} is below the {_MIN_MS_SSIM_SIZE} pixels MS-SSIM needs per side"
        }
    elif len(syn_samples) < 2 or len(set(real_patients)) < 2:
        diversity = {"skipped": "needs at least 2 synthetic samples and 2 real patients"}
    else:
        diversity = diversity_report(
            syn_samples,
            real_samples,
            image_keys,
            spec_map,
            "physical",
            max_pairs=max_pairs,
            seed=seed,
            real_patients=real_patients,
        )
    timings["diversity"] = time.perf_counter() - t0

    # ---- pairedness
    t0 = time.perf_counter()
    paired, paired_per_sample = None, None
    if paired_keys is not None:
        real_summary, real_values = _pairedness_summary(
            real_samples, paired_keys, pair_spacing, real_patients
        )
        syn_summary, syn_values = _pairedness_summary(syn_samples, paired_keys, pair_spacing, syn_patients)
        paired = {"real": real_summary, "synthetic": syn_summary}
        paired_per_sample = {"real": real_values, "synthetic": syn_values}
    timings["pairedness"] = time.perf_counter() - t0

    # ---- write
    t0 = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    if trained_path is not None:
        save_feature_segmenter(network, trained_path)
    grid_path = None
    if grid_samples > 0:
        k = min(grid_samples, len(real_samples), len(syn_samples))
        shown = real_samples[:k] + syn_samples[:k]
        titles = [f"real {s.get('case_id') or i}" for i, s in enumerate(real_samples[:k])] + [
            f"synthetic {s.get('case_id') or i}" for i, s in enumerate(syn_samples[:k])
        ]
        grid_path = save_triplet_grid(
            shown, output_dir / "samples.png", keys=keys, specs=spec_map, titles=titles, samples_per_row=k
        )
    timings["write_png"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start

    def case_ids(samples: list[dict[str, Any]]) -> list[str]:
        return [str(s.get("case_id") or i) for i, s in enumerate(samples)]

    metrics: dict[str, Any] = {
        "num_real": len(real_samples),
        "num_synthetic": len(syn_samples),
        "num_real_train": len(train_samples),
        "num_real_patients": len(set(real_patients)),
        "num_synthetic_patients": len(set(syn_patients)),
        "num_real_train_patients": len(set(train_patients)),
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
        "spatial_size": list(grid),
        "spacing": pair_spacing,
        "device": str(dev),
        "real": real_info,
        "synthetic": syn_info,
        "real_train": None if real_train is None else train_info,
        "feature_network": {
            "description": description,
            "num_features": int(real_f.shape[1]),
            "layers": list(feature_layers) if feature_layers is not None else "unet encoder",
            "saved_to": None if trained_path is None else str(trained_path),
        },
        "fid": {"synthetic_vs_real": fid_all, "reference": None if reference is None else reference["fid"]},
        "mmd": {"synthetic_vs_real": mmd_all, "reference": None if reference is None else reference["mmd"]},
        "diversity": diversity,
        "pairedness": paired,
        "memorisation": {
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
        },
        "per_sample": {
            "real_case_ids": case_ids(real_samples),
            "real_patient_ids": real_patients,
            "synthetic_case_ids": case_ids(syn_samples),
            "pairedness": paired_per_sample,
            "nearest_real_distance": memo["nearest_real_distance"],
            "nearest_real_case_id": [case_ids(train_samples)[i] for i in memo["nearest_real_index"].tolist()],
            "flagged": memo["flagged"],
            "real_nn_distance": memo["real_nn_distance"],
        },
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
    metrics = _json_safe(metrics)
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
