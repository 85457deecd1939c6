from __future__ import annotations

import logging

import pytest
import torch

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, ModalitySpec, resolve_specs


@pytest.mark.parametrize("name", ["ct", "pet"])
def test_image_round_trip(name):
    spec = DEFAULT_MODALITY_SPECS[name]
    x = torch.linspace(spec.low, spec.high, 101)
    y = spec.normalize(x)
    assert y.min() == -1 and y.max() == 1
    torch.testing.assert_close(spec.denormalize(y), x, atol=1e-3, rtol=1e-5)


def test_image_clips_out_of_range():
    spec = DEFAULT_MODALITY_SPECS["ct"]
    assert spec.normalize(torch.tensor([-3000.0, 3000.0])).tolist() == [-1.0, 1.0]


def test_mask_round_trip_is_binary():
    spec = DEFAULT_MODALITY_SPECS["label"]
    m = torch.tensor([0.0, 1.0, 1.0, 0.0])
    n = spec.normalize(m)
    assert n.tolist() == [-1.0, 1.0, 1.0, -1.0]
    assert spec.denormalize(n * 0.3).tolist() == m.tolist()


def test_resolve_specs_errors():
    with pytest.raises(ValueError, match="mr"):
        resolve_specs(["ct", "mr"])
    with pytest.raises(ValueError, match="kind"):
        ModalitySpec("volume", 0, 1)
    with pytest.raises(ValueError, match="high > low"):
        ModalitySpec("image", 1, 0)
    specs = resolve_specs({"ct": None, "mr": {"kind": "image", "low": 0, "high": 500}})
    assert specs["mr"].high == 500 and specs["ct"] is DEFAULT_MODALITY_SPECS["ct"]


# ------------------------------------------------------------------------------------- modality_specs_for


def _log_checkpoint():
    from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, PET_LOG_SPEC

    specs = {**DEFAULT_MODALITY_SPECS, "pet": PET_LOG_SPEC}
    return {"modality_specs": {m: s.to_dict() for m, s in specs.items()}}


@pytest.mark.parametrize("unset", [None, "None", "null", "", " none "])
def test_unset_pet_intensity_takes_the_checkpoints_map_without_a_warning(unset, caplog):
    from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, PET_LOG_SPEC, modality_specs_for

    with caplog.at_level(logging.WARNING, logger="monai_pairsynth.modalities"):
        specs = modality_specs_for(["ct", "pet", "label"], unset, _log_checkpoint())
    assert specs["pet"] == PET_LOG_SPEC and not caplog.records
    # without a checkpoint: the linear default, and a pet spec given with the modalities is kept
    assert modality_specs_for(["ct", "pet"], unset)["pet"] == DEFAULT_MODALITY_SPECS["pet"]
    own = ModalitySpec("image", 0.0, 30.0, "SUV")
    assert modality_specs_for({"ct": None, "pet": own}, unset)["pet"] == own
    assert modality_specs_for(["ct", "pet", "label"])["pet"] == DEFAULT_MODALITY_SPECS["pet"]  # the default


def test_explicit_pet_intensity_that_disagrees_with_the_checkpoint_warns(caplog):
    from monai_pairsynth.modalities import PET_LOG_SPEC, modality_specs_for

    with caplog.at_level(logging.WARNING, logger="monai_pairsynth.modalities"):
        assert modality_specs_for(["ct", "pet"], "log", _log_checkpoint())["pet"] == PET_LOG_SPEC
        assert not caplog.records  # agrees: nothing to say
        assert modality_specs_for(["ct", "pet"], "linear", _log_checkpoint())["pet"] == PET_LOG_SPEC
    assert len(caplog.records) == 1 and "pet_intensity 'linear' ignored" in caplog.text


def test_names_the_checkpoint_records_need_no_default_spec():
    from monai_pairsynth.modalities import modality_specs_for

    ckpt = {
        "modality_specs": {"mri": {"kind": "image", "low": 0.0, "high": 500.0}, "label": {"kind": "mask"}}
    }
    specs = modality_specs_for(["mri", "label"], checkpoint=ckpt)
    assert specs["mri"] == ModalitySpec("image", 0.0, 500.0) and specs["label"].is_mask
    with pytest.raises(ValueError, match="'mri' has no default spec"):
        modality_specs_for(["mri", "label"])
    with pytest.raises(ValueError, match="pet_intensity must be one of \\['linear', 'log'\\], got 'sqrt'"):
        modality_specs_for(["ct", "pet"], "sqrt")
