"""Where the real data of a run comes from: ONE resolver for the built-in phantom, a HECKTOR folder, a datalist
JSON or in-memory samples, with one set of defaults.

- :func:`resolve_datalist`: a HECKTOR folder or a datalist JSON (or a list of dicts) as a list of case dicts;
- :func:`real_datalist`: the cases of one seeded patient-level split, or ``None`` for the phantom;
- :func:`real_samples`: the preprocessed samples of one split in physical units (or disjoint phantom cases);
- :data:`DEFAULT_SPATIAL_SIZE`, :data:`DEFAULT_SPACING`: the grid used when a caller gives none (the paper's
  128 x 128 slices at 2 mm, the phantom's default), restated nowhere else.

The bundle (``real_samples`` / ``real_datalist``), the evaluation (``monai_pairsynth.metrics.evaluation``) and
noise seeding in generation (``monai_pairsynth.inferers.generate``) all resolve their sources here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from monai_pairsynth.modalities import ModalitySpec, resolve_specs

from .hecktor import DatasetError, hecktor_datalist, load_datalist_json, split_by_patient
from .phantom import DEFAULT_SIZE_2D, PhantomDataset
from .preprocessing import (
    DenormalizeModalitiesd,
    LoadCaseImaged,
    preprocess_datalist,
    preprocessing_transforms,
)

__all__ = [
    "DEFAULT_SPACING",
    "DEFAULT_SPATIAL_SIZE",
    "PHANTOM",
    "PHANTOM_SPLIT_SEED_OFFSETS",
    "SPLITS",
    "BundleSettingError",
    "describe_sample_set",
    "load_samples",
    "real_datalist",
    "real_samples",
    "resolve_datalist",
]

#: the 2D grid of a sample when a caller gives none: the phantom's default size (the paper's 128 x 128)
DEFAULT_SPATIAL_SIZE: tuple[int, ...] = tuple(DEFAULT_SIZE_2D)
#: the pixel size in mm when a caller gives none (the paper's 2 mm)
DEFAULT_SPACING: float = 2.0
#: the source name of the built-in phantom
PHANTOM = "phantom"

#: phantom case seeds of each split are ``phantom_seed + offset + i``: the splits never share a case. The
#: train split starts at the diffusion training's own phantom seeds (a generator is trained on the real
#: training data), validation and test cases are never seen by any training.
PHANTOM_SPLIT_SEED_OFFSETS: dict[str, int] = {"train": 0, "val": 50_000, "test": 100_000}


SPLITS = ("train", "val", "test")


class BundleSettingError(ValueError):
    """A bundle setting (``dataset_dir``, ``synthetic_ratio``, a checkpoint, a pool file) is unusable."""


def _is_unset(value: Any) -> bool:
    return value is None or str(value).strip() in ("", "None", "null")


def resolve_datalist(
    source: str | os.PathLike | Sequence[Mapping[str, Any]],
    keys: Sequence[str] = ("ct", "pet", "label"),
    name: str = "data source",
) -> list[dict[str, Any]]:
    """The cases of a HECKTOR 2022 folder, a MONAI datalist JSON or a list of case dicts, as a list of dicts.

    Args:
        source: a folder (HECKTOR layout: ``imagesTr/``, ``labelsTr/``), a datalist JSON file (its
            ``"training"`` list; relative paths resolved against the file), or case dicts (copied).
        keys: the modality keys every entry needs.
        name: what the source is, for messages (``"seed_datalist"``).

    Raises:
        FileNotFoundError: a path that does not exist.
        DatasetError: a folder or file that is not a readable dataset (named).

    Example:
        >>> resolve_datalist([{"ct": "a.nii.gz", "pet": "b.nii.gz", "label": "c.nii.gz"}])[0]["pet"]
        'b.nii.gz'
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            return hecktor_datalist(path)
        if path.is_file():
            return load_datalist_json(path, keys=list(keys))
        raise FileNotFoundError(
            f"{name} {os.fspath(path)!r} does not exist (expected a datalist JSON or a HECKTOR folder)."
        )
    return [dict(item) for item in source]


def real_datalist(
    dataset_dir: str | os.PathLike | None,
    split: str = "train",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    keys: Sequence[str] = ("ct", "pet", "label"),
) -> list[dict[str, Any]] | None:
    """The real cases of one patient-level split, or ``None`` for the built-in phantom.

    Args:
        dataset_dir: ``None`` / ``""`` (the phantom default), a HECKTOR 2022 folder (``imagesTr/``,
            ``labelsTr/``) or a MONAI datalist JSON (its ``"training"`` list is split).
        split: ``"train"``, ``"val"`` or ``"test"`` of a seeded patient-level split.
        fractions: split fractions.
        seed: split seed.
        keys: modality keys of each datalist entry.

    Raises:
        BundleSettingError: the folder/file does not exist, holds no cases, or ``split`` is unknown.

    Example:
        >>> real_datalist(None) is None
        True
    """
    if _is_unset(dataset_dir):
        return None
    if split not in SPLITS:
        raise BundleSettingError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    path = Path(str(dataset_dir)).expanduser()
    if not path.exists():
        raise BundleSettingError(f"dataset_dir {str(path)!r} does not exist.")
    try:
        items = resolve_datalist(path, keys)
    except DatasetError as e:
        raise BundleSettingError(f"dataset_dir {str(path)!r}: {e}") from None
    if not items:
        raise BundleSettingError(f"dataset_dir {str(path)!r} holds no cases.")
    for i, item in enumerate(items):
        item.setdefault("patient_id", item.get("case_id", f"case-{i:04d}"))
    parts = split_by_patient(items, fractions=fractions, seed=seed)
    if not parts[split]:
        raise BundleSettingError(
            f"dataset_dir {str(path)!r}: the {split!r} split is empty ({len(items)} cases, fractions {tuple(fractions)})."
        )
    return parts[split]


def real_samples(
    dataset_dir: str | os.PathLike | None,
    split: str = "train",
    *,
    spatial_size: Sequence[int] = DEFAULT_SPATIAL_SIZE,
    spacing: float = DEFAULT_SPACING,
    num_phantom_cases: int = 16,
    phantom_seed: int = 0,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    keys: Sequence[str] = ("ct", "pet", "label"),
    label_key: str = "label",
    foreground_values: Sequence[float] | None = (1, 2),
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    fov_key: str | None = None,
) -> list[dict[str, Any]]:
    """The samples of one split in physical units (HU, SUV, {0, 1}): ``[{key: MetaTensor (1, H, W), "case_id"}]``.

    With no ``dataset_dir``: ``num_phantom_cases`` phantom cases with seeds
    ``phantom_seed + PHANTOM_SPLIT_SEED_OFFSETS[split] + i`` (so the splits are disjoint). With a HECKTOR folder
    or datalist JSON: the cases of the seeded patient-level split, preprocessed like the diffusion training data
    (:func:`monai_pairsynth.data.preprocessing_transforms`: RAS, PET onto the CT grid, ``spacing``, the 2D
    tumour slices, a centre-of-mass crop to ``spatial_size``) and decoded back to physical units; every slice
    keeps its ``case_id``.

    Args:
        dataset_dir: ``None`` for the phantom, else a HECKTOR folder or a datalist JSON.
        split: ``"train"``, ``"val"`` or ``"test"``.
        spatial_size: ``(H, W)`` of a sample.
        spacing: pixel size in mm.
        num_phantom_cases: phantom cases of this split.
        phantom_seed: base seed of the phantom splits.
        seed: patient-level split seed for real data.
        fractions: split fractions for real data.
        keys: modality keys (images and the mask).
        label_key: the tumour mask key.
        foreground_values: label values merged into the tumour (HECKTOR: GTVp 1 and GTVn 2); ``None`` requires
            binary labels.
        specs: the modality specs real data is normalised and decoded with (default ``DEFAULT_MODALITY_SPECS``;
            e.g. :func:`monai_pairsynth.modalities.modality_specs_for` with ``pet_intensity="log"`` keeps PET up to
            60 SUV instead of clipping it at 15). Not used by the phantom.
        fov_key: real data only: each sample also carries its {0, 1} field-of-view mask under this key (1 where
            every image was scanned, 0 where the crop padded, :class:`~monai_pairsynth.data.FieldOfViewd`), which
            the metrics use to leave the padding out. ``None`` (default): no mask. Phantom samples never have one.

    Raises:
        BundleSettingError: an unusable ``dataset_dir`` or a file that cannot be read or preprocessed (named).

    Example:
        >>> s = real_samples(None, "test", spatial_size=(32, 32), spacing=8.0, num_phantom_cases=2)
        >>> len(s), s[0]["case_id"], tuple(s[0]["pet"].shape)
        (2, 'PHANTOM-100000', (1, 32, 32))
    """
    if split not in SPLITS:
        raise BundleSettingError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    keys = [str(k) for k in keys]
    spec_map = resolve_specs({k: (specs or {}).get(k) for k in keys})
    size = tuple(int(s) for s in spatial_size)
    items = real_datalist(dataset_dir, split, fractions=fractions, seed=seed, keys=keys)
    if items is None:
        if sorted(keys) != ["ct", "label", "pet"]:
            raise BundleSettingError(f"the built-in phantom has keys ['ct', 'pet', 'label'], not {keys}.")
        if isinstance(num_phantom_cases, bool) or int(num_phantom_cases) < 1:
            raise BundleSettingError(
                f"the number of phantom {split} cases must be >= 1, got {num_phantom_cases!r}."
            )
        ds = PhantomDataset(
            int(num_phantom_cases),
            base_seed=int(phantom_seed) + PHANTOM_SPLIT_SEED_OFFSETS[split],
            spatial_size=size,
            spacing=float(spacing),
        )
        return [{**{k: ds[i][k] for k in keys}, "case_id": ds[i]["case_id"]} for i in range(len(ds))]
    transform = preprocessing_transforms(
        keys,
        label_key=label_key,
        spacing=float(spacing),
        spatial_size=size,
        specs=spec_map,
        foreground_values=None if foreground_values is None else tuple(foreground_values),
        fov_key=None if _is_unset(fov_key) else str(fov_key),
    )
    try:
        slices = preprocess_datalist(items, transform)
    except DatasetError as err:
        raise BundleSettingError(f"dataset_dir {str(dataset_dir)!r}, {split} split: {err}") from None
    if not slices:
        raise BundleSettingError(
            f"dataset_dir {str(dataset_dir)!r}: the {split} split gave no tumour slice after preprocessing."
        )
    decode = DenormalizeModalitiesd(keys, spec_map)
    out = []
    for i, s in enumerate(slices):
        sample = decode({k: s[k] for k in keys})
        if not _is_unset(fov_key):
            sample[str(fov_key)] = s[str(fov_key)]
        sample["case_id"] = str(s.get("case_id", f"{split}-{i:05d}"))
        out.append(sample)
    return out


# ---------------------------------------------------------------------------------- sets of triplets
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


def _isotropic_spacing(spacing: float | Sequence[float] | None, what: str) -> float | None:
    """The one positive spacing of an isotropic grid (``None`` for none); raises ``ValueError`` otherwise."""
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


def _path_samples(
    path: Path,
    keys: list[str],
    label_key: str,
    name: str,
    spatial_size: Sequence[int] | None,
    spacing: float | Sequence[float] | None,
    spec_map: dict[str, ModalitySpec],
    preprocessed: bool,
    foreground_values: Sequence[float] | None,
    info: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, ModalitySpec]]:
    """The samples of a HECKTOR folder or a datalist JSON (generated: final samples; real: preprocessed)."""
    generation = None
    if path.is_dir():
        info["kind"] = "hecktor"
    else:
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the {name} datalist JSON {str(path)!r}: {err}") from err
        generation = content.get("generation") if isinstance(content, Mapping) else None
        if isinstance(content, Mapping) and isinstance(content.get("modalities"), Mapping):
            recorded = content["modalities"]
            spec_map = resolve_specs({k: recorded.get(k, spec_map[k]) for k in keys})
        info["kind"] = "generated" if generation is not None else "datalist"
        if generation is not None and generation.get("spacing") is not None:
            info["spacing"] = [float(v) for v in generation["spacing"]]
    items = resolve_datalist(path, keys, name)
    if generation is not None or preprocessed:
        return _load_final_files(items, keys, name), spec_map
    size = tuple(int(s) for s in (spatial_size or DEFAULT_SPATIAL_SIZE))
    samples = _preprocess(
        items,
        keys,
        label_key,
        size,
        spacing or DEFAULT_SPACING,
        spec_map,
        load=True,
        foreground_values=foreground_values,
    )
    return samples, spec_map


def describe_sample_set(
    samples: list[dict[str, Any]],
    info: dict[str, Any],
    keys: Sequence[str],
    spec_map: Mapping[str, ModalitySpec],
    name: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Check that a loaded set is non-empty and on one grid; fill ``info`` (size, spacing, count, specs)."""
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


def load_samples(
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
    """Read a set of triplets (phantom | HECKTOR folder | datalist JSON | in-memory) as samples in physical units.

    Args:
        source: ``"phantom"``, a path (a generated ``datalist.json``, a MONAI datalist JSON, a HECKTOR folder),
            or an in-memory dataset / list of sample dicts / batched dict / ``DataLoader`` (physical units).
        keys: modality keys of a triplet.
        label_key: the mask key (for preprocessing real volumes).
        name: what the set is, for messages (``"real set"``).
        num_phantom, phantom_seed: for ``"phantom"``: number of cases and the seed of case 0.
        spatial_size, spacing: the grid for ``"phantom"`` and for preprocessed real volumes (default
            :data:`DEFAULT_SPATIAL_SIZE` at :data:`DEFAULT_SPACING`).
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

    Example:
        >>> samples, info = load_samples("phantom", num_phantom=2, spatial_size=(32, 32), spacing=8.0)
        >>> len(samples), info["kind"], info["spatial_size"]
        (2, 'phantom', [32, 32])
    """
    keys = [str(k) for k in keys]
    spec_map = resolve_specs({k: (specs or {}).get(k) for k in keys})
    info: dict[str, Any] = {
        "source": str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    }
    if isinstance(source, str) and source == PHANTOM:
        if sorted(keys) != ["ct", "label", "pet"]:
            raise ValueError(f"the phantom has keys ['ct', 'pet', 'label']; cannot produce keys {keys}.")
        size = tuple(int(s) for s in (spatial_size or DEFAULT_SPATIAL_SIZE))
        mm = _isotropic_spacing(spacing, "the phantom")
        ds = PhantomDataset(
            int(num_phantom),
            base_seed=int(phantom_seed),
            spatial_dims=len(size),
            spatial_size=size,
            spacing=DEFAULT_SPACING if mm is None else mm,
        )
        samples = [_plain_sample(ds[i], keys, name, i) for i in range(len(ds))]  # (iterating would not stop)
        info.update(kind="phantom", seed=int(phantom_seed))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"the {name} source {str(path)!r} does not exist (expected 'phantom', a datalist "
                "JSON, a HECKTOR folder or a SynthesisPool .pt file)."
            )
        samples, spec_map = _path_samples(
            path,
            keys,
            label_key,
            name,
            spatial_size,
            spacing,
            spec_map,
            preprocessed,
            foreground_values,
            info,
        )
        samples = [_plain_sample(s, keys, name, i) for i, s in enumerate(samples)]
    else:
        samples = _as_sample_list(source, keys, name)
        info["kind"] = "in-memory"
    return describe_sample_set(samples, info, keys, spec_map, name)
