"""Training with per-modality timesteps (issue 14, item 1): the prepare-batch's draws, the training forward with
clean modalities, the trainer option, the checkpoint record; and the joint case unchanged when it is off."""

from __future__ import annotations

import pytest
import torch

from monai_pairsynth.engines import (
    PairedDiffusionPrepareBatch,
    PairedNoiseInferer,
    create_noise_scheduler,
    create_paired_trainer,
    read_paired_checkpoint,
    train_paired_diffusion,
)
from monai_pairsynth.losses import PairedDiffusionLoss
from monai_pairsynth.networks import PairedDiffusionModel

MODS = ("ct", "pet", "label")
TINY = {"channels": (4, 8), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4}


def _randomised_model(**kwargs) -> PairedDiffusionModel:
    torch.manual_seed(0)
    model = PairedDiffusionModel(MODS, **TINY, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _batch(b: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {m: torch.rand(b, 1, 16, 16, generator=g) * 2 - 1 for m in MODS}


def _parts(prob: float, **prep_kwargs):
    sched = create_noise_scheduler(
        {"num_train_timesteps": 50, "prediction_type": "v_prediction", "schedule": "cosine"}
    )
    prep = PairedDiffusionPrepareBatch(
        MODS,
        50,
        generator=torch.Generator().manual_seed(0),
        prediction_type="v_prediction",
        scheduler=sched,
        independent_timestep_prob=prob,
        **prep_kwargs,
    )
    loss = PairedDiffusionLoss(sched, snr_gamma=5.0, foreground_weight={"label": 4.0}, perceptual_weight=0.1)
    return sched, prep, PairedNoiseInferer(sched), loss


def test_shared_timesteps_give_the_losses_of_before():
    """With independent_timestep_prob=0 the draws and losses are those of the code before the option
    (numbers computed at commit fc520f3 with the same script: same seed, same model, same batch)."""
    model = _randomised_model()
    _, prep, inferer, loss_fn = _parts(0.0)
    batch = _batch()
    expected = [([44, 39, 33, 10], 1.926774263381958), ([49, 41, 9, 48], 1.6728975772857666)]
    for want_t, want_loss in expected:
        inputs, targets, args, kwargs = prep(batch)
        assert set(kwargs) == {"noise", "timesteps"} and "clean" not in targets
        assert kwargs["timesteps"].tolist() == want_t
        loss = loss_fn(inferer(inputs, model, *args, **kwargs), targets)
        assert loss.item() == pytest.approx(want_loss, rel=1e-6, abs=1e-6)


def test_per_modality_draws():
    _, prep, _, _ = _parts(1.0)
    inputs, targets, _, kwargs = prep(_batch(64))
    t, clean = kwargs["timesteps"], kwargs["clean"]
    assert sorted(t) == sorted(MODS) and sorted(clean) == sorted(MODS)
    stacked_t = torch.stack([t[m] for m in MODS])
    stacked_c = torch.stack([clean[m] for m in MODS])
    assert stacked_t.shape == (3, 64) and stacked_c.dtype == torch.bool
    assert not stacked_c.all(dim=0).any()  # every sample keeps a modality to predict
    assert (stacked_t[stacked_c] == 0).all()  # a given modality is at t = 0
    assert stacked_c.any(dim=0).float().mean() > 0.5  # clean_prob 0.5: most samples give something clean
    assert (stacked_t.max(0).values != stacked_t.min(0).values).any()  # the timesteps differ
    for m in MODS:
        assert torch.equal(targets["timesteps"][m], t[m]) and torch.equal(targets["clean"][m], clean[m])
    # v-prediction targets at each modality's own timestep
    for m in MODS:
        expected = prep.scheduler.get_velocity(inputs[m], kwargs["noise"][m], t[m])
        torch.testing.assert_close(targets["target"][m], expected)


def test_probability_mixes_joint_and_conditional_samples_and_keeps_the_noise():
    _, joint, _, _ = _parts(0.0)
    _, mixed, _, _ = _parts(0.5, clean_prob=0.0)
    batch = _batch(64)
    _, _, _, a = joint(batch)
    _, _, _, b = mixed(batch)
    for m in MODS:  # the same noise: the extra draws come after it
        torch.testing.assert_close(b["noise"][m], a["noise"][m])
        assert not b["clean"][m].any()  # clean_prob 0: different noise levels, nothing given
    equal = torch.stack([b["timesteps"][m] == a["timesteps"] for m in MODS]).all(0)
    assert 0.2 < equal.float().mean() < 0.8  # about half the samples keep the shared timestep


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"independent_timestep_prob": 1.5}, "independent_timestep_prob"),
        ({"independent_timestep_prob": -0.1}, "independent_timestep_prob"),
        ({"clean_prob": 2.0}, "clean_prob"),
        ({"clean_prob": True}, "clean_prob"),
    ],
)
def test_bad_probabilities(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairedDiffusionPrepareBatch(MODS, 10, **kwargs)


def test_one_modality_cannot_have_per_modality_timesteps():
    with pytest.raises(ValueError, match="at least two modalities"):
        PairedDiffusionPrepareBatch(("ct",), 10, independent_timestep_prob=0.5)


def test_training_forward_feeds_clean_modalities_unnoised():
    sched = create_noise_scheduler({"num_train_timesteps": 50})
    inferer = PairedNoiseInferer(sched)
    seen = {}

    def net(noisy, t):
        seen.update(noisy=noisy, t=t)
        return {m: torch.zeros_like(x) for m, x in noisy.items()}

    x = _batch(2)
    noise = {m: torch.randn_like(v) for m, v in x.items()}
    t = {"ct": torch.tensor([0, 30]), "pet": torch.tensor([20, 0]), "label": torch.tensor([0, 40])}
    clean = {
        "ct": torch.tensor([True, False]),
        "pet": torch.tensor([False, True]),
        "label": torch.tensor([False, False]),
    }
    inferer(x, net, noise=noise, timesteps=t, clean=clean)
    assert seen["t"] is t
    for m in MODS:
        noised = sched.add_noise(x[m], noise[m], t[m])
        for i in range(2):
            want = x[m][i] if clean[m][i] else noised[i]
            torch.testing.assert_close(seen["noisy"][m][i], want)
    # label at t = 0 but not clean: noised at t = 0, not its clean image
    assert not torch.equal(seen["noisy"]["label"][0], x["label"][0])


def test_trainer_with_per_modality_timesteps_trains_the_timestep_pathways_and_records_it(tmp_path):
    model = _randomised_model(condition_timesteps=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = create_paired_trainer(
        model,
        [_batch(4)],
        max_epochs=1,
        device="cpu",
        generator=torch.Generator().manual_seed(1),
        independent_timestep_prob=1.0,
        clean_prob=0.5,
        noise_scheduler={"num_train_timesteps": 50},
        stats_log=False,
        progress_bar=False,
        ema_momentum=None,
        output_dir=tmp_path,
        spatial_size=(16, 16),
    )
    grads: dict[str, float] = {}

    def _record(engine):
        for name, p in model.named_parameters():
            if p.grad is not None:
                grads[name] = float(p.grad.abs().sum())

    from monai.engines.utils import IterationEvents

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, _record)
    trainer.run()
    assert trainer.paired.prepare_batch.independent_timestep_prob == 1.0
    for part in ("cond_time_embed", "cond_filters.pet.modulation", "time_projections", "temb_proj"):
        names = [n for n in grads if part in n]
        assert names and sum(grads[n] for n in names) > 0, part
    changed = [
        k
        for k, v in model.state_dict().items()
        if ".time_projections." in k and not torch.equal(v, before[k])
    ]
    assert changed
    ckpt = read_paired_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["per_modality_timesteps"] == {"independent_timestep_prob": 1.0, "clean_prob": 0.5}
    assert ckpt["model_config"]["condition_timesteps"] is True


def test_shared_timestep_checkpoint_records_probability_zero(tmp_path):
    trainer = create_paired_trainer(
        PairedDiffusionModel(MODS, **TINY),
        [_batch(2)],
        max_epochs=1,
        device="cpu",
        stats_log=False,
        progress_bar=False,
        ema_momentum=None,
        output_dir=tmp_path,
    )
    trainer.run()
    ckpt = read_paired_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["per_modality_timesteps"]["independent_timestep_prob"] == 0.0
    assert "condition_timesteps" not in ckpt["model_config"]


def test_trainer_warns_when_the_encoders_cannot_see_the_timesteps(caplog):
    with caplog.at_level("WARNING", logger="monai_pairsynth.engines.paired_trainer"):
        create_paired_trainer(
            PairedDiffusionModel(MODS, **TINY),
            [_batch(2)],
            max_epochs=1,
            device="cpu",
            stats_log=False,
            progress_bar=False,
            independent_timestep_prob=0.3,
        )
    assert "condition_timesteps=True" in caplog.text


def test_train_paired_diffusion_builds_the_model_for_per_modality_timesteps(tmp_path):
    path = train_paired_diffusion(
        tmp_path,
        num_cases=2,
        spatial_size=(16, 16),
        spacing=16.0,
        batch_size=2,
        epochs=1,
        model_kwargs=TINY,
        independent_timestep_prob=0.5,
        clean_prob=0.4,
        progress_bar=False,
        tensorboard=False,
        device="cpu",
    )
    ckpt = read_paired_checkpoint(path)
    assert ckpt["model_config"]["condition_timesteps"] is True
    assert ckpt["per_modality_timesteps"] == {"independent_timestep_prob": 0.5, "clean_prob": 0.4}
