"""Per-modality timesteps in the linked networks: every condition takes its own timestep (filters, encoders,
CBAMs), the UNet the denoiser's own; shared timesteps and old models compute what they always computed."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

from monai_pairsynth.networks import (
    ConditionalEncoder,
    LinkedDenoiser,
    PairedDiffusionModel,
    TimestepCBAM,
    TimestepLowPassFilter,
)

TINY = {
    "channels": (4, 8),
    "attention_levels": (False, False),
    "norm_num_groups": 4,
    "num_head_channels": 4,
}
SIZES = {2: (16, 16), 3: (8, 8, 8)}


def _randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Every parameter drawn at random (zero-initialised layers opened), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def _denoiser(spatial_dims: int = 2, condition_timesteps: bool = True, seed: int = 0) -> LinkedDenoiser:
    torch.manual_seed(seed)
    net = LinkedDenoiser(
        spatial_dims,
        1,
        ["pet", "label"],
        condition_timesteps=condition_timesteps,
        encoder_attention=True,
        **TINY,
    )
    return _randomise(net, seed).eval()


def _inputs(spatial_dims: int = 2, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    size = SIZES[spatial_dims]
    x = torch.randn(batch, 1, *size, generator=g)
    cond = {n: torch.randn(batch, 1, *size, generator=g) for n in ("pet", "label")}
    return x, cond


# ---------------------------------------------------------------- a module-by-module reference


def _reference_residuals(den: LinkedDenoiser, cond_t: dict[str, torch.Tensor], conditions):
    """The conditional pathway with condition k at its own timestep cond_t[k], submodule by submodule."""
    names = den.condition_names
    tembs = {n: den.cond_time_embed(get_timestep_embedding(cond_t[n], den.cond_channels[0])) for n in names}
    encoded = []
    for n in names:
        filt: TimestepLowPassFilter = den.cond_filters[n]  # type: ignore[assignment]
        x = conditions[n]
        spatial = tuple(x.shape[2:])
        dims = tuple(range(2, x.ndim))
        filtered = torch.fft.irfftn(
            torch.fft.rfftn(x, dim=dims) * filt.mask(spatial, tembs[n]), s=spatial, dim=dims
        )
        enc: ConditionalEncoder = den.cond_encoders[n]  # type: ignore[assignment]
        h = enc.conv_in(filtered)
        feats = []
        for level, block in enumerate(enc.levels):
            h = block(h)
            if enc.temb_dim is not None:
                shift = enc.time_projections[level](torch.nn.functional.silu(tembs[n]))
                h = h + shift.reshape(*shift.shape, *(1,) * den.spatial_dims)
            feats.append(h)
        encoded.append(feats)
    if den.cond_attention is not None:
        lowest = den.cond_attention([f[-1] for f in encoded])
        encoded = [[*f[:-1], low] for f, low in zip(encoded, lowest)]
    fused = []
    for level, (conv, cbam) in enumerate(zip(den.cond_fusion_convs, den.cond_fusion_cbams)):
        y = conv(torch.cat([f[level] for f in encoded], dim=1))
        shift = torch.stack([cbam.temb_proj(tembs[n]) for n in names]).mean(0)
        spatial = tuple(range(2, y.ndim))
        att = torch.sigmoid(
            cbam.channel_mlp(y.mean(dim=spatial) + shift) + cbam.channel_mlp(y.amax(dim=spatial) + shift)
        )
        y = y * att.view(*att.shape, *(1,) * cbam.spatial_dims)
        pooled = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)
        fused.append(y * torch.sigmoid(cbam.spatial_conv(pooled)))
    down = [proj(fused[level]) for proj, level in zip(den.cond_residual_projections, den.residual_levels)]
    return down, den.cond_mid_projection(fused[-1])


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("condition_timesteps", [True, False])
def test_conditions_take_their_own_timesteps_not_the_denoisers(spatial_dims, condition_timesteps):
    """Fails if the filters, encoders or CBAMs were fed the denoiser's own timestep."""
    den = _denoiser(spatial_dims, condition_timesteps)
    x, cond = _inputs(spatial_dims)
    own = torch.tensor([700, 300])
    cond_t = {"pet": torch.tensor([0, 900]), "label": torch.tensor([40, 0])}
    with torch.no_grad():
        out = den(x, own, cond, condition_timesteps=cond_t)
        down, mid = _reference_residuals(den, cond_t, cond)
        expected = den.unet(
            x, own, down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid
        )
        at_own_t = den(x, own, cond)  # what feeding the conditions the denoiser's own t gives
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    assert (out - at_own_t).abs().max() > 2e-4  # 10x the tolerance of the match above


def test_each_condition_timestep_changes_the_prediction():
    den = _denoiser()
    x, cond = _inputs()
    own = torch.tensor([500, 500])
    base = {"pet": torch.tensor([500, 500]), "label": torch.tensor([500, 500])}
    with torch.no_grad():
        ref = den(x, own, cond, condition_timesteps=base)
        for name in ("pet", "label"):
            moved = dict(base, **{name: torch.tensor([0, 0])})
            assert (den(x, own, cond, condition_timesteps=moved) - ref).abs().max() > 1e-4, name
        # the denoiser's own timestep still drives the UNet
        assert (den(x, torch.tensor([0, 0]), cond, condition_timesteps=base) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("condition_timesteps", [True, False])
def test_equal_condition_timesteps_give_the_joint_output(condition_timesteps):
    den = _denoiser(condition_timesteps=condition_timesteps)
    x, cond = _inputs()
    t = torch.tensor([10, 600])
    with torch.no_grad():
        joint = den(x, t, cond)
        per_condition = den(x, t, cond, condition_timesteps={"pet": t, "label": t})
        shared_scalar = den(x, t, cond, condition_timesteps={"pet": t, "label": t[:1].expand(2)})
    torch.testing.assert_close(per_condition, joint, atol=1e-5, rtol=1e-5)
    assert shared_scalar.shape == joint.shape


def test_encoder_time_projections_start_at_zero():
    """A model built with condition_timesteps computes, at initialisation of the new layers, what the model
    without them computes (the old parameterisation), whatever the conditions' timesteps."""
    torch.manual_seed(0)
    old = _randomise(PairedDiffusionModel(**TINY), seed=3).eval()
    new = PairedDiffusionModel(**TINY, condition_timesteps=True).eval()
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(".time_projections." in k for k in missing)
    noisy = {m: torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) for m in old.modalities}
    t = torch.tensor([5, 800])
    with torch.no_grad():
        a, b = old(noisy, t), new(noisy, t)
        c = new(noisy, {m: t for m in new.modalities})
    for m in old.modalities:
        torch.testing.assert_close(b[m], a[m], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(c[m], a[m], atol=1e-5, rtol=1e-5)


def test_old_configuration_is_unchanged():
    model = PairedDiffusionModel(**TINY)
    assert "condition_timesteps" not in model.get_config()
    assert not model.condition_timesteps
    assert not any("time_projections" in k for k in model.state_dict())
    flagged = PairedDiffusionModel(**TINY, condition_timesteps=True)
    assert flagged.get_config()["condition_timesteps"] is True
    rebuilt = PairedDiffusionModel(**flagged.get_config())
    assert sorted(rebuilt.state_dict()) == sorted(flagged.state_dict())
    rebuilt.load_state_dict(flagged.state_dict())  # strict


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_model_per_modality_timesteps_and_predict(spatial_dims):
    torch.manual_seed(0)
    model = PairedDiffusionModel(spatial_dims=spatial_dims, condition_timesteps=True, **TINY).eval()
    size = SIZES[spatial_dims]
    noisy = {m: torch.randn(3, 1, *size) for m in model.modalities}
    t = {"ct": torch.tensor([1, 2, 3]), "pet": torch.tensor([0]), "label": torch.tensor(7)}
    with torch.no_grad():
        out = model(noisy, t)
        some = model(noisy, t, predict=["pet", "ct"])
    assert {m: tuple(v.shape) for m, v in out.items()} == {m: (3, 1, *size) for m in model.modalities}
    assert list(some) == ["ct", "pet"]  # model order
    for m in some:
        torch.testing.assert_close(some[m], out[m])


def test_model_denoiser_gets_its_own_and_the_conditions_timesteps():
    torch.manual_seed(0)
    model = _randomise(PairedDiffusionModel(condition_timesteps=True, **TINY), seed=2).eval()
    noisy = {
        m: torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(5)) for m in model.modalities
    }
    t = {"ct": torch.tensor([3, 400]), "pet": torch.tensor([0, 0]), "label": torch.tensor([900, 20])}
    with torch.no_grad():
        out = model(noisy, t)
        den = model.denoiser("pet")
        expected = den(
            noisy["pet"],
            t["pet"],
            {"ct": noisy["ct"], "label": noisy["label"]},
            condition_timesteps={"ct": t["ct"], "label": t["label"]},
        )
    torch.testing.assert_close(out["pet"], expected)


@pytest.mark.parametrize(
    ("timesteps", "predict", "message"),
    [
        ({"ct": torch.zeros(2), "pet": torch.zeros(2)}, None, "exactly the modalities"),
        (
            {"ct": torch.zeros(2), "pet": torch.zeros(2), "label": torch.zeros(3)},
            None,
            r"timesteps\['label'\]",
        ),
        (torch.zeros(2), ["mr"], "predict must be"),
        (torch.zeros(2), "ct", "predict must be"),
        (torch.zeros(2), [], "predict must be"),
    ],
)
def test_bad_per_modality_arguments(timesteps, predict, message):
    model = PairedDiffusionModel(**TINY)
    noisy = {m: torch.zeros(2, 1, 16, 16) for m in model.modalities}
    with pytest.raises(ValueError, match=message):
        model(noisy, timesteps, predict=predict)


def test_bad_condition_timesteps():
    den = _denoiser()
    x, cond = _inputs()
    with pytest.raises(ValueError, match="missing"):
        den(x, torch.tensor([1, 2]), cond, condition_timesteps={"pet": torch.tensor([1, 2])})
    with pytest.raises(ValueError, match=r"condition_timesteps\['pet'\]"):
        den(
            x,
            torch.tensor([1, 2]),
            cond,
            condition_timesteps={"pet": torch.zeros(3), "label": torch.zeros(2)},
        )


def test_gradients_reach_the_conditions_timestep_pathways():
    den = _denoiser()
    x, cond = _inputs()
    out = den(
        x,
        torch.tensor([300, 600]),
        cond,
        condition_timesteps={"pet": torch.tensor([0, 0]), "label": torch.tensor([900, 0])},
    )
    out.square().mean().backward()
    groups = {
        "cond_time_embed": den.cond_time_embed,
        "filter modulation": torch.nn.ModuleList(f.modulation for f in den.cond_filters.values()),
        "encoder time projections": torch.nn.ModuleList(
            e.time_projections for e in den.cond_encoders.values()
        ),
        "cbam temb_proj": torch.nn.ModuleList(c.temb_proj for c in den.cond_fusion_cbams),
    }
    for what, module in groups.items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), what
        assert sum(float(g.abs().sum()) for g in grads) > 0, what


def test_encoder_with_time_projections_and_joint_encoding():
    encs = [
        _randomise(ConditionalEncoder(2, 1, (4, 8), norm_num_groups=4, temb_dim=6), seed=k) for k in range(2)
    ]
    g = torch.Generator().manual_seed(6)
    xs = [torch.randn(2, 1, 8, 8, generator=g) for _ in encs]
    tembs = [torch.randn(2, 6, generator=g) for _ in encs]
    joint = ConditionalEncoder.encode_jointly(encs, xs, tembs)
    for enc, x, temb, feats in zip(encs, xs, tembs, joint):
        for f, s in zip(feats, enc(x, temb)):
            torch.testing.assert_close(f, s, atol=1e-5, rtol=1e-5)
    assert (encs[0](xs[0], tembs[0])[0] - encs[0](xs[0], tembs[1])[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="take a timestep embedding"):
        encs[0](xs[0])
    with pytest.raises(ValueError, match="temb_dim"):
        ConditionalEncoder(2, 1, (4,), norm_num_groups=4, temb_dim=0)
    with pytest.raises(ValueError, match="one architecture"):
        ConditionalEncoder.encode_jointly([encs[0], ConditionalEncoder(2, 1, (4, 8), norm_num_groups=4)], xs)


def test_filter_and_cbam_take_one_embedding_per_condition():
    from monai_pairsynth.networks.timestep_lowpass_filter import _filter_stacked

    filters = [_randomise(TimestepLowPassFilter(temb_dim=6), seed=k, std=0.5) for k in range(2)]
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(2, 1, 8, 8, generator=g) for _ in filters]
    tembs = torch.randn(2, 2, 6, generator=g)  # (K, B, E)
    out = _filter_stacked(filters, torch.cat(xs, dim=1), tembs).chunk(2, dim=1)
    for f, x, temb, y in zip(filters, xs, tembs, out):
        torch.testing.assert_close(y, f(x, temb), atol=1e-5, rtol=1e-5)
    cbam = _randomise(TimestepCBAM(2, 4, 6), seed=8)
    feats = torch.randn(2, 4, 8, 8, generator=g)
    per_condition = torch.stack([tembs[0], tembs[0]], dim=1)  # (B, K, E), equal embeddings
    torch.testing.assert_close(cbam(feats, per_condition), cbam(feats, tembs[0]), atol=1e-6, rtol=1e-6)
    mixed = tembs.transpose(0, 1)
    assert (cbam(feats, mixed) - cbam(feats, tembs[0])).abs().max() > 1e-5
