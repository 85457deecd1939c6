"""Evaluation metrics for synthetic PET/CT/mask triplets (``monai_pairsynth.metrics``).

- fidelity: :func:`feature_fid` (MONAI ``FIDMetric``) and :func:`mmd` on :func:`extract_global_features` of
  this package's own feature network;
- diversity: :func:`pairwise_ms_ssim` / :func:`diversity_report` (MS-SSIM with 3 scales and a 7-pixel window,
  so 64 x 64 and 128 x 128 work);
- pairedness: :func:`pairedness` (score = lesion uptake against its local background x CT/PET gradient
  alignment; the earlier 40 % SUVmax and body-outline Dice beside it);
- memorisation: :func:`memorisation_report` (nearest real training sample in feature space);
- downstream: :func:`compare_dice` (mean ± sd, paired t-test and Wilcoxon; over patients with ``patient_ids``)
  and :func:`compare_dice_crossed` (test patients and training runs both random, as readers and cases in MRMC);
- statistics by patient: :func:`patient_ids`, :func:`patient_means`, :func:`summarize_by_patient`,
  :func:`patient_disjoint_halves` (slices of one patient are not independent samples).

The entry point that computes all of them on a real and a synthetic set is :mod:`monai_pairsynth.metrics.evaluation`
(its markdown in :mod:`monai_pairsynth.metrics.report`).
See ``docs/metrics.md``.
"""

from __future__ import annotations

from .by_patient import patient_disjoint_halves, patient_ids, patient_means, summarize_by_patient
from .crossed_comparison import compare_dice_crossed
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
    "compare_dice_crossed",
    "diversity_report",
    "extract_global_features",
    "feature_fid",
    "median_bandwidth",
    "memorisation_report",
    "mmd",
    "ms_ssim",
    "pairedness",
    "pairwise_ms_ssim",
    "patient_disjoint_halves",
    "patient_ids",
    "patient_means",
    "summarize",
    "summarize_by_patient",
]
