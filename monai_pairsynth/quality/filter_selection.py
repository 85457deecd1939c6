"""Selection of the quality filter: which scored candidates are kept, and the reason for each one rejected.

The pure part of :meth:`~monai_pairsynth.quality.FeatureCentroidFilter.select`, on score tensors: the checks
applied first (non-finite, plausibility rules, memorisation guard; the first failing one is the reason), then
pool mode (``4rN -> 2rN -> rN``: certainty cut, distance cut) or streaming mode (calibrated thresholds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .plausibility_settings import PLAUSIBILITY_RULES
from .selection_result import RejectionReason, SelectionMode

__all__ = ["check_mode_arguments", "first_failing_checks", "pool_keep", "select_pool", "select_streaming"]


def pool_keep(ratio: float, num_real: int) -> int:
    """``r·N``, the candidates pool mode keeps; ``ValueError`` unless it is a whole number >= 1.

    Example:
        >>> pool_keep(0.5, 8)
        4
    """
    if isinstance(num_real, bool) or not isinstance(num_real, int) or num_real < 1:
        raise ValueError(f"num_real (N) must be a positive integer, got {num_real!r}.")
    if (
        not isinstance(ratio, (int, float))
        or isinstance(ratio, bool)
        or not ratio > 0
        or not math.isfinite(ratio)
    ):
        raise ValueError(f"ratio (r) must be a positive number, got {ratio!r}.")
    keep = round(ratio * num_real)
    if keep < 1 or abs(ratio * num_real - keep) > 1e-6:
        raise ValueError(
            f"r·N = {ratio} × {num_real} = {ratio * num_real:g} must be a whole number >= 1 of samples to keep."
        )
    return keep


def check_mode_arguments(
    mode: SelectionMode,
    certainty: bool,
    ratio: float | None,
    num_real: int | None,
    max_accept: int | None,
) -> int | None:
    """Check the arguments of a selection in ``mode``; returns ``r·N`` in pool mode, ``None`` in streaming mode.

    ``certainty``: whether the filter computes certainty (pool mode ranks by it).
    """
    if mode == SelectionMode.POOL:
        if not certainty:
            raise ValueError(
                "pool mode ranks by certainty first; this filter has certainty=False. Use mode='streaming'."
            )
        if ratio is None or num_real is None:
            raise ValueError(
                "pool mode needs ratio (r) and num_real (N): the pool holds 4·r·N candidates, rN are kept."
            )
        if max_accept is not None:
            raise ValueError("max_accept applies to streaming mode only; pool mode always keeps r·N.")
        return pool_keep(ratio, num_real)
    if ratio is not None or num_real is not None:
        raise ValueError(
            "ratio and num_real apply to pool mode only; streaming mode uses calibrated thresholds."
        )
    if max_accept is not None and (not isinstance(max_accept, int) or max_accept < 0):
        raise ValueError(f"max_accept must be a non-negative integer or None, got {max_accept!r}.")
    return None


def first_failing_checks(
    scores: Mapping[str, torch.Tensor],
    thresholds: Mapping[str, object],
    plausibility: bool,
    memorisation_guard: bool,
) -> tuple[list[RejectionReason], torch.Tensor, dict[str, float]]:
    """The checks both modes apply first, in order: non-finite, the plausibility rules, the guard.

    A rule whose threshold is ``None`` or whose measurement is missing from ``scores`` is skipped; a NaN
    measurement passes.

    Returns:
        the reason per sample (``ACCEPTED`` where every check passed), the ``(B,)`` boolean of those still
        eligible, and the plausibility thresholds applied.
    """
    n = int(scores["distance"].shape[0])
    finite = torch.isfinite(scores["distance"])
    rejected = ~finite
    code = torch.full((n,), -1, dtype=torch.long)  # index into `checks`, -1: passed them all
    checks: list[RejectionReason] = []
    applied: dict[str, float] = {}
    if plausibility:
        for reason, key, name in PLAUSIBILITY_RULES:
            limit = thresholds.get(name)
            if limit is None or key not in scores:
                continue
            fails = (scores[key].float() < limit) & ~rejected  # NaN compares False: passes
            code[fails] = len(checks)
            checks.append(RejectionReason(reason))
            applied[name] = float(limit)  # type: ignore[arg-type]
            rejected |= fails
    if memorisation_guard:
        fails = (scores["nearest_real"] < thresholds["min_nearest_real"]) & ~rejected
        code[fails] = len(checks)
        checks.append(RejectionReason.MEMORISED)
        rejected |= fails
    reasons = [RejectionReason.ACCEPTED] * n
    for i in torch.nonzero(~finite).flatten().tolist():
        reasons[i] = RejectionReason.NON_FINITE
    for i in torch.nonzero(code >= 0).flatten().tolist():
        reasons[i] = checks[int(code[i])]
    return reasons, ~rejected, applied


def select_pool(
    scores: Mapping[str, torch.Tensor], eligible: torch.Tensor, keep: int, reasons: list[RejectionReason]
) -> dict[str, float]:
    """Pool mode: of the eligible candidates keep the ``2·keep`` most certain (Dice descending, ties by entropy
    ascending), then the ``keep`` closest to the centroid. Updates ``reasons``; returns the cuts applied."""
    idx = torch.nonzero(eligible).flatten()
    certainty = scores["certainty"][idx]
    entropy = scores["entropy"][idx]
    # lexicographic: certainty descending, then entropy ascending (stable sorts, least significant first)
    order = torch.sort(entropy, stable=True).indices
    order = order[torch.sort(certainty[order], descending=True, stable=True).indices]
    certain = idx[order[: 2 * keep]]
    for i in idx[order[2 * keep :]].tolist():
        reasons[i] = RejectionReason.UNCERTAIN
    by_distance = certain[torch.sort(scores["distance"][certain], stable=True).indices]
    accepted = by_distance[:keep]
    for i in by_distance[keep:].tolist():
        reasons[i] = RejectionReason.FAR_FROM_CENTROID
    thresholds: dict[str, float] = {}
    if certain.numel():
        thresholds["certainty_cut"] = float(scores["certainty"][certain].min())
    if accepted.numel():
        thresholds["distance_cut"] = float(scores["distance"][accepted].max())
    return thresholds


def select_streaming(
    scores: Mapping[str, torch.Tensor],
    eligible: torch.Tensor,
    thresholds: Mapping[str, object],
    certainty: bool,
    max_accept: int | None,
    reasons: list[RejectionReason],
) -> dict[str, float]:
    """Streaming mode: each eligible sample against the calibrated thresholds (certainty and entropy when
    ``certainty``, then the distance threshold of its stratum); with ``max_accept`` at most that many, the
    closest. Updates ``reasons``; returns the thresholds applied."""
    dist_thr = torch.tensor(thresholds["distance"], dtype=torch.float32)
    stratum = scores["stratum"].long().clamp_min(0)
    passing = []
    for i in torch.nonzero(eligible).flatten().tolist():
        if certainty and (
            float(scores["certainty"][i]) < thresholds["min_certainty"]  # type: ignore[operator]
            or float(scores["entropy"][i]) > thresholds["max_entropy"]  # type: ignore[operator]
        ):
            reasons[i] = RejectionReason.UNCERTAIN
        elif float(scores["distance"][i]) > float(dist_thr[stratum[i]]):
            reasons[i] = RejectionReason.FAR_FROM_CENTROID
        else:
            passing.append(i)
    if max_accept is not None and len(passing) > max_accept:
        passing.sort(key=lambda i: float(scores["distance"][i]))
        for i in passing[max_accept:]:
            reasons[i] = RejectionReason.NOT_SELECTED
    applied = {f"distance/{s}": v for s, v in enumerate(thresholds["distance"])}  # type: ignore[arg-type]
    if certainty:
        applied["min_certainty"] = thresholds["min_certainty"]
        if math.isfinite(thresholds["max_entropy"]):  # type: ignore[arg-type]
            applied["max_entropy"] = thresholds["max_entropy"]
    return applied
