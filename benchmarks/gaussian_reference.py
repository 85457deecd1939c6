"""A solvable reference problem for samplers: Gaussian data with its exact denoiser and exact ODE solution.

When every element of the data is independent N(mean, std^2), the ideal model is analytic:

    x_t ~ N(alpha_t mean, alpha_t^2 std^2 + sigma_t^2),   alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t)
    E[eps | x_t] = sigma_t (x_t - alpha_t mean) / (alpha_t^2 std^2 + sigma_t^2)
    E[x_0 | x_t] = mean + alpha_t std^2 (x_t - alpha_t mean) / (alpha_t^2 std^2 + sigma_t^2)

and the probability-flow ODE keeps z = (x_t - alpha_t mean) / sqrt(alpha_t^2 std^2 + sigma_t^2) constant, so
its exact solution from any start is known. ``python benchmarks/gaussian_reference.py``
prints how close each sampler gets (the table in ``docs/schedulers.md``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

from monai_pairsynth.schedulers import make_scheduler

__all__ = ["exact_flow", "gaussian_model_output", "run_sampler"]


def gaussian_model_output(
    scheduler: Scheduler,
    sample: torch.Tensor,
    timestep: int | torch.Tensor,
    mean: float = 0.3,
    std: float = 0.5,
) -> torch.Tensor:
    """The exact model output (for ``scheduler.prediction_type``) on data N(mean, std^2) per element.

    Args:
        scheduler: provides ``alphas_cumprod`` and ``prediction_type``.
        sample: x_t, any shape.
        timestep: the timestep of ``sample``.
        mean: data mean.
        std: data standard deviation.

    Returns:
        epsilon, v or x_0 prediction, same shape and dtype as ``sample``.

    Example:
        >>> from monai_pairsynth.schedulers import make_scheduler
        >>> s = make_scheduler("ddim", num_train_timesteps=10)
        >>> x_t = torch.tensor([0.3 * s.alphas_cumprod[5].sqrt(), 1.0])  # the first is the mean of x_t
        >>> [round(v, 6) for v in gaussian_model_output(s, x_t, 5).tolist()]
        [0.0, 0.468103]
    """
    abar = float(scheduler.alphas_cumprod.double()[int(timestep)])
    alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
    x = sample.double()
    variance = alpha**2 * std**2 + sigma**2
    eps = sigma * (x - alpha * mean) / variance
    x0 = mean + alpha * std**2 * (x - alpha * mean) / variance
    prediction_type = getattr(scheduler, "prediction_type", "epsilon")
    output = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0}[str(prediction_type)]
    return output.to(sample.dtype)


def exact_flow(
    alphas_cumprod: torch.Tensor,
    x_start: torch.Tensor,
    t_start: int,
    t_end: int | None,
    mean: float = 0.3,
    std: float = 0.5,
) -> torch.Tensor:
    """The exact probability-flow ODE solution from ``t_start`` to ``t_end`` (``None``: clean data).

    Example:
        >>> abar = torch.linspace(0.99, 0.01, 10)
        >>> float(exact_flow(abar, torch.tensor([0.0]), 9, None, mean=0.0, std=0.5))
        0.0
    """
    abar = alphas_cumprod.double()
    a0, s0 = math.sqrt(abar[t_start]), math.sqrt(1 - abar[t_start])
    a1, s1 = (1.0, 0.0) if t_end is None else (math.sqrt(abar[t_end]), math.sqrt(1 - abar[t_end]))
    z = (x_start.double() - a0 * mean) / math.sqrt(a0**2 * std**2 + s0**2)
    return a1 * mean + math.sqrt(a1**2 * std**2 + s1**2) * z


def run_sampler(
    scheduler: Scheduler,
    x_start: torch.Tensor,
    generator: torch.Generator | None = None,
    mean: float = 0.3,
    std: float = 0.5,
) -> torch.Tensor:
    """Step ``scheduler`` through its ``timesteps`` from ``x_start`` with the exact Gaussian model."""
    sample = x_start
    for t in scheduler.timesteps:
        model_output = gaussian_model_output(scheduler, sample, t, mean, std)
        sample, _ = scheduler.step(model_output, t, sample, generator=generator)
    return sample


def _samplers(num_train_timesteps: int, schedule: str) -> list[tuple[str, Scheduler, bool]]:
    """(label, scheduler, deterministic) for every sampler compared."""
    common = {"num_train_timesteps": num_train_timesteps, "schedule": schedule}
    return [
        ("MONAI DDPMScheduler", DDPMScheduler(clip_sample=False, **common), False),
        ("StridedDDPMScheduler", make_scheduler("ddpm", clip_sample=False, **common), False),
        ("MONAI DDIMScheduler", DDIMScheduler(clip_sample=False, **common), True),
        ("StridedDDIMScheduler", make_scheduler("ddim", clip_sample=False, **common), True),
        ("DPM-Solver++ order 1", make_scheduler("dpmpp", solver_order=1, **common), True),
        ("DPM-Solver++ order 2", make_scheduler("dpmpp", solver_order=2, **common), True),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Print a markdown table: sampler x steps -> sample mean/std and RMSE to the exact ODE solution."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="linear_beta")
    parser.add_argument("--num-train-timesteps", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 1000])
    parser.add_argument("--num-values", type=int, default=16384)
    parser.add_argument("--mean", type=float, default=0.3)
    parser.add_argument("--std", type=float, default=0.5)
    args = parser.parse_args(argv)

    print(
        f"Gaussian data N({args.mean}, {args.std}^2), exact model, {args.num_values} values, schedule="
        f"{args.schedule}, T={args.num_train_timesteps}"
    )
    print("| sampler | steps | mean | std | RMSE to exact ODE solution |")
    print("|---|---:|---:|---:|---:|")
    for steps in args.steps:
        for label, scheduler, deterministic in _samplers(args.num_train_timesteps, args.schedule):
            scheduler.set_timesteps(steps)
            x_start = torch.randn(
                args.num_values, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float32
            )
            result = run_sampler(
                scheduler, x_start, generator=torch.Generator().manual_seed(1), mean=args.mean, std=args.std
            )
            rmse = "n/a (stochastic)"
            if deterministic:
                exact = exact_flow(
                    scheduler.alphas_cumprod, x_start, int(scheduler.timesteps[0]), None, args.mean, args.std
                )
                rmse = f"{float((result.double() - exact).pow(2).mean().sqrt()):.4f}"
            print(f"| {label} | {steps} | {float(result.mean()):.3f} | {float(result.std()):.3f} | {rmse} |")


if __name__ == "__main__":
    main()
