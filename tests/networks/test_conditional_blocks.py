from __future__ import annotations

import pytest
import torch

from monai_pairsynth.networks import ConditionalEncoder, CrossEncoderAttention, TimestepCBAM

SIZES = {2: (16, 16), 3: (8, 8, 8)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cbam_shape_and_timestep_dependence(spatial_dims):
    cbam = TimestepCBAM(spatial_dims, channels=8, temb_dim=16)
    x = torch.randn(2, 8, *SIZES[spatial_dims])
    temb = torch.randn(1, 16).expand(2, -1)
    out = cbam(x, temb)
    assert out.shape == x.shape
    # attention weights are in (0, 1): the output never exceeds the input in magnitude
    assert (out.abs() <= x.abs() + 1e-6).all()
    # the timestep embedding shifts the channel descriptor, so it changes the output
    other = cbam(x, temb + 3.0)
    assert (out - other).abs().max() > 1e-3


def test_cbam_channel_attention_sees_the_timestep_per_sample():
    cbam = TimestepCBAM(2, channels=4, temb_dim=6)
    x = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1)
    temb = torch.randn(2, 6)
    out = cbam(x, temb)
    assert not torch.allclose(out[0], out[1])
    out_same = cbam(x, temb[:1].expand(2, -1))
    torch.testing.assert_close(out_same[0], out_same[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"spatial_kernel_size": 4}, "odd"),
        ({"reduction": 0}, "reduction must be >= 1"),
    ],
)
def test_cbam_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TimestepCBAM(**{"spatial_dims": 2, "channels": 8, "temb_dim": 4, **kwargs})


def test_cbam_bad_input_shape():
    with pytest.raises(ValueError, match=r"\(B, 8, <2 spatial dims>\), got \(1, 4, 8, 8\)"):
        TimestepCBAM(2, 8, 4)(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(("channels", "num_res_blocks"), [((4, 8), 1), ((4, 8, 8), 2)])
def test_encoder_levels_match_unet_resolutions(spatial_dims, channels, num_res_blocks):
    enc = ConditionalEncoder(spatial_dims, 1, channels, num_res_blocks=num_res_blocks, norm_num_groups=4)
    size = SIZES[spatial_dims]
    feats = enc(torch.randn(2, 1, *size))
    assert len(feats) == len(channels)
    for i, (f, c) in enumerate(zip(feats, channels)):
        assert f.shape == (2, c, *(s // 2**i for s in size))
    assert len(enc.levels[0]) == num_res_blocks


def test_encoder_bad_arguments():
    with pytest.raises(ValueError, match=r"channels \(4, 6\) must be divisible by norm_num_groups=4"):
        ConditionalEncoder(2, 1, (4, 6), norm_num_groups=4)
    with pytest.raises(ValueError, match="num_res_blocks"):
        ConditionalEncoder(2, 1, (4, 8), num_res_blocks=0, norm_num_groups=4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cross_encoder_attention_mixes_encoders(spatial_dims):
    attn = CrossEncoderAttention(channels=8, num_encoders=3, num_head_channels=4)
    size = (4,) * spatial_dims
    feats = [torch.randn(2, 8, *size) for _ in range(3)]
    out = attn(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    # changing encoder 2's features changes what encoder 0 outputs: tokens attend across encoders
    changed = attn([feats[0], feats[1], feats[2] + torch.randn_like(feats[2])])
    assert (changed[0] - out[0]).abs().max() > 1e-4
    # but spatial positions are not mixed up: the residual path keeps each encoder's own features
    assert torch.corrcoef(torch.stack([out[0].flatten(), feats[0].flatten()]))[0, 1] > 0.5


def test_cross_encoder_attention_bad_inputs():
    attn = CrossEncoderAttention(channels=8, num_encoders=2)
    with pytest.raises(ValueError, match="expected features from 2 encoders, got 1"):
        attn([torch.zeros(1, 8, 4, 4)])
    with pytest.raises(ValueError, match="one shape"):
        attn([torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2)])
    with pytest.raises(ValueError, match="must divide channels=8"):
        CrossEncoderAttention(channels=8, num_encoders=2, num_head_channels=3)


@pytest.mark.parametrize(
    ("spatial", "pooled"), [((16, 16), (8, 8)), ((12, 20), (6, 10)), ((8, 8, 8), (4, 4, 4))]
)
def test_cross_encoder_attention_pools_large_maps(spatial, pooled):
    attn = CrossEncoderAttention(channels=8, num_encoders=2, num_head_channels=4, max_tokens=64)
    assert attn.pooled_size(spatial) == pooled
    feats = [torch.randn(2, 8, *spatial) for _ in range(2)]
    out = attn(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    # the update is piecewise constant on the pooled grid: the residual difference has its rank
    update = out[0] - feats[0]
    factor = spatial[0] // pooled[0]
    torch.testing.assert_close(update[..., 0, :], update[..., factor - 1, :])
    changed = attn([feats[0], feats[1] + torch.randn_like(feats[1])])
    assert (changed[0] - out[0]).abs().max() > 1e-4
    unpooled = CrossEncoderAttention(channels=8, num_encoders=2, num_head_channels=4, max_tokens=None)
    assert unpooled.pooled_size(spatial) == spatial
