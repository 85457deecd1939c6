"""Option sets, the not-fitted error and the argument checks shared by the quality filter's modules."""

from __future__ import annotations

import math
import numbers
from enum import Enum
from typing import Any

__all__ = [
    "EmptyMaskRule",
    "FilterNotFittedError",
    "StrataMethod",
    "check_quantile",
    "is_int",
    "is_real_number",
]


class StrataMethod(str, Enum):
    """How real samples are split into strata, each with its own centroid.

    ``kmeans``: k-means on the compact feature embedding; a sample is measured against its nearest centroid.
    ``tumour_size``: quantile bins of the mask's voxel fraction; a sample is measured against the centroid of
    its own tumour-size bin.
    """

    KMEANS = "kmeans"
    TUMOUR_SIZE = "tumour_size"


class EmptyMaskRule(str, Enum):
    """When the ``empty_mask`` plausibility rule applies.

    ``auto``: only when at least ``empty_mask_real_fraction`` of the real training samples the filter was fitted
    on have a mask of ``min_mask_voxels`` voxels or more (learned at ``fit``); ``on``: always; ``off``: never.
    """

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class FilterNotFittedError(RuntimeError):
    """Raised when a :class:`~monai_pairsynth.quality.FeatureCentroidFilter` is used before ``fit``."""


def is_real_number(value: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An integer (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_quantile(name: str, value: float | None, allow_none: bool = False) -> float | None:
    """``value`` as a float in [0, 1] (or ``None`` when ``allow_none``); ``ValueError`` naming ``name`` otherwise.

    Example:
        >>> check_quantile("distance_quantile", 0.95)
        0.95
    """
    if value is None and allow_none:
        return None
    if value is None or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"{name} must be a quantile in [0, 1]{' or None' if allow_none else ''}, got {value!r}."
        )
    return float(value)
