"""Memorisation: is a synthetic sample a near-copy of one real training sample?

In a feature space (e.g. :func:`extract_global_features`), each synthetic sample's Euclidean distance to its
nearest real training sample is compared with how close real training samples are to each other: the
leave-one-out nearest-neighbour distance of every real sample to the other real samples. A synthetic sample
closer to a real one than, say, the 1st percentile of those real-to-real distances is closer than almost any
two distinct real patients are: a likely copy. For a generator that does not copy, the fraction of synthetic
samples below the ``p``-th percentile is about ``p`` % (slightly more, since a synthetic sample has ``N``
real neighbours to choose from and a real one ``N - 1``); a memorising generator gives a fraction far above.

With several slices per patient, pass ``real_patients``: a real slice's nearest neighbour is then searched among
the *other patients'* slices only (leave one patient out). Otherwise the next slice of the same patient, a
near-copy, sets the reference, and a generator that makes genuinely new patients looks like a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._inputs import check_feature_pair

__all__ = ["memorisation_report"]


def memorisation_report(
    synthetic_features: Any,
    real_train_features: Any,
    percentiles: Sequence[float] = (1.0, 5.0),
    flag_percentile: float | None = None,
    real_patients: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Nearest-real-sample distances of synthetic samples against the real leave-one-out NN distances.

    Args:
        synthetic_features: ``(M, F)``.
        real_train_features: ``(N, F)`` features of the generator's real training samples, ``N >= 2``.
        percentiles: percentiles ``p`` (in (0, 100)) of the real NN distances at which the fraction of closer
            synthetic samples is reported.
        flag_percentile: a synthetic sample is ``flagged`` when its nearest-real distance is below this
            percentile of the real NN distances (default: the smallest of ``percentiles``).
        real_patients: the patient of every real sample; real-to-real distances then skip samples of the same
            patient (leave one patient out). ``None``: every real sample is its own patient.

    Returns:
        A dict with

        - ``nearest_real_distance`` ``(M,)`` float64 and ``nearest_real_index`` ``(M,)`` int64: each
          synthetic sample's nearest real sample;
        - ``real_nn_distance`` ``(N,)``: each real sample's distance to its nearest real sample of another
          patient (``inf`` when there is no other patient);
        - ``reference_unit``: ``"leave one patient out"`` or ``"leave one sample out"``;
        - ``thresholds``: ``{p: the p-th percentile of real_nn_distance}`` (linear interpolation);
        - ``fraction_below``: ``{p: fraction of synthetic samples with nearest_real_distance < threshold}``;
        - ``flagged`` ``(M,)`` bool, ``num_flagged``, ``flag_percentile``, ``flag_threshold``;
        - ``median_nearest_real`` and ``median_real_nn`` (floats) and their ratio ``median_ratio`` (about 1
          without copying, near 0 for a set of copies; steadier than the low-percentile fractions, whose
          threshold is estimated from few real distances when ``N`` is small: below ``p = 100 / N`` it is the
          smallest real NN distance).

    Raises:
        ValueError: empty sets, fewer than 2 real samples, different feature sizes, bad percentiles.

    Example:
        >>> import torch
        >>> real = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
        >>> copies = real[:10] + 1e-4
        >>> report = memorisation_report(copies, real)
        >>> report["num_flagged"], report["nearest_real_index"].tolist() == list(range(10))
        (10, True)
    """
    percentiles = [float(p) for p in percentiles]
    if not percentiles or not all(0.0 < p < 100.0 for p in percentiles):
        raise ValueError(f"percentiles must be values in (0, 100), got {percentiles}.")
    if flag_percentile is None:
        flag_percentile = min(percentiles)
    if not 0.0 < float(flag_percentile) < 100.0:
        raise ValueError(f"flag_percentile must be in (0, 100), got {flag_percentile!r}.")
    real, synthetic = check_feature_pair(
        real_train_features, synthetic_features, names=("real_train_features", "synthetic_features")
    )
    if real.shape[0] < 2:
        raise ValueError(
            f"real_train_features needs at least 2 samples for real-to-real distances, got {real.shape[0]}."
        )
    to_real = torch.cdist(synthetic, real)  # (M, N)
    nearest, index = to_real.min(dim=1)
    real_real = torch.cdist(real, real)
    real_real.fill_diagonal_(float("inf"))
    if real_patients is not None:
        if isinstance(real_patients, str) or len(real_patients) != real.shape[0]:
            raise ValueError(
                f"real_patients must name the patient of each of the {real.shape[0]} real samples."
            )
        codes = {pid: i for i, pid in enumerate(dict.fromkeys(str(p) for p in real_patients))}
        if len(codes) < 2:
            raise ValueError(
                "real_patients holds one patient; leave-one-patient-out distances need at least 2."
            )
        group = torch.tensor([codes[str(p)] for p in real_patients])
        real_real[group[:, None] == group[None, :]] = float("inf")
    real_nn = real_real.min(dim=1).values

    def threshold(p: float) -> float:
        return float(torch.quantile(real_nn, p / 100.0))

    thresholds = {p: threshold(p) for p in percentiles}
    fraction = {p: float((nearest < t).double().mean()) for p, t in thresholds.items()}
    flag_threshold = threshold(float(flag_percentile))
    flagged = nearest < flag_threshold
    median_nearest, median_real = float(nearest.quantile(0.5)), float(real_nn.quantile(0.5))
    return {
        "nearest_real_distance": nearest,
        "nearest_real_index": index,
        "real_nn_distance": real_nn,
        "reference_unit": "leave one patient out" if real_patients is not None else "leave one sample out",
        "thresholds": thresholds,
        "fraction_below": fraction,
        "flag_percentile": float(flag_percentile),
        "flag_threshold": flag_threshold,
        "flagged": flagged,
        "num_flagged": int(flagged.sum()),
        "median_nearest_real": median_nearest,
        "median_real_nn": median_real,
        "median_ratio": median_nearest / median_real if median_real > 0 else float("inf"),
    }
