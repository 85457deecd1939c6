"""The 'no EMA weights' log line is true: not said of a slim export, which holds the EMA weights (issue 15)."""

from __future__ import annotations

import logging

import torch

from monai_pairsynth.engines import export_sampling_checkpoint, load_paired_checkpoint, save_paired_checkpoint
from monai_pairsynth.networks import PairedDiffusionModel

TINY = {"channels": (8, 16), "attention_levels": (False, False), "norm_num_groups": 4, "num_res_blocks": 1}
LOGGER = "monai_pairsynth.engines.paired_checkpoint"


def test_no_ema_message_only_for_checkpoints_without_ema(tmp_path, caplog):
    model = PairedDiffusionModel(**TINY)
    ema = PairedDiffusionModel(**TINY)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)  # EMA weights that differ from the online ones
    with_ema = save_paired_checkpoint(
        tmp_path / "train.pt", model, ema_model=ema, spatial_size=(16, 16), spacing=8.0
    )
    without = save_paired_checkpoint(tmp_path / "plain.pt", model, spatial_size=(16, 16), spacing=8.0)
    slim = export_sampling_checkpoint(with_ema, tmp_path / "slim.pt")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded, _ = load_paired_checkpoint(slim, use_ema=True)
    assert "no EMA weights" not in caplog.text  # the slim export holds the EMA weights
    name, value = next(iter(ema.state_dict().items()))
    assert torch.equal(loaded.state_dict()[name], value)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_paired_checkpoint(without, use_ema=True)
    assert "checkpoint holds no EMA weights; loading the online model weights." in caplog.text
