"""One training forward: ``PairedDiffusionInferer.__call__`` runs the trainer's ``PairedNoiseInferer``.

Both entry points take the same inputs (shared or per-modality timesteps, clean modalities), give the same
predictions for them, and raise the same error, with the same message, for the same bad input.
"""

from __future__ import annotations

import pytest
import torch

from monai_pairsynth.engines import MissingModalityError, PairedNoiseInferer, create_noise_scheduler
from monai_pairsynth.inferers import PairedDiffusionInferer
from monai_pairsynth.networks import PairedDiffusionModel

KEYS = ("ct", "pet", "label")


@pytest.fixture(scope="module")
def model() -> PairedDiffusionModel:
    torch.manual_seed(0)
    net = PairedDiffusionModel(
        KEYS, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4, condition_timesteps=True
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero everywhere, so every prediction depends on every input and timestep
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def _entry_points():
    """The sampler's ``__call__`` and the trainer's inferer, on the same (default 1000-step linear) schedule."""
    return {
        "PairedDiffusionInferer": PairedDiffusionInferer(),
        "PairedNoiseInferer": PairedNoiseInferer(create_noise_scheduler()),
    }


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = {k: torch.rand(2, 1, 16, 16, generator=g) * 2 - 1 for k in KEYS}
    noise = {k: torch.randn(2, 1, 16, 16, generator=g) for k in KEYS}
    return x0, noise


@pytest.mark.parametrize(
    "timesteps",
    [
        torch.tensor([3, 900]),
        {"ct": torch.tensor([10, 500]), "pet": torch.tensor([999, 0]), "label": torch.tensor([250, 250])},
    ],
    ids=["shared", "per-modality"],
)
def test_same_predictions_from_both_entry_points(model, timesteps):
    x0, noise = _batch()
    with torch.no_grad():
        outs = {name: f(x0, model, noise, timesteps) for name, f in _entry_points().items()}
        t = timesteps if isinstance(timesteps, dict) else dict.fromkeys(KEYS, timesteps)
        sched = create_noise_scheduler()
        expected = model({k: sched.add_noise(x0[k], noise[k], t[k]) for k in KEYS}, timesteps)
    for out in outs.values():
        assert sorted(out) == sorted(KEYS)
        for k in KEYS:
            torch.testing.assert_close(out[k], expected[k])


def test_per_modality_timesteps_reach_the_network_and_change_the_prediction(model):
    x0, noise = _batch(1)
    shared = torch.tensor([400, 400])
    own = {"ct": shared, "pet": shared, "label": torch.tensor([5, 5])}
    inferer = PairedDiffusionInferer()
    with torch.no_grad():
        a, b = inferer(x0, model, noise, shared), inferer(x0, model, noise, own)
    assert not torch.allclose(a["ct"], b["ct"])  # the label's own t changes the CT denoiser's input


def test_clean_modalities_enter_unnoised_in_both(model):
    x0, noise = _batch(2)
    t = {"ct": torch.tensor([600, 600]), "pet": torch.tensor([600, 600]), "label": torch.tensor([0, 600])}
    clean = {"label": torch.tensor([True, False])}
    seen = []

    def spy(noisy, timesteps):
        seen.append(noisy["label"].clone())
        return model(noisy, timesteps)

    with torch.no_grad():
        outs = [f(x0, spy, noise, t, clean=clean) for f in _entry_points().values()]
    for label in seen:
        assert torch.equal(label[0], x0["label"][0])  # given clean
        assert not torch.allclose(label[1], x0["label"][1])  # noised
    for k in KEYS:
        torch.testing.assert_close(outs[0][k], outs[1][k])


def _bad_cases(model):
    x0, noise = _batch()
    t = torch.tensor([1, 2])
    return [
        ((x0, model, {k: noise[k] for k in ("ct", "pet")}, t), r"no noise given for modality \['label'\]"),
        ((x0, model, noise, {"ct": t, "pet": t}), r"no timesteps given for modality \['label'\]"),
        ((x0, lambda n, t: {"ct": n["ct"], "pet": n["pet"]}, noise, t), "no prediction for modality 'label'"),
    ]


@pytest.mark.parametrize("case", range(3), ids=["noise", "timesteps", "prediction"])
def test_same_error_for_a_missing_modality(model, case):
    args, message = _bad_cases(model)[case]
    errors = []
    for f in _entry_points().values():
        with pytest.raises(MissingModalityError, match=message) as info:
            f(*args)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    # what either entry point raised before: the trainer a KeyError, the sampler's __call__ a ValueError
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("network", "message"),
    [
        (lambda n, t: n["ct"], "must return a dict"),
        (lambda n, t: {k: v[..., :8] for k, v in n.items()}, "shape"),
    ],
)
def test_same_error_for_a_bad_network_output(network, message):
    x0, noise = _batch()
    errors = []
    for f in _entry_points().values():
        with pytest.raises(ValueError, match=message) as info:
            f(x0, network, noise, torch.tensor([1, 2]))
        errors.append(str(info.value))
    assert errors[0] == errors[1]
