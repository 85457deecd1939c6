"""Strided DDPM/DDIM: MONAI 1.6's defects pinned down, and our subclasses stepping on the actual schedule.

The ``test_monai_*`` tests assert MONAI's *current* behaviour. If one of them fails after a MONAI upgrade,
MONAI changed (perhaps fixed) its scheduler: re-check whether ``StridedDDPMScheduler`` /
``StridedDDIMScheduler`` are still needed and update ``docs/schedulers.md``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_pairsynth.schedulers import StridedDDIMScheduler, StridedDDPMScheduler

T = 1000


def oracle_epsilon(scheduler, x0: torch.Tensor, sample: torch.Tensor, timestep) -> torch.Tensor:
    """The noise that explains ``sample`` as x_0 noised to ``timestep`` (an oracle epsilon-model)."""
    abar = float(scheduler.alphas_cumprod.double()[int(timestep)])
    return ((sample.double() - math.sqrt(abar) * x0.double()) / math.sqrt(1 - abar)).to(sample.dtype)


def forward(
    x0: torch.Tensor, noise: torch.Tensor, timestep: int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    abar = float(alphas_cumprod.double()[timestep])
    return math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise


def fixed_x0_and_noise(shape=(1, 1, 16, 16)):
    x0 = 0.8 * torch.sin(torch.linspace(0, 9, math.prod(shape))).reshape(shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return x0, noise


# ------------------------------------------------------------------------------------------------------
# MONAI's behaviour (documents the defects; fails if MONAI changes)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_inference_steps", [10, 20, 50])
def test_monai_ddim_step_lands_off_its_own_schedule(num_inference_steps):
    """MONAI's DDIM steps to ``t - T // n`` while ``set_timesteps`` spaces timesteps ``(T - 1) / (n - 1)``
    apart: with an oracle, each step lands exactly on the forward process at ``t - T // n``."""
    scheduler = DDIMScheduler(T, clip_sample=False)
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps.tolist()
    x0, noise = fixed_x0_and_noise()
    off_schedule = 0
    for t, t_next in itertools.pairwise(timesteps):
        sample = forward(x0, noise, t, scheduler.alphas_cumprod)
        prev, _ = scheduler.step(oracle_epsilon(scheduler, x0, sample, t), t, sample)
        monai_prev_t = t - T // num_inference_steps
        torch.testing.assert_close(
            prev, forward(x0, noise, monai_prev_t, scheduler.alphas_cumprod), atol=1e-5, rtol=0
        )
        off_schedule += monai_prev_t != t_next
    # measured: every step misses at n = 10 (by 11 timesteps) and n = 20 (by 2-3); 19 of 49 at n = 50 (by 1)
    assert off_schedule == {10: 9, 20: 19, 50: 19}[num_inference_steps]


def test_monai_ddim_steps_offset_keeps_the_mismatch():
    scheduler = DDIMScheduler(T, steps_offset=1)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [999, 888, 777, 666, 555, 445, 334, 223, 112, 1]
    # its step() would go from 999 to 999 - 100 = 899, not 888


def test_monai_ddpm_moves_one_training_step_per_call():
    """MONAI's DDPM always samples x_{t-1} ~ q(x_{t-1} | x_t, x_0), whatever ``set_timesteps`` chose: from
    t = 555 of a 10-step schedule it lands at t = 554's noise level, not at the scheduled 444."""
    scheduler = DDPMScheduler(T, clip_sample=False)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist()[4:6] == [555, 444]
    x0 = torch.ones(4, 1, 64, 64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sample = forward(x0, noise, 555, scheduler.alphas_cumprod)
    prev, _ = scheduler.step(
        oracle_epsilon(scheduler, x0, sample, 555), 555, sample, torch.Generator().manual_seed(2)
    )
    abar = scheduler.alphas_cumprod.double()
    # the marginal of x_s given x_0 is N(sqrt(abar_s) x_0, 1 - abar_s): standard error of the mean ~0.008
    assert float(prev.mean()) == pytest.approx(math.sqrt(abar[554]), abs=0.03)
    assert float(prev.std()) == pytest.approx(math.sqrt(1 - abar[554]), abs=0.02)
    assert abs(float(prev.mean()) - math.sqrt(abar[444])) > 0.12


def test_monai_ddpm_strided_loop_does_not_denoise():
    """Consequence: a 10-step MONAI DDPM loop on Gaussian data N(0.3, 0.5^2) with the exact model returns
    almost pure noise (std ~0.98), while ours returns the data distribution."""

    def exact_eps(scheduler, x, t):
        abar = float(scheduler.alphas_cumprod.double()[int(t)])
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        return s * (x - a * 0.3) / (a * a * 0.25 + s * s)

    stds = {}
    for cls in (DDPMScheduler, StridedDDPMScheduler):
        scheduler = cls(T, clip_sample=False)
        scheduler.set_timesteps(10)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(1, 1, 64, 64, generator=generator)
        for t in scheduler.timesteps:
            x, _ = scheduler.step(exact_eps(scheduler, x, t), t, x, generator=generator)
        stds[cls.__name__] = float(x.std())
    assert stds["DDPMScheduler"] > 0.9
    assert stds["StridedDDPMScheduler"] == pytest.approx(0.5, abs=0.2)


# ------------------------------------------------------------------------------------------------------
# ours: the previous timestep is the next entry of the schedule
# ------------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    cls=st.sampled_from([StridedDDPMScheduler, StridedDDIMScheduler]),
    num_inference_steps=st.integers(1, T),
    strength=st.floats(0.01, 1.0),
)
def test_previous_timestep_is_the_next_schedule_entry(cls, num_inference_steps, strength):
    scheduler = cls(T)
    scheduler.set_timesteps(num_inference_steps, strength=strength)
    timesteps = scheduler.timesteps.tolist()
    assert [scheduler.previous_timestep(t) for t in timesteps] == [*timesteps[1:], -1]


@pytest.mark.parametrize("num_inference_steps", [10, 20, 50])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_our_ddim_lands_on_the_next_scheduled_timestep(num_inference_steps, steps_offset):
    scheduler = StridedDDIMScheduler(T, clip_sample=False, steps_offset=steps_offset)
    scheduler.set_timesteps(num_inference_steps)
    x0, noise = fixed_x0_and_noise()
    timesteps = scheduler.timesteps.tolist()
    for t, t_next in itertools.pairwise(timesteps):
        sample = forward(x0, noise, t, scheduler.alphas_cumprod)
        prev, _ = scheduler.step(oracle_epsilon(scheduler, x0, sample, t), t, sample)
        torch.testing.assert_close(
            prev, forward(x0, noise, t_next, scheduler.alphas_cumprod), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("strength", [1.0, 0.8])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_20_oracle_loop_recovers_x0(strength, set_alpha_to_one):
    scheduler = StridedDDIMScheduler(T, set_alpha_to_one=set_alpha_to_one)
    scheduler.set_timesteps(20, strength=strength)
    x0, noise = fixed_x0_and_noise()
    sample = scheduler.add_noise(x0, noise, scheduler.timesteps[0])
    for t in scheduler.timesteps:
        sample, _ = scheduler.step(oracle_epsilon(scheduler, x0, sample, t), t, sample)
    # set_alpha_to_one=False ends at timestep 0's noise level: sqrt(abar_0) x0 + sqrt(1 - abar_0) noise
    expected = x0 if set_alpha_to_one else forward(x0, noise, 0, scheduler.alphas_cumprod)
    torch.testing.assert_close(sample, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("num_inference_steps", [10, 50])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_our_ddpm_samples_the_strided_posterior(num_inference_steps, variance_type):
    """From x_t = forward(x_0, t), one step gives x_s with the right mean at s = the next scheduled timestep:
    fixed_small samples q(x_s | x_t, x_0), whose marginal is N(sqrt(abar_s) x_0, 1 - abar_s)."""
    scheduler = StridedDDPMScheduler(T, clip_sample=False, variance_type=variance_type)
    scheduler.set_timesteps(num_inference_steps)
    t = int(scheduler.timesteps[len(scheduler.timesteps) // 2])
    s = scheduler.previous_timestep(t)
    x0 = torch.ones(4, 1, 64, 64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sample = forward(x0, noise, t, scheduler.alphas_cumprod)
    prev, pred_original_sample = scheduler.step(
        oracle_epsilon(scheduler, x0, sample, t), t, sample, generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(pred_original_sample, x0, atol=1e-5, rtol=0)
    abar = scheduler.alphas_cumprod.double()
    # posterior mean given the known x_t, and the strided variance (beta_step = 1 - abar_t / abar_s)
    beta_step = 1 - abar[t] / abar[s]
    mean = (math.sqrt(abar[s]) * beta_step * x0 + math.sqrt(1 - beta_step) * (1 - abar[s]) * sample) / (
        1 - abar[t]
    )
    variance = beta_step * ((1 - abar[s]) / (1 - abar[t]) if variance_type == "fixed_small" else 1.0)
    residual = (prev - mean) / math.sqrt(variance)
    assert float(residual.mean()) == pytest.approx(0.0, abs=0.04)  # standard error 1/128
    assert float(residual.std()) == pytest.approx(1.0, abs=0.03)
    if variance_type == "fixed_small":
        assert float(prev.mean()) == pytest.approx(math.sqrt(abar[s]), abs=0.03)
        assert float(prev.std()) == pytest.approx(math.sqrt(1 - abar[s]), abs=0.02)


@pytest.mark.parametrize("cls", [StridedDDPMScheduler, StridedDDIMScheduler])
def test_full_schedule_equals_monai(cls):
    """With n = num_train_timesteps nothing is strided: our step equals MONAI's up to float32 rounding.

    DDPM derives beta_step = 1 - abar_t / abar_s from the float32 ``alphas_cumprod`` that ``add_noise`` uses,
    MONAI reads ``betas[t]``; they differ by float32 rounding, relatively largest where beta is smallest
    (t -> 0). At t = 0 MONAI's x_0 coefficient betas[0] / (1 - alphas_cumprod[0]) is 0.9998 instead of 1
    (1 - float32(1 - 1e-4) = 1.0002e-4), ours is exactly 1: the last sample is the x_0 prediction.
    """
    monai_cls = {StridedDDPMScheduler: DDPMScheduler, StridedDDIMScheduler: DDIMScheduler}[cls]
    # MONAI's DDIM keeps the raw epsilon next to the clipped x_0
    options = {"use_clipped_model_output": False} if cls is StridedDDIMScheduler else {}
    ours, theirs = cls(50, clip_sample=True, **options), monai_cls(50, clip_sample=True)
    ours.set_timesteps(50)
    theirs.set_timesteps(50)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    x_ours = x_theirs = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g_ours, g_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for t in ours.timesteps:
        x_ours, x0_ours = ours.step(torch.tanh(x_ours) * 0.5, t, x_ours, generator=g_ours)
        x_theirs, x0_theirs = theirs.step(torch.tanh(x_theirs) * 0.5, t, x_theirs, generator=g_theirs)
        torch.testing.assert_close(x0_ours, x0_theirs, atol=5e-5, rtol=0)
        if int(t) > 0:
            torch.testing.assert_close(x_ours, x_theirs, atol=5e-5, rtol=0)
    torch.testing.assert_close(x_ours, x0_ours, atol=0, rtol=0)
    if cls is StridedDDPMScheduler:
        coefficient = theirs.betas[0] / (1 - theirs.alphas_cumprod[0])
        assert float(coefficient) == pytest.approx(0.9998, abs=1e-4)
        torch.testing.assert_close(x_theirs, coefficient * x0_theirs)


def test_ddpm_learned_range_variance_uses_the_extra_channels():
    scheduler = StridedDDPMScheduler(100, variance_type="learned_range", clip_sample=False)
    scheduler.set_timesteps(10)
    sample = torch.zeros(1, 1, 32, 32)
    outputs = {}
    for frac_value in (-1.0, 1.0):  # -1: posterior variance, +1: beta_step
        model_output = torch.cat([torch.zeros_like(sample), torch.full_like(sample, frac_value)], dim=1)
        prev, _ = scheduler.step(model_output, 55, sample, generator=torch.Generator().manual_seed(0))
        outputs[frac_value] = prev
    abar = scheduler.alphas_cumprod.double()
    s = scheduler.previous_timestep(55)
    beta_step = 1 - abar[55] / abar[s]
    ratio = float(outputs[1.0].std() / outputs[-1.0].std())
    assert ratio == pytest.approx(math.sqrt((1 - abar[55]) / (1 - abar[s])), rel=1e-4)
    assert beta_step > 0
    with pytest.raises(ValueError, match=r"twice the channels is only allowed"):
        StridedDDPMScheduler(100).step(torch.zeros(1, 2, 4, 4), 99, torch.zeros(1, 1, 4, 4))


def test_ddim_eta_uses_the_generator_reproducibly():
    scheduler = StridedDDIMScheduler(100, clip_sample=False)
    scheduler.set_timesteps(10)
    sample = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a, _ = scheduler.step(sample, 99, sample, eta=1.0, generator=torch.Generator().manual_seed(1))
    b, _ = scheduler.step(sample, 99, sample, eta=1.0, generator=torch.Generator().manual_seed(1))
    c, _ = scheduler.step(sample, 99, sample, eta=1.0, generator=torch.Generator().manual_seed(2))
    d, _ = scheduler.step(sample, 99, sample, eta=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float((a - c).abs().max()) > 1e-3 and float((a - d).abs().max()) > 1e-3
    with pytest.raises(ValueError, match=r"`eta` must be >= 0"):
        scheduler.step(sample, 99, sample, eta=-0.5)


def test_ddim_reversed_step_inverts_step():
    scheduler = StridedDDIMScheduler(T, clip_sample=False)
    scheduler.set_timesteps(10)
    x0, noise = fixed_x0_and_noise()
    timesteps = scheduler.timesteps.tolist()
    for index in range(1, len(timesteps)):
        t, t_larger = timesteps[index], timesteps[index - 1]
        sample = forward(x0, noise, t, scheduler.alphas_cumprod)
        up, _ = scheduler.reversed_step(oracle_epsilon(scheduler, x0, sample, t), t, sample)
        torch.testing.assert_close(
            up, forward(x0, noise, t_larger, scheduler.alphas_cumprod), atol=1e-5, rtol=0
        )
    with pytest.raises(ValueError, match=r"needs a larger timestep than 999"):
        scheduler.reversed_step(noise, 999, noise)
