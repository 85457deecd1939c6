"""The filter's fit refuses a broken feature network and does not let duplicated real samples zero its guard."""

from __future__ import annotations

import logging

import pytest
import torch
from quality_phantom import phantom_cases
from torch import nn

from monai_pairsynth.quality import FeatureCentroidFilter, build_feature_segmenter

TINY = {"spatial_size": (16, 16), "spacing": 16.0}


def tiny_network(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_feature_segmenter(2, channels=(4, 8), dropout=0.2).eval()


@pytest.fixture(scope="module")
def real():
    return phantom_cases(8, base_seed=0, **TINY)


def test_fit_with_nan_features_raises_naming_the_feature_network(real):
    network = tiny_network()
    with torch.no_grad():
        next(p for p in network.parameters() if p.ndim > 1).fill_(float("nan"))  # e.g. a diverged training
    quality_filter = FeatureCentroidFilter(network, mc_passes=1, seed=0)
    with pytest.raises(
        ValueError, match=rf"the feature network {type(network).__name__} \(layers .*\) produced"
    ):
        quality_filter.fit(real)
    assert not quality_filter.is_fitted


def test_fit_with_nan_only_in_the_segmentation_head_raises_too(real):
    network = tiny_network()
    head = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    with torch.no_grad():
        head.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-finite value\(s\) in the (certainty|entropy) scores"):
        FeatureCentroidFilter(network, mc_passes=1, seed=0).fit(real)


def test_identical_real_samples_warn_and_keep_the_memorisation_guard_working(real, caplog):
    duplicated = [*real, real[0], real[0]]  # real[0] three times
    with caplog.at_level(logging.WARNING, logger="monai_pairsynth.data.validation"):
        quality_filter = FeatureCentroidFilter(tiny_network(), mc_passes=1, seed=0).fit(duplicated)
    assert (
        "3 of 10 real training samples have an exact copy among the others (indices 0, 8, 9)" in caplog.text
    )
    threshold = quality_filter.thresholds["min_nearest_real"]
    assert threshold > 0  # it used to be 0, which let every copy through
    copy = {k: v[None] for k, v in real[3].items() if k in ("ct", "pet", "label")}
    result = quality_filter.select(copy, mode="streaming")
    assert not bool(result.mask[0]) and str(result.reasons[0].value) == "memorised"


def test_all_identical_real_samples_are_refused(real):
    with pytest.raises(ValueError, match="all 3 real training samples are exact copies"):
        FeatureCentroidFilter(tiny_network(), mc_passes=1, seed=0).fit([real[0]] * 3)
