"""The fast training path: foreach EMA, fused AdamW kept across resume, device-side batches, bf16, train() skip."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

from monai_pairsynth.engines import (
    DeviceTripletLoader,
    ForeachEMAHandler,
    PairedNoiseInferer,
    build_training_dataset,
    create_paired_optimizer,
    create_paired_trainer,
    skip_redundant_train_calls,
)
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


def phantom_slices(n=8, size=16):
    ds = build_training_dataset(num_cases=n, spatial_size=(size, size), spacing=64.0 / size * 4)
    return [ds[i] for i in range(len(ds))]


# ---- EMA ----
@pytest.mark.parametrize("warmup", [None, 3])
def test_foreach_ema_matches_ignite_ema(warmup):
    kwargs = {} if warmup is None else {"momentum_warmup": 0.5, "warmup_iters": warmup}
    emas = []
    for handler_cls in (ForeachEMAHandler, EMAHandler):
        online = tiny_model()
        g = torch.Generator().manual_seed(0)

        def step(engine, batch, online=online, g=g):
            with torch.no_grad():
                for p in online.parameters():
                    p.add_(torch.randn(p.shape, generator=g))

        handler = handler_cls(online, 0.1, **kwargs)
        engine = Engine(step)
        handler.attach(engine)
        engine.run(range(6), max_epochs=1)
        emas.append((handler.ema_model, online))
    (ours, online), (ref, _) = emas
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(next(ours.parameters()), next(online.parameters()))


# ---- optimiser ----
def test_paired_optimizer_is_fused_on_cpu_and_trainer_keeps_it_after_resume(tmp_path):
    opt = create_paired_optimizer(tiny_model(), lr=1e-3)
    assert all(g["fused"] for g in opt.param_groups)
    assert all(g["foreach"] for g in create_paired_optimizer(tiny_model(), fused=False).param_groups)
    loader = DeviceTripletLoader.from_samples(phantom_slices(4), 2, modality_specs=MODS, seed=0)
    trainer = create_paired_trainer(
        tiny_model(),
        loader,
        max_epochs=1,
        device="cpu",
        output_dir=tmp_path,
        stats_log=False,
        progress_bar=False,
        tensorboard=False,
    )
    trainer.run()
    trainer.paired.optimizer.param_groups[0]["fused"] = None  # as if the checkpoint came from an unfused run
    torch.save(torch.load(tmp_path / "checkpoint.pt", weights_only=False), tmp_path / "c.pt")
    resumed = create_paired_trainer(
        tiny_model(),
        loader,
        max_epochs=2,
        device="cpu",
        resume_from=tmp_path / "c.pt",
        stats_log=False,
        progress_bar=False,
        tensorboard=False,
    )
    assert all(g["fused"] for g in resumed.paired.optimizer.param_groups)


# ---- device loader ----
def test_device_loader_epochs_are_functions_of_seed_and_epoch():
    loader = DeviceTripletLoader.from_samples(phantom_slices(6), 2, modality_specs=MODS, seed=3)
    loader.set_epoch(2)
    a = [b["ct"].clone() for b in loader]
    loader.set_epoch(5)
    c = [b["ct"].clone() for b in loader]
    loader.set_epoch(2)
    b = [x["ct"].clone() for x in loader]
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_device_loader_augments_every_modality_alike_and_keeps_masks_binary():
    slices = phantom_slices(8, size=32)
    loader = DeviceTripletLoader.from_samples(slices, 8, modality_specs=MODS, seed=0, prob=1.0, flip_prob=0.5)
    batch = next(iter(loader))
    assert set(batch["label"].unique().tolist()) <= {-1.0, 1.0}
    ref = torch.stack([s["ct"] for s in slices])
    assert not torch.equal(batch["ct"].sort(0).values, ref.sort(0).values)  # something moved
    # the same geometric transform for CT and the mask: the tumour stays where CT says soft tissue is
    for i in range(8):
        lesion = batch["label"][i, 0] > 0
        assert lesion.any() and float(batch["ct"][i, 0][lesion].mean()) > -0.9
    # no augmentation: the data itself, in a permuted order
    plain = DeviceTripletLoader.from_samples(slices, 8, modality_specs=MODS, seed=0, augment=False)
    out = next(iter(plain))["ct"]
    assert torch.equal(out.sort(0).values, ref.sort(0).values)


def test_device_loader_names_the_bad_sample():
    slices = phantom_slices(3)
    slices[1] = dict(slices[1], pet=slices[1]["pet"].clone())
    slices[1]["pet"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"sample 1.*'pet'.*NaN"):
        DeviceTripletLoader.from_samples(slices, 2, modality_specs=MODS)
    slices = phantom_slices(3)
    del slices[2]["label"]
    with pytest.raises(KeyError, match=r"sample 2.*'label'"):
        DeviceTripletLoader.from_samples(slices, 2, modality_specs=MODS)
    with pytest.raises(ValueError, match="fewer than one batch"):
        DeviceTripletLoader.from_samples(phantom_slices(2), 4, modality_specs=MODS)
    with pytest.raises(ValueError, match="prob"):
        DeviceTripletLoader.from_samples(phantom_slices(2), 1, modality_specs=MODS, prob=2.0)


def test_resume_with_device_loader_is_exact(tmp_path):
    loader = DeviceTripletLoader.from_samples(phantom_slices(4), 2, modality_specs=MODS, seed=0)
    common = dict(
        device="cpu", lr=1e-3, stats_log=False, progress_bar=False, tensorboard=False, ema_warmup_iters=2
    )
    straight = create_paired_trainer(
        tiny_model(),
        loader,
        max_epochs=3,
        generator=torch.Generator().manual_seed(1),
        output_dir=tmp_path / "a",
        **common,
    )
    straight.run()
    first = create_paired_trainer(
        tiny_model(),
        loader,
        max_epochs=1,
        generator=torch.Generator().manual_seed(1),
        output_dir=tmp_path / "b",
        **common,
    )
    first.run()
    second = create_paired_trainer(
        tiny_model(),
        loader,
        max_epochs=3,
        generator=torch.Generator().manual_seed(1),
        output_dir=tmp_path / "b",
        resume_from=tmp_path / "b" / "checkpoint.pt",
        **common,
    )
    second.run()
    for a, b in zip(straight.network.parameters(), second.network.parameters()):
        assert torch.equal(a, b)


# ---- bf16 ----
def test_bf16_autocast_runs_the_network_in_bfloat16_and_trains():
    seen = []
    model = tiny_model()
    model.denoisers["ct"].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    inferer = PairedNoiseInferer(create_noise_scheduler(), autocast_dtype="bf16")
    x = {m: torch.zeros(2, 1, 16, 16) for m in MODS}
    out = inferer(
        x, model, noise={m: torch.randn(2, 1, 16, 16) for m in MODS}, timesteps=torch.tensor([1, 500])
    )
    assert seen == [torch.bfloat16] and out["ct"].shape == (2, 1, 16, 16)
    loader = DeviceTripletLoader.from_samples(phantom_slices(4), 2, modality_specs=MODS)
    trainer = create_paired_trainer(
        tiny_model(),
        loader,
        max_epochs=1,
        device="cpu",
        autocast_dtype="bfloat16",
        stats_log=False,
        progress_bar=False,
        tensorboard=False,
    )
    before = copy.deepcopy(trainer.network.state_dict())
    trainer.run()
    assert (
        torch.isfinite(trainer.state.output["loss"]) and trainer.state.output["loss"].dtype == torch.float32
    )
    assert any(not torch.equal(before[k], v) for k, v in trainer.network.state_dict().items())
    with pytest.raises(ValueError, match="autocast dtype"):
        PairedNoiseInferer(create_noise_scheduler(), autocast_dtype="int8")


def create_noise_scheduler():
    from monai_pairsynth.engines import create_noise_scheduler as make

    return make({"num_train_timesteps": 1000})


# ---- train() ----
def test_skip_redundant_train_calls_skips_the_walk_but_not_mode_changes():
    model = tiny_model()
    calls = []
    model.denoisers["ct"].register_forward_pre_hook(lambda *a: None)
    original = torch.nn.Module.train

    def counting(self, mode=True):
        calls.append(type(self).__name__)
        return original(self, mode)

    torch.nn.Module.train = counting
    try:
        skip_redundant_train_calls(model)
        model.train()
        n = len(calls)
        model.train()
        model.train()
        assert len(calls) == n  # skipped
        model.eval()
        assert not any(m.training for m in model.modules())
        model.train()
        assert all(m.training for m in model.modules())
    finally:
        torch.nn.Module.train = original
    clone = copy.deepcopy(model)
    clone.eval()
    assert model.training and not clone.training  # the copy's method is bound to the copy


# ---- torch.compile (opt-in; compiling for real takes minutes on a CPU, so the wiring is checked) ----
def test_compile_network_compiles_once_and_keeps_the_original_network(monkeypatch):
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append((module, kwargs))
        return lambda *a, **k: module(*a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = tiny_model()
    loader = DeviceTripletLoader.from_samples(phantom_slices(4), 2, modality_specs=MODS)
    trainer = create_paired_trainer(
        model,
        loader,
        max_epochs=1,
        device="cpu",
        compile_network=True,
        stats_log=False,
        progress_bar=False,
        tensorboard=False,
    )
    trainer.run()
    assert len(compiled) == 1 and compiled[0][0] is model and compiled[0][1] == {"dynamic": False}
    assert trainer.network is model and trainer.state.iteration == 2


# ---- lr warm-up ----
def test_lr_warmup_ramps_each_group_and_resumes_inside_the_ramp(tmp_path):
    loader = DeviceTripletLoader.from_samples(phantom_slices(4), 2, modality_specs=MODS, seed=0)
    common = dict(
        device="cpu",
        lr={"ct": 1e-3, "pet": 2e-3, "label": 4e-3},
        lr_warmup_iters=4,
        stats_log=False,
        progress_bar=False,
        tensorboard=False,
    )
    seen = []
    trainer = create_paired_trainer(tiny_model(), loader, max_epochs=3, output_dir=tmp_path / "a", **common)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append([g["lr"] for g in e.optimizer.param_groups])
    )
    trainer.run()
    assert seen[0] == pytest.approx([0.25e-3, 0.5e-3, 1e-3]) and seen[3] == pytest.approx([1e-3, 2e-3, 4e-3])
    assert seen[5] == seen[3]
    first = create_paired_trainer(tiny_model(), loader, max_epochs=1, output_dir=tmp_path / "b", **common)
    first.run()  # stops at iteration 2, inside the ramp
    resumed_lrs = []
    second = create_paired_trainer(
        tiny_model(), loader, max_epochs=2, resume_from=tmp_path / "b" / "checkpoint.pt", **common
    )
    second.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: resumed_lrs.append([g["lr"] for g in e.optimizer.param_groups])
    )
    second.run()
    assert resumed_lrs == [pytest.approx(x) for x in seen[2:4]]
    with pytest.raises(ValueError, match="lr_warmup_iters"):
        create_paired_trainer(tiny_model(), loader, max_epochs=1, device="cpu", lr_warmup_iters=-1)


@pytest.mark.parametrize("kind", [{"fused": True}, {"foreach": True}])
def test_list_caching_adamw_equals_torch_adamw(kind):
    from monai_pairsynth.engines.param_groups import ListCachingAdamW

    def run(cls):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        opt = cls(
            [{"params": net[0].parameters(), "lr": 1e-2}, {"params": net[1].parameters(), "lr": 2e-2}],
            weight_decay=0.01,
            **kind,
        )
        g = torch.Generator().manual_seed(1)
        for step in range(6):
            opt.zero_grad(set_to_none=True)
            net(torch.randn(5, 3, generator=g)).pow(2).mean().backward()
            if step == 3:
                net[1].bias.grad = None  # a parameter without gradient: the group goes through torch's loop
            opt.step()
            if step == 4:  # a reload replaces the state tensors: the cached lists must not be used after it
                opt.load_state_dict(opt.state_dict())
        return net, opt

    ours, ours_opt = run(ListCachingAdamW)
    ref, ref_opt = run(torch.optim.AdamW)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    sa, sb = ours_opt.state_dict(), ref_opt.state_dict()
    for k in sb["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa["state"][k][name], sb["state"][k][name]), (k, name)
