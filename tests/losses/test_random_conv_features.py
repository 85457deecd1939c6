from __future__ import annotations

import pytest
import torch

from monai_pairsynth.losses import PairedDiffusionLoss, RandomConvFeatures, load_feature_weights


@pytest.mark.parametrize(
    "spatial_dims, shape, expected",
    [
        (2, (2, 1, 16, 16), [(2, 4, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]),
        (3, (1, 1, 8, 8, 8), [(1, 4, 8, 8, 8), (1, 8, 4, 4, 4), (1, 8, 2, 2, 2)]),
    ],
)
def test_shapes(spatial_dims, shape, expected):
    net = RandomConvFeatures(spatial_dims=spatial_dims, channels=(4, 8, 8))
    assert [tuple(f.shape) for f in net(torch.rand(shape))] == expected


def test_seeded_and_frozen():
    a, b, c = (RandomConvFeatures(channels=(4, 8), seed=s) for s in (3, 3, 4))
    x = torch.rand(1, 1, 16, 16)
    assert all(torch.equal(fa, fb) for fa, fb in zip(a(x), b(x)))
    assert not torch.allclose(a(x)[0], c(x)[0])
    assert not any(p.requires_grad for p in a.parameters())
    # gradients flow through to the input
    xg = x.clone().requires_grad_(True)
    sum(f.sum() for f in a(xg)).backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0


def test_features_are_not_degenerate():
    # Kaiming scaling keeps activations in a sane range at every stage
    feats = RandomConvFeatures(channels=(16, 32, 64))(torch.rand(2, 1, 32, 32) * 2 - 1)
    for f in feats:
        assert 1e-2 < float(f.std()) < 10.0


def test_weights_round_trip(tmp_path):
    src = RandomConvFeatures(channels=(4, 8), seed=7)
    path = tmp_path / "feat.pt"
    torch.save(src.state_dict(), path)
    dst = RandomConvFeatures(channels=(4, 8), seed=0, weights_path=path)
    x = torch.rand(1, 1, 16, 16)
    assert all(torch.equal(fa, fb) for fa, fb in zip(src(x), dst(x)))
    # also accepted wrapped as {"state_dict": ...} and through the loss
    torch.save({"state_dict": src.state_dict()}, tmp_path / "wrapped.pt")
    loss = PairedDiffusionLoss(
        feature_network=RandomConvFeatures(channels=(4, 8), seed=1),
        feature_weights_path=tmp_path / "wrapped.pt",
    )
    assert torch.equal(loss.feature_network.stages[0][0].weight, src.stages[0][0].weight)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        RandomConvFeatures(weights_path=tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        PairedDiffusionLoss(feature_weights_path=tmp_path / "nope.pt")


def test_mismatched_file_names_keys_and_shapes(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(RandomConvFeatures(channels=(4, 16)).state_dict(), path)
    with pytest.raises(
        ValueError,
        match=r"shape mismatches.*stages\.1\.0\.weight: file \(16, 4, 3, 3\) vs network \(8, 4, 3, 3\)",
    ):
        load_feature_weights(RandomConvFeatures(channels=(4, 8)), path)
    with pytest.raises(ValueError, match=r"unexpected keys \['stages\.1\.0\.bias'"):
        load_feature_weights(RandomConvFeatures(channels=(4,)), path)
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        load_feature_weights(RandomConvFeatures(), tmp_path / "junk.pt")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 1}, r"\[2, 3\]"),
        ({"channels": ()}, "channels"),
        ({"kernel_size": 2}, "odd"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomConvFeatures(**kwargs)


def test_wrong_input_shape():
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        RandomConvFeatures()(torch.zeros(2, 3, 8, 8))
