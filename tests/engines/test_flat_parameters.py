"""Contiguous parameter buffers: FlatParameterAdamW is AdamW, its checkpoints are AdamW's, EMA/clipping use the buffers."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from ignite.handlers import EMAHandler

from monai_pairsynth.engines import (
    DeviceTripletLoader,
    FlatParameterAdamW,
    ForeachEMAHandler,
    build_training_dataset,
    create_paired_optimizer,
    create_paired_trainer,
    flatten_into_buffer,
)
from monai_pairsynth.handlers import ClipGradNormHandler
from monai_pairsynth.handlers.clip_grad_norm_handler import _clip_groups
from monai_pairsynth.networks import PairedDiffusionModel

MODS = ("ct", "pet", "label")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return PairedDiffusionModel(
        MODS,
        spatial_dims=2,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=4,
        num_head_channels=4,
    )


def two_layer(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def groups_of(net):
    return [
        {"params": list(net[0].parameters()), "lr": 1e-2},
        {"params": list(net[1].parameters()), "lr": 2e-2},
    ]


def train(net, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        net(torch.randn(5, 3, generator=g)).pow(2).mean().backward()
        opt.step()


def test_flatten_keeps_values_and_modules_and_accumulates_gradients_in_place():
    net = two_layer()
    before = [p.detach().clone() for p in net.parameters()]
    ids = [id(p) for p in net.parameters()]
    group = flatten_into_buffer(list(net.parameters()))
    assert [id(p) for p in net.parameters()] == ids  # the same Parameter objects
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b)
    assert group.flat.numel() == sum(b.numel() for b in before)
    x = torch.randn(2, 3)
    net(x).sum().backward()
    net(x).sum().backward()  # accumulates in the parameters' own gradients
    group.gather_grads()  # one copy into the buffer
    ref = two_layer()
    ref(x).sum().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in ref.parameters()]) * 2
    assert torch.allclose(group.flat.grad, expected)
    with pytest.raises(ValueError, match="one device and dtype"):
        flatten_into_buffer(
            [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]
        )


@pytest.mark.parametrize("kind", [{"fused": True}, {"foreach": True}])
def test_flat_adamw_gives_the_weights_and_state_of_torch_adamw(kind):
    ours, ref = two_layer(), two_layer()
    ours_opt = FlatParameterAdamW(groups_of(ours), weight_decay=0.01, **kind)
    ref_opt = torch.optim.AdamW(groups_of(ref), weight_decay=0.01, **kind)
    train(ours, ours_opt, 6)
    train(ref, ref_opt, 6)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-7, rtol=0)
    sa, sb = ours_opt.state_dict(), ref_opt.state_dict()
    assert [len(g["params"]) for g in sa["param_groups"]] == [len(g["params"]) for g in sb["param_groups"]]
    assert [g["lr"] for g in sa["param_groups"]] == [1e-2, 2e-2]
    assert sorted(sa["state"]) == sorted(sb["state"])
    for k in sb["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert sa["state"][k][name].shape == sb["state"][k][name].shape, (k, name)
            assert torch.allclose(sa["state"][k][name], sb["state"][k][name], atol=1e-7, rtol=0), (k, name)


def test_checkpoints_move_both_ways_between_flat_and_plain_adamw():
    # plain -> flat: continue an old (per-parameter) checkpoint; flat -> plain: the reverse
    for src_cls, dst_cls in (
        (torch.optim.AdamW, FlatParameterAdamW),
        (FlatParameterAdamW, torch.optim.AdamW),
    ):
        a = two_layer()
        a_opt = src_cls(groups_of(a), weight_decay=0.01)
        train(a, a_opt, 3)
        b = two_layer(seed=5)
        b.load_state_dict(a.state_dict())
        b_opt = dst_cls(groups_of(b), weight_decay=0.01)
        b_opt.load_state_dict(a_opt.state_dict())
        train(a, a_opt, 3, seed=2)
        train(b, b_opt, 3, seed=2)
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-7, rtol=0), (src_cls.__name__, dst_cls.__name__)
    wrong = FlatParameterAdamW([{"params": list(two_layer().parameters())}])
    with pytest.raises(ValueError, match="param groups of sizes"):
        wrong.load_state_dict(a_opt.state_dict())


def test_gradients_set_to_none_elsewhere_are_relinked_and_moved_parameters_are_refused():
    net = two_layer()
    opt = FlatParameterAdamW(groups_of(net), lr=0.1)
    net.zero_grad(set_to_none=True)  # e.g. a user's own loop: the gradients are no longer views of the buffer
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(net.parameters(), before))  # every parameter was updated
    assert opt.flat_groups[0].grads_gathered()
    net.double()  # moves every parameter out of the buffer
    with pytest.raises(RuntimeError, match="moved or replaced"):
        opt.step()


def test_ema_and_clipping_run_on_the_buffers_and_equal_the_per_tensor_versions():
    online = tiny_model()
    opt = create_paired_optimizer(online, flat_buffers=True)
    assert len(opt.param_groups) == 3 and all(len(g["params"]) == 1 for g in opt.param_groups)
    ref_online = tiny_model()
    ours, ref = ForeachEMAHandler(online, 0.1), EMAHandler(ref_online, 0.1)
    g = torch.Generator().manual_seed(0)

    def step(engine, batch):
        noise = [torch.randn(p.shape, generator=g) for p in online.parameters()]
        with torch.no_grad():
            for a, b, n in zip(online.parameters(), ref_online.parameters(), noise):
                a.add_(n)
                b.add_(n)

    engine = Engine(step)
    ours.attach(engine)
    ref.attach(engine, name="ref_momentum")
    engine.run(range(4), max_epochs=1)
    ema_lists = ours._lists()[0]
    assert len(ema_lists) == 3  # one buffer per denoiser, not one tensor per parameter
    for a, b in zip(ours.ema_model.parameters(), ref.ema_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # clipping: the norms of the three gradient buffers are the per-denoiser norms over their tensors
    x = {m: torch.randn(2, 1, 16, 16) for m in MODS}
    t = torch.randint(0, 1000, (2,))
    sum(o.pow(2).mean() * 1e3 for o in online(x, t).values()).backward()
    per_tensor = {
        m: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in online.denoisers[m].parameters()]))
        for m in MODS
    }
    opt.gather_grads()  # (the clipping handler does this first)
    norms = _clip_groups({g["modality"]: g["params"] for g in opt.param_groups}, 1.0, 2.0, True)
    for m in MODS:
        assert torch.allclose(norms[m], per_tensor[m], rtol=1e-5)
        clipped = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in online.denoisers[m].parameters()])
        )
        assert clipped <= 1.0 + 1e-4
    assert ClipGradNormHandler(1.0).per_group


def test_trainer_on_flat_buffers_trains_like_the_per_tensor_optimizer(tmp_path):
    """The trainer's default (flat buffers) against the same trainer given a plain per-tensor AdamW: same weights
    after an epoch (so every parameter gets its gradient each step), and a plain checkpoint resumes into it."""
    ds = build_training_dataset(num_cases=4, spatial_size=(16, 16), spacing=16.0)
    loader = DeviceTripletLoader.from_samples([ds[i] for i in range(len(ds))], 2, modality_specs=MODS, seed=0)
    common = dict(
        device="cpu", lr=1e-3, stats_log=False, progress_bar=False, tensorboard=False, ema_warmup_iters=2
    )
    flat = create_paired_trainer(
        tiny_model(), loader, max_epochs=1, generator=torch.Generator().manual_seed(1), **common
    )
    assert isinstance(flat.optimizer, FlatParameterAdamW)
    plain_model = tiny_model()
    plain = create_paired_trainer(
        plain_model,
        loader,
        max_epochs=1,
        optimizer=create_paired_optimizer(plain_model, lr=1e-3),
        generator=torch.Generator().manual_seed(1),
        output_dir=tmp_path,
        **common,
    )
    assert not isinstance(plain.optimizer, FlatParameterAdamW)
    flat.run()
    plain.run()
    for a, b in zip(flat.network.parameters(), plain.network.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    for a, b in zip(
        flat.paired.ema_handler.ema_model.parameters(), plain.paired.ema_handler.ema_model.parameters()
    ):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    resumed = create_paired_trainer(
        tiny_model(seed=3), loader, max_epochs=2, resume_from=tmp_path / "checkpoint.pt", **common
    )
    assert isinstance(resumed.optimizer, FlatParameterAdamW)
    for a, b in zip(resumed.network.parameters(), plain.network.parameters()):
        assert torch.equal(a, b)
    resumed.run()
    assert resumed.state.epoch == 2


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradient_accumulation_over_two_backwards_lands_in_the_buffer(set_to_none):
    net, ref = two_layer(), two_layer()
    opt = FlatParameterAdamW(groups_of(net), lr=0.1, weight_decay=0.0)
    ref_opt = torch.optim.AdamW(groups_of(ref), lr=0.1, weight_decay=0.0)
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
    for model, o in ((net, opt), (ref, ref_opt)):
        o.zero_grad(set_to_none=set_to_none)
        model(x1).sum().backward()
        if o is opt:
            opt.gather_grads()  # as the trainer does after each backward
            assert opt.flat_groups[0].grads_gathered()
        model(x2).sum().backward()  # accumulates into the buffer's views
        o.step()
    expected = torch.cat([p.grad.reshape(-1) for p in ref.parameters()])
    got = torch.cat([g.flat.grad for g in opt.flat_groups])
    assert torch.allclose(got, expected, atol=1e-6)
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-7, rtol=0)


def test_grad_scaler_without_gather_is_refused_and_with_gather_skips_the_inf_step():
    """Review finding: a GradScaler must not unscale/check stale buffers; with gather_grads it works like AdamW."""
    for gather in (True, False):
        net, ref = two_layer(), two_layer()
        opt = FlatParameterAdamW(groups_of(net), fused=True)
        ref_opt = torch.optim.AdamW(groups_of(ref), fused=True)
        scalers = [torch.amp.GradScaler("cpu", init_scale=4.0) for _ in range(2)]
        x = torch.randn(5, 3)
        raised = False
        for step in range(3):
            for model, o, scaler in ((net, opt, scalers[0]), (ref, ref_opt, scalers[1])):
                o.zero_grad(set_to_none=True)
                loss = model(x).pow(2).mean() * (float("inf") if step == 1 else 1.0)
                scaler.scale(loss).backward()
                if o is opt and gather:
                    opt.gather_grads()
                try:
                    scaler.step(o)
                except RuntimeError as err:
                    assert o is opt and not gather and "gather_grads" in str(err)
                    raised = True
                    break
                scaler.update()
            if raised:
                break
        if gather:
            for a, b in zip(net.parameters(), ref.parameters()):
                assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-6)
        else:
            assert raised


def test_no_backward_means_no_update_and_duplicates_and_mixed_step_counts_are_refused():
    net = two_layer()
    opt = FlatParameterAdamW(groups_of(net), lr=0.1, weight_decay=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    opt.zero_grad(set_to_none=True)
    opt.step()  # no gradient anywhere: AdamW skips every parameter, so does the flat version
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    shared = two_layer()
    with pytest.raises(ValueError, match="appears in parameter groups 0 and 1"):
        FlatParameterAdamW([{"params": list(shared.parameters())}, {"params": [shared[0].weight]}])
    plain_net = two_layer()
    plain = torch.optim.AdamW(groups_of(plain_net))
    plain_net(torch.randn(2, 3)).sum().backward()
    plain.step()
    plain_net[0].bias.grad = None  # this one is skipped by AdamW: its step count falls behind
    plain_net(torch.randn(2, 3)).sum().backward()
    plain_net[0].bias.grad = None
    plain.step()
    flat = FlatParameterAdamW(groups_of(two_layer()))
    with pytest.raises(ValueError, match="different step counts"):
        flat.load_state_dict(plain.state_dict())


def test_ema_refuses_buffers_the_model_no_longer_lives_in():
    online = tiny_model()
    first = create_paired_optimizer(online, flat_buffers=True)  # kept alive, as by a trainer
    ema = ForeachEMAHandler(online, 0.5)
    engine = Engine(lambda e, b: None)
    ema.attach(engine)
    engine.run(range(1), max_epochs=1)
    create_paired_optimizer(online, flat_buffers=True)  # the parameters move into new buffers
    with pytest.raises(RuntimeError, match="moved or replaced"):
        engine.run(range(1), max_epochs=2)
    assert first.flat_groups
