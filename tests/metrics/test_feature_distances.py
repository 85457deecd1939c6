"""Feature FID and MMD on known answers, and the global features of the package's feature network."""

from __future__ import annotations

import math

import pytest
import torch

from monai_pairsynth.data import make_phantom_case
from monai_pairsynth.metrics import extract_global_features, feature_fid, median_bandwidth, mmd
from monai_pairsynth.quality import build_feature_segmenter


def _gaussian(n: int, f: int, seed: int) -> torch.Tensor:
    return torch.randn(n, f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("n", "f"), [(200, 8), (32, 64), (50, 1), (2, 8)])
def test_identical_sets_give_zero(n, f):
    x = _gaussian(n, f, 0)
    assert feature_fid(x, x) == pytest.approx(0.0, abs=1e-6)
    # (2, 8): singular covariances; SciPy's singular-matrix warning is expected there and silenced
    # the unbiased MMD^2 of a set with itself is -2 (1 - mean off-diagonal kernel) / N: about 0, O(1/N)
    value = mmd(x, x)
    assert -2.0 / n <= value <= 0.0


def test_fid_of_a_mean_shift_is_its_squared_norm():
    x = _gaussian(500, 4, 1)
    for shift in (0.5, 1.0, 2.0):
        assert feature_fid(x, x + shift) == pytest.approx(4 * shift**2, rel=1e-6)
    # scaling every feature by 2 around the mean: Tr(S + 4 S - 2 * 2 S) = Tr(S)
    y = (x - x.mean(0)) * 2.0 + x.mean(0)
    assert feature_fid(x, y) == pytest.approx(float(x.var(0).sum()), rel=1e-6)


def test_one_dimensional_fid_matches_the_closed_form():
    x = _gaussian(100, 1, 2)
    y = 3.0 * x + 1.0
    expected = (float(x.mean()) - float(y.mean())) ** 2 + (float(x.std()) - float(y.std())) ** 2
    assert feature_fid(x, y) == pytest.approx(expected, rel=1e-9)


def test_fid_and_mmd_grow_monotonically_with_the_shift():
    real, synthetic = _gaussian(128, 16, 3), _gaussian(128, 16, 4)  # two samples of one distribution
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]
    fids = [feature_fid(real, synthetic + s) for s in shifts]
    mmds = [mmd(real, synthetic + s) for s in shifts]
    assert fids == sorted(fids) and len(set(fids)) == len(fids)
    assert mmds == sorted(mmds) and len(set(mmds)) == len(mmds)
    # same distribution: small; shift by 2 in 16 dimensions: FID about 16 * 4 = 64, MMD^2 far from 0
    assert fids[0] < 3.0 and fids[-1] > 55.0
    assert abs(mmds[0]) < 0.02 and mmds[-1] > 0.5


def test_mmd_fixed_bandwidth_and_median_heuristic():
    x = torch.tensor([[0.0], [1.0], [3.0]])
    assert median_bandwidth(x) == 2.0
    a, b = _gaussian(64, 2, 5), _gaussian(64, 2, 6) + 1.0
    assert mmd(a, b, bandwidth=1.0) != pytest.approx(mmd(a, b, bandwidth=10.0))
    # an explicit bandwidth equal to the median heuristic gives the same value
    assert mmd(a, b, bandwidth=median_bandwidth(torch.cat([a, b]))) == pytest.approx(mmd(a, b))


@pytest.mark.parametrize(
    ("real", "synthetic", "match"),
    [
        (torch.zeros(0, 4), torch.zeros(5, 4), "real_features is empty"),
        (torch.zeros(5, 4), torch.zeros(0, 4), "synthetic_features is empty"),
        (torch.zeros(5, 4), torch.zeros(5, 3), "4 features per sample but synthetic_features has 3"),
        (torch.zeros(5, 4, 2), torch.zeros(5, 4), r"\(N, F\) matrix"),
        (torch.zeros(1, 4), torch.zeros(5, 4), "at least 2 feature vectors"),
        (torch.full((5, 4), math.nan), torch.zeros(5, 4), "non-finite"),
        ("abc", torch.zeros(5, 4), r"\(N, F\)"),
    ],
)
def test_bad_feature_sets_raise(real, synthetic, match):
    with pytest.raises(ValueError, match=match):
        feature_fid(real, synthetic)
    with pytest.raises(ValueError, match=match):
        mmd(real, synthetic)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel": "linear"}, "kernel must be one of"),
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"bandwidth": "mean"}, "bandwidth"),
    ],
)
def test_bad_mmd_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mmd(torch.zeros(3, 2), torch.ones(3, 2), **kwargs)


@pytest.fixture(scope="module")
def tiny_network():
    torch.manual_seed(0)
    return build_feature_segmenter(2, channels=(4, 8, 16), dropout=0.2).eval()


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom_case(s, spatial_size=(32, 32), spacing=8.0) for s in range(12)]


def test_global_features_shape_and_determinism(tiny_network, phantoms):
    f1 = extract_global_features(tiny_network, phantoms, batch_size=5)
    f2 = extract_global_features(tiny_network, phantoms[::-1], batch_size=12)
    assert f1.shape == (12, 4 + 8 + 16) and f1.dtype == torch.float32
    torch.testing.assert_close(f1, f2.flip(0), atol=1e-5, rtol=1e-4)  # deterministic, batch-independent
    # each layer block is a mean of unit vectors: norm <= 1
    for lo, hi in ((0, 4), (4, 12), (12, 28)):
        assert (f1[:, lo:hi].norm(dim=1) <= 1.0 + 1e-5).all()
    # a coarse 2x2 layout: 4 positions per layer
    assert extract_global_features(tiny_network, phantoms[:2], pool_size=2).shape == (2, 4 * 28)
    # the network's train/eval flags are restored
    tiny_network.train()
    extract_global_features(tiny_network, phantoms[:2])
    assert tiny_network.training
    tiny_network.eval()


def test_features_of_a_hu_shift_give_a_monotone_fid(tiny_network, phantoms):
    real = extract_global_features(tiny_network, phantoms)
    fids = []
    for offset in (0.0, 100.0, 200.0, 400.0):
        shifted = [{**c, "ct": c["ct"] + offset} for c in phantoms]
        fids.append(feature_fid(real, extract_global_features(tiny_network, shifted)))
    assert fids[0] == pytest.approx(0.0, abs=1e-6)
    assert fids == sorted(fids) and fids[1] > 1e-4


def test_global_features_bad_input(tiny_network, phantoms):
    with pytest.raises(KeyError, match="'pet'"):
        extract_global_features(tiny_network, [{"ct": c["ct"]} for c in phantoms[:2]])
    with pytest.raises(ValueError, match="empty"):
        extract_global_features(tiny_network, [])
    bad = [{**phantoms[0], "pet": phantoms[0]["pet"] * math.nan}]
    with pytest.raises(ValueError, match="NaN/Inf values in samples"):
        extract_global_features(tiny_network, bad)
    with pytest.raises(ValueError, match="not sub-modules"):
        extract_global_features(tiny_network, phantoms[:2], layers=["no.such.layer"])
    with pytest.raises(ValueError, match="units must be one of"):
        extract_global_features(tiny_network, phantoms[:2], units="HU")
