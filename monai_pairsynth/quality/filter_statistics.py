"""Per-sample statistics and calibration of the quality filter: tumour size, hard Dice, lesion entropy, strata,
and the streaming thresholds taken as quantiles of the real samples' own scores."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from monai_pairsynth.data.validation import distinct_samples

from .filter_options import StrataMethod
from .kmeans import kmeans

logger = logging.getLogger(__name__)

__all__ = [
    "assign_strata",
    "canonical_order",
    "check_finite",
    "hard_dice",
    "lesion_entropy",
    "streaming_thresholds",
    "tumour_fraction",
]

# a stratum with fewer real samples than this uses the global distance threshold (its own quantile is noise)
MIN_STRATUM_FOR_OWN_THRESHOLD = 5


def check_finite(finite: torch.Tensor, what: str) -> None:
    """``ValueError`` naming the samples of a batch whose ``finite`` flag is false."""
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"{what} triplets contain NaN/inf values (samples {bad} of a batch).")


def tumour_fraction(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` fraction of voxels inside the mask."""
    return mask.flatten(1).float().mean(1)


def hard_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Dice of two boolean masks ``(B, 1, *spatial)``; 1 when both are empty.

    Example:
        >>> import torch
        >>> a = torch.tensor([[[True, False]], [[False, False]]])
        >>> hard_dice(a, torch.tensor([[[True, True]], [[False, False]]])).tolist()
        [0.6666666865348816, 1.0]
    """
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    total = pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), torch.ones_like(total))


def lesion_entropy(mean_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean normalised predictive entropy inside (generated mask ∪ predicted mask), else the image."""
    num_classes = mean_probs.shape[1]
    entropy = -(mean_probs * mean_probs.clamp_min(1e-12).log()).sum(1, keepdim=True) / math.log(num_classes)
    region = mask | ((1.0 - mean_probs[:, :1]) > 0.5)
    region_count = region.flatten(1).sum(1)
    inside = (entropy * region).flatten(1).sum(1) / region_count.clamp_min(1)
    return torch.where(region_count > 0, inside, entropy.flatten(1).mean(1))


def canonical_order(points: torch.Tensor) -> torch.Tensor:
    """A permutation sorting rows by a data-dependent key (projection on a fixed pseudo-random direction)."""
    direction = torch.randn(
        points.shape[1], generator=torch.Generator().manual_seed(12345), dtype=torch.float64
    )
    key = points.double() @ direction
    return torch.sort(key, stable=True).indices


def assign_strata(
    embeddings: torch.Tensor, sizes: torch.Tensor, num_strata: int, strata: StrataMethod, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the real samples into ``num_strata`` strata.

    Returns:
        the k-means centres ``(num_strata, D)`` (``kmeans``; else ``(0, D)``) and the tumour-size bin edges
        ``(num_strata - 1,)`` (``tumour_size``; else empty).

    Raises:
        ValueError: a stratum without a real sample.
    """
    centers, edges = torch.zeros(0, embeddings.shape[1]), torch.zeros(0)
    if strata == StrataMethod.KMEANS:
        # canonical order first, so the k-means++ draws do not depend on the order the data came in
        order = canonical_order(embeddings)
        centers, sorted_assignment = kmeans(
            embeddings[order], num_strata, generator=torch.Generator().manual_seed(seed)
        )
        assignment = torch.empty_like(sorted_assignment)
        assignment[order] = sorted_assignment
    else:
        edges = torch.quantile(sizes, torch.linspace(0, 1, num_strata + 1)[1:-1])
        assignment = torch.bucketize(sizes, edges, right=True)
    members = torch.bincount(assignment, minlength=num_strata)
    if int(members.min()) == 0:
        empty = torch.nonzero(members == 0).flatten().tolist()
        raise ValueError(
            f"strata {empty} of {num_strata} ({strata.value}) have no real sample (too many equal "
            "tumour sizes or too few samples); use fewer strata."
        )
    return centers, edges


def streaming_thresholds(
    real: Mapping[str, torch.Tensor],
    num_centroids: int,
    certainty: bool,
    distance_quantile: float,
    certainty_quantile: float,
    entropy_quantile: float | None,
    memorisation_quantile: float,
) -> dict[str, Any]:
    """Thresholds of streaming mode and of the memorisation guard from the real samples' scores ``real``.

    ``distance``: per stratum, the ``distance_quantile`` of its members (the global one for a stratum of fewer
    than 5); ``min_certainty`` / ``max_entropy`` (``inf`` when ``entropy_quantile`` is ``None``) with
    ``certainty``; ``min_nearest_real``: the ``memorisation_quantile`` of the distinct real leave-one-out
    distances, or of the calibration cases' ``calibration_nearest_real`` when smaller.
    """
    dist, stratum = real["distance"].double(), real["stratum"]
    global_thr = float(torch.quantile(dist, distance_quantile))
    per_stratum = []
    for s in range(num_centroids):
        members = dist[stratum == s]
        if members.numel() >= MIN_STRATUM_FOR_OWN_THRESHOLD:
            per_stratum.append(float(torch.quantile(members, distance_quantile)))
        else:
            per_stratum.append(global_thr)
    thresholds: dict[str, Any] = {"distance": per_stratum}
    if certainty:
        thresholds["min_certainty"] = float(torch.quantile(real["certainty"].double(), certainty_quantile))
        thresholds["max_entropy"] = (
            float(torch.quantile(real["entropy"].double(), entropy_quantile))
            if entropy_quantile is not None
            else math.inf
        )
    # an exact duplicate among the real samples has a nearest-real distance of 0: a quantile taken with it would
    # set the guard's threshold to 0, which lets every copy through; calibrate on the distinct samples only
    nearest = real["nearest_real"].double()
    nearest = nearest[distinct_samples(nearest, "real training samples")]
    min_nearest = float(torch.quantile(nearest, memorisation_quantile))
    if "calibration_nearest_real" in real:  # fitted with a calibration set
        held = real["calibration_nearest_real"].double()
        if not bool((held > 0).all()):  # a held-out case that is a training case: said, but kept (it is data)
            logger.warning(
                "%d of %d calibration samples are exact copies of a training sample; the memorisation guard's "
                "threshold comes out near 0 with them. Calibrate on held-out cases only.",
                int((held <= 0).sum()),
                held.numel(),
            )
        min_nearest = min(min_nearest, float(torch.quantile(held, memorisation_quantile)))
    thresholds["min_nearest_real"] = min_nearest
    return thresholds
