from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys

from monai_pairsynth.engines import (
    STATS_LOGGER_NAME,
    create_paired_trainer,
    load_paired_checkpoint,
    load_paired_weights,
    paired_data_loader,
    paired_param_groups,
    read_paired_checkpoint,
    save_paired_checkpoint,
)
from monai_pairsynth.handlers import ClipGradNormHandler, PerceptualWarmup
from monai_pairsynth.networks import PairedDiffusionModel

MODS = ("ct", "pet", "label")
TINY = {"channels": (8, 16), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4}


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return PairedDiffusionModel(MODS, **{**TINY, **kwargs})


def tiny_data(n_batches=2, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{m: torch.rand(b, 1, 16, 16, generator=g) * 2 - 1 for m in MODS} for _ in range(n_batches)]


def tiny_trainer(model=None, data=None, **kwargs):
    args = {
        "max_epochs": 1,
        "device": "cpu",
        "generator": torch.Generator().manual_seed(1),
        "stats_log": False,
        "progress_bar": False,
        "ema_warmup_iters": 2,
    }
    args.update(kwargs)
    return create_paired_trainer(model or tiny_model(), data if data is not None else tiny_data(), **args)


def test_trainer_loss_is_sum_of_per_modality_mse():
    trainer = tiny_trainer(lr=0.0, data=tiny_data(1))
    trainer.run()
    out = trainer.state.output
    pred, target = out[CommonKeys.PRED], out[CommonKeys.LABEL]["target"]
    hand = sum(((pred[m] - target[m]) ** 2).mean() for m in MODS)
    assert torch.allclose(out[CommonKeys.LOSS].detach(), hand.detach(), atol=1e-6)
    comps = out["loss_components"]
    assert set(f"mse_{m}" for m in MODS) <= set(comps)
    for m in MODS:
        assert torch.allclose(comps[f"mse_{m}"], ((pred[m] - target[m]) ** 2).mean().detach(), atol=1e-6)
    assert set(f"mse_{m}" for m in MODS) <= set(trainer.state.metrics)


def test_perceptual_term_zero_before_start_epoch_nonzero_after():
    trainer = tiny_trainer(data=tiny_data(1), max_epochs=3, perceptual_weight=0.5, perceptual_start_epoch=2)
    per_epoch = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: per_epoch.append(dict(e.state.metrics)))
    trainer.run()
    assert [m["perceptual_weight"] for m in per_epoch] == pytest.approx([0.0, 0.0, 0.5])
    assert per_epoch[0]["perceptual"] == 0.0 and per_epoch[1]["perceptual"] == 0.0
    assert per_epoch[2]["perceptual"] > 0.01
    last = per_epoch[2]
    assert last["loss"] == pytest.approx(last["mse"] + 0.5 * last["perceptual"], rel=1e-5)
    assert trainer.state.perceptual_weight == 0.5
    assert isinstance(trainer.paired.perceptual_warmup, PerceptualWarmup)


def test_per_modality_learning_rates_land_in_param_groups():
    model = tiny_model()
    lrs = {"ct": 1e-3, "pet": 2e-4, "label": 5e-5}
    trainer = tiny_trainer(model, lr=lrs, weight_decay={"ct": 0.0, "pet": 0.01, "label": 0.1})
    groups = trainer.optimizer.param_groups
    assert [g["modality"] for g in groups] == list(MODS)
    # the trainer's optimiser keeps each group's parameters in one contiguous buffer (FlatParameterAdamW)
    members = [flat.members for flat in trainer.optimizer.flat_groups]
    for g, params in zip(groups, members):
        m = g["modality"]
        assert g["lr"] == lrs[m]
        assert {id(p) for p in params} == {id(p) for p in model.denoisers[m].parameters()}
    assert [g["weight_decay"] for g in groups] == [0.0, 0.01, 0.1]
    # every parameter of the model is optimised exactly once
    assert sum(len(params) for params in members) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "lr, match",
    [
        ({"ct": 1e-3, "pet": 1e-3}, r"no value for \['label'\]"),
        ({"ct": 1e-3, "pet": 1e-3, "label": 1e-3, "mr": 1.0}, r"unknown modality \['mr'\]"),
        (-1.0, ">= 0"),
    ],
)
def test_bad_learning_rates(lr, match):
    with pytest.raises(ValueError, match=match):
        paired_param_groups(tiny_model(), lr)


def test_learning_rate_zero_freezes_only_that_modality():
    model = tiny_model()
    before = {m: [p.detach().clone() for p in model.denoisers[m].parameters()] for m in MODS}
    tiny_trainer(model, tiny_data(1), lr={"ct": 0.0, "pet": 1e-3, "label": 1e-3}, ema_momentum=None).run()
    changed = {
        m: any(not torch.equal(a, b) for a, b in zip(before[m], model.denoisers[m].parameters()))
        for m in MODS
    }
    assert changed == {"ct": False, "pet": True, "label": True}


def _outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(2, 1, 16, 16, generator=g) for m in MODS}
    with torch.no_grad():
        return model.eval()(x, torch.tensor([5, 900]))


def test_checkpoint_round_trip_model_and_ema(tmp_path):
    trainer = tiny_trainer(
        data=tiny_data(1), max_epochs=2, output_dir=tmp_path, lr=1e-3, ema_momentum=0.3, ema_warmup_iters=None
    )
    trainer.run()
    path = trainer.paired.checkpoint_saver.last_path
    assert path == tmp_path / "checkpoint.pt" and path.is_file()
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file
    model, ema = trainer.network, trainer.paired.ema_model
    loaded_ema, ckpt = load_paired_checkpoint(path)
    loaded, _ = load_paired_checkpoint(path, use_ema=False)
    ref_model, ref_ema = _outputs(model), _outputs(ema)
    assert any(not torch.equal(ref_model[m], ref_ema[m]) for m in MODS)  # EMA really differs
    got_model, got_ema = _outputs(loaded), _outputs(loaded_ema)
    for m in MODS:
        assert torch.equal(got_model[m], ref_model[m])
        assert torch.equal(got_ema[m], ref_ema[m])
    assert ckpt["trainer"]["epoch"] == 2 and ckpt["trainer"]["iteration"] == 2
    assert ckpt["noise_scheduler"] == {
        "num_train_timesteps": 1000,
        "schedule": "linear_beta",
        "prediction_type": "epsilon",
        "schedule_args": {},
    }
    assert ckpt["model_config"] == model.get_config()
    assert ckpt["offset_noise_scale"] == 0.1
    assert sorted(ckpt["modality_specs"]) == sorted(MODS) and ckpt["modality_specs"]["ct"]["unit"] == "HU"
    assert ckpt["optimizer"]["param_groups"][0]["modality"] == "ct"
    # readable without pickled code
    torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "other, match",
    [
        (
            {"channels": (8, 16, 16), "attention_levels": (False, False, False)},
            r"channels: checkpoint \(8, 16\) vs model \(8, 16, 16\)",
        ),
        ({"norm_num_groups": 8}, r"norm_num_groups: checkpoint 4 vs model 8"),
    ],
)
def test_loading_into_other_configuration_names_the_mismatch(tmp_path, other, match):
    path = save_paired_checkpoint(tmp_path / "c.pt", tiny_model())
    with pytest.raises(ValueError, match=match):
        load_paired_weights(tiny_model(**other), path)


def test_loading_other_modalities_names_them(tmp_path):
    path = save_paired_checkpoint(tmp_path / "c.pt", tiny_model())
    model = PairedDiffusionModel(("ct", "mr"), **TINY)
    with pytest.raises(
        ValueError, match=r"modalities: checkpoint \('ct', 'pet', 'label'\) vs model \('ct', 'mr'\)"
    ):
        load_paired_weights(model, path)


def test_checkpoint_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_paired_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a monai_pairsynth paired diffusion checkpoint"):
        read_paired_checkpoint(tmp_path / "plain.pt")


def _loader(seed=2, n_items=3):
    g = torch.Generator().manual_seed(seed)
    items = [{m: torch.rand(1, 16, 16, generator=g) * 2 - 1 for m in MODS} for _ in range(n_items)]
    return paired_data_loader(items, batch_size=1, seed=seed)


def _run(output_dir, max_epochs, resume_from=None, n_items=3):
    trainer = tiny_trainer(
        tiny_model(seed=0),
        _loader(n_items=n_items),
        max_epochs=max_epochs,
        output_dir=output_dir,
        lr=1e-3,
        perceptual_weight=0.2,
        perceptual_start_epoch=1,
        ema_warmup_iters=10,
        resume_from=resume_from,
    )
    # model init and other global draws happen here, between the runs: the resume must undo them
    torch.rand(17)
    trainer.run()
    return trainer


# 1 item: optimiser, EMA, RNG, perceptual warm-up; 3 items (slow): also the shuffled data order across epochs
@pytest.mark.parametrize("n_items", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_resume_is_exact(tmp_path, n_items):
    straight = _run(None, 2, n_items=n_items)
    first = _run(tmp_path, 1, n_items=n_items)
    assert first.state.epoch == 1
    resumed = _run(None, 2, resume_from=first.paired.checkpoint_saver.last_path, n_items=n_items)
    assert resumed.state.epoch == 2 and resumed.state.iteration == straight.state.iteration == 2 * n_items
    for name, p in straight.network.state_dict().items():
        assert torch.equal(p, resumed.network.state_dict()[name]), name
    ema_pairs = zip(
        straight.paired.ema_model.state_dict().items(), resumed.paired.ema_model.state_dict().values()
    )
    for (name, p), q in ema_pairs:
        assert torch.equal(p, q), name
    assert straight.state.metrics["loss"] == resumed.state.metrics["loss"]
    assert resumed.state.metrics["perceptual"] > 0  # the resumed epoch ran with the perceptual term on
    # the second epoch changed the weights (so the comparison above is not vacuous)
    assert any(
        not torch.equal(p, q) for p, q in zip(first.network.parameters(), straight.network.parameters())
    )


def test_resume_needs_more_epochs(tmp_path):
    done = tiny_trainer(max_epochs=1)
    done.state.epoch, done.state.iteration = 1, 2
    path = save_paired_checkpoint(tmp_path / "c.pt", tiny_model(), engine=done)
    with pytest.raises(ValueError, match=r"at epoch 1.*max_epochs is 1"):
        tiny_trainer(max_epochs=1, resume_from=path)


def test_resume_with_other_noise_schedule_fails(tmp_path):
    path = save_paired_checkpoint(
        tmp_path / "c.pt", tiny_model(), noise_scheduler={"num_train_timesteps": 500}
    )
    with pytest.raises(ValueError, match="noise scheduler"):
        tiny_trainer(max_epochs=2, resume_from=path)


def test_resume_into_other_configuration_fails(tmp_path):
    path = save_paired_checkpoint(tmp_path / "c.pt", tiny_model())
    with pytest.raises(ValueError, match=r"channels: checkpoint \(8, 16\) vs model \(4, 8\)"):
        tiny_trainer(tiny_model(channels=(4, 8)), max_epochs=2, resume_from=path)


@pytest.mark.parametrize("per_modality", [True, False])
def test_gradient_clipping_bounds_the_grad_norm(per_modality):
    max_norm = 1e-3
    trainer = tiny_trainer(grad_clip_norm=max_norm, lr=0.0, grad_clip_per_modality=per_modality)
    seen = []

    def norms_after(engine):
        per = {
            m: float(torch.cat([p.grad.flatten() for p in d.parameters() if p.grad is not None]).norm())
            for m, d in engine.network.denoisers.items()
        }
        total = float(torch.tensor(list(per.values())).norm())
        seen.append((per, total, engine.state.grad_norm, engine.state.grad_norms))

    trainer.add_event_handler(
        IterationEvents.BACKWARD_COMPLETED, norms_after
    )  # runs after the clipping handler
    trainer.run()
    assert len(seen) == 2
    for per, total, before, before_groups in seen:
        assert isinstance(before, torch.Tensor)  # stays on the device: no host sync per iteration
        assert float(before) > 10 * max_norm  # the raw gradient was well above the bound ...
        if per_modality:
            assert sorted(before_groups) == sorted(per)
            for m, after in per.items():  # ... and each denoiser is clipped to it on its own
                assert after <= max_norm * (1 + 1e-4), m
                assert after >= max_norm * (1 - 1e-3) or float(before_groups[m]) <= max_norm
            assert total > max_norm * 1.5  # three groups each at the bound: the global norm is not
            groups = torch.stack([before_groups[m] for m in per])
            assert torch.allclose(before, groups.norm())
        else:
            assert total <= max_norm * (1 + 1e-4)  # one global bound
    assert isinstance(trainer.paired.grad_clipping, ClipGradNormHandler)


def test_no_clipping_when_disabled():
    trainer = tiny_trainer(data=tiny_data(1), grad_clip_norm=None, lr=0.0)
    trainer.run()
    assert trainer.paired.grad_clipping is None and not hasattr(trainer.state, "grad_norm")


def test_ema_follows_the_model():
    trainer = tiny_trainer(data=tiny_data(1), max_epochs=2, lr=1e-2, ema_momentum=0.5, ema_warmup_iters=None)
    init = [p.detach().clone() for p in trainer.paired.ema_model.parameters()]
    trainer.run()
    ema = list(trainer.paired.ema_model.parameters())
    model = list(trainer.network.parameters())
    moved = [float((e - i).abs().max()) for e, i in zip(ema, init)]
    assert max(moved) > 0
    assert not any(p.requires_grad for p in ema)
    assert trainer.state.ema_momentum == 0.5
    assert any(not torch.equal(e, m) for e, m in zip(ema, model))


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda b: b.pop("label"), KeyError, r"missing modality \['label'\]"),
        (
            lambda b: b.update(pet=torch.zeros(2, 1, 8, 8)),
            ValueError,
            r"ct \(2, 1, 16, 16\), pet \(2, 1, 8, 8\)",
        ),
        (lambda b: b["ct"].__setitem__((0, 0, 1, 1), float("nan")), ValueError, "'ct' contains NaN"),
    ],
)
def test_bad_batch_stops_training_with_named_error(mutate, error, match):
    data = tiny_data(1)
    mutate(data[0])
    with pytest.raises(error, match=match):
        tiny_trainer(data=data).run()


def test_spatial_size_the_unet_cannot_downsample():
    data = [{m: torch.zeros(2, 1, 15, 15) for m in MODS}]
    with pytest.raises(ValueError, match="15"):
        tiny_trainer(data=data).run()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"amp": True}, "CUDA"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"modality_specs": ("ct", "pet")}, "must match"),
        ({"noise_scheduler": {"schedule": "quadratic"}}, "linear_beta"),
        ({"log_every": -1}, "log_every"),
    ],
)
def test_factory_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_trainer(**kwargs)


def test_factory_rejects_non_paired_model():
    with pytest.raises(ValueError, match="PairedDiffusionModel"):
        create_paired_trainer(torch.nn.Linear(2, 2), [], max_epochs=1)


def test_v_prediction_training_runs_and_records_it(tmp_path):
    trainer = tiny_trainer(
        data=tiny_data(1),
        noise_scheduler={"prediction_type": "v_prediction", "num_train_timesteps": 100},
        output_dir=tmp_path,
    )
    trainer.run()
    out = trainer.state.output
    inputs, noise, t = (
        out[CommonKeys.IMAGE],
        out[CommonKeys.LABEL]["noise"],
        out[CommonKeys.LABEL]["timesteps"],
    )
    v = trainer.paired.noise_scheduler.get_velocity(inputs["ct"], noise["ct"], t)
    assert torch.allclose(out[CommonKeys.LABEL]["target"]["ct"], v)
    assert (
        read_paired_checkpoint(tmp_path / "checkpoint.pt")["noise_scheduler"]["prediction_type"]
        == "v_prediction"
    )


@pytest.mark.parametrize("progress_bar", [False, True])
def test_logging_of_per_modality_losses(capsys, progress_bar):
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger(STATS_LOGGER_NAME)
    logger.addHandler(handler)
    try:
        tiny_trainer(data=tiny_data(1), stats_log=True, log_every=1, progress_bar=progress_bar).run()
    finally:
        logger.removeHandler(handler)
    iteration_lines = [r for r in records if "Iter: 1/1" in r]
    epoch_lines = [r for r in records if "Epoch[1] Metrics" in r]
    assert len(epoch_lines) == 1
    # with a progress bar, the per-iteration log lines are left to the bar
    assert len(iteration_lines) == (0 if progress_bar else 1)
    for line in iteration_lines + epoch_lines:
        assert all(f"mse_{m}:" in line for m in MODS) and "perceptual:" in line
    assert ("100%" in capsys.readouterr().err) == progress_bar


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_requested_but_missing(tmp_path):
    with pytest.raises(ValueError, match="pip install tensorboard"):
        tiny_trainer(tensorboard=True, output_dir=tmp_path)


@pytest.mark.parametrize(
    "modalities, shape",
    [
        (("ct", "pet"), (16, 16)),
        (("ct", "mr", "oar", "label"), (16, 16)),
        (("ct", "pet", "label"), (8, 8, 8)),
    ],
)
def test_other_modality_sets_and_3d(tmp_path, modalities, shape):
    specs = {
        m: {"kind": "mask" if m in ("oar", "label") else "image", "low": -1.0, "high": 1.0}
        for m in modalities
    }
    torch.manual_seed(0)
    model = PairedDiffusionModel(modalities, spatial_dims=len(shape), **TINY)
    data = [{m: torch.rand(1, 1, *shape) * 2 - 1 for m in modalities}]
    trainer = tiny_trainer(
        model,
        data,
        perceptual_weight=0.1,
        perceptual_start_epoch=0,
        output_dir=tmp_path,
        modality_specs=specs,
    )
    trainer.run()
    metrics = trainer.state.metrics
    assert all(f"mse_{m}" in metrics and f"perceptual_{m}" in metrics for m in modalities)
    assert metrics["perceptual"] > 0
    loaded, ckpt = load_paired_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded.modalities == modalities and sorted(ckpt["modality_specs"]) == sorted(modalities)


@pytest.mark.gpu
def test_amp_training_on_cuda(tmp_path):
    model = tiny_model()
    data = tiny_data(2)
    trainer = tiny_trainer(
        model, data, device="cuda", amp=True, max_epochs=2, output_dir=tmp_path, grad_clip_norm=1.0
    )
    trainer.run()
    assert trainer.scaler is not None
    assert torch.isfinite(torch.tensor(trainer.state.metrics["loss"]))
    ckpt = read_paired_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["scaler"] is not None and "scale" in ckpt["scaler"]
