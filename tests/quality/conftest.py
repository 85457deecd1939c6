"""Shared, session-scoped phantom set-up for the quality-filter tests (trained once, a few seconds).

Measured on the 2-core build machine (shared with other jobs; tests/conftest.py sets one torch thread):
generating the 224 phantom cases 1-4 s, training the segmenter 5-11 s, fitting the filter 1.5-2.5 s (about
10-16 s in all).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from quality_phantom import NUM_CALIBRATION, NUM_TEST, NUM_TRAIN, SEGMENTER, phantom_cases, stack

from monai_pairsynth.quality import FeatureCentroidFilter, train_feature_segmenter


@pytest.fixture(scope="session")
def phantom_setup():
    """A 2D feature segmenter trained on 128 phantom cases (64×64 at 4 mm) and a fitted filter (K = 4)."""
    timings = {}
    start = time.perf_counter()
    train = phantom_cases(NUM_TRAIN, base_seed=0)
    calibration = phantom_cases(NUM_CALIBRATION, base_seed=50_000)
    test = stack(phantom_cases(NUM_TEST, base_seed=60_000))
    timings["data_s"] = time.perf_counter() - start
    start = time.perf_counter()
    network = train_feature_segmenter(train, spatial_dims=2, seed=0, **SEGMENTER)
    timings["train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    quality_filter = FeatureCentroidFilter(network, mc_passes=4, seed=0).fit(train, calibration=calibration)
    timings["fit_s"] = time.perf_counter() - start
    return SimpleNamespace(
        network=network,
        filter=quality_filter,
        train=train,
        calibration=calibration,
        test=test,
        timings=timings,
    )
