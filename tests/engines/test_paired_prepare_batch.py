from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.schedulers import DDPMScheduler

from monai_pairsynth.engines import PairedDiffusionPrepareBatch, PairedNoiseInferer, offset_noise

MODS = ("ct", "pet", "label")


def _batch(b=4, shape=(16, 16), seed=0, modalities=MODS):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.rand(b, 1, *shape, generator=g) * 2 - 1 for m in modalities}


@pytest.mark.parametrize("scale", [0.0, 0.1, 0.5])
def test_offset_noise_constant_has_stated_std(scale):
    # the part of the noise that is not the iid draw is one constant per image and channel, std = scale
    shape = (4000, 2, 8, 8)
    noise = offset_noise(shape, scale, generator=torch.Generator().manual_seed(3))
    iid = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    offset = noise - iid
    per_image = offset.flatten(2)
    assert float((per_image - per_image[..., :1]).abs().max()) < 1e-5  # constant over space
    assert float(per_image[..., 0].std()) == pytest.approx(scale, rel=0.05, abs=1e-6)


@pytest.mark.parametrize("scale", [0.0, 0.1, 0.3])
def test_offset_noise_variance_of_image_means(scale):
    # Var(spatial mean) = 1/N + scale^2 for N pixels
    n_pix = 16 * 16
    noise = offset_noise((3000, 1, 16, 16), scale, generator=torch.Generator().manual_seed(5))
    var = float(noise.mean(dim=(1, 2, 3)).var())
    assert var == pytest.approx(1.0 / n_pix + scale**2, rel=0.1)
    assert float(noise.std()) == pytest.approx(math.sqrt(1 + scale**2), rel=0.02)


def test_prepare_batch_uses_offset_noise_per_modality_independently():
    prep = PairedDiffusionPrepareBatch(
        MODS, 1000, offset_noise_scale=0.5, generator=torch.Generator().manual_seed(0)
    )
    _, _, _, kwargs = prep(_batch(b=2000, shape=(8, 8)))
    means = {m: kwargs["noise"][m].mean(dim=(1, 2, 3)) for m in MODS}
    for m in MODS:
        assert float(means[m].var()) == pytest.approx(1 / 64 + 0.25, rel=0.12)
    # independent draws: per-image offsets of different modalities are uncorrelated
    corr = torch.corrcoef(torch.stack([means["ct"], means["pet"]]))[0, 1]
    assert abs(float(corr)) < 0.1


def test_one_shared_timestep_per_sample():
    sched = DDPMScheduler(1000)
    prep = PairedDiffusionPrepareBatch(
        MODS, 1000, generator=torch.Generator().manual_seed(0), scheduler=sched
    )
    batch = _batch(b=6)
    inputs, targets, args, kwargs = prep(batch)
    t = kwargs["timesteps"]
    assert t.shape == (6,) and t.dtype == torch.long
    assert torch.equal(targets["timesteps"], t)
    seen = {}

    def spy(noisy, timesteps):
        seen["t"] = timesteps
        seen["noisy"] = noisy
        return {m: torch.zeros_like(x) for m, x in noisy.items()}

    PairedNoiseInferer(sched)(inputs, spy, *args, **kwargs)
    assert torch.equal(seen["t"], t)
    abar = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    for m in MODS:
        # every modality's noisy image is at the SAME per-sample timestep
        expected = abar.sqrt() * batch[m] + (1 - abar).sqrt() * kwargs["noise"][m]
        assert torch.allclose(seen["noisy"][m], expected, atol=1e-5)


def test_timesteps_cover_range():
    prep = PairedDiffusionPrepareBatch(("a", "b"), 50, generator=torch.Generator().manual_seed(1))
    _, _, _, kwargs = prep(_batch(b=2000, shape=(2, 2), modalities=("a", "b")))
    t = kwargs["timesteps"]
    assert int(t.min()) == 0 and int(t.max()) == 49
    counts = torch.bincount(t, minlength=50).float()
    assert float(counts.std() / counts.mean()) < 0.25  # roughly uniform (expected ~0.16)


def test_same_generator_seed_same_draws():
    def draw(seed):
        prep = PairedDiffusionPrepareBatch(MODS, 1000, generator=torch.Generator().manual_seed(seed))
        return prep(_batch())[3]

    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a["timesteps"], b["timesteps"])
    assert all(torch.equal(a["noise"][m], b["noise"][m]) for m in MODS)
    assert not torch.equal(a["noise"]["ct"], c["noise"]["ct"])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_targets_per_prediction_type(prediction_type):
    sched = DDPMScheduler(1000, prediction_type=prediction_type)
    prep = PairedDiffusionPrepareBatch(
        MODS,
        1000,
        generator=torch.Generator().manual_seed(0),
        prediction_type=prediction_type,
        scheduler=sched,
    )
    batch = _batch()
    inputs, targets, _, kwargs = prep(batch)
    for m in MODS:
        noise, t = kwargs["noise"][m], kwargs["timesteps"]
        expected = {
            "epsilon": noise,
            "v_prediction": sched.get_velocity(batch[m], noise, t),
            "sample": batch[m],
        }[prediction_type]
        assert torch.allclose(targets["target"][m], expected)
        assert torch.equal(targets["original"][m], batch[m])
        assert torch.equal(inputs[m], batch[m])


def test_metatensor_and_extra_keys():
    batch = {m: MetaTensor(v) for m, v in _batch().items()}
    batch["case_id"] = ["a", "b", "c", "d"]
    inputs, _, _, _ = PairedDiffusionPrepareBatch(MODS, 10)(batch)
    assert sorted(inputs) == sorted(MODS)
    assert all(type(v) is torch.Tensor for v in inputs.values())


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda b: b.pop("pet"), KeyError, r"missing modality \['pet'\]"),
        (
            lambda b: b.update(pet=torch.zeros(4, 1, 8, 8)),
            ValueError,
            r"ct \(4, 1, 16, 16\), pet \(4, 1, 8, 8\)",
        ),
        (
            lambda b: b.update(label=torch.zeros(3, 1, 16, 16)),
            ValueError,
            r"batch size or spatial shape.*label \(3,",
        ),
        (lambda b: b["pet"].__setitem__((1, 0, 3, 3), float("nan")), ValueError, r"'pet' contains NaN"),
        (lambda b: b["ct"].__setitem__((0, 0, 0, 0), float("inf")), ValueError, r"'ct' contains Inf"),
        (lambda b: b.update(ct="ct.nii.gz"), ValueError, r"'ct' must be a tensor"),
        (lambda b: b.update(ct=torch.zeros(4, 16)), ValueError, r"'ct' has shape \(4, 16\)"),
    ],
)
def test_bad_batches_name_the_problem(mutate, error, match):
    batch = _batch()
    mutate(batch)
    with pytest.raises(error, match=match):
        PairedDiffusionPrepareBatch(MODS, 1000)(batch)


def test_not_a_dict():
    with pytest.raises(ValueError, match="dict"):
        PairedDiffusionPrepareBatch(MODS, 1000)([torch.zeros(1, 1, 4, 4)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"modalities": "ct"}, "string"),
        ({"modalities": ("ct", "ct")}, "distinct"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"num_train_timesteps": 2.5}, "num_train_timesteps"),
        ({"offset_noise_scale": -0.1}, "offset_noise_scale"),
        ({"offset_noise_scale": float("nan")}, "offset_noise_scale"),
        ({"prediction_type": "x0"}, "v_prediction"),
        ({"prediction_type": "v_prediction"}, "scheduler"),
        ({"scheduler": DDPMScheduler(10)}, "differs"),
        ({"generator": 3}, "Generator"),
    ],
)
def test_constructor_validation(kwargs, match):
    args = {"modalities": MODS, "num_train_timesteps": 1000, **kwargs}
    with pytest.raises(ValueError, match=match):
        PairedDiffusionPrepareBatch(**args)


def test_inferer_checks_network_output():
    sched = DDPMScheduler(10)
    x = _batch(b=2, shape=(4, 4), modalities=("ct", "pet"))
    noise = {m: torch.zeros_like(v) for m, v in x.items()}
    t = torch.tensor([1, 2])
    with pytest.raises(KeyError, match="'pet'"):
        PairedNoiseInferer(sched)(x, lambda n, t: {"ct": n["ct"]}, noise=noise, timesteps=t)
    with pytest.raises(ValueError, match=r"'ct' has shape \(2, 1, 2, 2\)"):
        PairedNoiseInferer(sched)(
            x, lambda n, t: {m: v[..., :2, :2] for m, v in n.items()}, noise=noise, timesteps=t
        )
    with pytest.raises(ValueError, match="dict"):
        PairedNoiseInferer(sched)(x, lambda n, t: n["ct"], noise=noise, timesteps=t)
    with pytest.raises(KeyError, match="noise"):
        PairedNoiseInferer(sched)(x, lambda n, t: n, noise={"ct": noise["ct"]}, timesteps=t)
    with pytest.raises(ValueError, match="Scheduler"):
        PairedNoiseInferer(object())
