"""The field-of-view mask in the diffusion loss: pixels outside the scan are left out of every term."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from monai_pairsynth.losses import FOV_TARGET_KEY, PairedDiffusionLoss, make_paired_target

MODALITIES = ("ct", "pet", "label")


def _target(shape=(3, 1, 16, 16), seed=0, fov=None):
    g = torch.Generator().manual_seed(seed)
    original = {m: torch.rand(shape, generator=g) * 2 - 1 for m in MODALITIES}
    original["label"] = torch.where(original["label"] > 0.6, 1.0, -1.0)  # a mask with some foreground
    noise = {m: torch.randn(shape, generator=g) for m in MODALITIES}
    timesteps = torch.randint(0, 1000, (shape[0],), generator=g)
    return make_paired_target(noise, original, noise, timesteps, fov=fov)


def _crop(target, rows, cols):
    """The same structured target restricted to the window ``[rows, cols]`` (no fov)."""
    c = lambda x: x[..., rows, cols]  # noqa: E731
    return make_paired_target(
        {m: c(v) for m, v in target["target"].items()},
        {m: c(v) for m, v in target["original"].items()},
        {m: c(v) for m, v in target["noise"].items()},
        target["timesteps"],
    )


def _loss(**kwargs):
    return PairedDiffusionLoss(scheduler=DDPMScheduler(1000), **kwargs)


@pytest.mark.parametrize(
    "kwargs", [{}, {"snr_gamma": 5.0}, {"snr_gamma": 5.0, "foreground_weight": {"label": 4.0}}]
)
def test_loss_with_fov_equals_loss_on_in_fov_pixels(kwargs):
    rows, cols = slice(3, 11), slice(2, 14)
    fov = torch.zeros(3, 1, 16, 16)
    fov[..., rows, cols] = 1
    target = _target(fov=fov)
    g = torch.Generator().manual_seed(1)
    pred = {m: torch.randn(3, 1, 16, 16, generator=g) for m in MODALITIES}
    masked = _loss(**kwargs)(pred, target)
    cropped = _loss(**kwargs)({m: v[..., rows, cols] for m, v in pred.items()}, _crop(target, rows, cols))
    whole = _loss(**kwargs)(pred, {k: v for k, v in target.items() if k != FOV_TARGET_KEY})
    assert torch.allclose(masked, cropped, atol=1e-6)
    assert not torch.allclose(masked, whole, atol=1e-3)  # the mask did change something


def test_loss_with_fov_is_the_per_sample_mean_over_in_fov_pixels():
    g = torch.Generator().manual_seed(2)
    fov = (torch.rand(3, 1, 16, 16, generator=g) > 0.4).float()
    fov[2] = 0  # a sample with nothing scanned counts 0
    target = _target(fov=fov)
    pred = {m: torch.randn(3, 1, 16, 16, generator=g) for m in MODALITIES}
    loss_fn = _loss()
    loss = loss_fn(pred, target)
    hand = {}
    for m in MODALITIES:
        err = (pred[m] - target["target"][m]) ** 2
        per = [(err[i][fov[i] > 0]).mean() if fov[i].sum() else torch.tensor(0.0) for i in range(3)]
        hand[m] = torch.stack(per).mean()
        assert torch.allclose(loss_fn.last_components[f"mse_{m}"], hand[m], atol=1e-6)
    assert torch.allclose(loss, sum(hand.values()), atol=1e-6)


def test_full_fov_changes_nothing():
    target = _target()
    pred = {m: torch.randn(3, 1, 16, 16) for m in MODALITIES}
    full = {**target, FOV_TARGET_KEY: torch.ones(3, 1, 16, 16)}
    for kwargs in ({}, {"perceptual_weight": 0.5}):
        assert torch.allclose(_loss(**kwargs)(pred, full), _loss(**kwargs)(pred, target), atol=1e-6)


@pytest.mark.parametrize("mode", ["cross_modal", "reconstruction"])
def test_gradients_are_zero_outside_the_fov(mode):
    fov = torch.zeros(3, 1, 16, 16)
    fov[..., 4:12, 2:10] = 1
    target = _target(fov=fov)
    pred = {m: torch.randn(3, 1, 16, 16, requires_grad=True) for m in MODALITIES}
    loss_fn = _loss(
        perceptual_weight=1.0, perceptual_mode=mode, snr_gamma=5.0, foreground_weight={"label": 4.0}
    )
    loss_fn(pred, target).backward()
    assert float(loss_fn.last_components["perceptual"]) > 0
    for m in MODALITIES:
        grad = pred[m].grad
        assert bool((grad[fov.expand_as(grad) == 0] == 0).all()), m
        assert float(grad[fov.expand_as(grad) == 1].abs().sum()) > 0, m
    # without the mask the outside gets gradient (the test can fail)
    pred2 = {m: v.detach().clone().requires_grad_(True) for m, v in pred.items()}
    plain = {k: v for k, v in target.items() if k != FOV_TARGET_KEY}
    loss_fn(pred2, plain).backward()
    assert float(pred2["ct"].grad[fov.expand_as(pred2["ct"]) == 0].abs().sum()) > 0


def test_fov_of_the_wrong_shape_is_named():
    target = _target(fov=torch.ones(3, 1, 8, 8))
    pred = {m: torch.zeros(3, 1, 16, 16) for m in MODALITIES}
    with pytest.raises(ValueError, match="field-of-view mask has shape"):
        _loss()(pred, target)
