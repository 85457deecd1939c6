from __future__ import annotations

import json

import pytest
import torch

from monai_pairsynth.networks import LinkedDenoiser, PairedDiffusionModel

TINY = {"channels": (8, 16), "attention_levels": (False, True), "norm_num_groups": 4, "num_head_channels": 8}
SIZES = {2: (16, 16), 3: (8, 8, 8)}
MODALITY_SETS = [("ct", "pet"), ("ct", "pet", "label"), ("ct", "mr", "oar", "label")]


def _inputs(modalities, spatial_dims, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    noisy = {m: torch.randn(batch, 1, *SIZES[spatial_dims], generator=g) for m in modalities}
    return noisy, torch.randint(0, 1000, (batch,), generator=g)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("modalities", MODALITY_SETS)
def test_output_shapes(spatial_dims, modalities):
    model = PairedDiffusionModel(modalities, spatial_dims=spatial_dims, **TINY)
    noisy, t = _inputs(modalities, spatial_dims)
    out = model(noisy, t)
    assert list(out) == list(modalities)
    for m in modalities:
        assert out[m].shape == noisy[m].shape
        assert torch.isfinite(out[m]).all()
    assert model.modalities == tuple(modalities)
    assert model.spatial_dims == spatial_dims
    assert set(model.denoisers) == set(modalities)
    for m in modalities:
        den = model.denoiser(m)
        assert isinstance(den, LinkedDenoiser)
        assert set(den.cond_encoders) == set(modalities) - {m}
        assert set(den.cond_filters) == set(modalities) - {m}


def test_shared_timestep_forms_agree():
    model = PairedDiffusionModel(("ct", "pet"), **TINY)
    noisy, _ = _inputs(("ct", "pet"), 2)
    a = model(noisy, torch.tensor([250, 250]))
    b = model(noisy, torch.tensor([250]))
    c = model(noisy, torch.tensor(250))
    for m in ("ct", "pet"):
        torch.testing.assert_close(a[m], b[m])
        torch.testing.assert_close(a[m], c[m])


def test_config_round_trip_gives_identical_outputs():
    model = PairedDiffusionModel(("ct", "pet", "label"), cond_channels=(4, 8), num_res_blocks=(1, 2), **TINY)
    # move the zero-initialised layers off zero so the comparison covers the whole network
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    config = json.loads(json.dumps(model.get_config()))
    rebuilt = PairedDiffusionModel(**config)
    assert rebuilt.get_config() == model.get_config()
    rebuilt.load_state_dict(model.state_dict())
    noisy, t = _inputs(("ct", "pet", "label"), 2)
    out_a, out_b = model(noisy, t), rebuilt(noisy, t)
    for m in model.modalities:
        assert out_a[m].abs().max() > 0
        torch.testing.assert_close(out_a[m], out_b[m], rtol=0, atol=0)


def test_each_denoiser_has_its_own_parameters():
    model = PairedDiffusionModel(("ct", "pet"), **TINY)
    ids_ct = {id(p) for p in model.denoiser("ct").parameters()}
    ids_pet = {id(p) for p in model.denoiser("pet").parameters()}
    assert not ids_ct & ids_pet
    assert len(ids_ct) + len(ids_pet) == len(list(model.parameters()))


def test_unknown_denoiser_name():
    model = PairedDiffusionModel(("ct", "pet"), **TINY)
    with pytest.raises(KeyError, match=r"'mr'.*\['ct', 'pet'\]"):
        model.denoiser("mr")


@pytest.fixture(scope="module")
def three_level_model():
    return PairedDiffusionModel(
        ("ct", "pet", "label"),
        channels=(8, 16, 16),
        attention_levels=(False, False, False),
        norm_num_groups=4,
    )


def _bad_cases():
    shape = (2, 1, 16, 16)
    ok = {"ct": torch.zeros(shape), "pet": torch.zeros(shape), "label": torch.zeros(shape)}
    t = torch.tensor([1, 2])
    nan_pet = dict(ok, pet=torch.zeros(shape).index_fill_(2, torch.tensor([3]), float("nan")))
    inf_label = dict(ok, label=torch.full(shape, float("inf")))
    return [
        (
            "missing",
            {"ct": ok["ct"], "pet": ok["pet"]},
            t,
            r"missing modality \['label'\].*\['ct', 'pet', 'label'\]",
        ),
        ("extra", dict(ok, mr=torch.zeros(shape)), t, r"unknown modality \['mr'\]"),
        (
            "different shapes",
            dict(ok, pet=torch.zeros(2, 1, 32, 32)),
            t,
            r"'ct': \(2, 1, 16, 16\), 'pet': \(2, 1, 32, 32\), 'label': \(2, 1, 16, 16\)",
        ),
        (
            "3d input to 2d model",
            dict(ok, ct=torch.zeros(2, 1, 16, 16, 16)),
            t,
            r"'ct'.*\(2, 1, 16, 16, 16\).*2D",
        ),
        ("channels", {k: torch.zeros(2, 3, 16, 16) for k in ok}, t, r"'ct' has 3 channels.*expected 1"),
        (
            "not divisible",
            {k: torch.zeros(2, 1, 18, 16) for k in ok},
            t,
            r"spatial size \(18, 16\).*divisible by 4.*\[18\]",
        ),
        ("nan", nan_pet, t, r"modality \['pet'\] contains NaN"),
        ("inf", inf_label, t, r"modality \['label'\] contains NaN or Inf"),
        (
            "nan and inf",
            dict(nan_pet, label=inf_label["label"]),
            t,
            r"\['pet', 'label'\] contains NaN or Inf",
        ),
        (
            "timesteps length",
            ok,
            torch.tensor([1, 2, 3]),
            r"timesteps must have shape \(2,\).*got shape \(3,\)",
        ),
        ("timesteps 2d", ok, torch.zeros(2, 1), r"timesteps.*got shape \(2, 1\)"),
        ("not a tensor", dict(ok, ct=[[0.0]]), t, r"'ct' must be a torch.Tensor"),
    ]


@pytest.mark.parametrize(
    ("case", "noisy", "timesteps", "message"), _bad_cases(), ids=[c[0] for c in _bad_cases()]
)
def test_bad_inputs_raise_clear_errors(three_level_model, case, noisy, timesteps, message):
    with pytest.raises(ValueError, match=message):
        three_level_model(noisy, timesteps)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modalities": ("ct",)}, "at least two modalities"),
        ({"modalities": ("ct", "ct")}, "distinct"),
        ({"modalities": "ct"}, "sequence of names"),
        ({"modalities": ("ct", "a.b")}, "'a.b' is not allowed"),
        ({"modalities": ("ct", "train")}, "'train' is not allowed"),
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"channels": (8, 10)}, "divisible by norm_num_groups=4"),
        ({"attention_levels": (False,)}, "one entry per level"),
        ({"cond_channels": (8,)}, "cond_channels must have one entry per level"),
        ({"cond_channels": (8, 10)}, "cond_channels .* divisible by norm_num_groups=4"),
        ({"cond_channels": (8, 4)}, "num_head_channels=8 .* cond_channels\\[-1\\]=4"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"filter_init_cutoff": 1.0}, "init_cutoff must lie in the open interval"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    args = {"modalities": ("ct", "pet"), **TINY, **kwargs}
    with pytest.raises(ValueError, match=message):
        PairedDiffusionModel(**args)


def test_metatensor_inputs_give_plain_tensor_outputs():
    from monai.data import MetaTensor

    model = PairedDiffusionModel(("ct", "pet"), **TINY)
    noisy, t = _inputs(("ct", "pet"), 2)
    plain = model(noisy, t)
    meta = model({k: MetaTensor(v) for k, v in noisy.items()}, t)
    for m in ("ct", "pet"):
        assert type(meta[m]) is torch.Tensor
        torch.testing.assert_close(meta[m], plain[m])


def test_flash_attention_switch_keeps_parameters_and_outputs():
    fast = PairedDiffusionModel(("ct", "pet"), use_flash_attention=True, **TINY)
    slow = PairedDiffusionModel(("ct", "pet"), use_flash_attention=False, **TINY)
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.05 * torch.randn_like(p))
    slow.load_state_dict(fast.state_dict())  # strict: same parameter names and shapes
    noisy, t = _inputs(("ct", "pet"), 2)
    a, b = fast(noisy, t), slow(noisy, t)
    for m in ("ct", "pet"):
        assert a[m].abs().max() > 0
        torch.testing.assert_close(a[m], b[m], rtol=1e-4, atol=1e-5)


def test_runs_under_bfloat16_autocast():
    model = PairedDiffusionModel(("ct", "pet"), **TINY)
    noisy, t = _inputs(("ct", "pet"), 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(noisy, t)
    loss = sum(o.float().square().mean() for o in out.values())
    loss.backward()
    for m in ("ct", "pet"):
        assert out[m].shape == noisy[m].shape
        assert torch.isfinite(out[m]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_attention_levels_must_be_booleans():
    from monai_pairsynth.networks import PairedDiffusionModel as _P

    with pytest.raises(ValueError, match="attention_levels must be booleans"):
        _P(("ct", "pet"), channels=(8, 16), attention_levels=["false", "false"], norm_num_groups=4)
