"""The batched conditional pathway (grouped encoders, one FFT pair, stacked attention, merged projections)
against a module-by-module reference that calls every submodule on its own, as the pathway did before."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

from monai_pairsynth.networks import (
    ConditionalEncoder,
    CrossEncoderAttention,
    LinkedDenoiser,
    TimestepCBAM,
    TimestepLowPassFilter,
)

SIZES = {2: (16, 16), 3: (8, 8, 8)}


def _randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Every parameter drawn at random (zero-initialised layers opened), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def _reference_encoder(encoder: ConditionalEncoder, x: torch.Tensor) -> list[torch.Tensor]:
    """The MONAI blocks called one by one (ResidualUnit with its Swish modules)."""
    features = []
    h = encoder.conv_in(x)
    for level in encoder.levels:
        h = level(h)
        features.append(h)
    return features


def _reference_filter(filt: TimestepLowPassFilter, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    spatial = tuple(x.shape[2:])
    dims = tuple(range(2, x.ndim))
    spectrum = torch.fft.rfftn(x.float(), dim=dims)
    return torch.fft.irfftn(spectrum * filt.mask(spatial, temb), s=spatial, dim=dims).to(x.dtype)


def _reference_cbam(cbam: TimestepCBAM, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    spatial = tuple(range(2, x.ndim))
    shift = cbam.temb_proj(temb)
    att = torch.sigmoid(
        cbam.channel_mlp(x.mean(dim=spatial) + shift) + cbam.channel_mlp(x.amax(dim=spatial) + shift)
    )
    x = x * att.view(*att.shape, *(1,) * cbam.spatial_dims)
    pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    return x * torch.sigmoid(cbam.spatial_conv(pooled))


def _reference_attention(attn: CrossEncoderAttention, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """The per-encoder formulation: encoders stacked along the batch."""
    k = attn.num_encoders
    batch, channels, *spatial = features[0].shape
    stacked = torch.cat(features, dim=0)
    pooled_size = attn.pooled_size(spatial)
    pooled = stacked
    if pooled_size != tuple(spatial):
        pool = (torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.adaptive_avg_pool3d)
        pooled = pool[len(spatial) - 2](stacked, pooled_size)
    tokens = pooled.flatten(2).transpose(1, 2).reshape(k, batch, -1, channels).transpose(0, 1)
    tagged = tokens + attn.encoder_embedding[None, :, None, :]
    update = attn.attn(attn.norm(tagged.flatten(1, 2)))
    update = update.reshape(batch, k, -1, channels).transpose(0, 1)
    update = update.transpose(2, 3).reshape(k * batch, channels, *pooled_size)
    if pooled_size != tuple(spatial):
        update = torch.nn.functional.interpolate(update, size=tuple(spatial), mode="nearest")
    return list((stacked + update).chunk(k, dim=0))


def _reference_residuals(den: LinkedDenoiser, t: torch.Tensor, conditions: dict[str, torch.Tensor]):
    """LinkedDenoiser.conditional_residuals computed submodule by submodule."""
    first = conditions[den.condition_names[0]]
    temb = den.cond_time_embed(get_timestep_embedding(t, den.cond_channels[0]))
    temb = temb.expand(first.shape[0], -1)
    encoded = [
        _reference_encoder(den.cond_encoders[n], _reference_filter(den.cond_filters[n], conditions[n], temb))
        for n in den.condition_names
    ]
    if den.cond_attention is not None:
        lowest = _reference_attention(den.cond_attention, [f[-1] for f in encoded])
        encoded = [[*f[:-1], low] for f, low in zip(encoded, lowest)]
    fused = [
        _reference_cbam(cbam, conv(torch.cat([f[level] for f in encoded], dim=1)), temb)
        for level, (conv, cbam) in enumerate(zip(den.cond_fusion_convs, den.cond_fusion_cbams))
    ]
    down = [proj(fused[level]) for proj, level in zip(den.cond_residual_projections, den.residual_levels)]
    return down, den.cond_mid_projection(fused[-1])


def _close(actual, expected, atol=2e-5, rtol=1e-4):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(("num_encoders", "num_res_blocks"), [(1, 1), (2, 1), (3, 2)])
def test_encode_jointly_equals_each_encoder_module_by_module(spatial_dims, num_encoders, num_res_blocks):
    encoders = [
        _randomise(ConditionalEncoder(spatial_dims, 1, (4, 8, 8), num_res_blocks, norm_num_groups=4), seed=k)
        for k in range(num_encoders)
    ]
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, 1, *SIZES[spatial_dims], generator=g) for _ in encoders]
    joint = ConditionalEncoder.encode_jointly(encoders, inputs)
    for enc, x, features in zip(encoders, inputs, joint):
        reference = _reference_encoder(enc, x)
        assert [f.shape for f in features] == [r.shape for r in reference]
        for f, r in zip(features, reference):
            _close(f, r)
        for f, r in zip(enc(x), reference):  # forward is the one-encoder case
            _close(f, r)


def test_encode_jointly_gives_every_encoder_its_own_gradients():
    encoders = [_randomise(ConditionalEncoder(2, 1, (4, 8), norm_num_groups=4), seed=k) for k in range(2)]
    twins = [_randomise(ConditionalEncoder(2, 1, (4, 8), norm_num_groups=4), seed=k) for k in range(2)]
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(2, 1, 8, 8, generator=g) for _ in encoders]
    weights = [torch.randn(2, c, 8 // 2**i, 8 // 2**i, generator=g) for i, c in enumerate((4, 8))]
    joint = ConditionalEncoder.encode_jointly(encoders, inputs)
    sum(((f * w).sum() for feats in joint for f, w in zip(feats, weights)), torch.zeros(())).backward()
    sum(
        ((f * w).sum() for enc, x in zip(twins, inputs) for f, w in zip(_reference_encoder(enc, x), weights)),
        torch.zeros(()),
    ).backward()
    for enc, twin in zip(encoders, twins):
        for (name, p), (_, q) in zip(enc.named_parameters(), twin.named_parameters()):
            assert p.grad is not None and p.grad.abs().max() > 0, name
            _close(p.grad, q.grad, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    ("encoders", "inputs", "message"),
    [
        ([], [], "at least one encoder"),
        ([(2, 1, (4, 8))], [(2, 1, 8, 8), (2, 1, 8, 8)], "one input per encoder"),
        ([(2, 1, (4, 8)), (2, 1, (4, 4))], [(2, 1, 8, 8)] * 2, "one architecture"),
        ([(2, 1, (4, 8))] * 2, [(2, 1, 8, 8), (2, 1, 16, 16)], "one shape"),
        ([(2, 1, (4, 8))], [(2, 3, 8, 8)], r"every input must have shape \(B, 1, H, W\), got \(2, 3, 8, 8\)"),
    ],
)
def test_encode_jointly_bad_arguments(encoders, inputs, message):
    encs = [ConditionalEncoder(d, c, ch, norm_num_groups=4) for d, c, ch in encoders]
    with pytest.raises(ValueError, match=message):
        ConditionalEncoder.encode_jointly(encs, [torch.zeros(s) for s in inputs])


def test_encoder_forward_names_a_wrong_input_shape():
    with pytest.raises(ValueError, match=r"the input must have shape \(B, 1, H, W, D\), got \(2, 1, 8, 8\)"):
        ConditionalEncoder(3, 1, (4, 8), norm_num_groups=4)(torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("spatial_shape", [(16, 12), (8, 8, 6), (9,)])
@pytest.mark.parametrize("temb_batch", [1, 2])
def test_filter_jointly_equals_each_filter(spatial_shape, temb_batch):
    filters = [
        _randomise(TimestepLowPassFilter(temb_dim=6, init_cutoff=0.3), seed=k, std=0.5) for k in range(3)
    ]
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, 2, *spatial_shape, generator=g) for _ in filters]
    temb = torch.randn(temb_batch, 6, generator=g)
    joint = TimestepLowPassFilter.filter_jointly(filters, inputs, temb)
    for f, x, y in zip(filters, inputs, joint):
        expected = _reference_filter(f, x, temb)
        _close(y, expected, atol=1e-5, rtol=1e-5)
        _close(f(x, temb), expected, atol=1e-5, rtol=1e-5)
        assert (y - x).abs().max() > 1e-3  # it did filter


@pytest.mark.parametrize(
    ("temb_dims", "shapes", "message"),
    [
        ([], [], "at least one filter"),
        ([4, 4], [(1, 1, 8)], "one input per filter"),
        ([4, 4], [(1, 1, 8), (1, 1, 9)], "one shape"),
        ([4, 5], [(1, 1, 8), (1, 1, 8)], "one temb_dim"),
        ([4], [(1, 8)], r"\(B, C, \*spatial\)"),
    ],
)
def test_filter_jointly_bad_arguments(temb_dims, shapes, message):
    filters = [TimestepLowPassFilter(temb_dim=d) for d in temb_dims]
    with pytest.raises(ValueError, match=message):
        TimestepLowPassFilter.filter_jointly(filters, [torch.zeros(s) for s in shapes], torch.zeros(1, 4))


@pytest.mark.parametrize(("spatial", "max_tokens"), [((4, 4), 64), ((8, 8), 16), ((4, 4, 4), 8)])
def test_attend_stacked_equals_the_per_encoder_formulation(spatial, max_tokens):
    attn = _randomise(CrossEncoderAttention(8, 3, num_head_channels=4, max_tokens=max_tokens), std=0.2)
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(2, 8, *spatial, generator=g) for _ in range(3)]
    expected = _reference_attention(attn, features)
    stacked = attn.attend_stacked(torch.cat(features, dim=1))
    for out, ref, via_forward in zip(stacked.chunk(3, dim=1), expected, attn(features)):
        _close(out, ref)
        _close(via_forward, ref)
    with pytest.raises(ValueError, match=r"\(B, 3 \* 8, \*spatial\), got \(2, 16, 4, 4\)"):
        attn.attend_stacked(torch.zeros(2, 16, 4, 4))


@pytest.mark.parametrize("grad", [True, False])
def test_cbam_equals_the_two_call_formulation_with_and_without_autograd(grad):
    cbam = _randomise(TimestepCBAM(2, 8, 6), std=0.4)
    g = torch.Generator().manual_seed(5)
    x, temb = torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 6, generator=g)
    expected = _reference_cbam(cbam, x, temb)
    before = x.clone()
    with torch.set_grad_enabled(grad):
        out = cbam(x, temb)
    _close(out, expected)
    torch.testing.assert_close(x, before, rtol=0, atol=0)  # the input is never overwritten
    _close(cbam(x, temb[:1]), _reference_cbam(cbam, x, temb[:1].expand(2, -1)))  # (1, E) broadcasts


CASES = [
    # spatial_dims, condition names, kwargs
    (2, ("pet",), {"channels": (8, 16), "attention_levels": (False, True)}),
    (2, ("pet", "label"), {"channels": (8, 16, 16), "attention_levels": (False, False, True)}),
    (2, ("a", "b", "c"), {"channels": (8, 16), "attention_levels": (False, False), "num_res_blocks": 2}),
    (
        2,
        ("pet", "label"),
        {"channels": (8, 16), "attention_levels": (False, False), "encoder_attention": False},
    ),
    (3, ("pet", "label"), {"channels": (8, 16), "attention_levels": (False, True), "num_res_blocks": (1, 2)}),
]


@pytest.mark.parametrize(("spatial_dims", "names", "kwargs"), CASES)
def test_conditional_residuals_equal_the_module_by_module_pathway(spatial_dims, names, kwargs):
    den = _randomise(LinkedDenoiser(spatial_dims, 1, names, norm_num_groups=4, **kwargs), std=0.2)
    twin = _randomise(LinkedDenoiser(spatial_dims, 1, names, norm_num_groups=4, **kwargs), std=0.2)
    g = torch.Generator().manual_seed(6)
    size = SIZES[spatial_dims]
    conditions = {n: torch.randn(2, 1, *size, generator=g) for n in names}
    t = torch.tensor([10, 900])
    with torch.no_grad():
        down, mid = den.conditional_residuals(t, conditions)
        ref_down, ref_mid = _reference_residuals(den, t, conditions)
    assert len(down) == len(ref_down)
    for a, b in zip([*down, mid], [*ref_down, ref_mid]):
        _close(a, b)
    # the same with autograd, and the gradients of every parameter agree
    weights = [torch.randn(r.shape, generator=g) for r in [*ref_down, ref_mid]]
    down, mid = den.conditional_residuals(t, conditions)
    sum((r * w).sum() for r, w in zip([*down, mid], weights)).backward()
    ref_down, ref_mid = _reference_residuals(twin, t, conditions)
    sum((r * w).sum() for r, w in zip([*ref_down, ref_mid], weights)).backward()
    cond_params = [(n, p) for n, p in den.named_parameters() if n.startswith("cond_")]
    twin_params = dict(twin.named_parameters())
    for name, p in cond_params:
        q = twin_params[name]
        assert p.grad is not None, name
        _close(p.grad, q.grad, atol=2e-4, rtol=2e-3)


def test_conditional_residuals_name_conditions_of_the_wrong_shape():
    den = LinkedDenoiser(
        2, 1, ("pet", "label"), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4
    )
    t = torch.tensor([3])
    with pytest.raises(ValueError, match=r"one shape \(B, 1, H, W\).*'label': \(1, 1, 8, 16\)"):
        den.conditional_residuals(t, {"pet": torch.zeros(1, 1, 16, 16), "label": torch.zeros(1, 1, 8, 16)})
    with pytest.raises(ValueError, match=r"'pet': \(1, 2, 16, 16\)"):
        den.conditional_residuals(t, {"pet": torch.zeros(1, 2, 16, 16), "label": torch.zeros(1, 2, 16, 16)})
