"""The opt-in ``cond_norm_num_groups``: narrower (cheaper) conditional encoders than norm_num_groups allows."""

from __future__ import annotations

import pytest
import torch

from monai_pairsynth.networks import LinkedDenoiser, PairedDiffusionModel

CPU_WIDTHS = {"channels": (16, 32, 32), "attention_levels": (False, False, True), "norm_num_groups": 8}


def _encoder_group_counts(den: LinkedDenoiser) -> set[int]:
    return {
        m.num_groups
        for enc in den.cond_encoders.values()
        for m in enc.modules()
        if isinstance(m, torch.nn.GroupNorm)
    }


def _unet_group_counts(den: LinkedDenoiser) -> set[int]:
    return {m.num_groups for m in den.unet.modules() if isinstance(m, torch.nn.GroupNorm)}


def test_narrow_encoders_with_their_own_group_count():
    model = PairedDiffusionModel(**CPU_WIDTHS, cond_channels=(4, 8, 8), cond_norm_num_groups=4)
    den = model.denoiser("ct")
    assert den.cond_channels == (4, 8, 8)
    assert den.cond_norm_num_groups == 4
    assert _encoder_group_counts(den) == {4}
    assert _unet_group_counts(den) == {8}  # the UNet keeps norm_num_groups
    noisy = {m: torch.randn(2, 1, 16, 16) for m in model.modalities}
    out = model(noisy, torch.tensor([5, 600]))
    assert {k: tuple(v.shape) for k, v in out.items()} == {m: (2, 1, 16, 16) for m in model.modalities}
    # fewer conditional parameters than the default half-width pathway
    default = PairedDiffusionModel(**CPU_WIDTHS).denoiser("ct")

    def cond_params(d):
        return sum(p.numel() for n, p in d.named_parameters() if n.startswith("cond_"))

    assert cond_params(den) < cond_params(default) / 2


def test_the_option_round_trips_through_get_config_and_is_absent_when_unset():
    model = PairedDiffusionModel(**CPU_WIDTHS, cond_channels=(4, 8, 8), cond_norm_num_groups=4)
    config = model.get_config()
    assert config["cond_norm_num_groups"] == 4
    rebuilt = PairedDiffusionModel(**config)
    result = rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert "cond_norm_num_groups" not in PairedDiffusionModel(**CPU_WIDTHS).get_config()


@pytest.mark.parametrize(
    ("cond_norm_num_groups", "cond_channels", "expected"),
    [
        (None, None, (8, 16, 16)),  # the existing half-width rule with norm_num_groups = 8
        (8, None, (8, 16, 16)),
        (4, None, (8, 16, 16)),  # half of (16, 32, 32) is already a multiple of 4
        (2, (2, 4, 8), (2, 4, 8)),
    ],
)
def test_default_widths_and_explicit_widths(cond_norm_num_groups, cond_channels, expected):
    den = LinkedDenoiser(
        2, 1, ("pet",), **CPU_WIDTHS, cond_channels=cond_channels, cond_norm_num_groups=cond_norm_num_groups
    )
    assert den.cond_channels == expected
    assert _encoder_group_counts(den) == {cond_norm_num_groups or 8}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cond_channels": (4, 8, 8)}, r"cond_channels \(4, 8, 8\) must be divisible by norm_num_groups=8"),
        (
            {"cond_channels": (6, 8, 8), "cond_norm_num_groups": 4},
            r"cond_channels \(6, 8, 8\) must be divisible by cond_norm_num_groups=4",
        ),
        ({"cond_norm_num_groups": 0}, "cond_norm_num_groups must be >= 1 or None, got 0"),
    ],
)
def test_bad_group_counts_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairedDiffusionModel(**CPU_WIDTHS, **kwargs)
