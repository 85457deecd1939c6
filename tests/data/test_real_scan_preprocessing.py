"""Preprocessing fit for real scans (issue 13 item 3): the opt-in PET log map recorded in the spec, CT padding with
air, anti-aliased downsampling, PET resampled straight onto the target grid, the field-of-view mask."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from monai_pairsynth.data import hecktor_datalist, preprocessing_transforms
from monai_pairsynth.data.preprocessing import anti_aliasing_sigma, gaussian_blur
from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, PET_LOG_SPEC, ModalitySpec, resolve_specs


# ------------------------------------------------------------------------------------- the PET intensity map
def test_default_specs_unchanged_and_recorded_as_before():
    # the dict written into checkpoints for the default specs has exactly the keys it had before the mapping
    assert DEFAULT_MODALITY_SPECS["pet"].to_dict() == {
        "kind": "image",
        "low": 0.0,
        "high": 15.0,
        "unit": "SUV",
    }
    old_checkpoint = {"kind": "image", "low": 0.0, "high": 15.0, "unit": "SUV"}
    spec = resolve_specs({"pet": old_checkpoint})["pet"]
    x = torch.linspace(-2.0, 20.0, 45)
    assert torch.equal(spec.normalize(x), ((x / 15.0) * 2.0 - 1.0).clamp(-1.0, 1.0))


def test_log_map_round_trip_and_record():
    restored = resolve_specs({"pet": PET_LOG_SPEC.to_dict()})["pet"]
    assert restored == PET_LOG_SPEC and PET_LOG_SPEC.to_dict()["mapping"] == "log"
    x = torch.tensor([0.0, 0.5, 2.0, 15.0, 53.0, 60.0])
    y = PET_LOG_SPEC.normalize(x)
    assert y[0] == -1.0 and y[-1] == 1.0 and bool((y[1:] > y[:-1]).all())
    assert torch.allclose(PET_LOG_SPEC.denormalize(y), x, atol=1e-3)
    # background uptake keeps (at least) the resolution of the linear 0-15 map: slope at SUV 0.5
    slope = float(
        (PET_LOG_SPEC.normalize(torch.tensor(0.51)) - PET_LOG_SPEC.normalize(torch.tensor(0.49))) / 0.02
    )
    assert slope > 2.0 / 15.0
    with pytest.raises(ValueError, match="mapping must be one of"):
        ModalitySpec("image", 0.0, 60.0, mapping="sqrt")
    with pytest.raises(ValueError, match="log_scale"):
        ModalitySpec("image", 0.0, 60.0, mapping="log", log_scale=0.0)


# --------------------------------------------------------------------------------------- in-memory geometry
def _case(ct_value=-200.0, size=(48, 48, 6), spacing=1.0, pet_half=False):
    aff = torch.diag(torch.tensor([spacing, spacing, 4.0, 1.0]))
    ct = torch.full((1, *size), ct_value)
    ct[:, 12:36, 12:36] = 40.0
    label = torch.zeros(1, *size)
    label[:, 20:28, 20:28, 2:4] = 1.0
    pet_size = (size[0] // 2, *size[1:]) if pet_half else size
    pet = torch.ones(1, *pet_size)
    return {
        "ct": MetaTensor(ct, affine=aff),
        "pet": MetaTensor(pet, affine=aff.clone()),
        "label": MetaTensor(label, affine=aff.clone()),
        "case_id": "X",
    }


def test_crop_pads_ct_with_air_not_the_slice_minimum():
    # a CT without air (its minimum is -200 HU) and a crop wider than the image: the padding is -1 (-1000 HU)
    t = preprocessing_transforms(spacing=2.0, spatial_size=(40, 40), load=False)
    (s, *_) = t(_case(ct_value=-200.0))
    ct = s["ct"][0]
    assert ct.shape == (40, 40)
    assert float(ct[0, 0]) == -1.0 and float(ct[20, 20]) > -1.0
    assert float(ct[10:30, 10:30].min()) == pytest.approx(-0.2, abs=1e-5)  # the image itself (-200 HU)


def test_field_of_view_marks_what_was_not_scanned():
    t = preprocessing_transforms(spacing=2.0, spatial_size=(40, 40), load=False, fov_key="fov")
    (s, *_) = t(_case(pet_half=True))
    fov = s["fov"][0]
    assert set(fov.unique().tolist()) == {0.0, 1.0}
    assert tuple(s["fov"].shape) == tuple(s["ct"].shape)
    # padding added by the crop (8 columns each side) and the half of the image the PET never saw are 0
    assert float(fov[:, 0].max()) == 0.0 and float(fov[0, :].max()) == 0.0
    inside = fov[8:32, 8:32]
    assert float(inside[:12].min()) == 1.0 and float(inside[13:].max()) == 0.0
    # without fov_key nothing is added
    (s2, *_) = preprocessing_transforms(spacing=2.0, spatial_size=(40, 40), load=False)(_case())
    assert "fov" not in s2


def test_anti_aliasing_removes_the_alias_of_a_fine_pattern():
    # stripes with a 2-voxel period at 1 mm: going to 2 mm without a pre-filter picks one phase (an alias: a flat
    # image at the stripes' value), with the filter they average towards the mean
    case = _case(ct_value=0.0, size=(64, 64, 6))
    stripes = torch.zeros(1, 64, 64, 6)
    stripes[:, ::2] = 500.0
    case["ct"] = MetaTensor(stripes - 250.0, affine=case["ct"].affine)
    out = {}
    for aa in (False, True):
        t = preprocessing_transforms(spacing=2.0, spatial_size=(32, 32), load=False, anti_aliasing=aa)
        out[aa] = t(dict(case))[0]["ct"][0, 4:-4, 4:-4]
    # the true mean is 0 HU; resampling without the filter lands on every other stripe: +250 HU everywhere
    assert float(out[False].mean()) == pytest.approx(0.25, abs=0.01)
    # sigma 0.5 voxel: the sampled kernel (0.107, 0.786, 0.107) passes a period-2 pattern at 0.786 - 2 * 0.107 = 0.57
    assert float(out[True].mean()) == pytest.approx(0.25 * 0.574, abs=0.01)
    assert anti_aliasing_sigma([1.0, 1.0, 4.0], [2.0, 2.0, 2.0]) == [0.5, 0.5, 0.0]
    x = torch.full((1, 5, 4), 3.0)
    assert torch.allclose(gaussian_blur(x, [1.5, 0.7]), x)  # a constant stays constant (edges replicated)


# ------------------------------------------------------------------------------------------- real patients
def test_real_patient_peak_kept_by_the_log_map(sts_data_dir):
    """STS_014 (SUVmax 30): the default linear 0-15 map clips the tumour peak, the opt-in log map keeps it."""
    item = next(c for c in hecktor_datalist(sts_data_dir) if c["case_id"] == "STS_014")
    kwargs = dict(spacing=4.0, spatial_size=(64, 64), extract_slices=False)
    linear = preprocessing_transforms(**kwargs)(dict(item))["pet"]
    logged = preprocessing_transforms(specs={"pet": PET_LOG_SPEC}, **kwargs)(dict(item))["pet"]
    assert int((linear >= 1.0).sum()) > 0  # voxels on the 15 SUV cap
    assert int((logged >= 1.0).sum()) == 0
    assert 15.0 < float(PET_LOG_SPEC.denormalize(logged.max())) < 31.0


def test_real_patient_fov_and_grids(sts_data_dir):
    item = hecktor_datalist(sts_data_dir)[0]
    t = preprocessing_transforms(spacing=2.0, spatial_size=(128, 128), fov_key="fov")
    slices = t(item)
    assert slices
    for s in slices:
        assert torch.equal(s["ct"].affine, s["pet"].affine) and torch.equal(s["ct"].affine, s["fov"].affine)
        fov = s["fov"][0]
        # the sarcoma crops are small (5 cm around the tumour): most of a 128 x 128 window was never scanned
        assert 0.0 < float(fov.mean()) < 0.9
        # outside the field of view the PET is zero uptake (bar the bilinear edge); the CT may extend beyond the PET
        assert float((s["pet"][0][fov == 0] == -1.0).float().mean()) > 0.95


def test_log_map_is_recorded_in_the_checkpoint(tmp_path):
    from monai_pairsynth.engines import read_paired_checkpoint, save_paired_checkpoint
    from monai_pairsynth.networks import PairedDiffusionModel

    model = PairedDiffusionModel(
        ("ct", "pet", "label"),
        channels=(8, 16),
        attention_levels=(False, False),
        norm_num_groups=4,
        num_res_blocks=1,
    )
    specs = {
        "ct": DEFAULT_MODALITY_SPECS["ct"],
        "pet": PET_LOG_SPEC,
        "label": DEFAULT_MODALITY_SPECS["label"],
    }
    path = save_paired_checkpoint(
        tmp_path / "log.pt", model, modality_specs=specs, spatial_size=[16, 16], spacing=8.0
    )
    recorded = read_paired_checkpoint(path)["modality_specs"]
    assert recorded["pet"]["mapping"] == "log" and "mapping" not in recorded["ct"]
    assert resolve_specs(recorded) == specs
