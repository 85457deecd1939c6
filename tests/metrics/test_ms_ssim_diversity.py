"""MS-SSIM at 64 and 128 pixels, pairwise MS-SSIM of a set, and the synthetic-vs-real diversity report."""

from __future__ import annotations

import pytest
import torch

from monai_pairsynth.data import make_phantom_case
from monai_pairsynth.metrics import MS_SSIM_WEIGHTS, diversity_report, ms_ssim, pairwise_ms_ssim


def _phantoms(n: int, size: int, base: int = 0) -> list[dict]:
    return [make_phantom_case(base + s, spatial_size=(size, size), spacing=256.0 / size) for s in range(n)]


def test_weights_are_monais_first_three_renormalised():
    assert sum(MS_SSIM_WEIGHTS) == pytest.approx(1.0)
    assert MS_SSIM_WEIGHTS == pytest.approx((0.0448 / 0.6305, 0.2856 / 0.6305, 0.3001 / 0.6305))


@pytest.mark.parametrize("size", [28, 64, 128])
def test_ms_ssim_of_an_image_with_itself_is_one(size):
    x = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(size))
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(3))
    y = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(size + 1))
    value = ms_ssim(x, y)
    assert value.shape == (3,) and (value < 0.2).all()  # independent uniform noise: nearly no similarity


def test_ms_ssim_3d():
    x = torch.rand(1, 1, 32, 32, 28, generator=torch.Generator().manual_seed(0))
    assert ms_ssim(x, x).item() == pytest.approx(1.0)


@pytest.mark.parametrize("size", [16, 27])
def test_too_small_images_raise_a_clear_error(size):
    x = torch.rand(2, 1, size, size)
    with pytest.raises(ValueError, match="at least 28 pixels"):
        ms_ssim(x, x)
    with pytest.raises(ValueError, match="at least 28 pixels"):
        pairwise_ms_ssim(x)


def test_ms_ssim_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        ms_ssim(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ms_ssim(torch.rand(64, 64), torch.rand(64, 64))


@pytest.mark.parametrize("size", [64, 128])
def test_identical_set_has_no_diversity_and_phantoms_have_some(size):
    cases = _phantoms(6, size)
    ct = torch.stack([(c["ct"].as_tensor().clamp(-1000, 1000) + 1000) / 2000 for c in cases])
    same = pairwise_ms_ssim(ct[:1].repeat(6, 1, 1, 1))
    assert same == {"mean": 1.0, "sd": 0.0, "num_pairs": 15}
    independent = pairwise_ms_ssim(ct)
    assert independent["num_pairs"] == 15
    # measured: 0.70 (64 px) and 0.68 (128 px); the anatomy is shared, the details are not
    assert 0.4 < independent["mean"] < 0.9


def test_pair_subsample_is_seeded():
    x = torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    a = pairwise_ms_ssim(x, max_pairs=7, seed=1)
    assert a == pairwise_ms_ssim(x, max_pairs=7, seed=1, batch_size=3)
    assert a["num_pairs"] == 7
    assert a != pairwise_ms_ssim(x, max_pairs=7, seed=2)
    assert pairwise_ms_ssim(x, max_pairs=1000)["num_pairs"] == 45


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (torch.rand(1, 1, 32, 32), {}, "at least 2 images"),
        (torch.rand(3, 32, 32), {}, r"\(N, C, H, W\)"),
        (torch.rand(3, 1, 32, 32), {"max_pairs": 0}, "max_pairs"),
    ],
)
def test_pairwise_bad_input(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pairwise_ms_ssim(images, **kwargs)


def test_diversity_report_copies_versus_real():
    real = _phantoms(6, 64)
    copies = [real[0]] * 6
    report = diversity_report(copies, real, max_pairs=None)
    assert sorted(report) == ["ct", "pet"]
    for key in ("ct", "pet"):
        entry = report[key]
        assert entry["synthetic"] == pytest.approx(1.0) and entry["diversity_ratio"] == pytest.approx(
            0.0, abs=1e-6
        )
        assert entry["real"] < 0.9 and entry["num_pairs_real"] == 15
    # another sample of the same distribution: about as diverse as the real set
    other = diversity_report(_phantoms(6, 64, base=500), real, max_pairs=None)
    for key in ("ct", "pet"):
        assert 0.6 < other[key]["diversity_ratio"] < 1.6


def test_diversity_report_normalized_units_match_physical():
    real = _phantoms(4, 64)
    synthetic = _phantoms(4, 64, base=50)
    from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS as S

    def normalise(cases):
        return [{k: S[k].normalize(c[k]) for k in ("ct", "pet")} for c in cases]

    a = diversity_report(synthetic, real)
    b = diversity_report(normalise(synthetic), normalise(real), units="normalized")
    for key in ("ct", "pet"):
        assert a[key]["synthetic"] == pytest.approx(b[key]["synthetic"], abs=1e-5)


def test_diversity_report_bad_input():
    real = _phantoms(3, 32)
    with pytest.raises(KeyError, match="'pet'"):
        diversity_report([{"ct": c["ct"]} for c in real], real)
    with pytest.raises(ValueError, match="empty"):
        diversity_report([], real)
    with pytest.raises(ValueError, match="is a mask"):
        diversity_report(real, real, image_keys=("ct", "label"))
    with pytest.raises(ValueError, match="no modality spec"):
        diversity_report(real, real, image_keys=("mr",))
    with pytest.raises(ValueError, match="at least 2"):
        diversity_report(real[:1], real)
