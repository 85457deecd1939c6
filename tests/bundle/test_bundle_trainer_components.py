"""train_diffusion.json declares the trainer's pieces as ``_target_`` components (issue 16): the trainer it builds
is the one ``create_paired_trainer`` builds from the same settings, and each piece is overridden by its path."""

from __future__ import annotations

import re

import pytest
import torch
from bundle_helpers import grid_overrides, make_workflow
from ignite.engine import Events
from monai.engines.utils import IterationEvents

from monai_pairsynth.engines import (
    FlatParameterAdamW,
    GatherGradsHandler,
    create_paired_trainer,
    read_paired_checkpoint,
)
from monai_pairsynth.handlers import ClipGradNormHandler, LinearLRWarmup, PerceptualWarmup

TINY = {
    "network_def#channels": [8, 16],
    "network_def#attention_levels": [False, False],
    "network_def#norm_num_groups": 4,
    "num_phantom_cases": 4,
    "batch_size": 2,
    "device": "cpu",
    "amp": False,
}


def _workflow(tmp_path, **overrides):
    return make_workflow(
        "train_diffusion.json", **grid_overrides(**{**TINY, "output_dir": str(tmp_path), **overrides})
    )


def _trainer(tmp_path, **overrides):
    return _workflow(tmp_path, **overrides).parser.get_parsed_content("train#trainer")


def _run(trainer, seed=7):
    losses = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item())
    )
    torch.manual_seed(seed)  # the bundle's prepare-batch draws from the global RNG
    trainer.run()
    return losses


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


SETTINGS = {
    "learning_rate": 5e-4,
    "noise_scheduler": {"num_train_timesteps": 1000, "schedule": "cosine", "prediction_type": "v_prediction"},
    "snr_gamma": 5.0,
    "foreground_weight": {"label": 4.0},
    "offset_noise_scale": 0.1,
    "clean_prob": 0.5,
    "ema_momentum": 0.005,
    "ema_warmup_iters": 100,
}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "independent_timestep_prob": 0.5,
            "perceptual_weight": 0.1,
            "perceptual_start_epoch": 1,
            "lr_warmup_iters": 2,
        },
    ],
)
def test_bundle_trainer_equals_create_paired_trainer(tmp_path, extra):
    """Same settings, same initial weights, same data, same seed: bit-identical weights, EMA and losses."""
    workflow = _workflow(tmp_path / "bundle", epochs=2, **extra)
    parser = workflow.parser
    bundle = parser.get_parsed_content("train#trainer")
    start = _weights(bundle)

    other = _workflow(tmp_path / "other_parse", epochs=2, **extra).parser
    model = other.get_parsed_content("network_def")
    model.load_state_dict(start)
    factory = create_paired_trainer(
        model,
        other.get_parsed_content("train#dataloader"),
        max_epochs=2,
        device="cpu",
        lr=SETTINGS["learning_rate"],
        noise_scheduler=SETTINGS["noise_scheduler"],
        snr_gamma=SETTINGS["snr_gamma"],
        foreground_weight=SETTINGS["foreground_weight"],
        offset_noise_scale=SETTINGS["offset_noise_scale"],
        independent_timestep_prob=extra.get("independent_timestep_prob", 0.0),
        clean_prob=SETTINGS["clean_prob"],
        perceptual_weight=extra.get("perceptual_weight", 0.0),
        perceptual_start_epoch=extra.get("perceptual_start_epoch", 25),
        lr_warmup_iters=extra.get("lr_warmup_iters", 0),
        ema_momentum=SETTINGS["ema_momentum"],
        ema_warmup_iters=SETTINGS["ema_warmup_iters"],
        output_dir=tmp_path / "factory",
        modality_specs=parser.get_parsed_content("modality_specs"),
        spatial_size=parser.get_parsed_content("spatial_size"),
        spacing=parser.get_parsed_content("spacing"),
        log_every=0,
        progress_bar=False,
        tensorboard=False,
    )
    assert _run(bundle) == _run(factory)
    for name, value in _weights(bundle).items():
        assert torch.equal(value, factory.network.state_dict()[name]), name
    for a, b in zip(bundle.paired.ema_model.parameters(), factory.paired.ema_model.parameters()):
        assert torch.equal(a, b)
    saved = read_paired_checkpoint(tmp_path / "bundle" / "checkpoint.pt")
    reference = read_paired_checkpoint(tmp_path / "factory" / "checkpoint.pt")
    for key in (
        "noise_scheduler",
        "per_modality_timesteps",
        "modality_specs",
        "spatial_size",
        "spacing",
        "offset_noise_scale",
        "perceptual_weight",
        "trainer",
        "ema",
        "model_config",
    ):
        assert saved[key] == reference[key], key
    assert saved["per_modality_timesteps"]["independent_timestep_prob"] == extra.get(
        "independent_timestep_prob", 0.0
    )
    # a checkpoint of create_paired_trainer (the format of before) resumes in the bundle's trainer
    resumed = _trainer(
        tmp_path / "resumed", epochs=3, resume_from=str(tmp_path / "factory" / "checkpoint.pt"), **extra
    )
    assert resumed.state.epoch == 2


def test_pieces_overridden_by_path(tmp_path):
    trainer = _trainer(
        tmp_path,
        **{
            "train#optimizer#lr": 0.00042,
            "train#loss#snr_gamma": "$None",  # (MONAI drops a bare None override)
            "train#loss#foreground_weight": {"pet": 2.0},
            "train#handlers#grad_clipping#_disabled_": True,
            "lr_warmup_iters": 3,
            "train#ema#momentum": 0.25,
        },
    )
    assert {group["lr"] for group in trainer.optimizer.param_groups} == {0.00042}
    assert trainer.loss_function.snr_gamma is None and trainer.loss_function.foreground_weight == {"pet": 2.0}
    assert trainer.paired.grad_clipping is None
    assert trainer.paired.ema_handler.momentum == 0.25
    warmups = [
        h for h in trainer._event_handlers[Events.ITERATION_STARTED] if isinstance(h[0], LinearLRWarmup)
    ]
    assert len(warmups) == 1 and warmups[0][0].iters == 3


def test_swapping_the_optimiser_class_drops_the_flat_buffers(tmp_path):
    trainer = _trainer(
        tmp_path,
        **{
            "train#optimizer": {"_target_": "torch.optim.SGD", "params": "$@network.parameters()", "lr": 0.01}
        },
    )
    assert type(trainer.optimizer) is torch.optim.SGD
    gathers = [
        h
        for handlers in trainer._event_handlers.values()
        for h, *_ in handlers
        if isinstance(h, GatherGradsHandler)
    ]
    assert gathers == []
    _run(trainer)  # trains and checkpoints with a plain optimiser
    assert read_paired_checkpoint(tmp_path / "checkpoint.pt")["optimizer"]["param_groups"][0]["lr"] == 0.01


def test_default_optimiser_keeps_its_gradient_gather_first(tmp_path):
    trainer = _trainer(tmp_path)
    assert isinstance(trainer.optimizer, FlatParameterAdamW)
    backward = [h for h, *_ in trainer._event_handlers[IterationEvents.BACKWARD_COMPLETED]]
    assert isinstance(backward[0], GatherGradsHandler) and isinstance(backward[1], ClipGradNormHandler)


def test_perceptual_warmup_follows_the_top_level_setting(tmp_path):
    assert _trainer(tmp_path).paired.perceptual_warmup is None
    on = _trainer(tmp_path, perceptual_weight=0.2, perceptual_start_epoch=3).paired.perceptual_warmup
    assert isinstance(on, PerceptualWarmup) and (on.weight, on.start_epoch) == (0.2, 3)


def test_resume_continues_exactly(tmp_path):
    straight = _trainer(tmp_path / "straight", epochs=2)
    _run(straight, seed=3)
    first = _trainer(tmp_path / "first", epochs=1)
    _run(first, seed=3)
    resumed = _trainer(tmp_path / "second", epochs=2, resume_from=str(tmp_path / "first" / "checkpoint.pt"))
    assert resumed.state.epoch == 1
    resumed.run()  # the checkpoint restores the global RNG
    for name, value in _weights(straight).items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train#prepare_batch#prediction_type": "epsilon"}, r"prediction_type differs: prepare_batch"),
        ({"train#prepare_batch#num_train_timesteps": 10}, r"num_train_timesteps=10 differs"),
        ({"train#loss#prediction_type": "sample"}, r"prediction_type differs: loss_function"),
        ({"train#prepare_batch#modalities": ["ct", "pet"]}, r"modality names differ"),
        ({"train#ema#model": "$torch.nn.Linear(1, 1)"}, r"ema_handler averages another model"),
        ({"train#checkpoint_saver#ema_handler": "$None"}, r"checkpoint_saver\.ema_handler is None"),
        (
            {"train#checkpoint_saver#noise_scheduler": {"num_train_timesteps": 1000}},
            r"noise scheduler differs",
        ),
    ],
)
def test_pieces_that_do_not_fit_are_named(tmp_path, overrides, message):
    with pytest.raises(Exception) as info:
        _trainer(tmp_path, **overrides)
    chain, error = [], info.value
    while error is not None:  # MONAI wraps a component's error in its own
        chain.append(str(error))
        error = error.__cause__
    assert re.search(message, " | ".join(chain)), chain
