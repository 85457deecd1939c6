"""DPM-Solver++ specifics: accuracy against the exact probability-flow ODE, the paper's algorithm, state."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from monai_pairsynth.schedulers import DPMSolverMultistepScheduler, StridedDDIMScheduler

DATA_MEAN, DATA_STD = 0.3, 0.5


def gaussian_model(scheduler, sample: torch.Tensor, timestep) -> torch.Tensor:
    """Exact model output when every element of the data is N(DATA_MEAN, DATA_STD^2) (independently)."""
    abar = float(scheduler.alphas_cumprod.double()[int(timestep)])
    alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
    x = sample.double()
    variance = alpha**2 * DATA_STD**2 + sigma**2
    eps = sigma * (x - alpha * DATA_MEAN) / variance
    x0 = DATA_MEAN + alpha * DATA_STD**2 * (x - alpha * DATA_MEAN) / variance
    output = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0}[
        scheduler.prediction_type
    ]
    return output.to(sample.dtype)


def exact_flow(scheduler, x_start: torch.Tensor, t_start: int, t_end: int) -> torch.Tensor:
    """The probability-flow ODE solution from t_start to t_end for Gaussian data: the standardised value
    z = (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2) is constant along the flow."""
    abar = scheduler.alphas_cumprod.double()
    a0, s0 = math.sqrt(abar[t_start]), math.sqrt(1 - abar[t_start])
    a1, s1 = math.sqrt(abar[t_end]), math.sqrt(1 - abar[t_end])
    z = (x_start.double() - a0 * DATA_MEAN) / math.sqrt(a0**2 * DATA_STD**2 + s0**2)
    return a1 * DATA_MEAN + math.sqrt(a1**2 * DATA_STD**2 + s1**2) * z


def solve(scheduler, x_start: torch.Tensor) -> list[torch.Tensor]:
    """The samples after every step."""
    trajectory, sample = [], x_start
    for t in scheduler.timesteps:
        sample, _ = scheduler.step(gaussian_model(scheduler, sample, t), t, sample)
        trajectory.append(sample)
    return trajectory


def start_noise(n: int = 4096) -> torch.Tensor:
    return torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------
# accuracy
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "schedule, prediction_type, num_inference_steps",
    list(
        itertools.product(
            ["linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine"],
            ["epsilon", "v_prediction"],
            [10, 20],
        )
    ),
)
def test_order_two_beats_order_one_against_the_exact_ode(schedule, prediction_type, num_inference_steps):
    """Gaussian data, exact model: compare the sample at the last timestep (before the final jump to clean
    data, which is the same data prediction for both orders) with the exact probability-flow solution."""
    x_start = start_noise()
    errors = {}
    for order in (1, 2):
        scheduler = DPMSolverMultistepScheduler(
            schedule=schedule, prediction_type=prediction_type, solver_order=order
        )
        scheduler.set_timesteps(num_inference_steps)
        trajectory = solve(scheduler, x_start)
        t_first, t_last = int(scheduler.timesteps[0]), int(scheduler.timesteps[-1])
        exact = exact_flow(scheduler, x_start, t_first, t_last)
        errors[order] = float((trajectory[-2] - exact).pow(2).mean().sqrt())
        # the final sample is the data prediction at t_last: compare with that of the exact solution
        exact_final = gaussian_model_x0(scheduler, exact, t_last)
        final_error = float((trajectory[-1] - exact_final).pow(2).mean().sqrt())
        assert final_error <= errors[order] + 1e-9
    assert errors[2] < 0.35 * errors[1], errors
    if num_inference_steps == 20:
        assert errors[2] < 0.01, errors


def gaussian_model_x0(scheduler, sample, timestep):
    abar = float(scheduler.alphas_cumprod.double()[int(timestep)])
    alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
    variance = alpha**2 * DATA_STD**2 + sigma**2
    return DATA_MEAN + alpha * DATA_STD**2 * (sample.double() - alpha * DATA_MEAN) / variance


@pytest.mark.parametrize("schedule", ["linear_beta", "scaled_linear_beta", "cosine"])
def test_twenty_steps_match_a_thousand_step_reference(schedule):
    x_start = start_noise(1024)
    reference = DPMSolverMultistepScheduler(schedule=schedule, solver_order=2)
    reference.set_timesteps(1000)
    reference_final = solve(reference, x_start)[-1]
    assert float((reference_final - exact_flow(reference, x_start, 999, 0)).abs().max()) < 3e-3
    distance = {}
    for order in (1, 2):
        scheduler = DPMSolverMultistepScheduler(schedule=schedule, solver_order=order)
        scheduler.set_timesteps(20)
        distance[order] = float((solve(scheduler, x_start)[-1] - reference_final).pow(2).mean().sqrt())
    # measured (RMS): linear 0.022 (dominated by the final jump from t = 49 to clean data), scaled 0.002, cosine 0.002
    assert distance[2] < 0.03, distance
    assert distance[2] < distance[1], distance


def reference_dpm_solver_pp_2m(scheduler, x_start: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """Algorithm 2 of Lu et al. (2022), written out in the paper's notation in float64, ending (like the
    scheduler with set_alpha_to_one=False, lower_order_final=False) at the noise level of timestep 0."""
    abar = scheduler.alphas_cumprod.double()
    ts = [*timesteps, 0]
    alpha = [math.sqrt(abar[t]) for t in ts]
    sigma = [math.sqrt(1 - abar[t]) for t in ts]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]

    def x_theta(x, i):
        eps = gaussian_model(scheduler, x, ts[i]).double()
        return (x - sigma[i] * eps) / alpha[i]

    x = x_start.double()
    q = [x_theta(x, 0)]
    h1 = lam[1] - lam[0]
    x = (sigma[1] / sigma[0]) * x - alpha[1] * (math.exp(-h1) - 1) * q[0]
    for i in range(2, len(ts)):
        q.append(x_theta(x, i - 1))
        h_i = lam[i] - lam[i - 1]
        if h_i == 0:
            continue
        r_i = (lam[i - 1] - lam[i - 2]) / h_i
        d_i = (1 + 1 / (2 * r_i)) * q[-1] - 1 / (2 * r_i) * q[-2]
        x = (sigma[i] / sigma[i - 1]) * x - alpha[i] * (math.exp(-h_i) - 1) * d_i
    return x


@pytest.mark.parametrize("schedule", ["linear_beta", "cosine"])
@pytest.mark.parametrize("num_inference_steps", [3, 12])
def test_matches_the_papers_algorithm_2(schedule, num_inference_steps):
    scheduler = DPMSolverMultistepScheduler(
        schedule=schedule, solver_order=2, set_alpha_to_one=False, lower_order_final=False
    )
    scheduler.set_timesteps(num_inference_steps)
    x_start = start_noise(256)
    ours = solve(scheduler, x_start)[-1]
    reference = reference_dpm_solver_pp_2m(scheduler, x_start, scheduler.timesteps.tolist())
    torch.testing.assert_close(ours, reference, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_order_one_is_ddim(prediction_type, set_alpha_to_one):
    """DPM-Solver++(1) is DDIM (eta = 0): same grid, same results."""
    kwargs = {"prediction_type": prediction_type, "set_alpha_to_one": set_alpha_to_one}
    dpm = DPMSolverMultistepScheduler(solver_order=1, timestep_spacing="linspace", **kwargs)
    ddim = StridedDDIMScheduler(clip_sample=False, **kwargs)
    x_start = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    finals = []
    for scheduler in (dpm, ddim):
        scheduler.set_timesteps(15)
        finals.append(solve(scheduler, x_start)[-1])
    torch.testing.assert_close(dpm.timesteps, ddim.timesteps)
    torch.testing.assert_close(finals[0], finals[1], atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------
# final step
# ------------------------------------------------------------------------------------------------------
def test_last_step_to_clean_data_returns_the_data_prediction():
    scheduler = DPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction")
    scheduler.set_timesteps(4)
    sample = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        sample, pred_original_sample = scheduler.step(gaussian_model(scheduler, sample, t), t, sample)
    torch.testing.assert_close(sample, pred_original_sample, rtol=0, atol=0)


@pytest.mark.parametrize("lower_order_final, expect_first_order", [(True, True), (False, False)])
def test_lower_order_final_controls_the_last_step(lower_order_final, expect_first_order):
    """With set_alpha_to_one=False the last step ends at timestep 0's noise level, where order 2 is defined."""
    scheduler = DPMSolverMultistepScheduler(
        solver_order=2, set_alpha_to_one=False, lower_order_final=lower_order_final
    )
    scheduler.set_timesteps(6)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps[:-1]:
        x, _ = scheduler.step(gaussian_model(scheduler, x, t), t, x)
    last_t = int(scheduler.timesteps[-1])
    out, pred_original_sample = scheduler.step(gaussian_model(scheduler, x, last_t), last_t, x)
    abar = scheduler.alphas_cumprod.double()
    alpha, sigma = math.sqrt(abar[last_t]), math.sqrt(1 - abar[last_t])
    alpha_end, sigma_end = math.sqrt(abar[0]), math.sqrt(1 - abar[0])
    # first order: x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) x_theta, and alpha' e^{-h} = sigma' alpha / sigma
    first_order = (sigma_end / sigma) * x + (alpha_end - sigma_end * alpha / sigma) * pred_original_sample
    assert torch.allclose(out, first_order, atol=1e-6, rtol=0) is expect_first_order


# ------------------------------------------------------------------------------------------------------
# state
# ------------------------------------------------------------------------------------------------------
def test_step_before_set_timesteps_raises():
    scheduler = DPMSolverMultistepScheduler()
    sample = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"called before set_timesteps"):
        scheduler.step(sample, 999, sample)


def test_steps_out_of_order_raise_and_restart_resets():
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [99, 79, 59, 39, 19]
    sample = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x = sample
    x, _ = scheduler.step(gaussian_model(scheduler, x, 99), 99, x)
    with pytest.raises(
        ValueError, match=r"got timestep 59 \(timesteps\[2\]\) but expected timesteps\[1\] = 79"
    ):
        scheduler.step(x, 59, x)
    for t in scheduler.timesteps[1:]:
        x, _ = scheduler.step(gaussian_model(scheduler, x, t), t, x)
    first_run = x
    with pytest.raises(ValueError, match=r"the chain has ended"):
        scheduler.step(x, 39, x)
    # a step at timesteps[0] restarts the chain without set_timesteps: identical second run
    x = sample
    for t in scheduler.timesteps:
        x, _ = scheduler.step(gaussian_model(scheduler, x, t), t, x)
    torch.testing.assert_close(x, first_run, rtol=0, atol=0)
    # set_timesteps in the middle of a chain resets it too
    scheduler.step(gaussian_model(scheduler, sample, 99), 99, sample)
    scheduler.set_timesteps(5)
    x = sample
    for t in scheduler.timesteps:
        x, _ = scheduler.step(gaussian_model(scheduler, x, t), t, x)
    torch.testing.assert_close(x, first_run, rtol=0, atol=0)


def test_batch_shape_change_within_a_chain_raises():
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(5)
    x = torch.zeros(2, 1, 4, 4)
    scheduler.step(x, 99, x)
    with pytest.raises(ValueError, match=r"changed within a sampling chain"):
        scheduler.step(torch.zeros(3, 1, 4, 4), 79, torch.zeros(3, 1, 4, 4))


def test_order_two_uses_the_previous_prediction():
    """First steps agree (no history yet); the second differs by the multistep correction."""

    def model(x, t):
        return torch.tanh(x) * (0.3 + int(t) / 1000)

    x_start = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    samples = {}
    for order in (1, 2):
        scheduler = DPMSolverMultistepScheduler(solver_order=order)
        scheduler.set_timesteps(10)
        x, steps = x_start, []
        for t in scheduler.timesteps[:2]:
            x, _ = scheduler.step(model(x, t), t, x)
            steps.append(x)
        samples[order] = steps
    torch.testing.assert_close(samples[1][0], samples[2][0], rtol=0, atol=0)
    assert float((samples[1][1] - samples[2][1]).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------------------
# dtypes, thresholding, clipping
# ------------------------------------------------------------------------------------------------------
def test_float64_stays_float64_and_generator_is_ignored():
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(3)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out_a, x0_a = scheduler.step(x, 99, x, generator=torch.Generator().manual_seed(1))
    scheduler.set_timesteps(3)
    out_b, _ = scheduler.step(x, 99, x, generator=torch.Generator().manual_seed(2))
    assert out_a.dtype == torch.float64 and x0_a.dtype == torch.float64
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "options, expected",
    [
        # Imagen dynamic thresholding: s = clamp(quantile(|x0|, ratio), 1, max); x0 <- clamp(x0, -s, s) / s
        ({"thresholding": True, "sample_max_value": 1.0}, [-1.0, -1.0, 0.5, 1.0]),  # s = 1: a clip
        (
            {"thresholding": True, "sample_max_value": 4.0, "dynamic_thresholding_ratio": 1.0},
            [-1.0, -1 / 3, 1 / 6, 1.0],
        ),
        (
            {"thresholding": True, "sample_max_value": 2.0, "dynamic_thresholding_ratio": 1.0},
            [-1.0, -0.5, 0.25, 1.0],
        ),
        ({"clip_sample": True, "clip_sample_min": -0.5, "clip_sample_max": 0.5}, [-0.5, -0.5, 0.5, 0.5]),
        ({}, [-3.0, -1.0, 0.5, 3.0]),
    ],
)
def test_thresholding_and_clipping_of_the_data_prediction(options, expected):
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=100, prediction_type="sample", **options)
    scheduler.set_timesteps(4)
    x0 = torch.tensor([-3.0, -1.0, 0.5, 3.0]).reshape(1, 1, 2, 2)
    _, pred_original_sample = scheduler.step(x0, 99, torch.zeros_like(x0))
    torch.testing.assert_close(pred_original_sample.flatten(), torch.tensor(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dynamic_thresholding_ratio": 0.0}, r"`dynamic_thresholding_ratio` must be in \(0, 1\]"),
        ({"sample_max_value": 0.5}, r"`sample_max_value` must be >= 1"),
        ({"solver_order": True}, r"`solver_order` must be 1 or 2"),
    ],
)
def test_dpm_specific_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPMSolverMultistepScheduler(**kwargs)
