from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from monai_pairsynth.quality import MCDropoutFeatureExtractor, build_feature_segmenter, find_dropout_modules

LAYERS = ["model.0", "model.1.submodule"]


def tiny_unet(dropout: float = 0.3, norm: str = "instance") -> UNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_feature_segmenter(2, channels=(4, 8), dropout=dropout, norm=norm)


def test_passes_differ_and_are_seeded():
    net = tiny_unet()
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    extractor = MCDropoutFeatureExtractor(net, LAYERS, mc_passes=3)
    feats, outputs = extractor(x, generator=torch.Generator().manual_seed(0))
    assert feats["model.0"].shape == (3, 2, 4, 8, 8)
    assert feats["model.1.submodule"].shape == (3, 2, 8, 8, 8)
    assert outputs.shape == (3, 2, 2, 16, 16)
    for name in LAYERS:
        assert not torch.allclose(feats[name][0], feats[name][1])
        assert not torch.allclose(feats[name][1], feats[name][2])
    again, _ = extractor(x, generator=torch.Generator().manual_seed(0))
    other, _ = extractor(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again["model.0"], feats["model.0"])
    assert not torch.equal(other["model.0"], feats["model.0"])


def test_single_pass_is_the_deterministic_eval_forward():
    net = tiny_unet()
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    net.eval()
    with torch.no_grad():
        expected = net(x)
    feats, outputs = MCDropoutFeatureExtractor(net, LAYERS, mc_passes=1)(
        x, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(outputs[0], expected)
    feats_other_seed, _ = MCDropoutFeatureExtractor(net, LAYERS, mc_passes=1)(x)
    assert torch.equal(feats["model.0"], feats_other_seed["model.0"])


def test_mc_mean_approaches_the_deterministic_output():
    # inverted dropout keeps the expectation: the mean of many passes of the first layer equals the eval output
    net = tiny_unet(dropout=0.2)
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(2))
    det, _ = MCDropoutFeatureExtractor(net, ["model.0.conv"], mc_passes=1)(x)
    mc, _ = MCDropoutFeatureExtractor(net, ["model.0.conv"], mc_passes=400)(
        x, generator=torch.Generator().manual_seed(0)
    )
    error = (mc["model.0.conv"].mean(0) - det["model.0.conv"][0]).abs().mean()
    single_pass_error = (mc["model.0.conv"][0] - det["model.0.conv"][0]).abs().mean()
    assert error < 0.06 * det["model.0.conv"].abs().mean()
    assert single_pass_error > 5 * error


def test_batchnorm_stays_in_eval_and_flags_are_restored():
    net = tiny_unet(norm="batch")
    net.train()
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    running = bn.running_mean.clone()
    extractor = MCDropoutFeatureExtractor(net, LAYERS, mc_passes=2)
    extractor(torch.randn(4, 2, 16, 16) * 5 + 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bn.running_mean, running)  # no batch statistics were used or updated
    assert all(m.training for m in net.modules())  # flags restored
    net.eval()
    extractor(torch.randn(2, 2, 16, 16))
    assert not any(m.training for m in net.modules())


def test_channelwise_dropout_drops_whole_channels():
    net = nn.Sequential(nn.Conv2d(1, 16, 1), nn.Dropout2d(0.5))
    nn.init.constant_(net[0].weight, 1.0)
    nn.init.constant_(net[0].bias, 1.0)
    feats, _ = MCDropoutFeatureExtractor(net, ["1"], mc_passes=2)(
        torch.ones(1, 1, 4, 4), torch.Generator().manual_seed(0)
    )
    per_channel = feats["1"][0, 0].flatten(1)  # (16, 16 positions)
    assert set(per_channel.unique().tolist()) <= {0.0, 4.0}  # dropped or kept (and rescaled by 1 / (1 - p))
    assert torch.equal(per_channel.min(1).values, per_channel.max(1).values)  # constant over each channel
    assert 0 < int((per_channel[:, 0] == 0).sum()) < 16


@pytest.mark.parametrize("mc_passes", [0, -1, 1.5, True])
def test_bad_number_of_passes(mc_passes):
    with pytest.raises(ValueError, match="mc_passes"):
        MCDropoutFeatureExtractor(tiny_unet(), LAYERS, mc_passes=mc_passes)


def test_bad_layers_and_missing_dropout():
    with pytest.raises(ValueError, match=r"\['model.9'\] are not sub-modules"):
        MCDropoutFeatureExtractor(tiny_unet(), ["model.0", "model.9"])
    with pytest.raises(ValueError, match="at least one layer"):
        MCDropoutFeatureExtractor(tiny_unet(), [])
    with pytest.raises(ValueError, match="string"):
        MCDropoutFeatureExtractor(tiny_unet(), "model.0")
    with pytest.raises(ValueError, match="needs dropout layers"):
        MCDropoutFeatureExtractor(tiny_unet(dropout=0.0), LAYERS, mc_passes=2)
    assert MCDropoutFeatureExtractor(tiny_unet(dropout=0.0), LAYERS, mc_passes=1).mc_passes == 1
    with pytest.raises(ValueError, match="AlphaDropout"):
        find_dropout_modules(nn.Sequential(nn.Linear(2, 2), nn.AlphaDropout(0.1)))
    assert len(find_dropout_modules(tiny_unet())) > 0
