from __future__ import annotations

import pytest
import torch

from monai_pairsynth.networks import LinkedDenoiser, PairedDiffusionModel, unet_residual_levels

SIZES = {2: (16, 16), 3: (8, 8, 8)}


def _denoiser(spatial_dims=2, names=("pet", "label"), **kwargs):
    args = {"channels": (8, 16), "attention_levels": (False, True), "norm_num_groups": 4, **kwargs}
    return LinkedDenoiser(spatial_dims, 1, names, **args)


def _data(spatial_dims, names, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = SIZES[spatial_dims]
    x = torch.randn(batch, 1, *size, generator=g)
    cond = {n: torch.randn(batch, 1, *size, generator=g) for n in names}
    return x, torch.randint(0, 1000, (batch,), generator=g), cond


def _unet_residual_shapes(unet, x, t):
    """Shapes of the down-block residuals DiffusionModelUNet.forward collects, recorded by hooks."""
    shapes = []
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))]
    for block in unet.down_blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: shapes.extend(tuple(r.shape) for r in o[1])))
    mid = []
    hooks.append(unet.middle_block.register_forward_hook(lambda m, i, o: mid.append(tuple(o.shape))))
    unet(x, t)
    for h in hooks:
        h.remove()
    return shapes, mid[0]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(
    ("channels", "num_res_blocks"), [((8, 16), 1), ((8, 16, 16), (1, 2, 1)), ((8, 8, 16), 2)]
)
def test_residuals_match_the_unet_exactly(spatial_dims, channels, num_res_blocks):
    den = _denoiser(
        spatial_dims,
        channels=channels,
        attention_levels=(False,) * len(channels),
        num_res_blocks=num_res_blocks,
    )
    x, t, cond = _data(spatial_dims, ("pet", "label"))
    expected_down, expected_mid = _unet_residual_shapes(den.unet, x, t)
    down, mid = den.conditional_residuals(t, cond)
    assert [tuple(r.shape) for r in down] == expected_down
    assert tuple(mid.shape) == expected_mid
    assert len(unet_residual_levels(den.num_res_blocks)) == len(expected_down)


def test_equals_the_plain_unet_at_initialisation_whatever_the_conditions():
    den = _denoiser()
    # MONAI zero-initialises the UNet's output conv; give it weights so the comparison is not trivially 0
    torch.nn.init.normal_(den.unet.out[2].conv.weight, std=0.1)
    x, t, cond = _data(2, ("pet", "label"))
    out = den(x, t, cond)
    assert out.abs().max() > 1e-3
    torch.testing.assert_close(out, den.unet(x, t), rtol=0, atol=0)
    other = {n: 5 * torch.randn_like(c) for n, c in cond.items()}
    torch.testing.assert_close(den(x, t, other), out, rtol=0, atol=0)


def _train_steps(model, steps, spatial_dims=2, seed=0):
    """A few Adam steps on a toy objective that needs the conditional pathway: predict ct from the others."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        noisy = {m: torch.randn(2, 1, *SIZES[spatial_dims], generator=g) for m in model.modalities}
        t = torch.randint(0, 1000, (2,), generator=g)
        out = model(noisy, t)
        target = noisy["pet"] - noisy["label"] if "label" in noisy else noisy["pet"]
        loss = sum((out[m] - target).square().mean() for m in model.modalities)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return noisy, t


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_conditional_pathway_is_live(spatial_dims):
    """Gradient flow through the zero-initialised pathway, step by step.

    MONAI's UNet output conv and our residual projections start at zero, so at step 0 gradients stop at
    the first zero layer they meet: the UNet output conv gets a gradient, the projections and encoders do
    not. Each optimiser step opens one more zero layer; after three steps every parameter of every
    conditional encoder (and both parameters of every filter) receives a gradient.
    """
    model = PairedDiffusionModel(
        ("ct", "pet", "label"),
        spatial_dims=spatial_dims,
        channels=(8, 16),
        attention_levels=(False, True),
        norm_num_groups=4,
    )
    noisy, t = _train_steps(model, 3, spatial_dims)
    out = model(noisy, t)
    model.zero_grad()
    sum(o.square().mean() for o in out.values()).backward()
    for m in model.modalities:
        den = model.denoiser(m)
        for name, p in den.named_parameters():
            if name.startswith("cond_"):
                assert p.grad is not None and p.grad.abs().max() > 0, f"{m}: no gradient reaches {name}"
        for proj in den.cond_residual_projections:
            assert proj.conv.weight.abs().max() > 0

    # the trained denoiser now reacts to each other modality's input, one at a time
    with torch.no_grad():
        for m in model.modalities:
            den = model.denoiser(m)
            cond = {o: noisy[o] for o in den.condition_names}
            base = den(noisy[m], t, cond)
            for other in den.condition_names:
                changed = den(noisy[m], t, dict(cond, **{other: torch.randn_like(cond[other])}))
                assert (changed - base).abs().max() > 1e-4, f"{m} ignores {other}"


def test_gradient_reaches_only_unet_output_at_step_zero():
    model = PairedDiffusionModel(
        ("ct", "pet"), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4
    )
    noisy = {m: torch.randn(2, 1, 16, 16) for m in model.modalities}
    out = model(noisy, torch.tensor([5, 600]))
    sum(o.square().mean() - o.mean() for o in out.values()).backward()
    den = model.denoiser("ct")
    assert den.unet.out[2].conv.weight.grad.abs().max() > 0
    assert den.cond_encoders["pet"].conv_in.conv.weight.grad.abs().max() == 0
    assert den.cond_residual_projections[0].conv.weight.grad.abs().max() == 0


def test_condition_errors():
    den = _denoiser()
    x, t, cond = _data(2, ("pet", "label"))
    with pytest.raises(ValueError, match=r"missing \['label'\], unexpected \['mr'\]"):
        den(x, t, {"pet": cond["pet"], "mr": cond["label"]})
    with pytest.raises(ValueError, match=r"condition 'pet' has shape \(2, 1, 8, 8\).*\(2, 1, 16, 16\)"):
        den(x, t, dict(cond, pet=torch.zeros(2, 1, 8, 8)))


def test_encoder_attention_can_be_switched_off():
    den = _denoiser(encoder_attention=False)
    assert den.cond_attention is None
    x, t, cond = _data(2, ("pet", "label"))
    assert den(x, t, cond).shape == x.shape
