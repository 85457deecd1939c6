"""Shared, session-scoped phantom set-up for the quality-filter tests (trained once, a few seconds).

Measured on the 2-core build machine (shared with other jobs, one thread): generating the 224 phantom cases
1-4 s, training the segmenter 5-11 s, fitting the filter 1.5-2.5 s (about 10-16 s in all).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from quality_phantom import NUM_CALIBRATION, NUM_TEST, NUM_TRAIN, SEGMENTER, one_thread, phantom_cases, stack

from monai_pairsynth.quality import FeatureCentroidFilter, train_feature_segmenter


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Run this directory's tests on one intra-op thread, restoring the setting afterwards.

    On the shared 2-core build machine, with other jobs running, torch's two OpenMP threads spin against each
    other: a 16x16 UNet forward took 0.55 s with 2 threads and 0.01 s with 1 (measured). Scoped to
    tests/quality only; nothing global is changed.
    """
    with one_thread():
        yield


@pytest.fixture(scope="session")
def phantom_setup():
    """A 2D feature segmenter trained on 128 phantom cases (64×64 at 4 mm) and a fitted filter (K = 4)."""
    timings = {}
    with one_thread():  # session fixtures start before the autouse one above
        start = time.perf_counter()
        train = phantom_cases(NUM_TRAIN, base_seed=0)
        calibration = phantom_cases(NUM_CALIBRATION, base_seed=50_000)
        test = stack(phantom_cases(NUM_TEST, base_seed=60_000))
        timings["data_s"] = time.perf_counter() - start
        start = time.perf_counter()
        network = train_feature_segmenter(train, spatial_dims=2, seed=0, **SEGMENTER)
        timings["train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        quality_filter = FeatureCentroidFilter(network, mc_passes=4, seed=0).fit(
            train, calibration=calibration
        )
        timings["fit_s"] = time.perf_counter() - start
    return SimpleNamespace(
        network=network,
        filter=quality_filter,
        train=train,
        calibration=calibration,
        test=test,
        timings=timings,
    )
