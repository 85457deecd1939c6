"""The bundle's components are overridable by ``#``-path, the MONAI way (parsed only: nothing is trained)."""

from __future__ import annotations

import json
import re

import pytest
from bundle_helpers import BUNDLE, grid_overrides, make_workflow
from monai.bundle import ConfigParser

CONFIGS = sorted((BUNDLE / "configs").glob("*.json"))
OVERLAYS = {
    "multi_gpu_train_diffusion.json": "train_diffusion.json",
    "multi_gpu_train_segmentation.json": "train_segmentation.json",
    "multi_gpu_generate.json": "generate.json",
}


def _seg_workflow(tmp_path, **overrides):
    return make_workflow(
        "train_segmentation.json",
        **grid_overrides(
            synthetic_ratio=0, num_train_cases=2, num_val_cases=1, output_dir=str(tmp_path), **overrides
        ),
    )


def test_segmentation_network_and_optimiser_overridden_by_path(tmp_path):
    workflow = _seg_workflow(tmp_path, **{"network_def#channels": [4, 8, 16, 32], "optimizer#lr": 0.0123})
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [0.0123]
    # the UNet's first convolution has 4 output channels (default 16)
    first_conv = next(m for m in trainer.network.modules() if m.__class__.__name__ == "Conv2d")
    assert first_conv.out_channels == 4


def test_a_named_handler_is_disabled_by_path(tmp_path):
    def handler_types(**overrides):
        handlers = _seg_workflow(tmp_path, **overrides).parser.get_parsed_content(
            "train#trainer#train_handlers"
        )
        return [type(h).__name__ for h in handlers]

    assert handler_types() == [
        "ValidationHandler",
        "MixedDatasetEpochHandler",
        "StatsHandler",
        "CheckpointSaver",
        "TrainingProgressBar",
    ]
    assert handler_types(**{"train#handlers#checkpoint#_disabled_": True}) == [
        "ValidationHandler",
        "MixedDatasetEpochHandler",
        "StatsHandler",
        "TrainingProgressBar",
    ]


def test_diffusion_trainer_arguments_overridden_by_path(tmp_path):
    overrides = {
        "train#optimizer#lr": 0.00042,
        "network_def#channels": [8, 16],
        "network_def#attention_levels": [False, False],
        "network_def#norm_num_groups": 4,
        "train#dataset#num_cases": 3,
        "batch_size": 2,
        "output_dir": str(tmp_path),
    }
    workflow = make_workflow("train_diffusion.json", **grid_overrides(**overrides))
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert {group["lr"] for group in trainer.optimizer.param_groups} == {0.00042}
    assert len(workflow.parser.get_parsed_content("train#dataset")) == 3
    assert workflow.parser.get_parsed_content("network_def").denoisers["ct"].channels == (8, 16)


def test_worker_loader_replaces_the_device_loader(tmp_path):
    workflow = make_workflow(
        "train_diffusion.json",
        **grid_overrides(device_loader=False, num_phantom_cases=2, output_dir=str(tmp_path)),
    )
    loader = workflow.parser.get_parsed_content("train#dataloader")
    assert type(loader).__name__ == "DataLoader" and loader.batch_size == 16


def test_few_package_calls_in_the_configs():
    """Components declared with ``_target_`` everywhere a component can do; ``$monai_pairsynth.`` only for
    the package's sampler defaults (issue 16 asks for at most 12)."""
    count = sum(len(re.findall(r"\$monai_pairsynth\.", path.read_text())) for path in CONFIGS)
    assert count <= 12


def test_intensity_ranges_come_from_the_modality_specs():
    """HU and SUV windows are not restated in the configs: they are the package's ``ModalitySpec`` ones."""
    for path in CONFIGS:
        assert "ScaleIntensityRange" not in path.read_text(), path.name


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_paths_name_entries_of_the_base_config(overlay):
    """Every nested ``a#b#c`` key of an overlay extends an existing dict entry of its base config, by name
    (never a list position), so that a renamed entry fails here rather than silently at run time."""
    base = ConfigParser(json.loads((BUNDLE / "configs" / OVERLAYS[overlay]).read_text()))
    for key in json.loads((BUNDLE / "configs" / overlay).read_text()):
        if "#" not in key:
            continue
        parent = key.rsplit("#", 1)[0]
        assert not any(part.isdigit() for part in key.split("#")), key
        assert isinstance(base[parent], dict), key
