from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, UNet
from quality_phantom import phantom_cases, stack
from torch import nn

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS
from monai_pairsynth.quality import (
    build_feature_segmenter,
    load_feature_segmenter,
    prepare_triplet_batch,
    save_feature_segmenter,
    train_feature_segmenter,
    unet_encoder_layers,
)


@pytest.mark.parametrize(
    ("channels", "expected"),
    [
        ((4, 8), {"model.0": (4, 16, 16), "model.1.submodule": (8, 16, 16)}),
        (
            (4, 8, 16),
            {
                "model.0": (4, 16, 16),
                "model.1.submodule.0": (8, 8, 8),
                "model.1.submodule.1.submodule": (16, 8, 8),
            },
        ),
        (
            (4, 8, 16, 32),
            {
                "model.0": (4, 16, 16),
                "model.1.submodule.0": (8, 8, 8),
                "model.1.submodule.1.submodule.0": (16, 4, 4),
                "model.1.submodule.1.submodule.1.submodule": (32, 4, 4),  # MONAI's bottom block has stride 1
            },
        ),
    ],
)
def test_unet_encoder_layers_are_the_down_path(channels, expected):
    net = build_feature_segmenter(2, channels=channels)
    assert unet_encoder_layers(net) == list(expected)
    shapes = {}
    modules = dict(net.named_modules())
    for name in expected:
        modules[name].register_forward_hook(
            lambda m, a, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))
        )
    net(torch.zeros(1, 2, 32, 32))
    assert shapes == expected


def test_encoder_layers_of_other_networks():
    plain = UNet(3, 2, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    assert unet_encoder_layers(plain) == ["model.0", "model.1.submodule"]
    assert unet_encoder_layers(BasicUNet(2, 2, 2, features=(4, 4, 4, 4, 4, 4)))[-1] == "down_4"
    with pytest.raises(ValueError, match="cannot name encoder layers of a Conv2d"):
        unet_encoder_layers(nn.Conv2d(2, 2, 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"channels": (4,)}, "at least two levels"),
        ({"channels": (4, 8), "strides": (2, 2)}, "strides needs"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_build_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_feature_segmenter(**kwargs)


def test_training_is_seeded_and_leaves_global_rng_alone(tmp_path):
    cases = phantom_cases(8, base_seed=0, spatial_size=(32, 32), spacing=8.0)
    kwargs = {"channels": (4, 8), "epochs": 2, "batch_size": 4, "seed": 3}
    state = torch.random.get_rng_state()
    a = train_feature_segmenter(cases, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_feature_segmenter(cases, **kwargs)
    c = train_feature_segmenter(cases, **{**kwargs, "seed": 4})
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))
    assert not any(m.training for m in a.modules())
    # physical units give the same network as normalised data (up to the float rounding of the unit round trip)
    physical = [{k: DEFAULT_MODALITY_SPECS[k].denormalize(v) for k, v in case.items()} for case in cases]
    normalised_inputs, _, _ = prepare_triplet_batch(
        stack(cases), ["ct", "pet"], "label", "normalized", DEFAULT_MODALITY_SPECS, check_range=True
    )
    physical_inputs, _, _ = prepare_triplet_batch(
        stack(physical), ["ct", "pet"], "label", "physical", DEFAULT_MODALITY_SPECS, check_range=True
    )
    assert torch.allclose(physical_inputs, normalised_inputs, atol=1e-5)  # measured 6e-8
    d = train_feature_segmenter(physical, units="physical", **kwargs)
    # Compare what the two networks compute, not their weights: a conv bias in front of an instance norm has a
    # gradient that is zero up to rounding, which Adam turns into steps of about the learning rate, so those
    # biases differ by up to 4 steps x 2e-3 (how depends on the CPU's rounding; 3.5e-3 measured on an AVX-512
    # Xeon) while the outputs agree to 1e-6. A unit error shows: inputs scaled by 0.999 instead change the
    # probabilities by 9e-4, scaled by 0.99 by 6e-3.
    x = torch.cat([stack(cases)["ct"], stack(cases)["pet"]], 1)
    with torch.no_grad():
        assert torch.allclose(a(x).softmax(1), d(x).softmax(1), atol=1e-4)  # measured 7e-7
    # save / load round trip: same predictions
    path = save_feature_segmenter(a, tmp_path / "seg.pt")
    loaded = load_feature_segmenter(path)
    with torch.no_grad():
        assert torch.equal(a(x), loaded(x))


def test_training_and_io_errors(tmp_path):
    cases = phantom_cases(2, base_seed=0, spatial_size=(16, 16), spacing=16.0)
    physical = [{k: DEFAULT_MODALITY_SPECS[k].denormalize(v) for k, v in case.items()} for case in cases]
    with pytest.raises(ValueError, match="units='physical'"):
        train_feature_segmenter(physical, channels=(4, 8), epochs=1)
    with pytest.raises(KeyError, match="'pet' is missing"):
        train_feature_segmenter(
            [{"ct": c["ct"], "label": c["label"]} for c in cases], channels=(4, 8), epochs=1
        )
    with pytest.raises(ValueError, match="epochs"):
        train_feature_segmenter(cases, epochs=0)
    with pytest.raises(ValueError, match="empty"):
        train_feature_segmenter([], channels=(4, 8), epochs=1)
    with pytest.raises(ValueError, match="not built by build_feature_segmenter"):
        save_feature_segmenter(UNet(2, 2, 2, channels=(4, 8), strides=(2,)), tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        load_feature_segmenter(tmp_path / "nothing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a feature segmenter checkpoint"):
        load_feature_segmenter(tmp_path / "other.pt")
