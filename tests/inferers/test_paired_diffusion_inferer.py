"""Tests of lock-step sampling with :class:`PairedDiffusionInferer` (tiny untrained models, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from monai_pairsynth.data import make_phantom_case
from monai_pairsynth.inferers import PairedDiffusionInferer
from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS
from monai_pairsynth.networks import PairedDiffusionModel
from monai_pairsynth.schedulers import DPMSolverMultistepScheduler, make_scheduler

SCHEDULERS = ["ddpm", "ddim", "dpmpp"]
KEYS = ("ct", "pet", "label")


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter (also the zero-initialised output and conditional projections) small random
    values, so that each prediction depends on all modalities' inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model2d() -> PairedDiffusionModel:
    torch.manual_seed(0)
    model = PairedDiffusionModel(KEYS, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    return _perturbed(model)


@pytest.fixture(scope="module")
def model3d() -> PairedDiffusionModel:
    torch.manual_seed(0)
    model = PairedDiffusionModel(
        KEYS, spatial_dims=3, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4
    )
    return _perturbed(model)


@pytest.fixture(scope="module")
def inferer() -> PairedDiffusionInferer:
    return PairedDiffusionInferer(spacing=2.0, spatial_shape=(16, 16))


@pytest.fixture(scope="module")
def phantoms() -> dict[str, torch.Tensor]:
    """Two real-looking triplets in physical units, ``(2, 1, 16, 16)``."""
    cases = [make_phantom_case(s, spatial_size=(16, 16), spacing=14.0) for s in (3, 4)]
    return {k: torch.stack([c[k].as_tensor() for c in cases]) for k in KEYS}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normalized(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k: DEFAULT_MODALITY_SPECS[k].normalize(v.as_tensor() if isinstance(v, MetaTensor) else v)
        for k, v in sample.items()
    }


# ------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_shapes_dtypes_units_and_affine(inferer, model2d, scheduler):
    out = inferer.sample(model2d, num_samples=3, scheduler=scheduler, num_inference_steps=3, generator=gen(0))
    assert list(out) == list(KEYS)
    for k, v in out.items():
        assert isinstance(v, MetaTensor), k
        assert v.shape == (3, 1, 16, 16) and v.dtype == torch.float32, (k, v.shape, v.dtype)
        assert v.affine.shape == (3, 4, 4)
        torch.testing.assert_close(
            v.pixdim[0][:2], torch.tensor([2.0, 2.0], dtype=torch.float64)
        )  # 4x4 affine, as MONAI
        assert torch.isfinite(v).all()
    assert out["ct"].min() >= -1000 and out["ct"].max() <= 1000
    assert out["pet"].min() >= 0 and out["pet"].max() <= 15
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}
    # a decoded sample is not constant: the sampler produced an image, not a fill value
    assert out["ct"].std() > 1.0


def test_decode_false_is_the_normalised_decoded_sample(inferer, model2d):
    kw = {"num_samples": 2, "num_inference_steps": 3, "scheduler": "dpmpp"}
    physical = inferer.sample(model2d, generator=gen(5), **kw)
    raw = inferer.sample(model2d, generator=gen(5), decode=False, **kw)
    for k in KEYS:
        assert raw[k].min() >= -1 and raw[k].max() <= 1
        torch.testing.assert_close(raw[k].as_tensor(), _normalized(physical)[k], atol=1e-5, rtol=0)
    assert set(raw["label"].unique().tolist()) <= {-1.0, 1.0}


def test_3d(model3d):
    inferer = PairedDiffusionInferer(spacing=(2.0, 2.0, 3.0))
    out = inferer.sample(model3d, 2, spatial_shape=(8, 8, 8), num_inference_steps=2, generator=gen(0))
    for v in out.values():
        assert v.shape == (2, 1, 8, 8, 8) and v.dtype == torch.float32
        torch.testing.assert_close(v.pixdim[1], torch.tensor([2.0, 2.0, 3.0], dtype=torch.float64))
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}
    # known modalities in 3D
    cond = inferer.sample(model3d, known={"ct": out["ct"][:1]}, num_inference_steps=2, generator=gen(1))
    assert cond["ct"].shape == (1, 1, 8, 8, 8) and torch.equal(
        cond["ct"].as_tensor(), out["ct"][:1].as_tensor()
    )


# ------------------------------------------------------------------------------------- randomness


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_same_seed_same_output_other_seed_differs(inferer, model2d, scheduler):
    kw = {"num_samples": 2, "scheduler": scheduler, "num_inference_steps": 3, "decode": False}
    a = inferer.sample(model2d, generator=gen(7), **kw)
    b = inferer.sample(model2d, generator=gen(7), **kw)
    c = inferer.sample(model2d, generator=gen(8), **kw)
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k
    assert (a["ct"] - c["ct"]).abs().mean() > 0.05
    assert (a["pet"] - c["pet"]).abs().mean() > 0.05
    # the two samples of one call differ too
    assert (a["ct"][0] - a["ct"][1]).abs().mean() > 0.05


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_batching_gives_the_same_samples(inferer, model2d, scheduler):
    kw = {"num_samples": 5, "scheduler": scheduler, "num_inference_steps": 3, "decode": False}
    whole = inferer.sample(model2d, generator=gen(3), batch_size=5, **kw)
    split = inferer.sample(model2d, generator=gen(3), batch_size=2, **kw)
    for k in KEYS:  # the same noise per sample; only batched-convolution round-off differs (measured <= 4e-5)
        torch.testing.assert_close(split[k].as_tensor(), whole[k].as_tensor(), atol=2e-4, rtol=0)


def test_sample_seeds_regenerate_a_subset(inferer, model2d):
    kw = {"scheduler": "ddpm", "num_inference_steps": 3, "decode": False}
    full = inferer.sample(model2d, sample_seeds=[11, 12, 13, 14], **kw)
    part = inferer.sample(model2d, sample_seeds=[13, 14], **kw)
    assert full["ct"].shape[0] == 4
    for k in KEYS:
        torch.testing.assert_close(part[k].as_tensor(), full[k][2:].as_tensor(), atol=2e-4, rtol=0)


def test_model_mode_is_restored(inferer):
    model = PairedDiffusionModel(KEYS, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    model.train()
    inferer.sample(model, 1, num_inference_steps=1, generator=gen(0))
    assert model.training
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------------- noise seeding


def test_strength_one_ignores_the_seed_content(inferer, model2d, phantoms):
    other = {k: torch.flip(v, dims=(-1,)) for k, v in phantoms.items()}
    assert not torch.equal(other["ct"], phantoms["ct"])
    a = inferer.sample(model2d, seed_sample=phantoms, strength=1.0, num_inference_steps=3, generator=gen(2))
    b = inferer.sample(model2d, seed_sample=other, strength=1.0, num_inference_steps=3, generator=gen(2))
    plain = inferer.sample(model2d, num_samples=2, num_inference_steps=3, generator=gen(2))
    for k in KEYS:
        assert a[k].shape == (2, 1, 16, 16)  # the seed's batch sets num_samples
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], plain[k]), k


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_small_strength_stays_close_to_the_seed(inferer, model2d, phantoms, scheduler):
    seed_norm = _normalized(phantoms)

    def distance(strength: float) -> float:
        out = inferer.sample(
            model2d,
            seed_sample=phantoms,
            strength=strength,
            scheduler=scheduler,
            num_inference_steps=10,
            generator=gen(4),
            decode=False,
        )
        return sum(float((out[k] - seed_norm[k]).abs().mean()) for k in ("ct", "pet")) / 2

    near, mid, full = distance(0.1), distance(0.5), distance(1.0)
    # measured (2-core CPU, this fixture): near ~0.1-0.2, full ~0.8-1.0 in the [-1, 1] range
    assert near < 0.4 * full, (near, mid, full)
    assert near < mid < full + 1e-6, (near, mid, full)


def test_seed_sample_is_repeated_and_can_be_normalised(inferer, model2d, phantoms):
    one = {k: v[:1] for k, v in phantoms.items()}
    unbatched = {k: v[0] for k, v in phantoms.items()}
    a = inferer.sample(model2d, 3, seed_sample=one, strength=0.3, num_inference_steps=5, generator=gen(1))
    b = inferer.sample(
        model2d, 3, seed_sample=unbatched, strength=0.3, num_inference_steps=5, generator=gen(1)
    )
    c = inferer.sample(
        model2d,
        3,
        seed_sample=_normalized(one),
        inputs_normalized=True,
        strength=0.3,
        num_inference_steps=5,
        generator=gen(1),
    )
    for k in KEYS:
        assert a[k].shape == (3, 1, 16, 16)
        assert torch.equal(a[k], b[k])
        torch.testing.assert_close(a[k].as_tensor(), c[k].as_tensor(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------- known modalities


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("known_keys", [("label",), ("ct",), ("ct", "label")])
def test_known_modalities_come_back_exactly(inferer, model2d, phantoms, scheduler, known_keys):
    known = {k: phantoms[k] for k in known_keys}
    out = inferer.sample(model2d, known=known, scheduler=scheduler, num_inference_steps=3, generator=gen(0))
    for k in KEYS:
        assert out[k].shape == (2, 1, 16, 16)
    for k in known_keys:
        assert torch.equal(out[k].as_tensor(), known[k]), (
            k
        )  # physical units, bit for bit (CT below -1000 HU too)
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}


def test_known_in_diffusion_range_comes_back_exactly(inferer, model2d, phantoms):
    known = {"label": _normalized(phantoms)["label"]}
    out = inferer.sample(
        model2d, known=known, inputs_normalized=True, decode=False, num_inference_steps=3, generator=gen(0)
    )
    assert torch.equal(out["label"].as_tensor(), known["label"])
    decoded = inferer.sample(
        model2d, known=known, inputs_normalized=True, num_inference_steps=3, generator=gen(0)
    )
    assert torch.equal(decoded["label"].as_tensor(), phantoms["label"])


class _Spy(nn.Module):
    """Forwards to a model and records every input it gets."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.modalities, self.spatial_dims = model, model.modalities, model.spatial_dims
        self.calls: list[tuple[int, dict[str, torch.Tensor]]] = []

    def forward(self, noisy, timesteps):
        self.calls.append((int(timesteps[0]), {k: v.clone() for k, v in noisy.items()}))
        return self.model(noisy, timesteps)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_known_modality_is_clamped_to_its_noised_data_at_every_step(inferer, model2d, phantoms, scheduler):
    """Before every model call the known modality is sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with one fixed eps
    per sample, at the current timestep t of the schedule."""
    spy = _Spy(model2d)
    x0 = _normalized(phantoms)["label"]
    inferer.sample(
        spy, known={"label": phantoms["label"]}, scheduler=scheduler, num_inference_steps=4, generator=gen(2)
    )
    sched = make_scheduler(scheduler)
    sched.set_timesteps(4)
    assert [t for t, _ in spy.calls] == sched.timesteps.tolist()
    abar = inferer.noise_schedule.alphas_cumprod.double()
    eps = [(x["label"].double() - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt() for t, x in spy.calls]
    for e in eps[1:]:
        torch.testing.assert_close(e, eps[0], atol=1e-4, rtol=0)
    assert 0.8 < float(eps[0].std()) < 1.2  # it is noise (offset noise included)


def test_known_modality_conditions_the_others(inferer, model2d, phantoms):
    """mask -> CT + PET: with the same noise, another known mask changes the generated CT and PET (through the
    conditional pathway; its effect in this tiny random model is small but far above round-off, which is 0 for
    identical computations)."""
    kw = {"num_inference_steps": 3, "decode": False}
    a = inferer.sample(model2d, known={"label": phantoms["label"]}, generator=gen(9), **kw)
    again = inferer.sample(model2d, known={"label": phantoms["label"]}, generator=gen(9), **kw)
    b = inferer.sample(model2d, known={"label": 1.0 - phantoms["label"]}, generator=gen(9), **kw)
    for k in ("ct", "pet"):
        assert torch.equal(a[k], again[k])
        diff = float((a[k] - b[k]).abs().mean())
        assert diff > 1e-5, (k, diff)


def test_known_batch_of_one_is_repeated(inferer, model2d, phantoms):
    mask = phantoms["label"][1]  # (1, H, W)
    out = inferer.sample(model2d, 3, known={"label": mask}, num_inference_steps=2, generator=gen(0))
    for i in range(3):
        assert torch.equal(out["label"][i].as_tensor(), mask)
    assert (out["ct"][0] - out["ct"][1]).abs().mean() > 1.0  # the free modalities still differ per sample


# --------------------------------------------------------------------------------------- schedulers


class _NoiseOracle(nn.Module):
    """Knows the clean images ``x0``; returns the noise of its first input, ``(x_T - sqrt(abar_T) x0) /
    sqrt(1 - abar_T)``, at every step. A sampler that lands exactly on its schedule's timesteps then
    follows x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and ends on x0 exactly."""

    def __init__(self, x0: dict[str, torch.Tensor], alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.abar = x0, alphas_cumprod.double()
        self.modalities, self.spatial_dims, self.in_channels = tuple(x0), 2, 1
        self.anchor = nn.Parameter(torch.zeros(()))
        self.eps: dict[str, torch.Tensor] | None = None

    def forward(self, noisy, timesteps):
        if self.eps is None:
            a = self.abar[int(timesteps[0])]
            self.eps = {
                k: ((noisy[k].double() - a.sqrt() * self.x0[k]) / (1 - a).sqrt()).float() for k in noisy
            }
        return dict(self.eps)


@pytest.mark.parametrize(
    "scheduler",
    [
        DDIMScheduler(1000, clip_sample=False),
        "ddim",
        "dpmpp",
        DPMSolverMultistepScheduler(1000, solver_order=1),
    ],
    ids=["monai-ddim-instance", "ddim", "dpmpp", "dpmpp-order1-instance"],
)
def test_strided_sampling_lands_on_the_schedule(scheduler, phantoms):
    """MONAI's own DDIMScheduler steps to the wrong previous timestep at 10 of 1000 steps; the inferer swaps it
    for the corrected strided class, so an oracle run recovers the data exactly."""
    inferer = PairedDiffusionInferer(offset_noise_scale=0.1)
    x0 = {k: v[:1] for k, v in _normalized(phantoms).items()}
    oracle = _NoiseOracle(x0, inferer.noise_schedule.alphas_cumprod)
    out = inferer.sample(
        oracle,
        scheduler=scheduler,
        num_inference_steps=10,
        generator=gen(0),
        decode=False,
        spatial_shape=(16, 16),
        num_samples=1,
    )
    for k in ("ct", "pet"):
        torch.testing.assert_close(out[k].as_tensor(), x0[k], atol=2e-4, rtol=0)
    if isinstance(scheduler, DDIMScheduler):
        # the same oracle run through MONAI's own loop misses the data (the bug the inferer works around)
        monai_sched = DDIMScheduler(1000, clip_sample=False)
        monai_sched.set_timesteps(10)
        oracle.eps = None
        x = {k: torch.randn(1, 1, 16, 16, generator=gen(1)) for k in x0}
        for t in monai_sched.timesteps:
            eps = oracle(x, torch.full((1,), int(t)))
            x = {k: monai_sched.step(eps[k], t, x[k])[0] for k in x0}
        assert (x["ct"] - x0["ct"]).abs().max() > 1e-2


def test_monai_ddpm_instance_is_replaced_and_not_modified(inferer, model2d):
    monai_ddpm = DDPMScheduler(1000)
    before = monai_ddpm.timesteps.clone()
    a = inferer.sample(
        model2d, 2, scheduler=monai_ddpm, num_inference_steps=3, generator=gen(6), decode=False
    )
    b = inferer.sample(model2d, 2, scheduler="ddpm", num_inference_steps=3, generator=gen(6), decode=False)
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(monai_ddpm.timesteps, before) and monai_ddpm.num_inference_steps is None


def test_named_schedulers_clip_the_x0_estimate_to_the_data_range(inferer):
    # the normalised data live in [-1, 1]; an unclipped multistep solver on an under-trained model diverges
    for name in ("ddpm", "ddim", "dpmpp"):
        assert inferer._scheduler_prototype(name).clip_sample, name


def test_scheduler_instance_is_deep_copied(inferer, model2d):
    sched = make_scheduler("dpmpp", clip_sample=True)
    a = inferer.sample(model2d, 2, scheduler=sched, num_inference_steps=3, generator=gen(6))
    b = inferer.sample(model2d, 2, scheduler="dpmpp", num_inference_steps=3, generator=gen(6))
    assert sched.num_inference_steps is None
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k


def test_v_prediction_and_cosine_schedule(model2d):
    inferer = PairedDiffusionInferer(
        num_train_timesteps=100, schedule="cosine", prediction_type="v_prediction"
    )
    out = inferer.sample(model2d, 2, spatial_shape=(16, 16), num_inference_steps=4, generator=gen(0))
    assert out["ct"].shape == (2, 1, 16, 16) and torch.isfinite(out["pet"]).all()
    assert math.isclose(float(out["ct"].pixdim[0][0]), 1.0)  # no spacing given: unit spacing


def test_progress_bar(inferer, model2d, capsys):
    inferer.sample(model2d, 3, num_inference_steps=2, batch_size=2, generator=gen(0), progress=True)
    err = capsys.readouterr().err
    assert "sampling" in err and "4/4" in err  # 2 batches x 2 steps


def test_amp_is_ignored_on_cpu_with_a_warning(inferer, model2d):
    ref = inferer.sample(model2d, 1, num_inference_steps=2, generator=gen(0))
    with pytest.warns(UserWarning, match="ignored on device cpu"):
        out = inferer.sample(model2d, 1, num_inference_steps=2, generator=gen(0), amp_dtype="bf16")
    assert torch.equal(ref["ct"], out["ct"])


def test_training_forward_call(inferer, model2d):
    x0 = {k: torch.zeros(2, 1, 16, 16) for k in KEYS}
    noise = {k: torch.randn(2, 1, 16, 16, generator=gen(i)) for i, k in enumerate(KEYS)}
    t = torch.tensor([0, 999])
    with torch.no_grad():
        out = inferer(x0, model2d, noise, t)
        expected = model2d({k: inferer.noise_schedule.add_noise(x0[k], noise[k], t) for k in KEYS}, t)
    for k in KEYS:
        torch.testing.assert_close(out[k], expected[k])


# --------------------------------------------------------------------------------------- bad input


def _bad_cases(phantoms):
    wrong_spatial = {"label": torch.zeros(1, 1, 8, 8)}
    return [
        ({"known": {"tumour": phantoms["label"]}}, "unknown modality \\['tumour'\\]"),
        ({"known": {"label": torch.zeros(2, 16, 16)}, "num_samples": 2}, "channels"),
        ({"known": {"label": torch.zeros(2, 1, 1, 16, 16)}}, "expects \\(B, C, H, W\\)"),
        ({"known": wrong_spatial, "spatial_shape": (16, 16)}, "spatial shape \\(8, 8\\)"),
        ({"known": {"label": torch.zeros(3, 1, 16, 16)}, "num_samples": 4}, "batch size 3"),
        ({"known": {k: phantoms[k] for k in KEYS}}, "covers every modality"),
        ({"known": {"label": phantoms["label"] * float("nan")}}, "NaN"),
        ({"num_samples": 2, "strength": 0.0, "seed_sample": phantoms}, "strength must be in \\(0, 1\\]"),
        ({"num_samples": 2, "strength": 1.5, "seed_sample": phantoms}, "strength must be in \\(0, 1\\]"),
        ({"num_samples": 2, "strength": -0.2, "seed_sample": phantoms}, "strength must be in \\(0, 1\\]"),
        ({"num_samples": 2, "strength": 0.5}, "needs a seed_sample"),
        (
            {"seed_sample": {"ct": phantoms["ct"], "pet": phantoms["pet"]}, "strength": 0.5},
            "missing modality \\['label'\\]",
        ),
        ({"seed_sample": phantoms, "strength": 0.5, "inputs_normalized": True}, "outside \\[-1, 1\\]"),
        ({"num_samples": 1, "num_inference_steps": 1001}, "num_inference_steps must be in \\[1, 1000\\]"),
        ({"num_samples": 1, "num_inference_steps": 0}, "num_inference_steps must be in \\[1, 1000\\]"),
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({}, "num_samples is required"),
        ({"num_samples": 1, "batch_size": 0}, "batch_size must be >= 1"),
        ({"num_samples": 1, "amp_dtype": "fp8"}, "amp_dtype must be"),
        ({"num_samples": 1, "spatial_shape": (15, 15)}, "not divisible by 2"),
        ({"num_samples": 1, "spatial_shape": (16, 16, 16)}, "must have 2 positive sizes"),
        ({"num_samples": 1, "scheduler": "euler"}, "Unknown sampler name 'euler'"),
        ({"num_samples": 1, "scheduler": DDPMScheduler(500)}, "num_train_timesteps=500"),
        (
            {"num_samples": 1, "scheduler": DDPMScheduler(1000, prediction_type="v_prediction")},
            "prediction_type",
        ),
        ({"num_samples": 1, "scheduler": DDPMScheduler(1000, schedule="cosine")}, "noise schedule differs"),
        ({"num_samples": 2, "sample_seeds": [1]}, "sample_seeds has 1 seeds"),
        ({"sample_seeds": [1], "generator": gen(0)}, "either generator or sample_seeds"),
    ]


@pytest.mark.parametrize("case", range(27))
def test_bad_input_raises_clear_errors(inferer, model2d, phantoms, case):
    cases = _bad_cases(phantoms)
    assert len(cases) == 27
    kwargs, match = cases[case]
    with pytest.raises(ValueError, match=match):
        inferer.sample(model2d, **{"num_inference_steps": 2, **kwargs})


def test_model_without_modalities_is_rejected(inferer):
    with pytest.raises(ValueError, match=r"must expose \.modalities"):
        inferer.sample(nn.Conv2d(1, 1, 1), 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prediction_type": "x0"}, "prediction_type must be one of"),
        ({"num_train_timesteps": 0}, "num_train_timesteps must be >= 1"),
        ({"spacing": -1.0}, "spacing must be positive"),
        ({"spatial_shape": (16,)}, "spatial_shape must be 2 or 3"),
        ({"offset_noise_scale": -0.1}, "offset_noise_scale"),
        ({"specs": ["ct", "mystery"]}, "mystery"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PairedDiffusionInferer(**kwargs)


# ------------------------------------------------------------------------------------------ checkpoints


def test_from_checkpoint(tmp_path, model2d):
    from monai_pairsynth.engines import read_paired_checkpoint, save_paired_checkpoint

    path = save_paired_checkpoint(
        tmp_path / "ckpt.pt",
        model2d,
        noise_scheduler={"num_train_timesteps": 200, "schedule": "cosine", "prediction_type": "v_prediction"},
        spatial_size=(16, 16),
        spacing=(2.0, 3.0),
    )
    inferer, model = PairedDiffusionInferer.from_checkpoint(path)
    assert (inferer.num_train_timesteps, inferer.schedule, inferer.prediction_type) == (
        200,
        "cosine",
        "v_prediction",
    )
    assert inferer.spatial_shape == (16, 16) and list(inferer.spacing) == [2.0, 3.0]
    assert inferer.offset_noise_scale == 0.1 and set(inferer.specs) == set(KEYS)
    assert not model.training
    for (k, a), (_, b) in zip(model.state_dict().items(), model2d.state_dict().items()):
        assert torch.equal(a, b), k
    out = inferer.sample(model, 1, num_inference_steps=2, generator=gen(0))
    assert out["ct"].shape == (1, 1, 16, 16)
    torch.testing.assert_close(out["ct"].pixdim[0][:2], torch.tensor([2.0, 3.0], dtype=torch.float64))
    # the loaded dict works as well
    inferer2, model_b = PairedDiffusionInferer.from_checkpoint(read_paired_checkpoint(path))
    assert inferer2.spatial_shape == (16, 16)
    assert torch.equal(
        inferer2.sample(model_b, 1, num_inference_steps=2, generator=gen(0))["pet"], out["pet"]
    )


def test_from_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        PairedDiffusionInferer.from_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="no 'model_config'"):
        PairedDiffusionInferer.from_checkpoint({"model": {}})


# ----------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("amp_dtype", [None, "bf16", "fp16"])
def test_cuda_sampling_with_mixed_precision(model2d, amp_dtype):
    inferer = PairedDiffusionInferer(spacing=2.0, spatial_shape=(16, 16))
    model = PairedDiffusionModel(KEYS, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    model.load_state_dict(model2d.state_dict())
    model = model.cuda().eval()
    kw = {"num_inference_steps": 4, "decode": False, "scheduler": "dpmpp"}
    ref = inferer.sample(model, 4, generator=torch.Generator("cuda").manual_seed(0), **kw)
    out = inferer.sample(
        model, 4, generator=torch.Generator("cuda").manual_seed(0), amp_dtype=amp_dtype, **kw
    )
    again = inferer.sample(
        model, 4, generator=torch.Generator("cuda").manual_seed(0), amp_dtype=amp_dtype, **kw
    )
    for k in KEYS:
        assert out[k].device.type == "cuda" and out[k].dtype == torch.float32
        assert torch.equal(out[k], again[k])
        if (
            k != "label"
        ):  # reduced precision stays close to float32 (masks may flip where the sample is near 0)
            assert float((out[k] - ref[k]).abs().mean()) < 0.05
