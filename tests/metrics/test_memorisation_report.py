"""Memorisation: copies of real training samples are flagged, independent phantoms are not."""

from __future__ import annotations

import pytest
import torch

from monai_pairsynth.data import make_phantom_case
from monai_pairsynth.metrics import extract_global_features, memorisation_report
from monai_pairsynth.quality import build_feature_segmenter


@pytest.fixture(scope="module")
def feature_sets():
    torch.manual_seed(0)
    net = build_feature_segmenter(2, channels=(4, 8, 16), dropout=0.2).eval()
    real = [make_phantom_case(s, spatial_size=(64, 64), spacing=4.0) for s in range(48)]
    independent = [make_phantom_case(1000 + s, spatial_size=(64, 64), spacing=4.0) for s in range(48)]
    g = torch.Generator().manual_seed(1)
    # near-copies: real training cases with 2 HU of CT noise and 1 % PET noise
    copies = [
        {
            **c,
            "ct": c["ct"] + 2.0 * torch.randn(c["ct"].shape, generator=g),
            "pet": c["pet"] * (1.0 + 0.01 * torch.randn(c["pet"].shape, generator=g)),
        }
        for c in real[:24]
    ]
    return tuple(extract_global_features(net, s) for s in (real, independent, copies))


def test_copies_are_flagged_and_independent_phantoms_are_not(feature_sets):
    real, independent, copies = feature_sets
    report = memorisation_report(copies, real, percentiles=(1.0, 5.0))
    assert report["num_flagged"] == 24 and report["flagged"].all()
    assert report["fraction_below"] == {1.0: 1.0, 5.0: 1.0}
    assert report["nearest_real_index"].tolist() == list(range(24))  # each copy finds its original
    assert report["median_ratio"] < 0.1
    fresh = memorisation_report(independent, real, percentiles=(1.0, 5.0))
    # measured: 0 of 48 flagged, 0 % / 2 % below the 1st / 5th percentile, median ratio 1.08 (copies: 0.015;
    # their largest nearest-real distance is 0.0006 against a flag threshold of 0.015)
    assert fresh["fraction_below"][1.0] <= 0.15 and fresh["fraction_below"][5.0] <= 0.25
    assert fresh["num_flagged"] <= 7
    assert 0.7 < fresh["median_ratio"] < 1.3


def test_report_contents_on_a_known_configuration():
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    synthetic = torch.tensor([[0.1], [5.0]])
    report = memorisation_report(synthetic, real, percentiles=(50.0,))
    torch.testing.assert_close(
        report["real_nn_distance"], torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    )
    torch.testing.assert_close(report["nearest_real_distance"], torch.tensor([0.1, 2.0], dtype=torch.float64))
    assert report["nearest_real_index"].tolist() == [0, 2]
    assert report["thresholds"] == {50.0: pytest.approx(1.5)}
    assert report["fraction_below"] == {50.0: 0.5} and report["flagged"].tolist() == [True, False]
    assert report["median_ratio"] == pytest.approx(1.05 / 1.5)


@pytest.mark.parametrize(
    ("synthetic", "real", "kwargs", "match"),
    [
        (torch.zeros(0, 3), torch.zeros(4, 3), {}, "synthetic_features is empty"),
        (torch.zeros(2, 3), torch.zeros(0, 3), {}, "real_train_features is empty"),
        (torch.zeros(2, 3), torch.zeros(1, 3), {}, "at least 2 samples"),
        (torch.zeros(2, 3), torch.zeros(4, 2), {}, "3 features per sample|2 features per sample"),
        (torch.zeros(2, 3), torch.zeros(4, 3), {"percentiles": (0.0,)}, "percentiles"),
        (torch.zeros(2, 3), torch.zeros(4, 3), {"flag_percentile": 100.0}, "flag_percentile"),
    ],
)
def test_bad_input(synthetic, real, kwargs, match):
    with pytest.raises(ValueError, match=match):
        memorisation_report(synthetic, real, **kwargs)
