"""Evaluation metrics for synthetic PET/CT/mask triplets (``monai_pairsynth.metrics``).

- fidelity: :func:`feature_fid` (MONAI ``FIDMetric``) and :func:`mmd` on :func:`extract_global_features` of
  this package's own feature network;
- diversity: :func:`pairwise_ms_ssim` / :func:`diversity_report` (MS-SSIM with 3 scales and a 7-pixel window,
  so 64 x 64 and 128 x 128 work);
- pairedness: :func:`pairedness` (mask vs PET at 40 % SUVmax, CT vs PET body outline);
- memorisation: :func:`memorisation_report` (nearest real training sample in feature space);
- downstream: :func:`compare_dice` (mean ± sd, paired t-test and Wilcoxon).

The entry point that computes all of them on a real and a synthetic set is :mod:`monai_pairsynth.evaluate`.
See ``docs/metrics.md``.
"""

from __future__ import annotations

from .dice_comparison import compare_dice
from .distribution_distance import MMDKernel, feature_fid, median_bandwidth, mmd
from .diversity import MS_SSIM_KERNEL_SIZE, MS_SSIM_WEIGHTS, diversity_report, ms_ssim, pairwise_ms_ssim
from .global_features import extract_global_features
from .memorisation import memorisation_report
from .pairedness import body_outline, pairedness, summarize

__all__ = [
    "MS_SSIM_KERNEL_SIZE",
    "MS_SSIM_WEIGHTS",
    "MMDKernel",
    "body_outline",
    "compare_dice",
    "diversity_report",
    "extract_global_features",
    "feature_fid",
    "median_bandwidth",
    "memorisation_report",
    "mmd",
    "ms_ssim",
    "pairedness",
    "pairwise_ms_ssim",
    "summarize",
]
