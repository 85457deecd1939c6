"""assemble_paired_trainer: the trainer from pre-built pieces, and the errors when the pieces do not fit."""

from __future__ import annotations

import inspect

import pytest
import torch
from monai.engines.utils import IterationEvents
from monai.networks.schedulers import DDPMScheduler

from monai_pairsynth.engines import (
    FlatParameterAdamW,
    ForeachEMAHandler,
    GatherGradsHandler,
    PairedCheckpointSaver,
    PairedDiffusionPrepareBatch,
    PairedNoiseInferer,
    assemble_paired_trainer,
    create_noise_scheduler,
    create_paired_optimizer,
    create_paired_trainer,
    noise_scheduler_config_of,
)
from monai_pairsynth.handlers import ClipGradNormHandler, LossComponentsHandler
from monai_pairsynth.losses import PairedDiffusionLoss
from monai_pairsynth.networks import PairedDiffusionModel

MODS = ("ct", "pet")
TINY = {"channels": (4, 8), "attention_levels": (False, False), "norm_num_groups": 4}


def _model(seed=0):
    torch.manual_seed(seed)
    return PairedDiffusionModel(MODS, **TINY)


def _data():
    g = torch.Generator().manual_seed(0)
    return [{m: torch.rand(2, 1, 8, 8, generator=g) * 2 - 1 for m in MODS} for _ in range(2)]


def _pieces(model, prediction_type="v_prediction", steps=50):
    scheduler = create_noise_scheduler({"num_train_timesteps": steps, "prediction_type": prediction_type})
    return {
        "optimizer": create_paired_optimizer(model, lr=1e-3, flat_buffers=True),
        "loss_function": PairedDiffusionLoss(scheduler),
        "prepare_batch": PairedDiffusionPrepareBatch(
            MODS, steps, prediction_type=prediction_type, scheduler=scheduler
        ),
        "inferer": PairedNoiseInferer(scheduler),
    }


def _assemble(model=None, **changes):
    model = model or _model()
    args = {**_pieces(model), "max_epochs": 1, "device": "cpu", **changes}
    return assemble_paired_trainer(model, _data(), **args)


def _handlers(trainer, event):
    return [h for h, *_ in trainer._event_handlers[event]]


def test_gradient_gather_is_added_first_and_cannot_be_dropped():
    model = _model()
    pieces = _pieces(model)
    handlers = {
        "clip": ClipGradNormHandler(1.0),
        "components": LossComponentsHandler(pieces["loss_function"]),
    }
    trainer = assemble_paired_trainer(model, _data(), max_epochs=1, device="cpu", handlers=handlers, **pieces)
    backward = _handlers(trainer, IterationEvents.BACKWARD_COMPLETED)
    assert isinstance(backward[0], GatherGradsHandler) and backward[0].optimizer is trainer.optimizer
    assert isinstance(backward[1], ClipGradNormHandler)
    assert trainer.paired.grad_clipping is handlers["clip"]
    assert trainer.paired.loss_components is handlers["components"]
    # one given explicitly is not attached twice
    again = _assemble(model=_model(), handlers=None)
    assert (
        sum(isinstance(h, GatherGradsHandler) for h in _handlers(again, IterationEvents.BACKWARD_COMPLETED))
        == 1
    )
    trainer.run()


def test_a_plain_optimiser_gets_no_gather_and_none_handlers_are_skipped():
    model = _model()
    trainer = _assemble(
        model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), handlers={"off": None, "clip": None}
    )
    assert not any(
        isinstance(h, GatherGradsHandler) for h in _handlers(trainer, IterationEvents.BACKWARD_COMPLETED)
    )
    assert trainer.paired.noise_scheduler_config["num_train_timesteps"] == 50
    trainer.run()


def test_noise_scheduler_config_of_a_plain_monai_scheduler():
    assert noise_scheduler_config_of(DDPMScheduler(30, schedule="scaled_linear_beta")) == {
        "num_train_timesteps": 30,
        "schedule": "scaled_linear_beta",
        "prediction_type": "epsilon",
        "schedule_args": {},
    }
    odd = DDPMScheduler(30, beta_start=0.3, beta_end=0.4)
    with pytest.raises(ValueError, match="create_noise_scheduler"):
        noise_scheduler_config_of(odd)


def test_create_paired_trainer_keeps_its_signature():
    params = inspect.signature(create_paired_trainer).parameters
    assert len(params) == 46 and "max_minutes" in params and "extra_handlers" in params
    assert len(inspect.signature(assemble_paired_trainer).parameters) <= 20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m, p: {"prepare_batch": PairedDiffusionPrepareBatch(MODS, 50, prediction_type="epsilon")},
            r"prediction_type differs: prepare_batch has 'epsilon', the noise scheduler has 'v_prediction'",
        ),
        (
            lambda m, p: {"prepare_batch": PairedDiffusionPrepareBatch(MODS, 40)},
            r"num_train_timesteps differs: prepare_batch has 40, the noise scheduler has 50",
        ),
        (
            lambda m, p: {
                "loss_function": PairedDiffusionLoss(
                    create_noise_scheduler(None, num_train_timesteps=50, schedule="cosine")
                )
            },
            r"loss_function uses another noise schedule",
        ),
        (
            lambda m, p: {"loss_function": PairedDiffusionLoss(prediction_type="sample")},
            r"prediction_type differs: loss_function has 'sample'",
        ),
        (
            lambda m, p: {
                "prepare_batch": PairedDiffusionPrepareBatch(
                    ("ct", "mr"), 50, prediction_type="v_prediction", scheduler=p["inferer"].scheduler
                )
            },
            r"modality names differ: prepare_batch has \['ct', 'mr'\], the model has \['ct', 'pet'\]",
        ),
        (lambda m, p: {"ema_handler": ForeachEMAHandler(_model(1))}, r"ema_handler averages another model"),
        (lambda m, p: {"inferer": object()}, r"inferer must hold the noise scheduler"),
        (lambda m, p: {"handlers": [object()]}, r"attach\(engine\)"),
        (
            lambda m, p: {
                "handlers": [GatherGradsHandler(create_paired_optimizer(_model(1), flat_buffers=True))]
            },
            r"GatherGradsHandler in handlers gathers another optimiser",
        ),
    ],
)
def test_pieces_that_do_not_fit(change, message):
    model = _model()
    pieces = _pieces(model)
    with pytest.raises(ValueError, match=message):
        assemble_paired_trainer(
            model, _data(), max_epochs=1, device="cpu", **{**pieces, **change(model, pieces)}
        )


def test_checkpoint_saver_must_record_the_trainers_pieces(tmp_path):
    model = _model()
    pieces = _pieces(model)
    ema = ForeachEMAHandler(model, momentum=0.1)
    common = {"max_epochs": 1, "device": "cpu", "ema_handler": ema, **pieces}
    scheduler = pieces["inferer"].scheduler

    def saver(**kw):
        args = {
            "ema_handler": ema,
            "loss_function": pieces["loss_function"],
            "prepare_batch": pieces["prepare_batch"],
            "noise_scheduler": scheduler,
            **kw,
        }
        return PairedCheckpointSaver(tmp_path, model, **args)

    with pytest.raises(ValueError, match=r"checkpoint_saver.ema_handler is None"):
        assemble_paired_trainer(model, _data(), checkpoint_saver=saver(ema_handler=None), **common)
    with pytest.raises(ValueError, match=r"checkpoint_saver.prepare_batch is another object"):
        other = PairedDiffusionPrepareBatch(MODS, 50, prediction_type="v_prediction", scheduler=scheduler)
        assemble_paired_trainer(model, _data(), checkpoint_saver=saver(prepare_batch=other), **common)
    with pytest.raises(ValueError, match=r"the noise scheduler differs: checkpoint_saver"):
        assemble_paired_trainer(model, _data(), checkpoint_saver=saver(noise_scheduler={}), **common)
    with pytest.raises(ValueError, match=r"the modality names differ: checkpoint_saver"):
        assemble_paired_trainer(
            model, _data(), checkpoint_saver=saver(modality_specs=["ct", "label"]), **common
        )
    trainer = assemble_paired_trainer(model, _data(), checkpoint_saver=saver(), **common)
    trainer.run()
    assert trainer.paired.checkpoint_saver.last_path.exists()
    assert isinstance(trainer.optimizer, FlatParameterAdamW)
