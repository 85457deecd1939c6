"""The filter on 3D triplets: a tiny 3D UNet segmenter on 16³ phantom volumes (8 mm voxels)."""

from __future__ import annotations

import pytest
import torch
from quality_phantom import phantom_cases, stack

from monai_pairsynth.quality import FeatureCentroidFilter, corrupt_triplets, train_feature_segmenter

GRID = {"spatial_dims": 3, "spatial_size": (16, 16, 16), "spacing": 8.0}


@pytest.fixture(scope="module")
def setup_3d():
    real = phantom_cases(24, base_seed=0, **GRID)
    net = train_feature_segmenter(
        real, spatial_dims=3, channels=(4, 8, 16), num_res_units=0, epochs=3, batch_size=4, seed=0
    )
    filt = FeatureCentroidFilter(net, mc_passes=2).fit(real)
    return real, net, filt, stack(phantom_cases(8, base_seed=900, **GRID))


def test_3d_scores_and_selection(setup_3d):
    real, _, filt, test = setup_3d
    assert filt.spatial_shape == (16, 16, 16)
    assert filt.layers == ["model.0", "model.1.submodule.0", "model.1.submodule.1.submodule"]
    # pooled embedding at 4 positions per axis (3D default): channels 4, 8, 16 at 4³, 4³ and 4³ positions
    assert filt.state_dict()["fitted"]["real_embeddings"].shape == (24, (4 + 8 + 16) * 64)
    scores = filt.score(test)
    for name, values in scores.items():
        assert values.shape == (8,), name
        # a 16³ volume at 8 mm need not contain the tumour: the plausibility measurements of an empty mask are NaN
        if name not in ("mask_in_body", "pet_uptake"):
            assert bool(torch.isfinite(values.float()).all()), name
    noise = filt.score(corrupt_triplets(test, "pure_noise", generator=torch.Generator().manual_seed(0)))
    assert float(noise["distance"].min()) > float(scores["distance"].max())
    assert float(noise["nearest_real"].min()) > float(scores["nearest_real"].max())
    pool = filt.select(test, mode="pool", ratio=0.5, num_real=4)
    assert pool.num_accepted == 2
    copies = stack(real[:4])
    copies["pet"] = copies["pet"] + 0.005 * torch.randn(
        copies["pet"].shape, generator=torch.Generator().manual_seed(0)
    )
    assert filt.select(copies).reason_counts()["memorised"] == 4


def test_3d_round_trip_and_shape_errors(setup_3d, tmp_path):
    _, net, filt, test = setup_3d
    loaded = FeatureCentroidFilter.load(filt.save(tmp_path / "f3d.pt"), net)
    a, b = filt.score(test), loaded.score(test)
    for name in a:
        assert torch.equal(a[name].nan_to_num(-1.0), b[name].nan_to_num(-1.0)), name
    assert loaded.thresholds == filt.thresholds
    flat = {k: v[..., 0] for k, v in test.items()}  # a 2D batch against a 3D filter
    with pytest.raises(ValueError, match=r"spatial size \(16, 16\) .* fitted on, \(16, 16, 16\)"):
        filt.score(flat)
