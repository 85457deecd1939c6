"""The Gaussian reference problem used for the accuracy table in docs/schedulers.md."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from monai_pairsynth.schedulers import make_scheduler

sys.path.insert(
    0, str(Path(__file__).resolve().parents[2] / "benchmarks")
)  # a benchmark script, not the package
from gaussian_reference import exact_flow, gaussian_model_output, main, run_sampler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_gaussian_model_output_is_consistent_across_prediction_types(prediction_type):
    scheduler = make_scheduler("ddim", num_train_timesteps=100, prediction_type=prediction_type)
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    t = 40
    abar = float(scheduler.alphas_cumprod.double()[t])
    alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    output = gaussian_model_output(scheduler, x, t, mean=0.3, std=0.5)
    x0 = {
        "epsilon": (x - sigma * output) / alpha,
        "v_prediction": alpha * x - sigma * output,
        "sample": output,
    }[prediction_type]
    # the posterior mean of x_0 for Gaussian data
    expected = 0.3 + alpha * 0.25 * (x - alpha * 0.3) / (alpha**2 * 0.25 + sigma**2)
    torch.testing.assert_close(x0, expected)


def test_dpm_solver_converges_to_the_exact_flow():
    scheduler = make_scheduler("dpmpp", num_train_timesteps=1000)
    scheduler.set_timesteps(50)
    x_start = torch.randn(512, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = run_sampler(scheduler, x_start)
    exact = exact_flow(scheduler.alphas_cumprod, x_start, 999, None)
    assert float((result - exact).pow(2).mean().sqrt()) < 2e-3


def test_main_prints_a_table(capsys):
    main(["--steps", "8", "--num-values", "256"])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 6
    rmse = {row.split("|")[1].strip(): row.split("|")[5].strip() for row in rows}
    assert rmse["MONAI DDPMScheduler"] == "n/a (stochastic)"
    assert float(rmse["DPM-Solver++ order 2"]) < float(rmse["DPM-Solver++ order 1"])
    stds = {row.split("|")[1].strip(): float(row.split("|")[4]) for row in rows}
    assert stds["MONAI DDPMScheduler"] > 0.9  # the strided MONAI DDPM does not denoise
    assert stds["StridedDDPMScheduler"] < 0.6
