"""What the quality filter decided about each sample of a batch, and why."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

__all__ = ["RejectionReason", "SelectionMode", "SelectionResult"]


class SelectionMode(str, Enum):
    """How :meth:`FeatureCentroidFilter.select` decides.

    ``pool``: rank a pool of ``4rN`` candidates, keep the more certain half, then the closer half of those
    (exactly ``rN`` accepted). ``streaming``: judge each sample alone against thresholds calibrated on real data.
    """

    POOL = "pool"
    STREAMING = "streaming"


class RejectionReason(str, Enum):
    """The decision for one sample; the first failing check, in the order listed, is reported.

    - ``accepted``: kept.
    - ``non_finite``: the sample contains NaN/inf (a broken generation); it is never scored.
    - ``mask_outside_body``: too little of the mask lies inside the body (CT above a HU threshold, holes
      filled): a tumour in the air around the patient (plausibility rule).
    - ``empty_mask``: the mask has fewer voxels than the minimum, while every (or nearly every) real training
      sample has tumour (plausibility rule).
    - ``no_pet_uptake``: the mean PET inside the mask is not above the PET around it by the factor real
      tumours show (plausibility rule).
    - ``memorised``: its nearest real training sample is closer than real samples are to each other (the
      memorisation guard): a copy of a patient, not augmentation.
    - ``uncertain``: the segmenter disagrees with the generated mask (streaming: Dice below the calibrated
      threshold, or entropy above it; pool: in the less certain half).
    - ``far_from_centroid``: its features are far from the real centroid (streaming: above the calibrated
      distance threshold; pool: in the farther half of the certain half).
    - ``not_selected``: passed every check, but more samples passed than ``max_accept`` allowed (streaming
      mode); the closest ones were taken.
    """

    ACCEPTED = "accepted"
    NON_FINITE = "non_finite"
    MASK_OUTSIDE_BODY = "mask_outside_body"
    EMPTY_MASK = "empty_mask"
    NO_PET_UPTAKE = "no_pet_uptake"
    MEMORISED = "memorised"
    UNCERTAIN = "uncertain"
    FAR_FROM_CENTROID = "far_from_centroid"
    NOT_SELECTED = "not_selected"


@dataclass
class SelectionResult:
    """The outcome of one :meth:`FeatureCentroidFilter.select` call.

    Attributes:
        mask: ``(B,)`` bool, ``True`` where accepted.
        reasons: one :class:`RejectionReason` per sample (``accepted`` for kept ones).
        scores: per-sample scores ``{"distance", "certainty", "entropy", "nearest_real", "stratum"}`` and the
            plausibility measurements (``"mask_in_body"``, ``"mask_voxels"``, ``"pet_uptake"``, those the filter
            computes), each ``(B,)`` on the CPU.
        thresholds: the values the decision used: for streaming, the calibrated thresholds (a distance
            threshold per stratum as ``distance/<s>``); for pool mode the cut values actually applied
            (``certainty_cut``: the lowest certainty kept in the certain half, ``distance_cut``: the largest
            distance accepted) and ``min_nearest_real``; the thresholds of the plausibility rules applied
            (``min_mask_in_body``, ``min_mask_voxels``, ``min_pet_uptake``) in both modes.
        mode: the selection mode.

    Example:
        >>> import torch
        >>> r = SelectionResult(
        ...     mask=torch.tensor([True, False]),
        ...     reasons=[RejectionReason.ACCEPTED, RejectionReason.MEMORISED],
        ...     scores={"distance": torch.tensor([0.1, 0.2])},
        ...     thresholds={"min_nearest_real": 0.05},
        ...     mode=SelectionMode.STREAMING,
        ... )
        >>> r.indices.tolist(), r.num_accepted, r.reason_counts()["memorised"]
        ([0], 1, 1)
        >>> r.apply({"ct": torch.zeros(2, 1, 4, 4)})["ct"].shape
        torch.Size([1, 1, 4, 4])
    """

    mask: torch.Tensor
    reasons: list[RejectionReason]
    scores: dict[str, torch.Tensor]
    thresholds: dict[str, float]
    mode: SelectionMode
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def indices(self) -> torch.Tensor:
        """``(A,)`` long indices of the accepted samples, in batch order."""
        return torch.nonzero(self.mask, as_tuple=False).flatten()

    @property
    def num_accepted(self) -> int:
        return int(self.mask.sum())

    def __len__(self) -> int:
        return len(self.reasons)

    def reason_counts(self) -> dict[str, int]:
        """``{reason value: count}`` for every reason (zeros included)."""
        counts = {reason.value: 0 for reason in RejectionReason}
        for reason in self.reasons:
            counts[reason.value] += 1
        return counts

    def apply(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The accepted samples of ``batch``: every tensor whose first dimension is the batch is indexed."""
        out: dict[str, Any] = {}
        idx = self.indices
        n = len(self.reasons)
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n:
                out[key] = value[idx.to(value.device)]
            elif isinstance(value, (list, tuple)) and len(value) == n:
                out[key] = type(value)(value[i] for i in idx.tolist())
            else:
                out[key] = value
        return out

    def explain(self, index: int) -> str:
        """One line saying what was decided about sample ``index`` and the scores behind it."""
        if not 0 <= index < len(self.reasons):
            raise IndexError(f"sample index {index} out of range for a batch of {len(self.reasons)}.")
        parts = []
        for name, values in self.scores.items():
            v = float(values[index])
            parts.append(f"{name}={int(v)}" if name == "stratum" and math.isfinite(v) else f"{name}={v:.4g}")
        limits = ", ".join(f"{k}={v:.4g}" for k, v in self.thresholds.items())
        return f"sample {index}: {self.reasons[index].value} ({', '.join(parts)}; {self.mode.value} limits: {limits})"
