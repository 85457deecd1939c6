"""Diversity of a set of images: the mean pairwise MS-SSIM, synthetic beside real.

The mean MS-SSIM over pairs of distinct samples of one set is 1 when every sample is the same image (no
diversity at all) and lower the more the samples differ. A generator that collapses onto a few modes scores
higher than the real data; one that produces noise scores lower. Read the synthetic value against the real
one (:func:`diversity_report`).

MS-SSIM scales and kernel. MONAI's defaults (5 scales, weights of Wang et al. 2003, an 11-pixel Gaussian
window) need more than 160 pixels per side: :func:`monai.metrics.regression.compute_ms_ssim` requires
``size // (num_scales - 1)^2 > kernel_size - 1``. The paper's 2D slices are 128 x 128 (and 64 x 64 in quick
runs), so here the defaults are **3 scales** (full, 1/2, 1/4 resolution) with the first three MONAI weights
renormalised to sum to 1, ``(0.0448, 0.2856, 0.3001) / 0.6305 = (0.0711, 0.4530, 0.4760)``, and a **7-pixel
Gaussian window** (sigma 1.5, as in MONAI). At 64 pixels the coarsest scale is 16 pixels, still twice the
window; the dropped scales 4 and 5 (1/8 and 1/16 resolution) would be 8 and 4 pixels, smaller than any
useful window. The smallest side that works is 28 pixels (both MONAI's check and a valid window at 1/4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.metrics import MultiScaleSSIMMetric

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, ModalitySpec, resolve_specs
from monai_pairsynth.quality import IntensityUnits

from ._inputs import gather_keys

__all__ = ["MS_SSIM_KERNEL_SIZE", "MS_SSIM_WEIGHTS", "diversity_report", "ms_ssim", "pairwise_ms_ssim"]

_MONAI_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: MS-SSIM weights of the 3 scales used here: MONAI's first three, renormalised to sum to 1
MS_SSIM_WEIGHTS: tuple[float, ...] = tuple(w / sum(_MONAI_WEIGHTS[:3]) for w in _MONAI_WEIGHTS[:3])
#: Gaussian window size used with :data:`MS_SSIM_WEIGHTS`
MS_SSIM_KERNEL_SIZE = 7


def _check_ms_ssim_size(spatial: Sequence[int], kernel_size: int, num_scales: int, what: str) -> None:
    div_monai = max(1, num_scales - 1) ** 2
    coarsest = [s // 2 ** (num_scales - 1) for s in spatial]
    if any(s // div_monai <= kernel_size - 1 for s in spatial) or any(c < kernel_size for c in coarsest):
        needed = max((kernel_size - 1) * div_monai + 1, kernel_size * 2 ** (num_scales - 1))
        raise ValueError(
            f"{what} has spatial size {tuple(spatial)}, too small for MS-SSIM with {num_scales} scales and a "
            f"{kernel_size}-pixel window: every side must be at least {needed} pixels. Use fewer scales "
            "(weights=...) or a smaller kernel_size."
        )


def ms_ssim(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    kernel_size: int = MS_SSIM_KERNEL_SIZE,
    kernel_sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> torch.Tensor:
    """MS-SSIM of each pair ``(y_pred[b], y[b])`` with MONAI's :class:`~monai.metrics.MultiScaleSSIMMetric`.

    Args:
        y_pred, y: ``(B, C, H, W[, D])`` images of the same shape.
        data_range: the value range of the images (1.0 for [0, 1]).
        kernel_size: Gaussian window size (7, see the module docstring).
        kernel_sigma: Gaussian window standard deviation.
        weights: one exponent per scale (default :data:`MS_SSIM_WEIGHTS`, 3 scales).

    Returns:
        ``(B,)`` float32, 1 for identical images.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> [round(v, 4) for v in ms_ssim(x, x).tolist()]
        [1.0, 1.0]
    """
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("ms_ssim needs two tensors (B, C, H, W[, D]).")
    if y_pred.shape != y.shape:
        raise ValueError(
            f"ms_ssim needs images of one shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}."
        )
    if y_pred.ndim not in (4, 5):
        raise ValueError(
            f"ms_ssim needs (B, C, H, W) or (B, C, H, W, D) images, got shape {tuple(y_pred.shape)}."
        )
    if len(weights) < 1:
        raise ValueError("weights must have at least one entry (one per scale).")
    _check_ms_ssim_size(tuple(y_pred.shape[2:]), int(kernel_size), len(weights), "the image")
    metric = MultiScaleSSIMMetric(
        spatial_dims=y_pred.ndim - 2,
        data_range=float(data_range),
        kernel_size=int(kernel_size),
        kernel_sigma=float(kernel_sigma),
        weights=tuple(float(w) for w in weights),
        reduction="none",
    )
    return metric(y_pred.float(), y.float()).reshape(-1)


def pairwise_ms_ssim(
    images: torch.Tensor,
    data_range: float = 1.0,
    max_pairs: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    kernel_size: int = MS_SSIM_KERNEL_SIZE,
    kernel_sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    patients: Sequence[str] | None = None,
) -> dict[str, float]:
    """Mean MS-SSIM over pairs of distinct images of a set (1: all the same image; lower: more diverse).

    With ``patients``, only pairs of images of *different* patients count: two slices of one patient are not
    two samples of the population's diversity.

    Args:
        images: ``(N, C, H, W[, D])``, ``N >= 2``, in ``[0, data_range]``.
        data_range: the value range.
        max_pairs: evaluate at most this many of the ``N (N - 1) / 2`` pairs, drawn without replacement with
            ``seed`` (``None``: all pairs).
        seed: seeds the pair subsample.
        batch_size: pairs per MS-SSIM call.
        kernel_size, kernel_sigma, weights: see :func:`ms_ssim`.
        patients: the patient of every image (``None``: each image its own patient).

    Returns:
        ``{"mean": ..., "sd": ..., "num_pairs": ...}`` (``sd`` over the evaluated pairs).

    Example:
        >>> import torch
        >>> x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> pairwise_ms_ssim(x.repeat(4, 1, 1, 1))  # 4 copies of one image: no diversity
        {'mean': 1.0, 'sd': 0.0, 'num_pairs': 6}
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a tensor (N, C, H, W[, D]), got {type(images).__name__}.")
    if images.ndim not in (4, 5):
        raise ValueError(f"images must be (N, C, H, W) or (N, C, H, W, D), got shape {tuple(images.shape)}.")
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"pairwise MS-SSIM needs at least 2 images, got {n}.")
    if max_pairs is not None and (isinstance(max_pairs, bool) or int(max_pairs) < 1):
        raise ValueError(f"max_pairs must be a positive integer or None, got {max_pairs!r}.")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    _check_ms_ssim_size(tuple(images.shape[2:]), int(kernel_size), len(weights), "the image set")
    pairs = torch.triu_indices(n, n, offset=1)  # (2, N(N-1)/2)
    if patients is not None:
        if isinstance(patients, str) or len(patients) != n:
            raise ValueError(f"patients must name the patient of each of the {n} images.")
        codes = {pid: i for i, pid in enumerate(dict.fromkeys(str(p) for p in patients))}
        group = torch.tensor([codes[str(p)] for p in patients])
        pairs = pairs[:, group[pairs[0]] != group[pairs[1]]]
        if pairs.shape[1] == 0:
            raise ValueError("all images are of one patient: no pair of different patients to compare.")
    total = pairs.shape[1]
    if max_pairs is not None and total > int(max_pairs):
        keep = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[: int(max_pairs)]
        pairs = pairs[:, keep.sort().values]
    values = []
    for start in range(0, pairs.shape[1], int(batch_size)):
        i, j = pairs[0, start : start + int(batch_size)], pairs[1, start : start + int(batch_size)]
        values.append(
            ms_ssim(images[i], images[j], data_range, kernel_size, kernel_sigma, weights).double().cpu()
        )
    v = torch.cat(values)
    sd = float(v.std()) if v.numel() > 1 else 0.0
    return {"mean": round(float(v.mean()), 10), "sd": round(sd, 10), "num_pairs": int(v.numel())}


def diversity_report(
    synthetic: Any,
    real: Any,
    image_keys: Sequence[str] = ("ct", "pet"),
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    units: IntensityUnits | str = IntensityUnits.PHYSICAL,
    max_pairs: int | None = 300,
    seed: int = 0,
    real_patients: Sequence[str] | None = None,
    synthetic_patients: Sequence[str] | None = None,
    **ms_ssim_kwargs: Any,
) -> dict[str, dict[str, float]]:
    """Mean pairwise MS-SSIM of each image modality, synthetic-vs-synthetic beside real-vs-real.

    Each modality is mapped to [0, 1] over its spec range (CT [-1000, 1000] HU, PET [0, 15] SUV by default,
    values outside clipped) and compared with ``data_range=1``.

    Args:
        synthetic: the synthetic samples (a dataset / list of sample dicts, a batched dict or a ``DataLoader``).
        real: the real samples, same container types.
        image_keys: the image modalities to report (masks are not images).
        specs: modality specs (default ``DEFAULT_MODALITY_SPECS``).
        units: ``"physical"`` (HU, SUV) or ``"normalized"`` ([-1, 1]).
        max_pairs: pairs evaluated per set and modality (subsampled with ``seed``; ``None``: all).
        seed: seeds the pair subsample.
        real_patients, synthetic_patients: the patient of every sample of each set; only pairs of different
            patients are compared (``None``: each sample its own patient, e.g. independent synthetic draws).
        ms_ssim_kwargs: ``kernel_size``, ``kernel_sigma``, ``weights``, ``batch_size`` of
            :func:`pairwise_ms_ssim`.

    Returns:
        ``{key: {"synthetic": s, "real": r, "synthetic_sd", "real_sd", "diversity_ratio": (1 - s) / (1 - r),
        "num_pairs_synthetic", "num_pairs_real"}}`` (pairs of different patients). ``diversity_ratio`` is 1 when the synthetic set is as
        diverse as the real one, below 1 when less diverse (0: all copies of one image), above 1 when more.
    """
    if isinstance(image_keys, str):
        raise ValueError(f"image_keys must be a sequence of keys, got the string {image_keys!r}.")
    image_keys = [str(k) for k in image_keys]
    if not image_keys:
        raise ValueError("image_keys must name at least one image modality.")
    try:
        units = IntensityUnits(units)
    except ValueError:
        raise ValueError(
            f"units must be one of {[u.value for u in IntensityUnits]}, got {units!r}."
        ) from None
    spec_map = resolve_specs(specs) if specs is not None else dict(DEFAULT_MODALITY_SPECS)
    for key in image_keys:
        if key not in spec_map:
            raise ValueError(f"no modality spec for key {key!r}; pass specs={{{key!r}: ModalitySpec(...)}}.")
        if spec_map[key].is_mask:
            raise ValueError(f"key {key!r} is a mask; diversity is measured on image modalities only.")
    sets = {
        "synthetic": gather_keys(synthetic, image_keys, name="synthetic set"),
        "real": gather_keys(real, image_keys, name="real set"),
    }
    report: dict[str, dict[str, float]] = {}
    groups = {"synthetic": synthetic_patients, "real": real_patients}
    for key in image_keys:
        entry: dict[str, float] = {}
        for which, data in sets.items():
            x = data[key].float()
            if units == IntensityUnits.PHYSICAL:
                x = spec_map[key].normalize(x)
            x = (x.clamp(-1.0, 1.0) + 1.0) / 2.0
            if x.shape[0] < 2:
                raise ValueError(f"the {which} set has {x.shape[0]} sample(s); diversity needs at least 2.")
            result = pairwise_ms_ssim(
                x, data_range=1.0, max_pairs=max_pairs, seed=seed, patients=groups[which], **ms_ssim_kwargs
            )
            entry[which] = result["mean"]
            entry[f"{which}_sd"] = result["sd"]
            entry[f"num_pairs_{which}"] = result["num_pairs"]
        denominator = 1.0 - entry["real"]
        entry["diversity_ratio"] = (
            (1.0 - entry["synthetic"]) / denominator if denominator > 0 else float("nan")
        )
        report[key] = entry
    return report
