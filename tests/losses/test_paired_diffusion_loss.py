from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from monai_pairsynth.losses import (
    PairedDiffusionLoss,
    PerceptualMode,
    RandomConvFeatures,
    make_paired_target,
    perceptual_distance,
    predict_original_sample,
)


def _structured(modalities, shape=(2, 1, 16, 16), seed=0, t=None):
    g = torch.Generator().manual_seed(seed)
    original = {m: torch.rand(shape, generator=g) * 2 - 1 for m in modalities}
    noise = {m: torch.randn(shape, generator=g) for m in modalities}
    timesteps = torch.randint(0, 1000, (shape[0],), generator=g) if t is None else torch.full((shape[0],), t)
    return make_paired_target(noise, original, noise, timesteps)


@pytest.mark.parametrize("modalities", [("ct", "pet"), ("ct", "pet", "label"), ("a", "b", "c", "d")])
def test_loss_is_sum_of_per_modality_mse(modalities):
    g = torch.Generator().manual_seed(1)
    pred = {m: torch.randn(3, 1, 8, 8, generator=g) for m in modalities}
    target = {m: torch.randn(3, 1, 8, 8, generator=g) for m in modalities}
    loss_fn = PairedDiffusionLoss()
    loss = loss_fn(pred, target)
    hand = {m: ((pred[m] - target[m]) ** 2).sum() / pred[m].numel() for m in modalities}
    assert torch.allclose(loss, sum(hand.values()), atol=1e-6)
    for m in modalities:
        assert torch.allclose(loss_fn.last_components[f"mse_{m}"], hand[m], atol=1e-6)
    assert float(loss_fn.last_components["perceptual"]) == 0.0
    assert torch.allclose(loss_fn.last_components["loss"], loss.detach())


def test_structured_target_gives_same_mse():
    target = _structured(("ct", "pet"))
    pred = {m: torch.zeros_like(v) for m, v in target["target"].items()}
    loss_fn = PairedDiffusionLoss(scheduler=DDPMScheduler(1000))
    assert torch.allclose(loss_fn(pred, target), loss_fn(pred, target["target"]))


@pytest.mark.parametrize(
    "prediction_type, make_pred",
    [
        ("epsilon", lambda s, x0, n, t: n),
        ("v_prediction", lambda s, x0, n, t: s.get_velocity(x0, n, t)),
        ("sample", lambda s, x0, n, t: x0),
    ],
)
def test_predict_original_sample_inverts_exact_prediction(prediction_type, make_pred):
    sched = DDPMScheduler(1000, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 300, 700])
    xt = sched.add_noise(x0, noise, t)
    est = predict_original_sample(
        make_pred(sched, x0, noise, t), xt, t, sched.alphas_cumprod, prediction_type
    )
    assert torch.allclose(est, x0, atol=1e-3)


def test_perceptual_distance_properties():
    feats = RandomConvFeatures(channels=(4, 8))(torch.rand(2, 1, 16, 16))
    assert torch.allclose(perceptual_distance(feats, feats), torch.zeros(2), atol=1e-6)
    # unit-normalised over channels: a positive rescaling of the features is invisible
    assert torch.allclose(perceptual_distance(feats, [3.0 * f for f in feats]), torch.zeros(2), atol=1e-5)
    other = RandomConvFeatures(channels=(4, 8))(torch.rand(2, 1, 16, 16))
    d = perceptual_distance(feats, other)
    assert d.shape == (2,) and bool((d > 0).all()) and bool((d <= 8.0).all())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_perceptual_reconstruction_is_zero_for_exact_prediction(prediction_type):
    sched = DDPMScheduler(1000, prediction_type=prediction_type)
    target = _structured(("ct", "pet", "label"), t=200)
    if prediction_type == "v_prediction":
        target["target"] = {
            m: sched.get_velocity(target["original"][m], target["noise"][m], target["timesteps"])
            for m in target["original"]
        }
    pred = {m: v.clone() for m, v in target["target"].items()}
    loss_fn = PairedDiffusionLoss(sched, perceptual_weight=1.0, perceptual_mode="reconstruction")
    loss = loss_fn(pred, target)
    assert float(loss_fn.last_components["perceptual"]) < 1e-4
    assert float(loss) < 1e-4
    # a wrong prediction gives a positive perceptual term
    pred_bad = {m: v + 0.5 * torch.randn_like(v) for m, v in pred.items()}
    loss_fn(pred_bad, target)
    assert float(loss_fn.last_components["perceptual"]) > 1e-2


def test_perceptual_cross_modal_positive_and_differentiable():
    sched = DDPMScheduler(1000)
    target = _structured(("ct", "pet", "label"), t=100)
    pred = {m: v.clone().requires_grad_(True) for m, v in target["target"].items()}
    loss_fn = PairedDiffusionLoss(sched, perceptual_weight=0.5, perceptual_mode=PerceptualMode.CROSS_MODAL)
    loss = loss_fn(pred, target)
    comps = loss_fn.last_components
    # exact noise prediction: MSE is 0, so the whole loss is 0.5 * the cross-modal term
    assert float(comps["mse"]) == 0.0
    assert float(comps["perceptual"]) > 0.05
    assert torch.allclose(loss, 0.5 * comps["perceptual"], atol=1e-6)
    hand = sum(float(comps[f"perceptual_{m}"]) for m in ("ct", "pet", "label"))
    assert abs(hand - float(comps["perceptual"])) < 1e-5
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in pred.values())
    assert all(p.grad is None for p in loss_fn.feature_network.parameters())


def test_perceptual_weight_zero_skips_features():
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            return [x]

    target = _structured(("ct", "pet"))
    loss_fn = PairedDiffusionLoss(DDPMScheduler(1000), feature_network=Spy())
    loss_fn({m: torch.zeros_like(v) for m, v in target["target"].items()}, target)
    assert calls == []
    loss_fn.perceptual_weight = 0.1
    loss_fn({m: torch.zeros_like(v) for m, v in target["target"].items()}, target)
    assert len(calls) == 4  # estimate + reference per modality
    assert float(loss_fn.last_components["perceptual_weight"]) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"perceptual_mode": "sideways"}, "cross_modal"),
        ({"prediction_type": "x0"}, "v_prediction"),
        ({"perceptual_weight": 1.0}, "scheduler"),
        ({"scheduler": DDPMScheduler(10), "perceptual_weight": -1.0}, ">= 0"),
        ({"spatial_dims": 4}, r"\[2, 3\]"),
        ({"feature_network": "vgg"}, "nn.Module"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PairedDiffusionLoss(**kwargs)


def test_bad_calls_name_the_problem():
    loss_fn = PairedDiffusionLoss(DDPMScheduler(1000))
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(KeyError, match="pet"):
        loss_fn({"ct": x}, {"ct": x, "pet": x})
    with pytest.raises(ValueError, match=r"'pet'.*\(2, 1, 4, 4\) vs \(2, 1, 8, 8\)"):
        loss_fn({"ct": x, "pet": x}, {"ct": x, "pet": torch.zeros(2, 1, 8, 8)})
    loss_fn.perceptual_weight = 1.0
    with pytest.raises(ValueError, match="structured target"):
        loss_fn({"ct": x, "pet": x}, {"ct": x, "pet": x})
    with pytest.raises(ValueError, match="at least two"):
        loss_fn({"ct": x}, _structured(("ct",), shape=(2, 1, 4, 4)))


def test_default_feature_network_is_3d_when_asked():
    loss_fn = PairedDiffusionLoss(DDPMScheduler(100), spatial_dims=3, perceptual_weight=1.0)
    target = _structured(("ct", "pet"), shape=(1, 1, 8, 8, 8), t=10)
    loss = loss_fn({m: torch.zeros_like(v) for m, v in target["target"].items()}, target)
    assert loss.ndim == 0 and float(loss_fn.last_components["perceptual"]) > 0


# ---- Min-SNR-gamma weighting and foreground weight ----
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_gamma_weights_each_sample_by_its_snr(prediction_type):
    sched = DDPMScheduler(num_train_timesteps=1000, schedule="cosine", prediction_type=prediction_type)
    target = _structured(("ct", "pet"), shape=(4, 1, 8, 8), seed=3)
    target["timesteps"] = torch.tensor([0, 10, 500, 999])
    g = torch.Generator().manual_seed(4)
    pred = {m: torch.randn(4, 1, 8, 8, generator=g) for m in ("ct", "pet")}
    loss_fn = PairedDiffusionLoss(sched, snr_gamma=5.0)
    loss = loss_fn(pred, target)
    abar = sched.alphas_cumprod[target["timesteps"]].double()
    snr = abar / (1 - abar)
    base = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction_type]
    w = torch.minimum(snr, torch.full_like(snr, 5.0)) / base
    hand = sum(
        (((pred[m] - target["target"][m]) ** 2).flatten(1).mean(1).double() * w).mean() for m in ("ct", "pet")
    )
    assert torch.allclose(loss.double(), hand, rtol=1e-5)
    plain = PairedDiffusionLoss(sched)(pred, target)
    assert not torch.allclose(loss, plain)  # the weighting does something


def test_foreground_weight_counts_foreground_pixels_w_times():
    original = {"label": -torch.ones(1, 1, 4, 4), "ct": torch.zeros(1, 1, 4, 4)}
    original["label"][..., 0, :2] = 1.0  # 2 of 16 pixels foreground
    err = {"label": torch.ones(1, 1, 4, 4), "ct": torch.ones(1, 1, 4, 4)}
    zeros = {m: torch.zeros(1, 1, 4, 4) for m in original}
    target = make_paired_target(err, original, zeros, torch.tensor([5]))
    loss_fn = PairedDiffusionLoss(foreground_weight={"label": 4.0})
    loss_fn(zeros, target)
    assert float(loss_fn.last_components["mse_label"]) == pytest.approx((14 + 2 * 4) / 16)
    assert float(loss_fn.last_components["mse_ct"]) == pytest.approx(1.0)  # unweighted modality


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"snr_gamma": 0.0}, "snr_gamma"),
        ({"snr_gamma": float("nan")}, "snr_gamma"),
        ({"foreground_weight": {"label": 0.5}}, "foreground_weight\\['label'\\]"),
    ],
)
def test_weighting_options_are_validated(kwargs, match):
    sched = DDPMScheduler(num_train_timesteps=10)
    with pytest.raises(ValueError, match=match):
        PairedDiffusionLoss(sched, **kwargs)


def test_weighting_needs_structured_target_and_scheduler():
    with pytest.raises(ValueError, match="needs the noise scheduler"):
        PairedDiffusionLoss(snr_gamma=5.0)
    loss_fn = PairedDiffusionLoss(foreground_weight={"label": 2.0})
    plain = {"label": torch.zeros(1, 1, 2, 2)}
    with pytest.raises(ValueError, match="structured target"):
        loss_fn(plain, plain)
    target = _structured(("ct",), shape=(1, 1, 2, 2))
    with pytest.raises(KeyError, match="label"):
        loss_fn({"ct": torch.zeros(1, 1, 2, 2)}, target)


def test_perceptual_max_timestep_drops_high_noise_samples():
    sched = DDPMScheduler(num_train_timesteps=1000)
    target = _structured(("ct", "pet"), shape=(2, 1, 16, 16), seed=5)
    target["timesteps"] = torch.tensor([100, 900])
    g = torch.Generator().manual_seed(6)
    pred = {m: torch.randn(2, 1, 16, 16, generator=g) for m in ("ct", "pet")}
    full = PairedDiffusionLoss(sched, perceptual_weight=1.0)
    low = PairedDiffusionLoss(sched, perceptual_weight=1.0, perceptual_max_timestep=500)
    full(pred, target)
    low(pred, target)
    first = make_paired_target(
        {m: target["target"][m][:1] for m in pred},
        {m: target["original"][m][:1] for m in pred},
        {m: target["noise"][m][:1] for m in pred},
        target["timesteps"][:1],
    )
    single = PairedDiffusionLoss(sched, perceptual_weight=1.0)
    single({m: pred[m][:1] for m in pred}, first)
    # the t=900 sample is dropped, and the sum is divided by the whole batch (2)
    for m in pred:
        assert float(low.last_components[f"perceptual_{m}"]) == pytest.approx(
            float(single.last_components[f"perceptual_{m}"]) / 2, rel=1e-5
        )
    assert float(low.last_components["perceptual"]) < float(full.last_components["perceptual"])
    with pytest.raises(ValueError, match="perceptual_max_timestep"):
        PairedDiffusionLoss(sched, perceptual_max_timestep=0)
