"""PairedDiffusionLoss with per-modality timesteps (issue 14): each modality's terms at its own timestep, a
modality given clean (an input, not a prediction) left out of that sample's terms."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from monai_pairsynth.losses import PairedDiffusionLoss


def test_loss_leaves_out_clean_modalities():
    loss = PairedDiffusionLoss()
    pred = {m: torch.zeros(3, 1, 4, 4) for m in ("ct", "pet")}
    target_values = {"ct": torch.tensor([1.0, 2.0, 100.0]), "pet": torch.tensor([1.0, 1.0, 1.0])}
    target = {m: v.reshape(3, 1, 1, 1).expand(3, 1, 4, 4).clone() for m, v in target_values.items()}
    structured = {
        "target": target,
        "original": {m: torch.zeros(3, 1, 4, 4) for m in pred},
        "noise": {m: torch.zeros(3, 1, 4, 4) for m in pred},
        "timesteps": {m: torch.tensor([5, 5, 0]) for m in pred},
        "clean": {"ct": torch.tensor([False, False, True]), "pet": torch.tensor([True, True, True])},
    }
    total = loss(pred, structured)
    comps = loss.last_components
    assert float(comps["mse_ct"]) == pytest.approx((1.0 + 4.0) / 2)  # the clean sample's 100**2 left out
    assert float(comps["mse_pet"]) == 0.0  # given in every sample: nothing to predict
    assert total.item() == pytest.approx(2.5)


def test_loss_weights_each_modality_by_its_own_timestep():
    sched = DDPMScheduler(50)
    loss = PairedDiffusionLoss(sched, snr_gamma=1.0)
    pred = {m: torch.zeros(2, 1, 4, 4) for m in ("ct", "pet")}
    target = {m: torch.ones(2, 1, 4, 4) for m in pred}
    t = {"ct": torch.tensor([1, 1]), "pet": torch.tensor([45, 45])}
    structured = {"target": target, "original": target, "noise": target, "timesteps": t}
    loss(pred, structured)
    per = {m: float(loss.last_components[f"mse_{m}"]) for m in pred}
    expected = {m: float(loss._snr_weight(t[m]).mean()) for m in pred}
    assert per == pytest.approx(expected)
    assert per["ct"] != pytest.approx(per["pet"])


def test_perceptual_term_skips_clean_modalities():
    sched = DDPMScheduler(50)
    loss = PairedDiffusionLoss(sched, perceptual_weight=1.0, perceptual_mode="reconstruction")
    g = torch.Generator().manual_seed(0)
    x = {m: torch.rand(2, 1, 16, 16, generator=g) * 2 - 1 for m in ("ct", "pet")}
    noise = {m: torch.randn(2, 1, 16, 16, generator=g) for m in x}
    pred = {m: torch.randn(2, 1, 16, 16, generator=g) for m in x}
    t = {m: torch.tensor([10, 0]) for m in x}
    base = {"target": noise, "original": x, "noise": noise, "timesteps": t}
    loss(pred, base)
    without = {m: float(loss.last_components[f"perceptual_{m}"]) for m in x}
    loss(pred, {**base, "clean": {"ct": torch.tensor([False, True]), "pet": torch.tensor([True, True])}})
    with_clean = {m: float(loss.last_components[f"perceptual_{m}"]) for m in x}
    assert with_clean["pet"] == 0.0 and without["pet"] > 0
    assert 0 < with_clean["ct"] < without["ct"]
