"""Helpers that the bundle configs (``bundles/pet_ct_pairsynth/configs/*.json``) call by dotted path.

They check the user's settings once, at the start of a run, so a bad ``dataset_dir``, ratio or checkpoint
stops the bundle with one clear line before any training starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_pairsynth.data.hecktor import DatasetError, hecktor_datalist, load_datalist_json, split_by_patient

__all__ = ["BundleSettingError", "check_synthetic_ratio", "real_datalist"]


class BundleSettingError(ValueError):
    """A bundle setting (``dataset_dir``, ``synthetic_ratio``, a checkpoint) is unusable."""


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
    if dataset_dir is None or str(dataset_dir).strip() in ("", "None", "null"):
        return None
    if split not in ("train", "val", "test"):
        raise BundleSettingError(f"split must be one of 'train', 'val', 'test', got {split!r}.")
    path = Path(dataset_dir).expanduser()
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


def check_synthetic_ratio(ratio: Any) -> float:
    """Validate the synthetic mixing ratio r = N_synthetic / N_real (0 = real only).

    Example:
        >>> check_synthetic_ratio(0.5)
        0.5
    """
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise BundleSettingError(f"synthetic_ratio must be a number >= 0, got {ratio!r}.") from None
    if not math.isfinite(r) or r < 0:
        raise BundleSettingError(
            f"synthetic_ratio must be a finite number >= 0 (0 = real only), got {ratio!r}."
        )
    return r


def describe(settings: Mapping[str, Any]) -> str:
    """One line summarising the run's main settings, for the log."""
    return ", ".join(f"{k}={v}" for k, v in settings.items())
