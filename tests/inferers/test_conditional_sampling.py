"""Conditional sampling with known modalities (issue 14, item 2): clean at t = 0 for a model trained with
per-modality timesteps, replacement clamping for any other (old checkpoints sample exactly as before)."""

from __future__ import annotations

import logging

import pytest
import torch

from monai_pairsynth.engines import PairedDiffusionPrepareBatch, build_paired_checkpoint
from monai_pairsynth.inferers import PairedDiffusionInferer
from monai_pairsynth.networks import PairedDiffusionModel

TINY = {"channels": (4, 8), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4}
MODS = ("ct", "pet", "label")
SAMPLERS = ("ddpm", "dpmpp", "ddim")


def _model(modalities=MODS, **kwargs) -> PairedDiffusionModel:
    torch.manual_seed(0)
    m = PairedDiffusionModel(modalities, **TINY, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(m.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


def _checkpoint(model: PairedDiffusionModel, independent_timestep_prob: float | None) -> dict:
    prep = (
        None
        if independent_timestep_prob is None
        else PairedDiffusionPrepareBatch(
            model.modalities, 50, independent_timestep_prob=independent_timestep_prob
        )
    )
    return build_paired_checkpoint(
        model,
        noise_scheduler={"num_train_timesteps": 50},
        spatial_size=[16, 16],
        spacing=2.0,
        prepare_batch=prep,
    )


def _mask() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float()


def _image(seed: int) -> torch.Tensor:
    return torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# computed with the code of commit fc520f3 (before per-modality timesteps) on this very model and checkpoint:
# (sum, sum of |x|, every 97th value) of the samples in [-1, 1], sample_seeds [11, 12], 3 steps
OLD_SAMPLES = {
    ("ddpm", False): {
        "ct": (-35.3124, 352.9348, [-0.52603, -0.97844, 0.65465, 0.82445, -0.78886, 0.474]),
        "pet": (16.6613, 370.4153, [-0.36602, -0.99274, 0.0267, 0.99808, 0.9153, -0.67848]),
        "label": (-32.0, 512.0, [1.0, -1.0, 1.0, 1.0, 1.0, 1.0]),
    },
    ("ddpm", True): {
        "ct": (-35.3589, 352.6307, [-0.5281, -0.99518, 0.67273, 0.84131, -0.78621, 0.44383]),
        "pet": (16.533, 370.359, [-0.36574, -0.99962, 0.02011, 1.0, 0.92285, -0.65922]),
        "label": (-216.0, 512.0, [1.0, -1.0, -1.0, -1.0, 1.0, -1.0]),
    },
    ("dpmpp", False): {
        "ct": (-23.8497, 368.1361, [-0.57582, -0.67985, 0.56419, 0.46947, -1.0, 0.91842]),
        "pet": (12.8108, 374.4586, [-0.61912, -1.0, -0.50949, 0.46893, 1.0, -0.49949]),
        "label": (-24.0, 512.0, [1.0, -1.0, 1.0, 1.0, 1.0, 1.0]),
    },
    ("dpmpp", True): {
        "ct": (-23.8713, 368.1089, [-0.57636, -0.68016, 0.56389, 0.4692, -1.0, 0.91697]),
        "pet": (12.9646, 374.2773, [-0.61621, -1.0, -0.49636, 0.4631, 1.0, -0.50554]),
        "label": (-216.0, 512.0, [1.0, -1.0, -1.0, -1.0, 1.0, -1.0]),
    },
    ("ddim", False): {
        "ct": (-23.899, 368.1549, [-0.5791, -0.67802, 0.56687, 0.47354, -1.0, 0.91832]),
        "pet": (12.7203, 373.9493, [-0.62049, -1.0, -0.51917, 0.47221, 1.0, -0.49421]),
        "label": (-24.0, 512.0, [1.0, -1.0, 1.0, 1.0, 1.0, 1.0]),
    },
    ("ddim", True): {
        "ct": (-23.9182, 368.1273, [-0.57956, -0.67837, 0.56644, 0.47331, -1.0, 0.91694]),
        "pet": (12.873, 373.786, [-0.61782, -1.0, -0.50776, 0.46772, 1.0, -0.49968]),
        "label": (-216.0, 512.0, [1.0, -1.0, -1.0, -1.0, 1.0, -1.0]),
    },
}


@pytest.mark.parametrize(("sampler", "with_known"), sorted(OLD_SAMPLES))
def test_old_checkpoint_samples_exactly_as_before(sampler, with_known):
    ckpt = _checkpoint(_model(), None)
    ckpt.pop("per_modality_timesteps")  # the layout of a checkpoint written before the option
    assert "condition_timesteps" not in ckpt["model_config"]
    inferer, net = PairedDiffusionInferer.from_checkpoint(ckpt)
    assert inferer.clean_conditioning is False
    known = {"label": _mask()} if with_known else None
    out = inferer.sample(
        net,
        num_samples=2,
        scheduler=sampler,
        num_inference_steps=3,
        sample_seeds=[11, 12],
        known=known,
        decode=False,
    )
    assert inferer.last_conditioning == ("clamp" if with_known else None)
    for m, (total, abs_total, values) in OLD_SAMPLES[(sampler, with_known)].items():
        x = out[m].as_tensor()
        assert float(x.sum()) == pytest.approx(total, abs=2e-3), m
        assert float(x.abs().sum()) == pytest.approx(abs_total, abs=2e-3), m
        assert x.flatten()[::97].tolist() == pytest.approx(values, abs=2e-5), m


def test_checkpoint_decides_the_default_conditioning():
    shared = PairedDiffusionInferer.config_from_checkpoint(_checkpoint(_model(), 0.0))
    per_modality = PairedDiffusionInferer.config_from_checkpoint(
        _checkpoint(_model(condition_timesteps=True), 0.5)
    )
    assert shared["clean_conditioning"] is False
    assert per_modality["clean_conditioning"] is True
    assert PairedDiffusionInferer.config_from_checkpoint({})["clean_conditioning"] is False


MODES = {  # name: (modalities of the model, known modalities)
    "mask -> CT + PET": (MODS, ("label",)),
    "CT -> PET + mask": (MODS, ("ct",)),
    "CT + mask -> PET": (MODS, ("ct", "label")),
    "PET -> CT": (("ct", "pet"), ("pet",)),
}
KNOWN_DATA = {"label": _mask, "ct": lambda: _image(6), "pet": lambda: _image(7)}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_conditional_mode_feeds_the_given_modalities_clean(mode, sampler, caplog):
    modalities, given = MODES[mode]
    inferer, net = PairedDiffusionInferer.from_checkpoint(
        _checkpoint(_model(modalities, condition_timesteps=True), 0.5)
    )
    assert inferer.clean_conditioning
    known = {m: KNOWN_DATA[m]() for m in given}
    with caplog.at_level(logging.INFO, logger="monai_pairsynth.inferers.paired_diffusion_inferer"):
        out = inferer.sample(
            net,
            known=known,
            scheduler=sampler,
            num_inference_steps=3,
            inputs_normalized=True,
            decode=False,
            generator=torch.Generator().manual_seed(0),
        )
    assert inferer.last_conditioning == "clean"
    assert "clean at t = 0" in caplog.text
    assert sorted(out) == sorted(modalities)
    for m in modalities:
        assert tuple(out[m].shape) == (2, 1, 16, 16), m
        assert torch.isfinite(out[m]).all(), m
        if m in known:
            assert torch.equal(out[m].as_tensor(), known[m]), m  # the given modality unchanged
    clamped = inferer.sample(
        net,
        known=known,
        scheduler=sampler,
        num_inference_steps=3,
        inputs_normalized=True,
        decode=False,
        generator=torch.Generator().manual_seed(0),
        conditioning="clamp",
    )
    assert inferer.last_conditioning == "clamp"
    free = [m for m in modalities if m not in known]
    assert any((clamped[m] - out[m]).abs().max() > 1e-4 for m in free)  # the two modes differ


class _Spy(PairedDiffusionModel):
    """Records what every sampling step gives the network."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[dict, object, object]] = []

    def forward(self, noisy, timesteps, check_finite=True, predict=None):
        t = {m: v.clone() for m, v in timesteps.items()} if isinstance(timesteps, dict) else timesteps.clone()
        self.calls.append(({m: v.clone() for m, v in noisy.items()}, t, predict))
        return super().forward(noisy, timesteps, check_finite, predict)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_clean_conditioning_gives_the_clean_data_at_t0_and_runs_only_the_free_denoisers(sampler):
    torch.manual_seed(0)
    spy = _Spy(MODS, **TINY, condition_timesteps=True)
    inferer = PairedDiffusionInferer(num_train_timesteps=50, spatial_shape=(16, 16), clean_conditioning=True)
    mask = _mask() * 2 - 1
    inferer.sample(
        spy,
        known={"label": mask},
        scheduler=sampler,
        num_inference_steps=4,
        inputs_normalized=True,
        sample_seeds=[1, 2],
    )
    assert len(spy.calls) == 4
    step_ts = []
    for noisy, t, predict in spy.calls:
        assert torch.equal(noisy["label"], mask)
        assert isinstance(t, dict) and torch.equal(t["label"], torch.zeros(2, dtype=torch.long))
        assert torch.equal(t["ct"], t["pet"])  # the free modalities at the step's timestep
        assert list(predict) == ["ct", "pet"]
        step_ts.append(int(t["ct"][0]))
    assert step_ts == sorted(step_ts, reverse=True) and len(set(step_ts)) == 4 and step_ts[0] > 0

    spy.calls.clear()
    inferer.sample(
        spy, known={"label": mask}, num_inference_steps=2, inputs_normalized=True, conditioning="clamp"
    )
    for noisy, t, predict in spy.calls:  # clamping: shared t, the known modality noised, every denoiser run
        assert isinstance(t, torch.Tensor) and predict is None
        assert not torch.equal(noisy["label"], mask)


def test_clean_conditioning_does_not_depend_on_the_batch():
    inferer, net = PairedDiffusionInferer.from_checkpoint(_checkpoint(_model(condition_timesteps=True), 0.5))
    known = {"ct": _image(6)}
    kwargs = {"known": known, "num_inference_steps": 2, "inputs_normalized": True, "sample_seeds": [3, 4]}
    whole = inferer.sample(net, batch_size=2, **kwargs)
    split = inferer.sample(net, batch_size=1, **kwargs)
    for m in MODS:
        torch.testing.assert_close(split[m].as_tensor(), whole[m].as_tensor(), atol=4e-5, rtol=0)


def test_joint_sampling_of_a_per_modality_model_reports_no_conditioning():
    inferer, net = PairedDiffusionInferer.from_checkpoint(_checkpoint(_model(condition_timesteps=True), 0.5))
    out = inferer.sample(
        net, num_samples=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert inferer.last_conditioning is None and sorted(out) == sorted(MODS)


def test_forcing_clean_on_a_shared_timestep_model_warns_and_bad_modes_are_refused(caplog):
    inferer, net = PairedDiffusionInferer.from_checkpoint(_checkpoint(_model(), 0.0))
    with pytest.warns(UserWarning, match="not trained with per-modality timesteps"):
        inferer.sample(net, known={"label": _mask()}, num_inference_steps=2, conditioning="clean")
    assert inferer.last_conditioning == "clean"
    with caplog.at_level(logging.INFO, logger="monai_pairsynth.inferers.paired_diffusion_inferer"):
        inferer.sample(net, known={"label": _mask()}, num_inference_steps=2)
    assert inferer.last_conditioning == "clamp"
    assert "clamped" in caplog.text and "not trained with per-modality timesteps" in caplog.text
    with pytest.raises(ValueError, match="conditioning must be one of"):
        inferer.sample(net, known={"label": _mask()}, num_inference_steps=2, conditioning="t0")


def test_clean_conditioning_needs_a_paired_diffusion_model():
    class Plain(torch.nn.Module):
        modalities = MODS
        spatial_dims = 2

        def forward(self, noisy, t):
            return {m: torch.zeros_like(x) for m, x in noisy.items()}

    inferer = PairedDiffusionInferer(num_train_timesteps=50, spatial_shape=(16, 16), clean_conditioning=True)
    with pytest.raises(ValueError, match="needs a PairedDiffusionModel"):
        inferer.sample(Plain(), known={"label": _mask()}, num_inference_steps=2)
    out = inferer.sample(Plain(), known={"label": _mask()}, num_inference_steps=2, conditioning="clamp")
    assert inferer.last_conditioning == "clamp" and sorted(out) == sorted(MODS)
