"""Issue 12 (samplers): DDIM's epsilon re-derived from the clipped x_0, and the batched strided DDPM step.

DDIM references are written out here in float64 from the formulas (Song et al. 2021, eq. 12; diffusers'
``use_clipped_model_output``), independently of the package's conversion helpers, and checked once more
against MONAI's own ``DDIMScheduler``. The batched DDPM step is checked against the per-sample loop that
``PairedDiffusionInferer`` ran before (one ``step`` call and one generator per sample).
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.schedulers import DDIMScheduler

from monai_pairsynth.schedulers import StridedDDIMScheduler, StridedDDPMScheduler, make_scheduler

T = 100
SHAPE = (3, 2, 5, 5)


def _abar(scheduler, timestep: int) -> float:
    return float(scheduler.alphas_cumprod.double()[timestep]) if timestep >= 0 else 1.0


def _reference_ddim(
    prediction_type: str,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    abar_t: float,
    abar_s: float,
    rederive: bool,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step t -> s in float64, x_0 clipped to [-1, 1]; ``rederive`` picks the epsilon of the update."""
    out, x = model_output.double(), sample.double()
    a, s = math.sqrt(abar_t), math.sqrt(1.0 - abar_t)
    if prediction_type == "epsilon":
        x0, eps = (x - s * out) / a, out
    elif prediction_type == "v_prediction":
        x0, eps = a * x - s * out, a * out + s * x
    else:
        x0, eps = out, (x - a * out) / s
    x0 = x0.clamp(-1.0, 1.0)
    if rederive:
        eps = (x - a * x0) / s
    sigma = eta * math.sqrt((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s))
    prev = math.sqrt(abar_s) * x0 + math.sqrt(1.0 - abar_s - sigma**2) * eps
    if eta > 0:
        prev = prev + sigma * noise.double()
    return prev, x0


def _model_output_off_range(prediction_type: str, sample: torch.Tensor, abar_t: float) -> torch.Tensor:
    """A model output whose x_0 estimate spans [-3, 3]: about two thirds of it is clipped."""
    x0 = torch.linspace(-3.0, 3.0, sample.numel(), dtype=torch.float64).reshape(sample.shape)
    x0 = x0[..., torch.randperm(sample.shape[-1], generator=torch.Generator().manual_seed(0))]
    a, s = math.sqrt(abar_t), math.sqrt(1.0 - abar_t)
    eps = (sample.double() - a * x0) / s
    out = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction_type]
    return out.float()


# ------------------------------------------------------------------------------------------------------
# DDIM: epsilon re-derived from the clipped x_0
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("index", [0, 4, 9])  # first, middle and last (s = -1: alphas_cumprod = 1) step
def test_ddim_step_rederives_epsilon_from_the_clipped_x0(prediction_type, eta, index):
    schedulers = {
        flag: StridedDDIMScheduler(T, prediction_type=prediction_type, use_clipped_model_output=flag)
        for flag in (True, False)
    }
    for scheduler in schedulers.values():
        scheduler.set_timesteps(10)
    default = StridedDDIMScheduler(T, prediction_type=prediction_type)
    default.set_timesteps(10)
    scheduler = schedulers[True]
    t = int(scheduler.timesteps[index])
    abar_t, abar_s = _abar(scheduler, t), _abar(scheduler, scheduler.previous_timestep(t))
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    model_output = _model_output_off_range(prediction_type, sample, abar_t)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))

    results = {}
    for name, sched in (("new", scheduler), ("old", schedulers[False]), ("default", default)):
        results[name] = sched.step(
            model_output, t, sample, eta=eta, generator=torch.Generator().manual_seed(2)
        )
    expected_new, expected_x0 = _reference_ddim(
        prediction_type, model_output, sample, abar_t, abar_s, True, eta, noise
    )
    expected_old, _ = _reference_ddim(
        prediction_type, model_output, sample, abar_t, abar_s, False, eta, noise
    )

    clipped = (expected_x0.abs() == 1.0).float().mean()
    assert 0.5 < float(clipped) < 0.8  # the case actually exercises the clipping
    torch.testing.assert_close(results["new"][1].double(), expected_x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(results["new"][0].double(), expected_new, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(results["old"][0].double(), expected_old, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(results["default"][0], results["new"][0], atol=0, rtol=0)
    if abar_s < 1.0:  # the last step to clean data (abar_s = 1) has no direction or noise term: both agree
        assert float((expected_new - expected_old).abs().max()) > 0.05
        assert float((results["new"][0] - results["old"][0]).abs().max()) > 0.05
    # the re-derived pair reproduces x_t: with eta = 0 the step is sqrt(abar_s) x0 + sqrt(1 - abar_s) eps
    eps = (sample.double() - math.sqrt(abar_t) * expected_x0) / math.sqrt(1 - abar_t)
    torch.testing.assert_close(math.sqrt(abar_t) * expected_x0 + math.sqrt(1 - abar_t) * eps, sample.double())


def test_ddim_clipped_step_equals_monai_fed_the_rederived_epsilon():
    """An independent implementation: MONAI's DDIM (full schedule, where its stride is right) given the epsilon
    re-derived from the clipped x_0 computes x_0 = the clipped x_0 again and steps with that epsilon."""
    ours, monai = StridedDDIMScheduler(50), DDIMScheduler(50, clip_sample=True)
    ours.set_timesteps(50)
    monai.set_timesteps(50)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    for t in (49, 30, 5):
        abar_t = _abar(ours, t)
        model_output = _model_output_off_range("epsilon", sample, abar_t)
        x0 = ((sample.double() - math.sqrt(1 - abar_t) * model_output.double()) / math.sqrt(abar_t)).clamp(
            -1, 1
        )
        rederived = ((sample.double() - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)).float()
        prev_ours, x0_ours = ours.step(model_output, t, sample)
        prev_monai, x0_monai = monai.step(rederived, t, sample)
        torch.testing.assert_close(x0_ours, x0_monai, atol=2e-5, rtol=0)
        torch.testing.assert_close(prev_ours, prev_monai, atol=2e-5, rtol=0)
        prev_raw, _ = monai.step(model_output, t, sample)  # MONAI's own (raw epsilon) differs
        assert float((prev_raw - prev_ours).abs().max()) > 0.05


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_option_is_irrelevant_without_clipping(prediction_type):
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    outputs = []
    for flag in (True, False):
        scheduler = StridedDDIMScheduler(
            T, clip_sample=False, prediction_type=prediction_type, use_clipped_model_output=flag
        )
        scheduler.set_timesteps(10)
        model_output = _model_output_off_range(prediction_type, sample, _abar(scheduler, 99))
        outputs.append(scheduler.step(model_output, 99, sample))
        outputs.append(scheduler.reversed_step(model_output, 88, sample))
    for got, want in zip(outputs[2:], outputs[:2]):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_ddim_reversed_step_uses_the_same_pair():
    scheduler = StridedDDIMScheduler(T)
    scheduler.set_timesteps(10)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    abar_t, abar_next = _abar(scheduler, 88), _abar(scheduler, 99)
    model_output = _model_output_off_range("epsilon", sample, abar_t)
    up, x0 = scheduler.reversed_step(model_output, 88, sample)
    x0_ref = ((sample.double() - math.sqrt(1 - abar_t) * model_output.double()) / math.sqrt(abar_t)).clamp(
        -1, 1
    )
    eps = (sample.double() - math.sqrt(abar_t) * x0_ref) / math.sqrt(1 - abar_t)
    torch.testing.assert_close(
        up.double(), math.sqrt(abar_next) * x0_ref + math.sqrt(1 - abar_next) * eps, atol=2e-5, rtol=0
    )
    torch.testing.assert_close(x0.double(), x0_ref, atol=1e-5, rtol=0)


def test_ddim_option_in_configs_factory_and_old_pickles():
    scheduler = make_scheduler("ddim", num_train_timesteps=T, use_clipped_model_output=False)
    assert scheduler.use_clipped_model_output is False
    config = scheduler.get_config()
    assert config["use_clipped_model_output"] is False
    rebuilt = ConfigParser({"s": config}).get_parsed_content("s")
    assert rebuilt.use_clipped_model_output is False and rebuilt.get_config() == config
    # a config written before the option existed builds the new default
    old_config = {k: v for k, v in config.items() if k != "use_clipped_model_output"}
    assert ConfigParser({"s": old_config}).get_parsed_content("s").use_clipped_model_output is True
    assert make_scheduler("ddim").get_config()["use_clipped_model_output"] is True
    # an instance pickled before the option existed has no such attribute: the class default applies
    legacy = StridedDDIMScheduler(T)
    del legacy.__dict__["use_clipped_model_output"]
    legacy = pickle.loads(pickle.dumps(legacy))
    legacy.set_timesteps(10)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    current = StridedDDIMScheduler(T)
    current.set_timesteps(10)
    model_output = _model_output_off_range("epsilon", sample, _abar(current, 99))
    torch.testing.assert_close(legacy.step(model_output, 99, sample), current.step(model_output, 99, sample))
    with pytest.raises(ValueError, match=r"`use_clipped_model_output` must be a bool, got 'yes'"):
        StridedDDIMScheduler(T, use_clipped_model_output="yes")


# ------------------------------------------------------------------------------------------------------
# DDPM: one batched step = the per-sample loop
# ------------------------------------------------------------------------------------------------------
def _per_sample_loop(scheduler, model_output, timesteps, sample, seeds):
    """What PairedDiffusionInferer did: one step call and one generator per sample; returns the generators."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    results = [
        scheduler.step(model_output[i : i + 1], timesteps[i], sample[i : i + 1], generator=generators[i])
        for i in range(sample.shape[0])
    ]
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results]), generators


DDPM_OPTIONS = [
    {"variance_type": "fixed_small", "prediction_type": "epsilon", "clip_sample": True},
    {"variance_type": "fixed_large", "prediction_type": "v_prediction", "clip_sample": False},
    {"variance_type": "fixed_small", "prediction_type": "sample", "clip_sample": True},
    {"variance_type": "learned_range", "prediction_type": "epsilon", "clip_sample": True},
    {"variance_type": "learned", "prediction_type": "epsilon", "clip_sample": False},
]


@pytest.mark.parametrize("options", DDPM_OPTIONS)
@pytest.mark.parametrize("timestep_form", ["int", "0-dim", "(B,) equal", "(B,) per sample"])
def test_ddpm_batched_step_equals_the_per_sample_loop(options, timestep_form):
    scheduler = StridedDDPMScheduler(T, **options)
    scheduler.set_timesteps(10)
    schedule = scheduler.timesteps.tolist()
    batch = 4
    shared = schedule[3]
    per_sample = [
        schedule[0],
        schedule[3],
        schedule[-1],
        schedule[-2],
    ]  # schedule[-1]: the noiseless last step
    timesteps = per_sample if timestep_form == "(B,) per sample" else [shared] * batch
    timestep_arg = {
        "int": shared,
        "0-dim": torch.tensor(shared),
        "(B,) equal": torch.tensor(timesteps),
        "(B,) per sample": torch.tensor(timesteps),
    }[timestep_form]
    sample = torch.randn(batch, 2, 6, 6, generator=torch.Generator().manual_seed(7))
    channels = 4 if options["variance_type"].startswith("learned") else 2
    model_output = torch.randn(batch, channels, 6, 6, generator=torch.Generator().manual_seed(8))
    if options["variance_type"] == "learned":  # a log-free variance must be positive
        model_output[:, 2:] = model_output[:, 2:].abs() * 0.01
    else:
        model_output[:, 2:] = model_output[:, 2:].clamp(-1, 1)
    seeds = [11, 12, 13, 14]

    expected, expected_x0, loop_generators = _per_sample_loop(
        scheduler, model_output, timesteps, sample, seeds
    )
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    got, got_x0 = scheduler.step(model_output, timestep_arg, sample, generator=generators)

    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_x0, expected_x0, atol=1e-6, rtol=1e-6)
    # the same draws from the same generators: every generator ends in the same state as in the loop
    for g, g_loop in zip(generators, loop_generators):
        assert torch.equal(g.get_state(), g_loop.get_state())
    # ... which is no draw at all for a sample at its last step
    last = [i for i, t in enumerate(timesteps) if t == schedule[-1]]
    for i in last:
        assert torch.equal(generators[i].get_state(), torch.Generator().manual_seed(seeds[i]).get_state())


def test_ddpm_batched_chain_equals_the_per_sample_chain():
    """A whole 10-step sampling chain, as PairedDiffusionInferer runs it: identical samples either way."""
    scheduler = StridedDDPMScheduler(T)
    scheduler.set_timesteps(10)
    seeds = [21, 22, 23]
    x_batched = x_loop = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    batched_generators = [torch.Generator().manual_seed(s) for s in seeds]
    loop_generators = [torch.Generator().manual_seed(s) for s in seeds]
    for t in scheduler.timesteps.tolist():
        x_batched, _ = scheduler.step(torch.tanh(x_batched), t, x_batched, generator=batched_generators)
        x_loop = torch.cat(
            [
                scheduler.step(
                    torch.tanh(x_loop[i : i + 1]), t, x_loop[i : i + 1], generator=loop_generators[i]
                )[0]
                for i in range(3)
            ]
        )
    torch.testing.assert_close(x_batched, x_loop, atol=1e-6, rtol=1e-6)
    # a sample does not depend on its batch: sample 1 alone, with its own generator
    alone = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(9))[1:2]
    generator = torch.Generator().manual_seed(22)
    for t in scheduler.timesteps.tolist():
        alone, _ = scheduler.step(torch.tanh(alone), t, alone, generator=generator)
    torch.testing.assert_close(alone, x_batched[1:2], atol=1e-6, rtol=1e-6)


def test_ddpm_single_generator_draws_the_batch_at_once():
    """One generator (or None): one draw of the batch shape, as before; with per-sample timesteps the samples
    at their last step keep the posterior mean."""
    scheduler = StridedDDPMScheduler(T, clip_sample=False)
    scheduler.set_timesteps(10)
    schedule = scheduler.timesteps.tolist()
    sample = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(10))
    model_output = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(11))
    timesteps = [schedule[2], schedule[-1], schedule[5]]
    got, _ = scheduler.step(
        model_output, torch.tensor(timesteps), sample, generator=torch.Generator().manual_seed(12)
    )
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(12))
    for i, t in enumerate(timesteps):
        mean, _ = scheduler.step(
            model_output[i : i + 1], t, sample[i : i + 1]
        )  # noiseless only for the last step
        if t == schedule[-1]:
            torch.testing.assert_close(got[i : i + 1], mean, atol=0, rtol=0)
            continue
        s = scheduler.previous_timestep(t)
        abar_t, abar_s = _abar(scheduler, t), _abar(scheduler, s)
        std = math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
        x0 = (sample[i].double() - math.sqrt(1 - abar_t) * model_output[i].double()) / math.sqrt(abar_t)
        beta = 1 - abar_t / abar_s
        mean = (math.sqrt(abar_s) * beta * x0 + math.sqrt(1 - beta) * (1 - abar_s) * sample[i].double()) / (
            1 - abar_t
        )
        torch.testing.assert_close(got[i].double(), mean + std * noise[i].double(), atol=1e-5, rtol=0)
    # shared timestep with one generator: unchanged behaviour (one draw of the whole batch)
    a, _ = scheduler.step(model_output, schedule[2], sample, generator=torch.Generator().manual_seed(12))
    b, _ = scheduler.step(
        model_output, torch.tensor([schedule[2]] * 3), sample, generator=torch.Generator().manual_seed(12)
    )
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a[0], got[0], atol=0, rtol=0)


def test_ddpm_rejects_bad_generators():
    scheduler = StridedDDPMScheduler(T)
    scheduler.set_timesteps(10)
    sample = torch.zeros(2, 1, 4, 4)
    with pytest.raises(
        ValueError, match=r"`generator` has 3 generators for a batch of 2; give one per sample"
    ):
        scheduler.step(sample, 99, sample, generator=[torch.Generator() for _ in range(3)])
    with pytest.raises(ValueError, match=r"`generator` must be a torch.Generator, a sequence .* got list"):
        scheduler.step(sample, 99, sample, generator=[torch.Generator(), 3])
    with pytest.raises(ValueError, match=r"got int"):
        scheduler.step(sample, 99, sample, generator=5)


@pytest.mark.gpu
def test_ddpm_batched_step_equals_the_per_sample_loop_on_cuda():
    scheduler = StridedDDPMScheduler(T)
    scheduler.set_timesteps(10, device="cuda")
    sample = torch.randn(4, 2, 16, 16, device="cuda")
    model_output = torch.randn(4, 2, 16, 16, device="cuda")
    seeds = [1, 2, 3, 4]
    loop_generators = [torch.Generator(device="cuda").manual_seed(s) for s in seeds]
    expected = torch.cat(
        [
            scheduler.step(model_output[i : i + 1], 55, sample[i : i + 1], generator=loop_generators[i])[0]
            for i in range(4)
        ]
    )
    generators = [torch.Generator(device="cuda").manual_seed(s) for s in seeds]
    got, _ = scheduler.step(model_output, 55, sample, generator=generators)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
