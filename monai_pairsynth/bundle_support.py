"""Helpers that the bundle configs (``bundles/pet_ct_pairsynth/configs/*.json``) call by dotted path.

The bundle's configs stay ordinary MONAI configs; whatever is more than wiring lives here:

- **settings checks**, run in each config's ``initialize`` section, so a bad ``dataset_dir``, ratio, generator
  checkpoint or pool file stops the bundle with one clear line before anything is trained or written
  (:func:`install_one_line_errors`, :func:`check_dataset_dir`, :func:`check_synthetic_ratio`,
  :func:`check_generator_checkpoint`, :func:`check_pool_file`);
- **real data**: the patient-level split of a HECKTOR folder / datalist JSON (:func:`real_datalist`) and the
  preprocessed samples of one split, or disjoint phantom cases by default (:func:`real_samples`);
- **generation**: the quality filter trained on the real training split (:func:`train_quality_filter`), a
  :class:`~monai_pairsynth.mixing.synthesis_pool.SynthesisPool` filled through a ``DiffusionPoolSource`` and the
  filter, sharded across ``torch.distributed`` ranks (:func:`build_synthesis_pool`), the mixing pool of a
  segmentation run (:func:`mixing_pool`) and the files ``generate.json`` writes (:func:`save_generation_outputs`);
- **training**: a progress-bar handler (:class:`TrainingProgressBar`) and DDP helpers (:func:`is_main_process`,
  :func:`distributed_trainer`);
- **evaluation**: test Dice per case of a segmentation checkpoint (:func:`segmentation_test_dice`) and the
  results files and table (:func:`write_evaluation_report`, :func:`format_results_table`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from monai_pairsynth.data.hecktor import DatasetError, hecktor_datalist, load_datalist_json, split_by_patient
from monai_pairsynth.data.validation import check_allocation, check_ratio
from monai_pairsynth.schedulers import DEFAULT_SAMPLER, DEFAULT_SAMPLER_STEPS
from monai_pairsynth.utils import atomic_write_json, atomic_write_text

__all__ = [
    "PHANTOM_SPLIT_SEED_OFFSETS",
    "BundleSettingError",
    "FilterMode",
    "TrainingProgressBar",
    "build_synthesis_pool",
    "check_dataset_dir",
    "check_files_exist",
    "check_generator_checkpoint",
    "check_mixing_settings",
    "check_pool_file",
    "check_synthetic_ratio",
    "distributed_trainer",
    "export_pool_nifti",
    "format_results_table",
    "install_one_line_errors",
    "is_main_process",
    "merge_pool_states",
    "mixing_pool",
    "real_datalist",
    "real_samples",
    "save_generation_outputs",
    "segmentation_test_dice",
    "train_quality_filter",
    "write_evaluation_report",
]

logger = logging.getLogger(__name__)

#: phantom case seeds of each split are ``phantom_seed + offset + i``: the splits never share a case. The
#: train split starts at the diffusion training's own phantom seeds (a generator is trained on the real
#: training data), validation and test cases are never seen by any training.
PHANTOM_SPLIT_SEED_OFFSETS: dict[str, int] = {"train": 0, "val": 50_000, "test": 100_000}

_SPLITS = ("train", "val", "test")


# ================================================================================================ settings
class BundleSettingError(ValueError):
    """A bundle setting (``dataset_dir``, ``synthetic_ratio``, a checkpoint, a pool file) is unusable."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _user_error(exc: BaseException | None) -> BaseException | None:
    """The first :class:`BundleSettingError` / ``DatasetError`` in an exception's cause chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (BundleSettingError, DatasetError)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def install_one_line_errors() -> None:
    """Print a bad-setting error as one line instead of MONAI's long traceback, when nothing catches it.

    ``python -m monai.bundle run`` re-raises any failure of a config expression as
    ``RuntimeError("Failed to evaluate ConfigExpression ...")`` under a traceback of some 50 lines that hides the
    reason. Called first in a config's ``initialize`` section, this installs a ``sys.excepthook`` that, for an
    uncaught exception caused by a :class:`BundleSettingError` or a
    :class:`~monai_pairsynth.data.hecktor.DatasetError`, prints only ``"<ErrorType>: <message>"`` to stderr (the
    process still exits with status 1). Every other exception keeps the usual traceback, and callers in Python
    (``monai.bundle.run(...)``) still receive the exception. Installing twice is a no-op.
    """
    if getattr(sys.excepthook, "_monai_pairsynth_one_line", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        err = _user_error(exc)
        if err is None:
            previous(exc_type, exc, tb)
            return
        print(f"{type(err).__name__}: {_one_line(str(err))}", file=sys.stderr, flush=True)

    hook._monai_pairsynth_one_line = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _is_unset(value: Any) -> bool:
    return value is None or str(value).strip() in ("", "None", "null")


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
    if split not in _SPLITS:
        raise BundleSettingError(f"split must be one of {list(_SPLITS)}, got {split!r}.")
    path = Path(str(dataset_dir)).expanduser()
    if not path.exists():
        raise BundleSettingError(f"dataset_dir {str(path)!r} does not exist.")
    try:
        if path.is_dir():
            items = hecktor_datalist(path)
        else:
            items = load_datalist_json(path, keys=keys)
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


def check_dataset_dir(
    dataset_dir: str | os.PathLike | None,
    splits: Sequence[str] = ("train",),
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    keys: Sequence[str] = ("ct", "pet", "label"),
) -> dict[str, int]:
    """Check that ``dataset_dir`` is unset (phantom) or gives a non-empty patient-level split for each of ``splits``.

    Returns:
        ``{split: number of cases}`` (empty for the phantom).

    Raises:
        BundleSettingError: as :func:`real_datalist`.

    Example:
        >>> check_dataset_dir(None)
        {}
    """
    counts: dict[str, int] = {}
    for split in splits:
        items = real_datalist(dataset_dir, split, fractions=fractions, seed=seed, keys=keys)
        if items is None:
            return {}
        counts[split] = len(items)
    return counts


def check_synthetic_ratio(ratio: Any) -> float:
    """Validate the synthetic mixing ratio r = N_synthetic / N_real (0 = real only, at most
    :data:`~monai_pairsynth.data.validation.MAX_SYNTHETIC_RATIO`, 100).

    Example:
        >>> check_synthetic_ratio(0.5)
        0.5
    """
    try:
        return check_ratio(ratio, "synthetic_ratio")
    except ValueError as err:
        raise BundleSettingError(str(err)) from None


def _size_text(size: Sequence[int] | None) -> str:
    return "unknown size" if size is None else "x".join(str(int(s)) for s in size)


def _isotropic(spacing: Any) -> float | None:
    if spacing is None:
        return None
    values = [float(spacing)] if isinstance(spacing, (int, float)) else [float(v) for v in spacing]
    return values[0] if values and all(abs(v - values[0]) < 1e-6 for v in values) else None


def check_generator_checkpoint(
    path: str | os.PathLike | None,
    spatial_size: Sequence[int] | None = None,
    spacing: float | None = None,
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check that a diffusion checkpoint exists, is readable and matches the configured grid and modalities.

    Reading a sampling checkpoint takes a fraction of a second (the weights are not put into a network).

    Args:
        path: checkpoint written by ``train_diffusion.json`` (full or slim).
        spatial_size: the configured ``(H, W)``; ``None`` skips the check.
        spacing: the configured spacing in mm; ``None`` skips the check.
        modalities: the configured modality keys; ``None`` skips the check.

    Returns:
        ``{"path", "spatial_size", "spacing", "modalities", "spatial_dims", "model_config"}`` of the checkpoint.

    Raises:
        BundleSettingError: a missing or unreadable file, or a checkpoint of another configuration (the message
            names what differs and the overrides that would match it).
    """
    from monai_pairsynth.engines import read_paired_checkpoint

    if _is_unset(path):
        raise BundleSettingError(
            "diffusion_checkpoint is not set; make one with configs/train_diffusion.json or pass --pool_file."
        )
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise BundleSettingError(
            f"diffusion_checkpoint {str(p)!r} does not exist; train one with: python -m monai.bundle run "
            "--config_file configs/train_diffusion.json --export_path <file> (see docs/README.md)."
        )
    try:
        ckpt = read_paired_checkpoint(p)
    except (ValueError, OSError) as err:
        raise BundleSettingError(f"diffusion_checkpoint {str(p)!r} is unusable: {err}") from None
    config = dict(ckpt.get("model_config") or {})
    info = {
        "path": str(p),
        "spatial_size": None if ckpt.get("spatial_size") is None else [int(s) for s in ckpt["spatial_size"]],
        "spacing": _isotropic(ckpt.get("spacing")),
        "modalities": list(config.get("modalities") or []),
        "spatial_dims": int(config.get("spatial_dims", 2)),
        "model_config": config,
    }
    problems = []
    if info["spatial_dims"] != 2:
        problems.append(f"it is a {info['spatial_dims']}D model but the bundle works on 2D slices")
    if spatial_size is not None and info["spatial_size"] != [int(s) for s in spatial_size]:
        problems.append(
            f"it was trained at {_size_text(info['spatial_size'])}, this run uses {_size_text(spatial_size)}"
        )
    if spacing is not None and (info["spacing"] is None or abs(info["spacing"] - float(spacing)) > 1e-6):
        problems.append(f"it was trained at {info['spacing']} mm, this run uses {float(spacing)} mm")
    if modalities is not None and sorted(info["modalities"]) != sorted(modalities):
        problems.append(f"it generates {info['modalities']}, this run uses {list(modalities)}")
    if problems:
        hint = ""
        if info["spatial_size"] is not None and info["spacing"] is not None:
            hint = (
                f' (to use it: --spatial_size "{info["spatial_size"]}" --spacing {info["spacing"]}'
                f"{' --modalities ' + repr(info['modalities']) if modalities is not None and sorted(info['modalities']) != sorted(modalities) else ''})"
            )
        raise BundleSettingError(
            f"diffusion_checkpoint {str(p)!r} is of another configuration: "
            + "; ".join(problems)
            + hint
            + "."
        )
    return info


def check_pool_file(
    path: str | os.PathLike | None,
    spatial_size: Sequence[int] | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check that a pool file written by ``generate.json`` exists, is non-empty and fits the configured grid.

    Returns:
        ``{"path", "size", "spatial_shape", "keys", "spacing"}``.

    Raises:
        BundleSettingError: missing/unreadable file, an empty pool, another spatial size or other keys.
    """
    from monai_pairsynth.mixing.synthesis_pool import SynthesisPool

    if _is_unset(path):
        raise BundleSettingError("pool_file is not set.")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise BundleSettingError(
            f"pool_file {str(p)!r} does not exist; make one with configs/generate.json (it writes <output_dir>/pool.pt)."
        )
    try:
        pool = SynthesisPool.load(p)
    except (ValueError, OSError, KeyError) as err:
        raise BundleSettingError(f"pool_file {str(p)!r} is unusable: {err}") from None
    info = {
        "path": str(p),
        "size": len(pool),
        "spatial_shape": list(pool.spatial_shape),
        "keys": list(pool.keys),
        "spacing": list(pool.spacing),
    }
    if len(pool) == 0:
        raise BundleSettingError(f"pool_file {str(p)!r} holds no triplets.")
    if spatial_size is not None and list(pool.spatial_shape) != [int(s) for s in spatial_size]:
        raise BundleSettingError(
            f"pool_file {str(p)!r} holds {_size_text(pool.spatial_shape)} triplets, this run uses "
            f"{_size_text(spatial_size)}."
        )
    if keys is not None and sorted(pool.keys) != sorted(keys):
        raise BundleSettingError(
            f"pool_file {str(p)!r} holds keys {list(pool.keys)}, this run uses {list(keys)}."
        )
    return info


def check_files_exist(paths: Mapping[str, str | os.PathLike | None], hint: str = "") -> dict[str, str]:
    """Check that every set path of ``{setting name: path}`` is an existing file (unset ones are skipped).

    Returns:
        ``{setting name: path}`` of the set ones.

    Raises:
        BundleSettingError: naming the first missing file's setting, the path and ``hint``.

    Example:
        >>> check_files_exist({"baseline_checkpoint": None})
        {}
    """
    found = {}
    for name, path in paths.items():
        if _is_unset(path):
            continue
        p = Path(str(path)).expanduser()
        if not p.is_file():
            raise BundleSettingError(f"{name} {str(p)!r} does not exist" + (f"; {hint}." if hint else "."))
        found[name] = str(p)
    return found


def check_mixing_settings(
    synthetic_ratio: Any,
    pool_file: str | os.PathLike | None = None,
    diffusion_checkpoint: str | os.PathLike | None = None,
    spatial_size: Sequence[int] | None = None,
    spacing: float | None = None,
    keys: Sequence[str] | None = None,
    pool_size: int | None = None,
) -> float:
    """Check the synthetic-mixing settings of a segmentation run before anything is trained.

    ``synthetic_ratio`` must be a number in ``[0, 100]`` (:data:`~monai_pairsynth.data.validation.MAX_SYNTHETIC_RATIO`);
    when it is above 0, ``pool_file`` (if set) must be a pool of the configured grid and keys, else
    ``diffusion_checkpoint`` must be a generator of the configured grid, spacing and modalities, and a set
    ``pool_size`` must fit in the memory available. Nothing is checked about the generator when the ratio is 0
    (real only).

    Returns:
        the ratio as a float.

    Raises:
        BundleSettingError: naming the setting and the value.

    Example:
        >>> check_mixing_settings(0, diffusion_checkpoint="/no/such/file.pt")
        0.0
    """
    ratio = check_synthetic_ratio(synthetic_ratio)
    if ratio > 0 and not _is_unset(pool_size) and spatial_size is not None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise BundleSettingError(
                f"pool_size must be an integer >= 1 (or null: r x N_real), got {pool_size!r}."
            )
        n_keys = len(keys) if keys is not None else 3
        try:  # the pool is allocated in full before generation starts: refuse one that cannot fit, now
            check_allocation(
                int(pool_size) * n_keys * math.prod(int(s) for s in spatial_size) * 4,
                "pool_size",
                pool_size,
                f"{n_keys} modalities x {_size_text(spatial_size)} float32 voxels per triplet",
                shared=True,
            )
        except ValueError as err:
            raise BundleSettingError(str(err)) from None
    if ratio > 0:
        if not _is_unset(pool_file):
            check_pool_file(pool_file, spatial_size=spatial_size, keys=keys)
        else:
            check_generator_checkpoint(
                diffusion_checkpoint, spatial_size=spatial_size, spacing=spacing, modalities=keys
            )
    return ratio


# ================================================================================================ real data
def real_samples(
    dataset_dir: str | os.PathLike | None,
    split: str = "train",
    *,
    spatial_size: Sequence[int] = (64, 64),
    spacing: float = 4.0,
    num_phantom_cases: int = 16,
    phantom_seed: int = 0,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    keys: Sequence[str] = ("ct", "pet", "label"),
    label_key: str = "label",
    foreground_values: Sequence[float] | None = (1, 2),
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

    Raises:
        BundleSettingError: an unusable ``dataset_dir`` or a file that cannot be read or preprocessed (named).

    Example:
        >>> s = real_samples(None, "test", spatial_size=(32, 32), spacing=8.0, num_phantom_cases=2)
        >>> len(s), s[0]["case_id"], tuple(s[0]["pet"].shape)
        (2, 'PHANTOM-100000', (1, 32, 32))
    """
    from monai_pairsynth.data import (
        DenormalizeModalitiesd,
        PhantomDataset,
        preprocess_datalist,
        preprocessing_transforms,
    )

    if split not in _SPLITS:
        raise BundleSettingError(f"split must be one of {list(_SPLITS)}, got {split!r}.")
    keys = [str(k) for k in keys]
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
        foreground_values=None if foreground_values is None else tuple(foreground_values),
    )
    try:
        slices = preprocess_datalist(items, transform)
    except DatasetError as err:
        raise BundleSettingError(f"dataset_dir {str(dataset_dir)!r}, {split} split: {err}") from None
    if not slices:
        raise BundleSettingError(
            f"dataset_dir {str(dataset_dir)!r}: the {split} split gave no tumour slice after preprocessing."
        )
    decode = DenormalizeModalitiesd(keys)
    out = []
    for i, s in enumerate(slices):
        sample = decode({k: s[k] for k in keys})
        sample["case_id"] = str(s.get("case_id", f"{split}-{i:05d}"))
        out.append(sample)
    return out


# ================================================================================================ generation
class FilterMode(str, Enum):
    """How the quality filter admits generated triplets into a pool.

    - ``pool``: the method's selection, each source call draws ``4k`` candidates and keeps the best ``k``
      (certainty cut to ``2k``, then the ``k`` closest to the real feature centroid), so the cost is a fixed
      4 candidates per kept triplet;
    - ``streaming``: each candidate is judged alone against thresholds calibrated on the real data (the
      cost depends on the acceptance rate);
    - ``none``: no filter.
    """

    POOL = "pool"
    STREAMING = "streaming"
    NONE = "none"


def _filter_mode(mode: FilterMode | str) -> FilterMode:
    try:
        return FilterMode(mode)
    except ValueError:
        raise BundleSettingError(
            f"filter_mode must be one of {[m.value for m in FilterMode]}, got {mode!r}."
        ) from None


def train_quality_filter(
    real_data: Sequence[Mapping[str, Any]],
    *,
    image_keys: Sequence[str] = ("ct", "pet"),
    label_key: str = "label",
    segmenter_path: str | os.PathLike | None = None,
    channels: Sequence[int] = (8, 16, 32, 64),
    epochs: int = 30,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    dropout: float = 0.2,
    mc_passes: int = 4,
    num_strata: int = 1,
    distance_quantile: float = 0.95,
    certainty_quantile: float = 0.05,
    device: str | torch.device | None = None,
    seed: int = 0,
    verbose: bool = False,
) -> Any:
    """A :class:`~monai_pairsynth.quality.FeatureCentroidFilter` fitted on the real training samples.

    Its feature network is a small tumour segmenter trained here on ``real_data``
    (:func:`~monai_pairsynth.quality.train_feature_segmenter`, seeded), or loaded from ``segmenter_path``.

    Args:
        real_data: the real training samples in physical units (:func:`real_samples`).
        image_keys, label_key: network input modalities and the tumour mask.
        segmenter_path: a segmenter saved with :func:`~monai_pairsynth.quality.save_feature_segmenter` to use
            instead of training one.
        channels, epochs, batch_size, learning_rate, dropout: the segmenter and its training.
        mc_passes, num_strata, distance_quantile, certainty_quantile: the filter (see its docs).
        device: where the segmenter trains and scores.
        seed: seeds the segmenter and the filter's dropout masks.
        verbose: print the segmenter's loss per epoch.

    Returns:
        the fitted filter (``units="physical"``); ``filter.feature_network`` is the segmenter.
    """
    from monai_pairsynth.quality import FeatureCentroidFilter, load_feature_segmenter, train_feature_segmenter

    real_data = list(real_data)
    if len(real_data) < 2:
        raise BundleSettingError(
            f"the quality filter needs at least 2 real training samples, got {len(real_data)}."
        )
    device = torch.device(device) if device is not None else None
    if not _is_unset(segmenter_path):
        if not Path(str(segmenter_path)).is_file():
            raise BundleSettingError(f"segmenter_path {str(segmenter_path)!r} does not exist.")
        network = load_feature_segmenter(str(segmenter_path), map_location=device or "cpu")
    else:
        network = train_feature_segmenter(
            real_data,
            spatial_dims=len(real_data[0][label_key].shape) - 1,
            image_keys=list(image_keys),
            label_key=label_key,
            channels=tuple(int(c) for c in channels),
            dropout=float(dropout),
            epochs=int(epochs),
            batch_size=int(batch_size),
            learning_rate=float(learning_rate),
            device=device,
            seed=int(seed),
            units="physical",
            verbose=verbose,
        )
    quality_filter = FeatureCentroidFilter(
        network,
        image_keys=list(image_keys),
        label_key=label_key,
        mc_passes=int(mc_passes),
        num_strata=int(num_strata),
        distance_quantile=float(distance_quantile),
        certainty_quantile=float(certainty_quantile),
        units="physical",
        seed=int(seed),
    )
    return quality_filter.fit(real_data)


class _ProgressSource:
    """Calls a pool source in chunks of its ``batch_size`` and shows a tqdm bar over generated triplets."""

    def __init__(self, source: Any, total: int, desc: str, enabled: bool) -> None:
        from tqdm import tqdm

        self.source = source
        self.chunk = int(getattr(source, "batch_size", 16))
        # what the pool reads from its source
        for name in ("spatial_shape", "spacing", "specs", "device"):
            setattr(self, name, getattr(source, name, None))
        self.bar = tqdm(total=total, desc=desc, unit="triplet", disable=not enabled, dynamic_ncols=True)

    def __call__(self, num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        parts: list[Mapping[str, torch.Tensor]] = []
        for start in range(0, num, self.chunk):
            n = min(self.chunk, num - start)
            parts.append(self.source(n, generator))
            if self.bar.total is not None and self.bar.n + n > self.bar.total:
                self.bar.total = self.bar.n + n
            self.bar.update(n)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        self.bar.close()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """``True`` outside ``torch.distributed`` and on rank 0 (where files are written and logs shown).

    Example:
        >>> is_main_process()
        True
    """
    return _world()[0] == 0


def _share(total: int, rank: int, world: int) -> int:
    return total // world + (1 if rank < total % world else 0)


def merge_pool_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Concatenate :meth:`SynthesisPool.state_dict` s of the same grid into one (the shards of several ranks).

    Triplets keep their order (state 0 first), ages are renumbered in that order, running counts are summed.
    The result loads with :meth:`SynthesisPool.load` once saved.

    Raises:
        ValueError: no states, or states of different keys, spatial shapes, spacings, specs or storage units.
    """
    states = [s for s in states]
    if not states:
        raise ValueError("merge_pool_states needs at least one pool state.")
    first = states[0]
    for i, s in enumerate(states[1:], start=1):
        for field in ("format", "version", "keys", "spatial_shape", "spacing", "specs", "storage"):
            if s.get(field) != first.get(field):
                raise ValueError(
                    f"pool state {i} has {field}={s.get(field)!r}, state 0 has {first.get(field)!r}; cannot merge."
                )
    size = sum(int(s["size"]) for s in states)
    data = {k: torch.cat([s["data"][k] for s in states]) for k in first["keys"]}
    stats: dict[str, Any] = {"generated": 0, "accepted": 0, "surplus": 0, "generation_seconds": 0.0}
    rejected: dict[str, int] = {}
    failures: dict[str, int] = {}
    for s in states:
        for name in stats:
            stats[name] += s["stats"][name]
        for target, name in ((rejected, "rejected"), (failures, "failures")):
            for reason, count in dict(s["stats"][name]).items():
                target[reason] = target.get(reason, 0) + int(count)
    stats["rejected"], stats["failures"] = rejected, failures
    return {
        **{k: v for k, v in first.items() if k not in ("size", "data", "stamps", "stats", "capacity")},
        "capacity": max(size, 1),
        "size": size,
        "data": data,
        "stamps": torch.arange(size, dtype=torch.int64),
        "stats": stats,
    }


def _pool_from_state(state: Mapping[str, Any]) -> Any:
    from monai_pairsynth.mixing.synthesis_pool import SynthesisPool

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.pt"
        torch.save(dict(state), path)
        return SynthesisPool.load(path)


def build_synthesis_pool(
    diffusion_checkpoint: str | os.PathLike,
    quality_filter: Any | None,
    pool_size: int,
    *,
    filter_mode: FilterMode | str = FilterMode.POOL,
    scheduler: str = DEFAULT_SAMPLER,
    num_inference_steps: int = DEFAULT_SAMPLER_STEPS,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    seed: int = 0,
    keep_per_call: int = 64,
    progress: bool = True,
) -> Any:
    """Fill a :class:`~monai_pairsynth.mixing.synthesis_pool.SynthesisPool` of ``pool_size`` filtered triplets.

    Triplets come from a :class:`~monai_pairsynth.inferers.DiffusionPoolSource` on the checkpoint and
    pass ``quality_filter`` in ``filter_mode`` (:class:`FilterMode`). Under ``torch.distributed`` each rank
    generates its share (``pool_size / world_size``, with a rank-dependent seed), and the shards are gathered so
    that every rank returns the same full pool (rank order).

    Args:
        diffusion_checkpoint: the generator.
        quality_filter: a fitted filter (:func:`train_quality_filter`), or ``None`` with ``filter_mode="none"``.
        pool_size: triplets to keep (>= 1).
        filter_mode: ``"pool"`` (4 candidates per kept triplet), ``"streaming"`` or ``"none"``.
        scheduler, num_inference_steps: the sampler (default: the package default,
            ``monai_pairsynth.schedulers.DEFAULT_SAMPLER`` / ``DEFAULT_SAMPLER_STEPS``, which the bundle's configs
            take too; ``"ddpm"`` with 100 steps is the robust choice for a young checkpoint, see docs/sampling.md).
        batch_size: triplets per network call.
        device: sampling device (default CUDA when available).
        seed: generation seed (rank ``r`` uses ``seed + 7919 r``).
        keep_per_call: pool mode keeps at most this many triplets per source call (of 4x as many candidates).
        progress: show a progress bar over generated triplets (rank 0 only).

    Returns:
        the filled pool (physical units); ``pool.stats`` counts generated, accepted and rejected triplets (summed
        over ranks) and the generation time.
    """
    from monai_pairsynth.inferers.pool_source import DiffusionPoolSource
    from monai_pairsynth.mixing.synthesis_pool import SynthesisPool

    mode = _filter_mode(filter_mode)
    if isinstance(pool_size, bool) or int(pool_size) < 1:
        raise BundleSettingError(f"pool_size must be an integer >= 1, got {pool_size!r}.")
    if mode != FilterMode.NONE and quality_filter is None:
        raise BundleSettingError(
            f"filter_mode {mode.value!r} needs a quality filter (or use filter_mode 'none')."
        )
    rank, world = _world()
    share = _share(int(pool_size), rank, world)
    device = torch.device(device) if device is not None else None
    source = DiffusionPoolSource(
        str(diffusion_checkpoint),
        num_inference_steps=int(num_inference_steps),
        scheduler=str(scheduler),
        batch_size=int(batch_size),
        device=device,
    )
    filter_kwargs: dict[str, Any] | None = None
    request_size = None
    if mode == FilterMode.POOL:
        calls = max(1, math.ceil(share / max(1, int(keep_per_call))))
        keep = max(1, math.ceil(share / calls))
        # select(mode="pool") keeps r·N of 4·r·N candidates; with r = 1 and N = keep it keeps `keep` of 4·keep
        filter_kwargs = {"mode": "pool", "ratio": 1.0, "num_real": keep}
        request_size = 4 * keep
        expected = 4 * share
    elif mode == FilterMode.STREAMING:
        filter_kwargs = {"mode": "streaming"}
        expected = share
    else:
        expected = share
    wrapped = _ProgressSource(
        source,
        total=expected,
        desc=f"generating (rank {rank})" if world > 1 else "generating",
        enabled=bool(progress) and rank == 0,
    )
    pool = SynthesisPool(
        max(share, 1),
        keys=source.keys,
        source=wrapped,
        quality_filter=None if mode == FilterMode.NONE else quality_filter,
        filter_kwargs=filter_kwargs,
        seed=int(seed) + 7919 * rank,
        request_size=request_size,
        max_attempts=50,
    )
    try:
        if share > 0:
            pool.fill()
    finally:
        wrapped.close()
    if world == 1:
        return pool
    logger.info(
        "rank %d/%d generated its share: %d of %d triplets", rank, world, len(pool) if share else 0, pool_size
    )
    state = pool.state_dict()
    if share == 0:
        state = {
            **state,
            "size": 0,
            "data": {k: v[:0] for k, v in state["data"].items()},
            "stamps": state["stamps"][:0],
        }
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, state)
    return _pool_from_state(merge_pool_states(gathered))


def mixing_pool(
    synthetic_ratio: float,
    *,
    real_data: Sequence[Mapping[str, Any]] | None = None,
    pool_file: str | os.PathLike | None = None,
    diffusion_checkpoint: str | os.PathLike | None = None,
    pool_size: int | None = None,
    filter_mode: FilterMode | str = FilterMode.POOL,
    scheduler: str = DEFAULT_SAMPLER,
    num_inference_steps: int = DEFAULT_SAMPLER_STEPS,
    batch_size: int = 16,
    segmenter_epochs: int = 30,
    mc_passes: int = 4,
    spatial_size: Sequence[int] | None = None,
    spacing: float | None = None,
    keys: Sequence[str] = ("ct", "pet", "label"),
    image_keys: Sequence[str] = ("ct", "pet"),
    label_key: str = "label",
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Any | None:
    """The synthesis pool a segmentation run mixes from: ``None`` for ``synthetic_ratio == 0`` (real only).

    With ``pool_file`` the pool written by ``generate.json`` is loaded (on every rank). Otherwise one is built
    from ``diffusion_checkpoint``: a quality filter is trained on ``real_data``
    (:func:`train_quality_filter`) and ``pool_size`` triplets are generated (:func:`build_synthesis_pool`;
    default ``round(synthetic_ratio * len(real_data))``, the method's ``r·N``).

    Raises:
        BundleSettingError: a bad ratio, pool file or checkpoint, or no real data to fit the filter on.
    """
    ratio = check_synthetic_ratio(synthetic_ratio)
    if ratio == 0:
        return None
    from monai_pairsynth.mixing.synthesis_pool import SynthesisPool

    if not _is_unset(pool_file):
        check_pool_file(pool_file, spatial_size=spatial_size, keys=keys)
        return SynthesisPool.load(str(pool_file))
    check_generator_checkpoint(
        diffusion_checkpoint, spatial_size=spatial_size, spacing=spacing, modalities=keys
    )
    if not real_data:
        raise BundleSettingError("building a synthesis pool needs the real training samples (real_data).")
    size = int(pool_size) if not _is_unset(pool_size) else max(1, round(ratio * len(real_data)))
    mode = _filter_mode(filter_mode)
    quality_filter = None
    if mode != FilterMode.NONE:
        quality_filter = train_quality_filter(
            real_data,
            image_keys=image_keys,
            label_key=label_key,
            epochs=segmenter_epochs,
            mc_passes=mc_passes,
            device=device,
            seed=seed,
        )
    return build_synthesis_pool(
        str(diffusion_checkpoint),
        quality_filter,
        size,
        filter_mode=mode,
        scheduler=scheduler,
        num_inference_steps=num_inference_steps,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=progress,
    )


def export_pool_nifti(pool: Any, output_dir: str | os.PathLike, case_prefix: str = "SYNTH") -> Path:
    """Write every triplet of a pool as NIfTI files in :mod:`monai_pairsynth.generate`'s layout.

    ``<output_dir>/<case>/<case>__CT.nii.gz``, ``__PT.nii.gz``, ``<case>.nii.gz`` (mask, uint8) and
    ``datalist.json`` (relative paths, a ``"generation"`` record), readable by MONAI's ``load_decathlon_datalist``
    and by :func:`monai_pairsynth.evaluate.evaluate`.

    Returns:
        the datalist path.
    """
    return pool.export_nifti(output_dir, prefix=case_prefix, overwrite=True) / "datalist.json"


def save_generation_outputs(
    pool: Any,
    quality_filter: Any | None,
    output_dir: str | os.PathLike,
    *,
    settings: Mapping[str, Any] | None = None,
    preview_cases: int = 8,
    export_nifti: bool = False,
) -> dict[str, Any]:
    """Write what ``generate.json`` produces (rank 0 only; other ranks return the counts and write nothing).

    Files in ``output_dir``: ``pool.pt`` (:meth:`SynthesisPool.save`), ``quality_filter.pt`` and
    ``feature_segmenter.pt`` (the filter and its network; load with ``FeatureCentroidFilter.load(path,
    load_feature_segmenter(...))``), ``preview.png`` (the first ``preview_cases`` triplets), ``counts.json``
    (accepted/generated/rejected by reason; generation time, summed over ranks under ``torch.distributed``;
    settings) and, with ``export_nifti``, ``nifti/``
    (:func:`export_pool_nifti`).

    Returns:
        the content of ``counts.json``.
    """
    from monai_pairsynth.quality import save_feature_segmenter
    from monai_pairsynth.visualize import save_triplet_grid

    stats = pool.stats
    out = Path(output_dir)
    counts = {
        "pool_size": len(pool),
        "generated": int(stats["generated"]),
        "accepted": int(stats["accepted"]),
        "rejected": {str(k): int(v) for k, v in stats["rejected"].items()},
        "rejected_total": int(sum(stats["rejected"].values())),
        "surplus": int(stats["surplus"]),
        "failures": {str(k): int(v) for k, v in stats["failures"].items()},
        "generation_seconds": float(stats["generation_seconds"]),
        "ranks": _world()[1],
        "spatial_size": list(pool.spatial_shape),
        "spacing": list(pool.spacing),
        "settings": dict(settings or {}),
        "files": {
            "pool": str(out / "pool.pt"),
            "quality_filter": None if quality_filter is None else str(out / "quality_filter.pt"),
            "feature_segmenter": None if quality_filter is None else str(out / "feature_segmenter.pt"),
            "preview": str(out / "preview.png") if preview_cases > 0 and len(pool) else None,
            "nifti": str(out / "nifti" / "datalist.json") if export_nifti else None,
        },
    }
    if not is_main_process():
        return counts
    out.mkdir(parents=True, exist_ok=True)
    pool.save(out / "pool.pt")
    if quality_filter is not None:
        quality_filter.save(out / "quality_filter.pt")
        save_feature_segmenter(quality_filter.feature_network, out / "feature_segmenter.pt")
    if counts["files"]["preview"]:
        shown = [pool.get(i, units="physical") for i in range(min(int(preview_cases), len(pool)))]
        save_triplet_grid(
            shown,
            out / "preview.png",
            keys=pool.keys,
            specs=pool.specs,
            titles=[f"pool {i}" for i in range(len(shown))],
            samples_per_row=min(4, len(shown)),
        )
    if export_nifti:
        export_pool_nifti(pool, out / "nifti")
    atomic_write_json(out / "counts.json", counts)
    logger.info(
        "pool of %d triplets (generated %d, rejected %s) in %.1f s written to %s",
        len(pool),
        counts["generated"],
        counts["rejected"],
        counts["generation_seconds"],
        out,
    )
    return counts


# ================================================================================================ training
class TrainingProgressBar:
    """An ignite ``ProgressBar`` over iterations as a MONAI-style handler (``attach(engine)``), showing the loss.

    MONAI workflows attach their handlers with ``handler.attach(engine)``; ignite's ``ProgressBar.attach`` also
    needs the output transform, which this wrapper supplies.

    Args:
        enabled: ``False`` attaches nothing (e.g. for logs, or ranks other than 0).
        loss_key: key of the loss in the engine output (MONAI trainers: ``"loss"``).
        persist: keep the finished bar of each epoch on screen.
        desc: label of the bar.

    Example:
        >>> from ignite.engine import Engine
        >>> engine = Engine(lambda e, b: None)
        >>> TrainingProgressBar(enabled=False).attach(engine)
        >>> _ = engine.run([0], max_epochs=1)
    """

    def __init__(
        self, enabled: bool = True, loss_key: str = "loss", persist: bool = False, desc: str = "train"
    ) -> None:
        self.enabled = bool(enabled)
        self.loss_key = loss_key
        self.persist = bool(persist)
        self.desc = desc

    def _loss(self, output: Any) -> dict[str, float]:
        if isinstance(output, (list, tuple)) and output:
            output = output[0]
        if isinstance(output, Mapping) and self.loss_key in output:
            return {self.loss_key: float(output[self.loss_key])}
        return {}

    def attach(self, engine: Any) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar

        ProgressBar(persist=self.persist, desc=self.desc).attach(engine, output_transform=self._loss)


def distributed_trainer(
    trainer: Any, device: str | torch.device, find_unused_parameters: bool = False
) -> Any:
    """Wrap ``trainer.network`` in ``DistributedDataParallel`` (after the trainer and its handlers were built).

    The handlers (EMA, checkpoints, gradient clipping) keep the unwrapped model, whose parameters DDP shares,
    so checkpoints hold plain state dicts. Outside ``torch.distributed`` the trainer is returned unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return trainer
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    trainer.network = DistributedDataParallel(
        trainer.network,
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=bool(find_unused_parameters),
    )
    return trainer


# ================================================================================================ evaluation
def segmentation_test_dice(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike,
    data_loader: Any,
    device: str | torch.device = "cpu",
    postprocessing: Callable | None = None,
) -> list[float]:
    """Tumour Dice of every test sample for a segmentation checkpoint, with MONAI's ``SupervisedEvaluator``.

    The checkpoint (written by ``train_segmentation.json``'s ``CheckpointSaver``) is loaded into ``network`` by
    MONAI's ``CheckpointLoader``; ``MeanDice`` (background excluded, an empty prediction of an empty mask counts
    as 1) keeps its per-sample values.

    Args:
        network: the segmentation network of the training config.
        checkpoint: its weights.
        data_loader: test batches with ``image`` ``(B, 2, H, W)`` and ``label`` ``(B, 1, H, W)``.
        device: evaluation device.
        postprocessing: default: softmax, argmax and one-hot of ``pred`` and one-hot of ``label``.

    Returns:
        one Dice per test sample, in data-loader order.

    Raises:
        BundleSettingError: the checkpoint does not exist.
    """
    from monai.engines import SupervisedEvaluator
    from monai.handlers import CheckpointLoader, MeanDice, from_engine
    from monai.transforms import Activationsd, AsDiscreted, Compose

    path = Path(str(checkpoint)).expanduser()
    if not path.is_file():
        raise BundleSettingError(
            f"segmentation checkpoint {str(path)!r} does not exist; train one with configs/train_segmentation.json."
        )
    if postprocessing is None:
        postprocessing = Compose(
            [
                Activationsd(keys="pred", softmax=True),
                AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=2),
            ]
        )
    device = torch.device(device)
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=data_loader,
        network=network.to(device),
        postprocessing=postprocessing,
        key_val_metric={
            "test_dice": MeanDice(
                include_background=False,
                save_details=True,
                output_transform=from_engine(["pred", "label"]),
            )
        },
        val_handlers=[
            CheckpointLoader(load_path=str(path), load_dict={"model": network}, map_location=device)
        ],
    )
    evaluator.run()
    details = evaluator.state.metric_details["test_dice"]
    return [float(v) for v in torch.as_tensor(details).reshape(len(details), -1).mean(dim=1)]


def _pm(mean: float | None, sd: float | None, digits: int = 3) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    t = torch.as_tensor(list(values), dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True)) if t.numel() > 1 else 0.0


def format_results_table(results: Mapping[str, Any]) -> str:
    """A small plain-text/markdown table of an evaluation (``evaluation.json``): Dice, pool counts, generation.

    Example:
        >>> print(format_results_table({"dice": {"mixed": {"mean": 0.7, "sd": 0.1, "n": 4}}}))
        | result | value |
        |---|---|
        | test Dice, mixed (n = 4) | 0.700 ± 0.100 |
        >>> dice = {"mixed": {"mean": 0.7, "sd": 0.1, "n": 3, "num_slices": 40, "unit": "patient"}}
        >>> print(format_results_table({"dice": dice}).splitlines()[-1])
        | test Dice, mixed (n = 3 patients, 40 slices; mean ± sd over patients) | 0.700 ± 0.100 |
    """
    rows: list[tuple[str, str]] = []
    dice = results.get("dice") or {}
    for name, entry in dice.items():
        if entry.get("unit") == "patient":
            label = (
                f"test Dice, {name} (n = {entry['n']} patients, {entry.get('num_slices', '?')} slices; "
                "mean ± sd over patients)"
            )
        else:
            label = f"test Dice, {name} (n = {entry['n']})"
        rows.append((label, _pm(entry["mean"], entry["sd"])))
    comparison = results.get("comparison")
    if comparison:
        over = (
            f"paired over {comparison['n']} patients"
            if comparison.get("unit") == "patient"
            else "paired over test cases"
        )
        p = comparison.get("t_pvalue")
        rows.append(
            (
                f"difference {comparison['labels'][1]} - {comparison['labels'][0]} ({over})",
                f"{comparison['mean_diff']:+.3f} ± {comparison['sd_diff']:.3f}, paired t-test p = "
                + (f"{p:.3g}" if p is not None else "n/a (a test needs at least 2 patients)"),
            )
        )
    pool = results.get("pool")
    if pool:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(pool.get("rejected", {}).items())) or "none"
        rows.append(("pool: accepted / generated", f"{pool['accepted']} / {pool['generated']}"))
        rows.append(("pool: rejected (by reason)", f"{pool.get('rejected_total', 0)} ({rejected})"))
        if pool.get("generation_seconds") is not None:
            rows.append(("pool: generation time (incl. filter)", f"{pool['generation_seconds']:.1f} s"))
    gen = results.get("generation")
    if gen:
        for label, value in gen.items():
            rows.append((label, value))
    for label, value in (results.get("extra_rows") or {}).items():
        rows.append((label, str(value)))
    lines = ["| result | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _generation_rows(metrics: Mapping[str, Any]) -> dict[str, str]:
    rows: dict[str, str] = {}
    ref = (metrics.get("fid") or {}).get("reference")
    if ref:
        rows[
            f"feature FID, synthetic vs real (n = {ref['n_compared']}; in brackets: real vs real, "
            "patient-disjoint halves)"
        ] = f"{_fmt(ref['synthetic_vs_real'])} ({_fmt(ref['real_vs_real'])})"
    else:
        rows["feature FID, synthetic vs real"] = _fmt((metrics.get("fid") or {}).get("synthetic_vs_real"))
    paired = metrics.get("pairedness")
    if paired:
        term = "score" if "score" in paired["synthetic"] else "lesion_dice"
        s, r = paired["synthetic"][term], paired["real"][term]
        label = (
            "pairedness score, lesion x structure"
            if term == "score"
            else "pairedness: mask vs PET ≥ 40 % SUVmax Dice"
        )
        rows[f"{label} (over samples; in brackets: real, over {r.get('n', '?')} patients)"] = (
            f"{_pm(s.get('mean'), s.get('sd'))} ({_pm(r.get('mean'), r.get('sd'))})"
        )
    diversity = metrics.get("diversity") or {}
    for key, entry in diversity.items():
        if key == "skipped":
            rows["MS-SSIM diversity"] = f"skipped: {entry}"
            continue
        rows[
            f"mean pairwise MS-SSIM, {key} (real pairs of different patients in brackets; lower = more diverse)"
        ] = f"{_fmt(entry['synthetic'], 3)} ({_fmt(entry['real'], 3)})"
    mem = metrics.get("memorisation")
    if mem:
        rows["memorisation: flagged near-copies"] = f"{mem['num_flagged']} of {metrics.get('num_synthetic')}"
        rows[
            "memorisation: median nearest-real distance ratio (real: nearest other patient; about 1 = no copying)"
        ] = _fmt(mem.get("median_ratio"), 3)
    return rows


def write_evaluation_report(
    output_dir: str | os.PathLike,
    dice: Mapping[str, Sequence[float]],
    *,
    case_ids: Sequence[str] | None = None,
    pool_file: str | os.PathLike | None = None,
    generation_metrics: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``evaluation.json`` and ``evaluation.md`` (rank 0 only) and print the table.

    Args:
        output_dir: where to write.
        dice: ``{arm name: per-case Dice}``, e.g. ``{"real only": [...], "mixed": [...]}``; two arms are
            compared with :func:`monai_pairsynth.metrics.compare_dice` (second minus first, paired over
            patients).
        case_ids: test case id of each Dice entry (slices of one case share it). The Dice values are averaged
            per patient (:func:`monai_pairsynth.metrics.patient_ids`: the patient of the case id) before the
            mean ± sd and the paired tests, which run over patients; without ``case_ids`` every entry is its own
            patient.
        pool_file: the pool whose counts are reported (its ``counts.json`` beside it when present, else the
            pool's own running counts).
        generation_metrics: the result of :func:`monai_pairsynth.evaluate.evaluate` on the pool.
        settings: recorded as they are.

    Returns:
        the content of ``evaluation.json``.
    """
    from monai_pairsynth.metrics import compare_dice, patient_ids, patient_means

    results: dict[str, Any] = {"dice": {}, "settings": dict(settings or {})}
    arms = {name: [float(v) for v in values] for name, values in dice.items()}
    lengths = {len(v) for v in arms.values()}
    if len(lengths) > 1:
        raise ValueError(
            f"the Dice lists have different lengths {sorted(lengths)}; they must cover the same cases."
        )
    n = lengths.pop() if lengths else 0
    if case_ids is not None and len(case_ids) != n:
        raise ValueError(f"case_ids has {len(case_ids)} entries for {n} Dice values.")
    patients = (
        patient_ids([{"case_id": c} for c in case_ids])
        if case_ids is not None
        else [f"case-{i}" for i in range(n)]
    )
    # MONAI's Dice is NaN where the ground truth is empty (no tumour): the same cases in every arm
    keep = [i for i in range(n) if all(math.isfinite(v[i]) for v in arms.values())]
    excluded = [i for i in range(n) if i not in set(keep)]
    kept_patients = [patients[i] for i in keep]
    for name, values in arms.items():
        per = patient_means([values[i] for i in keep], kept_patients)
        mean, sd = _mean_sd(per["means"].tolist()) if keep else (math.nan, math.nan)
        results["dice"][name] = {
            "mean": mean if keep else None,
            "sd": sd if keep else None,
            "n": len(per["patients"]),
            "num_slices": len(keep),
            "unit": "patient",
            "per_case": [v if math.isfinite(v) else None for v in values],
            "per_patient": dict(zip(per["patients"], per["means"].tolist())),
        }
    results["unit"] = (
        "patient: slice Dice averaged per patient, then mean ± sd and paired tests over patients"
    )
    if case_ids is not None:
        results["case_ids"] = [str(c) for c in case_ids]
    results["patient_ids"] = patients
    results["excluded_cases"] = [str(case_ids[i]) if case_ids is not None else i for i in excluded]
    if len(arms) == 2 and keep:
        (name_a, a), (name_b, b) = [(k, [v[i] for i in keep]) for k, v in arms.items()]
        comparison = compare_dice(list(a), list(b), patient_ids=kept_patients)
        results["comparison"] = {
            "labels": [name_a, name_b],
            **{
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in comparison.items()
            },
        }
    if not _is_unset(pool_file):
        counts_path = Path(str(pool_file)).with_name("counts.json")
        if counts_path.is_file():
            import json

            results["pool"] = json.loads(counts_path.read_text(encoding="utf-8"))
        else:
            from monai_pairsynth.mixing.synthesis_pool import SynthesisPool

            stats = SynthesisPool.load(str(pool_file)).stats
            results["pool"] = {
                "pool_size": int(stats["size"]),
                "generated": int(stats["generated"]),
                "accepted": int(stats["accepted"]),
                "rejected": {str(k): int(v) for k, v in stats["rejected"].items()},
                "rejected_total": int(sum(stats["rejected"].values())),
                "generation_seconds": float(stats["generation_seconds"]),
            }
        results["pool"]["file"] = str(pool_file)
    if generation_metrics is not None:
        results["generation"] = _generation_rows(generation_metrics)
        results["generation_files"] = dict(generation_metrics.get("files") or {})
    table = format_results_table(results)
    results["table"] = table
    if is_main_process():
        out = Path(output_dir)
        atomic_write_json(out / "evaluation.json", results)
        atomic_write_text(out / "evaluation.md", "# Evaluation\n\n" + table + "\n")
        print(table, flush=True)
    return results


def describe(settings: Mapping[str, Any]) -> str:
    """One line summarising the run's main settings, for the log."""
    return ", ".join(f"{k}={v}" for k, v in settings.items())
