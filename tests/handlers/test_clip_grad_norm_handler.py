"""ClipGradNormHandler on its own: per-group and global clipping, the recorded norms, accumulation, p-norms."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from monai_pairsynth.handlers import ClipGradNormHandler


def _optimizer(grads: dict[str, list[float]]) -> torch.optim.Optimizer:
    """An SGD with one parameter group per name, each parameter's gradient set to the given vector."""
    groups = []
    for name, values in grads.items():
        p = torch.nn.Parameter(torch.zeros(len(values)))
        p.grad = torch.tensor(values)
        groups.append({"params": [p], "modality": name})
    return torch.optim.SGD(groups, lr=0.1)


def _engine(optimizer, iteration=1, epoch_length=4, accumulation_steps=1):
    state = SimpleNamespace(iteration=iteration, epoch_length=epoch_length)
    return SimpleNamespace(optimizer=optimizer, state=state, accumulation_steps=accumulation_steps)


def _grad(optimizer, i):
    return optimizer.param_groups[i]["params"][0].grad


def test_each_group_is_clipped_on_its_own_and_the_norms_are_recorded():
    opt = _optimizer({"ct": [3.0, 4.0], "pet": [0.3, 0.4]})  # norms 5 and 0.5
    engine = _engine(opt)
    ClipGradNormHandler(max_norm=1.0)(engine)
    assert torch.linalg.vector_norm(_grad(opt, 0)).item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(_grad(opt, 1), torch.tensor([0.3, 0.4]))  # under the bound: untouched
    assert {k: round(float(v), 5) for k, v in engine.state.grad_norms.items()} == {"ct": 5.0, "pet": 0.5}
    assert float(engine.state.grad_norm) == pytest.approx(math.sqrt(25.25))


def test_global_clipping_scales_every_group_alike():
    opt = _optimizer({"ct": [3.0, 4.0], "pet": [0.0, 0.0]})
    engine = _engine(opt)
    ClipGradNormHandler(max_norm=1.0, per_group=False)(engine)
    assert list(engine.state.grad_norms) == ["all"]
    assert float(engine.state.grad_norm) == pytest.approx(5.0)
    assert torch.allclose(_grad(opt, 0), torch.tensor([0.6, 0.8]), atol=1e-5)


def test_explicit_parameters_are_one_global_norm():
    opt = _optimizer({"ct": [3.0, 4.0], "pet": [6.0, 8.0]})
    engine = _engine(opt)
    ClipGradNormHandler(max_norm=1.0, parameters=opt.param_groups[1]["params"])(engine)
    assert torch.equal(_grad(opt, 0), torch.tensor([3.0, 4.0]))  # not among the parameters
    assert torch.linalg.vector_norm(_grad(opt, 1)).item() == pytest.approx(1.0, abs=1e-5)


def test_max_norm_goes_through_torch_and_the_global_norm_is_the_largest():
    opt = _optimizer({"ct": [3.0, -4.0], "pet": [0.5, 0.1]})
    engine = _engine(opt)
    ClipGradNormHandler(max_norm=1.0, norm_type=math.inf)(engine)
    assert float(engine.state.grad_norm) == pytest.approx(4.0)
    assert _grad(opt, 0).abs().max().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("iteration", "clipped"), [(1, False), (2, True), (3, False), (4, True)])
def test_with_accumulation_only_iterations_that_step_are_clipped(iteration, clipped):
    opt = _optimizer({"ct": [3.0, 4.0]})
    engine = _engine(opt, iteration=iteration, epoch_length=4, accumulation_steps=2)
    ClipGradNormHandler(max_norm=1.0)(engine)
    assert hasattr(engine.state, "grad_norm") is clipped
    assert torch.equal(_grad(opt, 0), torch.tensor([3.0, 4.0])) is not clipped


def test_accumulation_clips_the_last_iteration_of_an_odd_epoch():
    opt = _optimizer({"ct": [3.0, 4.0]})
    engine = _engine(opt, iteration=3, epoch_length=3, accumulation_steps=2)  # the epoch's step comes early
    ClipGradNormHandler(max_norm=1.0)(engine)
    assert hasattr(engine.state, "grad_norm")


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_max_norm(bad):
    with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
        ClipGradNormHandler(bad)
