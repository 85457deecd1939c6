"""train_diffusion.json exposes per-modality timesteps (issue 14): off by default (the model and trainer of
before), on with one override (the network gets condition_timesteps, the prepare-batch the probabilities)."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

CONFIG = (
    Path(__file__).resolve().parents[2] / "bundles" / "pet_ct_pairsynth" / "configs" / "train_diffusion.json"
)


@pytest.mark.parametrize(("prob", "flag"), [(None, False), (0.0, False), (0.5, True)])
def test_independent_timestep_prob_reaches_the_network_and_the_trainer(prob, flag):
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    if prob is not None:
        parser["independent_timestep_prob"] = prob
    network = parser.get_parsed_content("network_def")
    assert network.condition_timesteps is flag
    assert ("condition_timesteps" in network.get_config()) is flag
    assert parser.get_parsed_content("train#prepare_batch#independent_timestep_prob") == (prob or 0.0)
    assert parser.get_parsed_content("train#prepare_batch#clean_prob") == 0.5
