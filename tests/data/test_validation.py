"""Bad inputs at the data boundary: each gets a clear error naming case/file/key/shape, or a log line and a count."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_pairsynth.data import (
    DatasetError,
    hecktor_datalist,
    make_phantom_case,
    preprocess_datalist,
    preprocessing_transforms,
    write_phantom_hecktor,
)
from monai_pairsynth.data.validation import (
    ValidateCased,
    check_case_geometry,
    check_dtype,
    check_finite,
    check_ratio,
    distinct_samples,
    physical_extent,
)

SMALL = {"spatial_size": (32, 32, 16), "spacing": 8.0, "pet_spacing": 12.0}
KEYS = ["ct", "pet", "label"]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "hecktor"
    datalist = write_phantom_hecktor(root, 2, **SMALL)
    return root, datalist


def _rewrite(path: str, edit=None, affine=None, shape_slice=None) -> None:
    """Rewrite a NIfTI file with its data edited / its affine replaced / its array sliced."""
    img = nib.load(path)
    arr = np.asarray(img.get_fdata(dtype=np.float32)).copy()
    if shape_slice is not None:
        arr = arr[shape_slice]
    if edit is not None:
        edit(arr)
    out = nib.Nifti1Image(arr, img.affine if affine is None else affine)
    nib.save(out, path)


def _pipeline():
    return preprocessing_transforms(spacing=8.0, spatial_size=(16, 16))


# ---------------------------------------------------------------- finiteness


@pytest.mark.parametrize("key, value", [("pet", np.nan), ("pet", np.inf), ("ct", np.nan), ("ct", -np.inf)])
def test_non_finite_volume_is_refused_naming_case_and_file(dataset, key, value):
    root, datalist = dataset

    def poke(arr):
        arr[3, 4, 5] = value

    _rewrite(datalist[1][key], poke)
    item = datalist[1]
    with pytest.raises(DatasetError) as info:
        preprocess_datalist(hecktor_datalist(root), _pipeline())
    msg = str(info.value)
    assert item[key] in msg and f"(case {item['case_id']})" in msg and "non-finite" in msg
    kind = {np.nan: "1 NaN", np.inf: "1 +Inf", -np.inf: "1 -Inf"}[value]
    assert kind in msg


# ---------------------------------------------------------------- geometry


def test_pet_outside_ct_is_refused_not_an_all_zero_pet(dataset):
    root, datalist = dataset
    img = nib.load(datalist[0]["pet"])
    shifted = img.affine.copy()
    shifted[:3, 3] += 5000.0  # five metres away from the CT
    _rewrite(datalist[0]["pet"], affine=shifted)
    # at datalist time, from the headers
    with pytest.raises(
        DatasetError, match=r"pet file .*CHUM-001__PT.nii.gz \(case CHUM-001\) does not overlap"
    ):
        hecktor_datalist(root)
    # and in the pipeline (a datalist JSON does not read headers)
    with pytest.raises(DatasetError, match=r"does not overlap ct file .*CHUM-001__CT"):
        _pipeline()(datalist[0])


def test_label_of_another_shape_is_refused_not_resampled(dataset):
    root, datalist = dataset
    _rewrite(datalist[0]["label"], shape_slice=(slice(0, 30), slice(None), slice(None)))
    with pytest.raises(
        DatasetError, match=r"label file .*CHUM-001.nii.gz \(case CHUM-001\) has shape \(30, 32, 16\)"
    ):
        hecktor_datalist(root)
    with pytest.raises(DatasetError, match=r"has shape \(30, 32, 16\) but ct .* has \(32, 32, 16\)"):
        _pipeline()(datalist[0])


def test_label_with_another_affine_is_refused(dataset):
    _, datalist = dataset
    img = nib.load(datalist[0]["label"])
    moved = img.affine.copy()
    moved[0, 3] += 16.0  # two voxels
    _rewrite(datalist[0]["label"], affine=moved)
    with pytest.raises(DatasetError, match=r"label file .* has the affine .* a mask must be on"):
        _pipeline()(datalist[0])


def test_2d_ct_with_3d_pet_names_both_shapes(dataset):
    root, datalist = dataset
    ct = nib.load(datalist[0]["ct"])
    nib.save(
        nib.Nifti1Image(np.asarray(ct.get_fdata(dtype=np.float32))[:, :, 8], ct.affine), datalist[0]["ct"]
    )
    with pytest.raises(
        DatasetError, match=r"has 3 spatial dims \(shape \(\d+, \d+, \d+\)\) but ct file .* has 2"
    ):
        hecktor_datalist(root)
    with pytest.raises(DatasetError, match=r"3 spatial dims .* but ct .* has 2 \(shape \(32, 32\)\)"):
        preprocess_datalist([datalist[0]], _pipeline())


def test_geometry_check_passes_good_cases_and_partial_overlap_is_logged(caplog):
    eye = torch.eye(4)
    check_case_geometry({"ct": ((8, 8, 4), eye), "label": ((8, 8, 4), eye)}, "ct", ["label"])
    shifted = eye.clone()
    shifted[0, 3] = 6.0  # covers 2 of 8 columns
    with caplog.at_level(logging.WARNING, logger="monai_pairsynth.data.validation"):
        check_case_geometry({"ct": ((8, 8, 4), eye), "pet": ((8, 8, 4), shifted)}, "ct")
    assert "pet covers only 25% of ct" in caplog.text
    lo, hi = physical_extent((8, 8, 4), eye)
    assert lo.tolist() == [-0.5, -0.5, -0.5] and hi.tolist() == [7.5, 7.5, 3.5]


def test_validate_cased_dtype_and_plain_tensors():
    with pytest.raises(DatasetError, match=r"ct \(case A\) has dtype torch.complex64"):
        ValidateCased(["ct"], "ct")({"ct": torch.zeros(1, 4, 4, dtype=torch.complex64), "case_id": "A"})
    d = {"ct": torch.zeros(1, 4, 4), "label": torch.zeros(1, 4, 4, dtype=torch.uint8)}
    assert ValidateCased(["ct", "label"], "ct", ["label"])(d) is d
    check_dtype(np.zeros(3, dtype=bool), "mask")
    with pytest.raises(DatasetError, match="dtype object"):
        check_dtype(np.array([None]), "mask")
    check_finite(torch.zeros(3, dtype=torch.int64), "int data is finite")


# ---------------------------------------------------------------- empty masks


def test_case_with_empty_mask_is_logged_and_counted(caplog):
    cases = [make_phantom_case(s, spatial_dims=3, spatial_size=(16, 16, 8), spacing=16.0) for s in (0, 1)]
    cases[1]["label"] = MetaTensor(torch.zeros_like(cases[1]["label"]), affine=cases[1]["label"].affine)
    t = preprocessing_transforms(spacing=16.0, spatial_size=(16, 16), load=False)
    summary: dict = {}
    with caplog.at_level(logging.WARNING):
        slices = preprocess_datalist(cases, t, summary=summary)
    assert slices and all(s["case_id"] == cases[0]["case_id"] for s in slices)
    assert summary == {"cases": 2, "samples": len(slices), "empty_cases": [cases[1]["case_id"]]}
    assert f"label (case {cases[1]['case_id']}): the mask has no slice" in caplog.text
    assert f"1 of 2 case(s) gave no sample (empty mask), skipped: {cases[1]['case_id']}" in caplog.text


def test_preprocessing_error_shows_the_root_cause_not_monais_wrapper():
    def broken(item):
        try:
            raise ValueError("shapes (2,) vs (3,)")
        except ValueError as err:
            raise RuntimeError("applying transform <Spacingd object at 0x1>") from err

    with pytest.raises(DatasetError, match=r"case X: ValueError: shapes \(2,\) vs \(3,\)"):
        preprocess_datalist([{"case_id": "X"}], broken)


# ---------------------------------------------------------------- ratio, duplicates


@pytest.mark.parametrize("bad", [1e9, 100.5, -1, float("nan"), float("inf"), "x", True])
def test_ratio_bound(bad):
    with pytest.raises(ValueError, match="my_ratio"):
        check_ratio(bad, "my_ratio")
    assert check_ratio(100, "r") == 100.0 and check_ratio(0, "r") == 0.0


def test_distinct_samples(caplog):
    with caplog.at_level(logging.WARNING):
        keep = distinct_samples(torch.tensor([0.0, 0.0, 1.0]))
    assert keep.tolist() == [False, False, True] and "2 of 3 real samples have an exact copy" in caplog.text
    with pytest.raises(ValueError, match="all 2 real samples are exact copies"):
        distinct_samples(torch.zeros(2))


def test_phantom_hecktor_still_loads(dataset):
    root, _ = dataset
    assert len(preprocess_datalist(hecktor_datalist(root), _pipeline())) > 0
    assert Path(root / "imagesTr").is_dir()
