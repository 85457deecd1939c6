from __future__ import annotations

import pytest
import torch

from monai_pairsynth.networks import TimestepLowPassFilter

TEMB = 8


def _band_energy(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Spectral energy of ``x`` in the radial band ``low <= r < high`` (r in units of Nyquist)."""
    spatial = tuple(x.shape[2:])
    radius = TimestepLowPassFilter.radial_frequency(spatial)
    power = torch.fft.rfftn(x, dim=tuple(range(2, x.ndim))).abs().square()
    band = (radius >= low) & (radius < high)
    return power[..., band].sum()


def _randomise_modulation(filt: TimestepLowPassFilter, scale: float = 3.0) -> None:
    with torch.no_grad():
        for p in filt.modulation.parameters():
            p.copy_(scale * torch.randn_like(p))


def test_exactly_two_learnable_parameters_outside_the_mlp():
    filt = TimestepLowPassFilter(TEMB)
    outside = {n: p for n, p in filt.named_parameters() if not n.startswith("modulation.")}
    assert sorted(outside) == ["cutoff_logit", "strength_logit"]
    assert [p.numel() for p in outside.values()] == [1, 1]
    assert all(p.requires_grad for p in outside.values())
    cutoff, strength = filt.filter_parameters(torch.zeros(1, TEMB))
    torch.testing.assert_close(cutoff, torch.tensor([0.4]))
    torch.testing.assert_close(strength, torch.tensor([0.8]))


@pytest.mark.parametrize("spatial", [(32, 32), (31, 33), (12, 16, 10)])
def test_attenuates_white_noise_high_frequencies_at_initialisation(spatial):
    filt = TimestepLowPassFilter(TEMB)
    noise = torch.randn(4, 1, *spatial, generator=torch.Generator().manual_seed(1))
    filtered = filt(noise, torch.randn(4, TEMB))
    low_kept = _band_energy(filtered, 0.0, 0.25) / _band_energy(noise, 0.0, 0.25)
    high_kept = _band_energy(filtered, 0.5, 10.0) / _band_energy(noise, 0.5, 10.0)
    # measured for 32x32: 0.88 of the energy below a quarter of Nyquist is kept, 0.10 above half of it
    assert low_kept > 0.8
    assert high_kept < 0.2
    assert high_kept < 0.25 * low_kept
    assert filtered.var() < noise.var()


@pytest.mark.parametrize("spatial", [(16, 16), (15, 9), (8, 8, 8), (5, 6, 7)])
@pytest.mark.parametrize("randomised", [False, True])
def test_constant_image_passes_unchanged(spatial, randomised):
    filt = TimestepLowPassFilter(TEMB)
    if randomised:
        _randomise_modulation(filt)
    const = torch.full((3, 2, *spatial), -0.37)
    const[1] = 0.9
    out = filt(const, torch.randn(3, TEMB))
    torch.testing.assert_close(out, const, atol=1e-6, rtol=0)


def test_modulation_is_neutral_at_init_and_per_sample_after_training():
    filt = TimestepLowPassFilter(TEMB)
    temb = torch.randn(3, TEMB)
    cutoff, strength = filt.filter_parameters(temb)
    assert torch.unique(cutoff).numel() == 1 and torch.unique(strength).numel() == 1
    _randomise_modulation(filt, scale=0.5)
    cutoff, strength = filt.filter_parameters(temb)
    assert torch.unique(cutoff).numel() == 3 and torch.unique(strength).numel() == 3
    assert ((cutoff >= 0) & (cutoff <= 1) & (strength >= 0) & (strength <= 1)).all()
    x = torch.randn(1, 1, 16, 16).expand(3, -1, -1, -1)
    out = filt(x, temb)
    assert not torch.allclose(out[0], out[1])


def test_mask_never_amplifies_any_frequency():
    filt = TimestepLowPassFilter(TEMB)
    _randomise_modulation(filt, scale=10.0)
    mask = filt.mask((16, 15), torch.randn(6, TEMB))
    assert mask.shape == (6, 1, 16, 8)
    assert mask.min() >= 0 and mask.max() <= 1
    torch.testing.assert_close(mask[:, 0, 0, 0], torch.ones(6))


def test_both_parameters_receive_gradients():
    filt = TimestepLowPassFilter(TEMB)
    out = filt(torch.randn(2, 1, 16, 16), torch.randn(2, TEMB))
    out.square().sum().backward()
    assert filt.cutoff_logit.grad.abs() > 0
    assert filt.strength_logit.grad.abs() > 0
    # zero last layer: its weight gets gradient at step 0, the first layer only once it is non-zero
    assert filt.modulation[-1].weight.grad.abs().sum() > 0


def test_low_precision_input_keeps_dtype():
    filt = TimestepLowPassFilter(TEMB)
    x = torch.randn(2, 1, 16, 16)
    out = filt(x.to(torch.bfloat16), torch.zeros(2, TEMB))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), filt(x, torch.zeros(2, TEMB)), atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    ("x_shape", "temb_shape", "message"),
    [
        ((2, 16), (2, TEMB), r"\(B, C, \*spatial\).*\(2, 16\)"),
        ((2, 1, 8, 8), (3, TEMB), r"temb.*\(2, 8\).*\(3, 8\)"),
    ],
)
def test_bad_shapes(x_shape, temb_shape, message):
    with pytest.raises(ValueError, match=message):
        TimestepLowPassFilter(TEMB)(torch.zeros(x_shape), torch.zeros(temb_shape))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init_cutoff": 0.0}, "init_cutoff must lie in the open interval"),
        ({"init_strength": 1.0}, "init_strength must lie in the open interval"),
        ({"temb_dim": 0}, "temb_dim and hidden_dim must be >= 1"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TimestepLowPassFilter(**{"temb_dim": TEMB, **kwargs})
