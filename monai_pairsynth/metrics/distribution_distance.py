"""Distances between the real and the synthetic feature distributions: FID (MONAI) and MMD.

Both take two feature matrices ``(N, F)`` and ``(M, F)``, e.g. from :func:`extract_global_features` on this
package's own feature network. Lower is closer; 0 means the same distribution. Both are biased by the sample
size (FID strongly when ``N`` is not much larger than ``F``), so only compare values computed with the same
feature network and the same set sizes, and read them against the real-vs-real value of two halves of the
real set (:func:`monai_pairsynth.metrics.evaluation.evaluate` reports both).
"""

from __future__ import annotations

import warnings
from enum import Enum
from typing import Any

import torch
from monai.metrics import FIDMetric
from scipy.linalg import LinAlgWarning

from ._inputs import check_feature_pair

__all__ = ["MMDKernel", "feature_fid", "median_bandwidth", "mmd"]


def feature_fid(real_features: Any, synthetic_features: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID on our own features).

    ``||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2))`` (Heusel et al. 2017), computed by MONAI's
    :class:`~monai.metrics.FIDMetric` in float64. With fewer samples than features the covariances are
    rank-deficient; the value is still defined but noisier (and biased upwards), and tiny negative values from
    the matrix square root are returned as 0.

    Args:
        real_features: ``(N, F)`` features of real samples, ``N >= 2``.
        synthetic_features: ``(M, F)`` features of synthetic samples, ``M >= 2``.

    Returns:
        The distance (>= 0; 0 for identical sets).

    Raises:
        ValueError: a set with fewer than 2 vectors, different ``F``, non-finite values, not a matrix.

    Example:
        >>> import torch
        >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        >>> round(feature_fid(x, x), 6), round(feature_fid(x, x + 1.0), 3)  # a shift by 1 in 4 features
        (0.0, 4.0)
    """
    x, y = check_feature_pair(real_features, synthetic_features, min_samples=2)
    with warnings.catch_warnings():
        # MONAI 1.6 passes scipy.linalg.sqrtm's deprecated `disp` argument (SciPy >= 1.16 warns)
        warnings.filterwarnings(
            "ignore", message=".*`disp` argument is deprecated.*", category=DeprecationWarning
        )
        # with fewer samples than features the covariances are rank-deficient and S_r S_s is singular; its
        # square root is still defined (see above), so SciPy's warning says nothing new here
        warnings.filterwarnings("ignore", category=LinAlgWarning)
        if x.shape[1] == 1:
            # MONAI squeezes a 1x1 covariance to a scalar (and SciPy's sqrtm mishandles 1x1): the same formula
            # in closed form, (mu_r - mu_s)^2 + var_r + var_s - 2 sqrt(var_r var_s)
            vx, vy = x.var(0), y.var(0)
            value = (x.mean(0) - y.mean(0)).square() + vx + vy - 2.0 * (vx * vy).sqrt()
        else:
            value = FIDMetric()(y, x)
    value = float(torch.as_tensor(value).real)
    return max(value, 0.0)


class MMDKernel(str, Enum):
    """Kernel of :func:`mmd`: ``rbf``, ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))``."""

    RBF = "rbf"


def median_bandwidth(features: torch.Tensor) -> float:
    """The median heuristic: the median Euclidean distance between distinct rows of ``features``.

    Example:
        >>> import torch
        >>> median_bandwidth(torch.tensor([[0.0], [1.0], [3.0]]))  # distances 1, 2, 3
        2.0
    """
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"the median heuristic needs at least 2 feature vectors, got {n}.")
    d = torch.cdist(features.double(), features.double())
    iu = torch.triu_indices(n, n, offset=1)
    return float(d[iu[0], iu[1]].median())


def mmd(
    real_features: Any,
    synthetic_features: Any,
    kernel: MMDKernel | str = MMDKernel.RBF,
    bandwidth: float | str = "median",
) -> float:
    """Unbiased squared maximum mean discrepancy (MMD^2, Gretton et al. 2012) between two feature sets.

    ``MMD^2 = 1/(N(N-1)) sum_{i!=j} k(x_i, x_j) + 1/(M(M-1)) sum_{i!=j} k(y_i, y_j) - 2/(NM) sum_{i,j} k(x_i, y_j)``
    with the RBF kernel ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))``.

    The estimator is unbiased, so it fluctuates around 0 for samples of one distribution and can be slightly
    negative (for two identical sets of ``N`` vectors it equals ``-2 (1 - mean_{i!=j} k(x_i, x_j)) / N``).

    Args:
        real_features: ``(N, F)``, ``N >= 2``.
        synthetic_features: ``(M, F)``, ``M >= 2``.
        kernel: ``"rbf"``.
        bandwidth: ``sigma``: a positive number, or ``"median"`` for the median heuristic (the median Euclidean
            distance between distinct vectors of the pooled set ``X ∪ Y``; 1.0 if that median is 0).

    Returns:
        MMD^2 (float; bounded by 2 for the RBF kernel).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(100, 3, generator=g), torch.randn(100, 3, generator=g)
        >>> abs(mmd(x, y)) < 0.02, mmd(x, y + 2.0) > 0.3
        (True, True)
    """
    try:
        kernel = MMDKernel(kernel)
    except ValueError:
        raise ValueError(f"kernel must be one of {[k.value for k in MMDKernel]}, got {kernel!r}.") from None
    x, y = check_feature_pair(real_features, synthetic_features, min_samples=2)
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f"bandwidth must be a positive number or 'median', got {bandwidth!r}.")
        sigma = median_bandwidth(torch.cat([x, y]))
        sigma = sigma if sigma > 0 else 1.0
    else:
        if isinstance(bandwidth, bool) or not float(bandwidth) > 0:
            raise ValueError(f"bandwidth must be a positive number or 'median', got {bandwidth!r}.")
        sigma = float(bandwidth)
    n, m = x.shape[0], y.shape[0]

    def gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2.0 * sigma**2))

    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())
