"""The field-of-view mask on the training path: the prepare-batch hands it to the loss, training carries it."""

from __future__ import annotations

import pytest
import torch

from monai_pairsynth.engines import PairedDiffusionPrepareBatch

MODALITIES = ("ct", "pet", "label")


def _batch(fov=None):
    g = torch.Generator().manual_seed(0)
    batch = {m: torch.rand(2, 1, 8, 8, generator=g) * 2 - 1 for m in MODALITIES}
    if fov is not None:
        batch["fov"] = fov
    return batch


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_prepare_batch_puts_the_fov_in_the_targets_and_draws_the_same(p):
    fov = torch.ones(2, 1, 8, 8)
    fov[..., :3] = 0
    prep = lambda: PairedDiffusionPrepareBatch(  # noqa: E731
        MODALITIES, 1000, generator=torch.Generator().manual_seed(3), independent_timestep_prob=p
    )
    inputs, targets, _, kwargs = prep()(_batch(fov))
    _, plain_targets, _, plain_kwargs = prep()(_batch())
    assert "fov" not in plain_targets and "fov" not in inputs and "fov" not in kwargs
    assert torch.equal(targets["fov"], fov)
    for m in MODALITIES:  # the mask draws nothing: noise and timesteps as without it
        assert torch.equal(kwargs["noise"][m], plain_kwargs["noise"][m])
        assert torch.equal(targets["target"][m], plain_targets["target"][m])


def test_prepare_batch_fov_checks():
    prep = PairedDiffusionPrepareBatch(MODALITIES, 1000)
    _, targets, _, _ = prep(_batch(torch.ones(2, 8, 8)))  # (B, *spatial): the channel is added
    assert tuple(targets["fov"].shape) == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="field-of-view mask 'fov' has shape"):
        prep(_batch(torch.ones(2, 1, 4, 8)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        prep(_batch(torch.full((2, 1, 8, 8), 0.5)))
    off = PairedDiffusionPrepareBatch(MODALITIES, 1000, fov_key=None)
    assert "fov" not in off(_batch(torch.ones(2, 1, 8, 8)))[1]
    with pytest.raises(ValueError, match="fov_key"):
        PairedDiffusionPrepareBatch(MODALITIES, 1000, fov_key="ct")
