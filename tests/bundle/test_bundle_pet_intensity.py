"""The bundle's ``pet_intensity`` ("linear" | "log") and ``use_fov_mask`` settings (issue 13 item 3): the setting
reaches the specs of training, segmentation and evaluation; generation takes the checkpoint's specs instead."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from bundle_helpers import BUNDLE, grid_overrides, make_workflow, run_workflow
from monai.bundle import ConfigParser

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, PET_LOG_SPEC

TINY_NETWORK = {
    "network_def#channels": [8, 16],
    "network_def#attention_levels": [False, False],
    "network_def#norm_num_groups": 4,
}


def _parser(name, **overrides):
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / name))
    for k, v in overrides.items():
        parser[k] = v
    return parser


@pytest.mark.parametrize(("setting", "pet"), [(None, DEFAULT_MODALITY_SPECS["pet"]), ("log", PET_LOG_SPEC)])
def test_pet_intensity_reaches_the_specs_of_every_config(setting, pet):
    overrides = {} if setting is None else {"pet_intensity": setting}
    train = _parser("train_diffusion.json", **overrides)
    assert train.get_parsed_content("train#checkpoint_saver#modality_specs")["pet"] == pet
    assert train.get_parsed_content("train#dataset#modality_specs")["pet"] == pet
    seg = _parser("train_segmentation.json", **overrides)
    assert seg.get_parsed_content("intensity_transforms")[0].specs["pet"] == pet
    assert seg.get_parsed_content("train#real_data#specs")["pet"] == pet
    ev = _parser("evaluate.json", **overrides)
    assert ev.get_parsed_content("test#preprocessing").transforms[0].specs["pet"] == pet
    assert ev.get_parsed_content("modality_specs")["pet"] == pet
    assert train.get_parsed_content("use_fov_mask") is False  # off by default
    assert ev.get_parsed_content("real_data#fov_key") is None


def test_bad_pet_intensity_is_named():
    with pytest.raises(RuntimeError) as err:  # MONAI's "Failed to evaluate" around our ValueError
        _parser("train_diffusion.json", pet_intensity="sqrt").get_parsed_content("modality_specs")
    assert "pet_intensity must be one of ['linear', 'log'], got 'sqrt'" in str(err.value.__cause__)


def test_train_with_log_pet_and_fov_mask_then_generate_reads_the_checkpoint(tmp_path, caplog):
    out = tmp_path / "diffusion"
    run_workflow(
        "train_diffusion.json",
        **grid_overrides(
            **TINY_NETWORK,
            pet_intensity="log",
            use_fov_mask=True,
            epochs=1,
            num_phantom_cases=4,
            batch_size=4,
            num_threads=1,
            output_dir=str(out),
            export_path=str(out / "slim.pt"),
        ),
    )
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["modality_specs"]["pet"] == PET_LOG_SPEC.to_dict()
    # generation: the checkpoint's specs win over the (default, linear) setting
    workflow = make_workflow(
        "generate.json",
        **grid_overrides(diffusion_checkpoint=str(out / "slim.pt"), output_dir=str(tmp_path / "gen")),
    )
    with caplog.at_level(logging.WARNING, logger="monai_pairsynth.modalities"):
        assert workflow.parser.get_parsed_content("modality_specs")["pet"] == PET_LOG_SPEC
    assert "ignored" not in caplog.text  # pet_intensity was not set: nothing to warn about
    explicit = _parser("generate.json", diffusion_checkpoint=str(out / "slim.pt"), pet_intensity="linear")
    with caplog.at_level(logging.WARNING, logger="monai_pairsynth.modalities"):
        assert explicit.get_parsed_content("modality_specs")["pet"] == PET_LOG_SPEC
    assert "pet_intensity 'linear' ignored" in caplog.text  # set, and it disagrees: logged
    assert workflow.parser.get_parsed_content("real_train#specs")["pet"] == PET_LOG_SPEC
    # the quality filter maps real and generated PET with the checkpoint's (log) map too
    assert workflow.parser.get_parsed_content("quality_filter#specs")["pet"] == PET_LOG_SPEC
    # a linear checkpoint with pet_intensity "log": still the checkpoint's (linear) map
    from monai_pairsynth.modalities import modality_specs_for

    linear = {"modality_specs": {m: s.to_dict() for m, s in DEFAULT_MODALITY_SPECS.items()}}
    assert modality_specs_for(["ct", "pet", "label"], "log", linear)["pet"] == DEFAULT_MODALITY_SPECS["pet"]


@pytest.mark.parametrize("setting", ["pet_intensity", "use_fov_mask", "synthesis", "tensorboard"])
def test_readme_settings_table_lists_the_setting_for_every_config_that_has_it(setting):
    rows = [
        line
        for line in (BUNDLE / "docs" / "README.md").read_text().splitlines()
        if line.startswith("| `") and f"`{setting}`" in line.split("|")[1]
    ]
    assert len(rows) == 1, f"the README's settings table has {len(rows)} rows for {setting!r}"
    configs = rows[0].split("|")[2]
    for path in sorted((BUNDLE / "configs").glob("*.json")):
        if setting in json.loads(path.read_text()):
            assert path.stem in configs, f"{setting!r} row does not name {path.stem}"
