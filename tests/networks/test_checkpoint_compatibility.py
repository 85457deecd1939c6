"""Pins the parameterisation and the outputs of PairedDiffusionModel so that existing checkpoints keep loading.

The expected values were computed from the code of commit ef36dac (before the sampling-speed work on the
conditional pathway) with the helpers :func:`_layout`, :func:`_fill_parameters` and :func:`_outputs` below. If one of these tests fails, checkpoints trained before the change would no longer
load strictly or would compute something else: do not update the numbers, fix the code (or add a new,
opt-in option instead of changing what an existing configuration means).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from monai_pairsynth.networks import PairedDiffusionModel

CONFIGS = {
    "default": {},
    "cpu_default": {
        "channels": (16, 32, 32),
        "attention_levels": (False, False, True),
        "num_res_blocks": 1,
        "norm_num_groups": 8,
        "num_head_channels": 8,
    },
    "two_3d": {
        "modalities": ("ct", "pet"),
        "spatial_dims": 3,
        "channels": (8, 16),
        "attention_levels": (False, True),
        "norm_num_groups": 4,
        "num_head_channels": 4,
        "num_res_blocks": (1, 2),
    },
    "four_noattn": {
        "modalities": ("ct", "mr", "oar", "pet"),
        "channels": (8, 16, 16),
        "attention_levels": (False, False, False),
        "norm_num_groups": 4,
        "encoder_attention": False,
        "cond_channels": (4, 8, 8),
        "num_res_blocks": 2,
    },
}

# computed at commit ef36dac: (state-dict layout hash, module-list hash, number of state-dict entries,
# sum of all parameters after torch.manual_seed(0) construction)
LAYOUTS = {
    "default": ("6cf87cb30309f3ef", "cc72ffa7d3e54b6f", 927, 6380.463729),
    "cpu_default": ("28d75668fc8412ed", "cc72ffa7d3e54b6f", 927, 3228.140495),
    "two_3d": ("e5dc7959cd0ecf4e", "25e8d499b36b26d2", 510, 947.795382),
    "four_noattn": ("d5b4b7b2d1f590fe", "ebf5865a21ea15ef", 1520, 2944.741223),
}

# computed at commit ef36dac: five evenly spaced output values and the sum of |output| per modality, for
# every parameter drawn from N(0, 0.2^2) (so that every zero-initialised layer is open) on a fixed input
OUTPUTS = {
    "default": {
        "ct": ([-0.353947, -0.209229, -0.20671, -0.417407, -0.268649], 172.52417),
        "pet": ([-0.436389, -0.690422, -0.482206, -0.347914, -0.83657], 224.11793),
        "label": ([0.098796, 0.030921, 0.137644, -0.040669, 0.259852], 100.55295),
    },
    "cpu_default": {
        "ct": ([0.240365, 0.224321, 0.18353, 0.366986, 0.698087], 163.79401),
        "pet": ([-0.061902, 0.008329, -0.506303, 0.029971, 0.114555], 95.16012),
        "label": ([-0.108586, 0.273128, 0.877902, 0.11554, 0.396975], 107.36931),
    },
    "two_3d": {
        "ct": ([-0.39722, -0.214024, -0.107985, 0.104007, 0.185755], 329.82556),
        "pet": ([-0.331047, -0.62658, -0.677298, -0.198582, -0.583487], 747.18263),
    },
    "four_noattn": {
        "ct": ([-0.18197, -0.202064, -0.122863, -0.256045, -0.017538], 104.82059),
        "mr": ([-0.596902, -0.613227, -0.401381, -0.428024, -0.349965], 256.83195),
        "oar": ([-0.072414, -0.008169, 0.012531, 0.031543, 0.147205], 32.10172),
        "pet": ([0.099786, 0.318356, 0.237827, 0.251516, 0.348021], 96.86882),
    },
}


def _layout(model: torch.nn.Module) -> tuple[str, str, int]:
    rows = sorted(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    modules = [f"{n}:{type(m).__name__}" for n, m in model.named_modules()]
    state_hash = hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
    module_hash = hashlib.sha256("\n".join(modules).encode()).hexdigest()[:16]
    return state_hash, module_hash, len(rows)


def _fill_parameters(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


def _outputs(model: PairedDiffusionModel) -> dict[str, torch.Tensor]:
    size = (16, 16) if model.spatial_dims == 2 else (8, 8, 8)
    generator = torch.Generator().manual_seed(7)
    noisy = {m: torch.randn(2, 1, *size, generator=generator) for m in model.modalities}
    with torch.no_grad():
        return model(noisy, torch.tensor([900, 35]))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_names_shapes_and_modules_are_unchanged(name):
    torch.manual_seed(0)
    model = PairedDiffusionModel(**CONFIGS[name])
    state_hash, module_hash, entries, init_sum = LAYOUTS[name]
    assert _layout(model) == (state_hash, module_hash, entries)
    # same seed -> same initial weights as before
    total = float(sum(p.detach().double().sum() for p in model.parameters()))
    assert total == pytest.approx(init_sum, abs=1e-3)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_outputs_of_a_fixed_parameterisation_are_unchanged(name):
    model = _fill_parameters(PairedDiffusionModel(**CONFIGS[name])).eval()
    out = _outputs(model)
    assert list(out) == list(OUTPUTS[name])
    for modality, (values, abs_sum) in OUTPUTS[name].items():
        flat = out[modality].flatten()
        picked = flat[:: max(flat.numel() // 5, 1)][:5]
        torch.testing.assert_close(picked, torch.tensor(values), rtol=1e-4, atol=2e-5)
        assert float(flat.double().abs().sum()) == pytest.approx(abs_sum, rel=1e-5)


def test_a_state_dict_loads_strictly_into_a_rebuilt_model():
    model = _fill_parameters(PairedDiffusionModel(**CONFIGS["cpu_default"])).eval()
    rebuilt = PairedDiffusionModel(**model.get_config()).eval()
    result = rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    expected, got = _outputs(model), _outputs(rebuilt)
    for m in model.modalities:
        torch.testing.assert_close(got[m], expected[m], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("config", "cond_channels"),
    [
        ({}, (16, 32, 32)),
        (CONFIGS["cpu_default"], (8, 16, 16)),
        (CONFIGS["two_3d"], (4, 8)),
    ],
)
def test_cond_channels_none_keeps_meaning_half_width(config, cond_channels):
    model = PairedDiffusionModel(**config)
    assert model.get_config()["cond_channels"] is None
    for name in model.modalities:
        assert model.denoiser(name).cond_channels == cond_channels


# the get_config() of a model built with the default arguments, as written into checkpoints at commit ef36dac
DEFAULT_CONFIG = {
    "modalities": ["ct", "pet", "label"],
    "spatial_dims": 2,
    "in_channels": 1,
    "channels": [32, 64, 64],
    "attention_levels": [False, False, True],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "num_head_channels": 8,
    "cond_channels": None,
    "encoder_attention": True,
    "filter_init_cutoff": 0.4,
    "filter_init_strength": 0.8,
    "use_flash_attention": True,
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_get_config_of_existing_configurations_is_unchanged(name):
    config = PairedDiffusionModel(**CONFIGS[name]).get_config()
    # exactly the keys checkpoints carried before: engines.check_model_config compares key by key
    assert list(config) == list(DEFAULT_CONFIG)
    expected = {
        **DEFAULT_CONFIG,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in CONFIGS[name].items()},
    }
    assert config == expected
    # a checkpoint's config rebuilds a model whose config is that same dict
    assert PairedDiffusionModel(**expected).get_config() == expected
