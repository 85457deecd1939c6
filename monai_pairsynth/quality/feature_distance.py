"""The feature-centroid distance and the compact feature embedding used by the memorisation guard.

For one forward pass of a sample, let ``A_l`` be the activation of layer ``l`` with shape ``(C_l, *S_l)``.
Unit-normalise it along channels at every position ``s``::

    a_l[:, s] = A_l[:, s] / (||A_l[:, s]||_2 + eps)

The distance of the sample to a centroid ``c = (c_1, ..., c_L)`` (each ``c_l`` of shape ``(C_l, *S_l)``) is::

    d(x, c) = sum_l  1/|S_l| * sum_{s in S_l}  || a_l[:, s] - c_l[:, s] ||_2^2

and the filter's score is this distance averaged over the ``K`` Monte-Carlo-dropout passes (selective
synthetic augmentation by feature-centroid distance). A centroid ``c_l`` is the mean of ``a_l`` over real
samples (and passes), so it is not itself unit-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["centroid_distances", "pooled_embedding", "unit_normalize_channels"]

_EPS = 1e-8


def unit_normalize_channels(activation: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Divide every spatial position's channel vector by its L2 norm.

    Args:
        activation: ``(B, C, *spatial)``.
        eps: added to the norm (an all-zero vector stays zero).

    Returns:
        Tensor of the same shape, float32.

    Example:
        >>> import torch
        >>> a = unit_normalize_channels(torch.tensor([[[[3.0]], [[4.0]]]]))
        >>> a.flatten().tolist()
        [0.6000000238418579, 0.800000011920929]
    """
    if activation.ndim < 3:
        raise ValueError(f"activation must be (B, C, *spatial), got shape {tuple(activation.shape)}.")
    activation = activation.float()
    return activation / (activation.norm(dim=1, keepdim=True) + eps)


def centroid_distances(normalized: Sequence[torch.Tensor], centroids: Sequence[torch.Tensor]) -> torch.Tensor:
    """Distance of every sample to every centroid, ``sum_l mean_s ||a_l[:, s] - c_l[:, s]||^2``.

    Args:
        normalized: per layer, unit-normalised activations ``(B, C_l, *S_l)``.
        centroids: per layer, stacked centroids ``(S, C_l, *S_l)`` for ``S`` strata.

    Returns:
        ``(B, S)`` float32 distances (>= 0).

    Example:
        >>> import torch
        >>> a = [unit_normalize_channels(torch.tensor([[[[1.0]], [[0.0]]]]))]
        >>> c = [torch.tensor([[[[1.0]], [[0.0]]], [[[0.0]], [[1.0]]]])]
        >>> centroid_distances(a, c).tolist()
        [[0.0, 2.0]]
    """
    if len(normalized) != len(centroids) or len(normalized) == 0:
        raise ValueError(
            f"need one centroid tensor per layer, got {len(normalized)} layers and {len(centroids)} centroids."
        )
    total = None
    for a, c in zip(normalized, centroids):
        if tuple(a.shape[1:]) != tuple(c.shape[1:]):
            raise ValueError(
                f"layer activation shape {tuple(a.shape[1:])} does not match the centroid shape {tuple(c.shape[1:])}."
            )
        a_flat = a.flatten(1).float()  # (B, C*P)
        c_flat = c.flatten(1).to(a_flat)  # (S, C*P)
        positions = a[0, 0].numel()
        # ||a - c||^2 summed over channels and positions, via the expansion (no (B, S, C, P) intermediate)
        sq = (a_flat * a_flat).sum(1, keepdim=True) - 2.0 * a_flat @ c_flat.T + (c_flat * c_flat).sum(1)[None]
        layer = sq.clamp_min(0.0) / positions
        total = layer if total is None else total + layer
    return total


def pooled_embedding(normalized: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """A compact vector per sample whose squared Euclidean distances follow the same formula on a coarse grid.

    Each layer's unit-normalised activation is average-pooled to at most ``size`` positions per spatial axis,
    flattened and scaled by ``1 / sqrt(#positions)``; the layers are concatenated. So
    ``||e(x) - e(y)||^2 = sum_l mean_s ||pool(a_l(x))[:, s] - pool(a_l(y))[:, s]||^2``, the centroid distance
    between two samples at the pooled resolution. Used for nearest-real-sample search and k-means strata.

    Args:
        normalized: per layer, ``(B, C_l, *S_l)`` unit-normalised activations.
        size: pooled grid size per spatial axis (a layer already smaller keeps its size).

    Returns:
        ``(B, E)`` float32.
    """
    if size < 1:
        raise ValueError(f"embedding size must be >= 1, got {size}.")
    parts = []
    for a in normalized:
        spatial = tuple(a.shape[2:])
        target = tuple(min(size, s) for s in spatial)
        if len(spatial) == 1:
            pooled = F.adaptive_avg_pool1d(a.float(), target)
        elif len(spatial) == 2:
            pooled = F.adaptive_avg_pool2d(a.float(), target)
        elif len(spatial) == 3:
            pooled = F.adaptive_avg_pool3d(a.float(), target)
        else:
            raise ValueError(f"activations must have 1-3 spatial dims, got shape {tuple(a.shape)}.")
        positions = pooled[0, 0].numel()
        parts.append(pooled.flatten(1) / positions**0.5)
    return torch.cat(parts, dim=1)
