"""The bundle refuses unbounded or corrupt inputs with one clear line naming the setting, case or file (issue 15)."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import grid_overrides, make_workflow, run_workflow

from monai_pairsynth.bundle_checks import BundleSettingError, check_mixing_settings, check_pool_file
from monai_pairsynth.data import write_phantom_hecktor
from monai_pairsynth.mixing.synthesis_pool import PhantomPoolSource, SynthesisPool


def _setting_error(err: BaseException) -> BundleSettingError | None:
    while err is not None:
        if isinstance(err, BundleSettingError):
            return err
        err = err.__cause__ or err.__context__
    return None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"synthetic_ratio": 1e9}, r"^synthetic_ratio=1e\+09 is above the bound 100"),
        ({"synthetic_ratio": 0.5, "pool_size": 10**9}, r"^pool_size=1000000000 needs \d+\.\d+ GiB of memory"),
    ],
)
def test_unbounded_setting_is_refused_in_initialize_naming_it(tmp_path, overrides, message):
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        make_workflow("train_segmentation.json", **grid_overrides(output_dir=str(out), **overrides))
    err = _setting_error(info.value)
    assert err is not None, f"not a BundleSettingError: {info.value!r}"
    assert re.search(message, str(err)), str(err)
    assert not out.exists()


def test_mixing_settings_bounds():
    assert (
        check_mixing_settings(0, pool_size=10**12, spatial_size=(32, 32)) == 0.0
    )  # real only: nothing checked
    with pytest.raises(BundleSettingError, match="pool_size must be an integer >= 1"):
        check_mixing_settings(0.5, pool_size=-3, spatial_size=(32, 32))
    with pytest.raises(BundleSettingError, match=r"synthetic_ratio=100\.5 is above the bound 100"):
        check_mixing_settings(100.5)


def test_pool_file_without_stats_is_a_setting_error_naming_the_file(tmp_path):
    pool = SynthesisPool(2, spatial_shape=(32, 32), source=PhantomPoolSource((32, 32), spacing=8.0))
    pool.fill()
    state = pool.state_dict()
    del state["stats"]
    path = tmp_path / "pool.pt"
    torch.save(state, path)
    with pytest.raises(
        BundleSettingError, match=rf"pool_file '{path}' is unusable: .*{path}.* no field\(s\) \['stats'\]"
    ):
        check_pool_file(path)


def test_segmentation_on_a_folder_with_nan_pet_stops_naming_case_and_file(tmp_path):
    root = tmp_path / "data"
    datalist = write_phantom_hecktor(root, 5, spatial_size=(32, 32, 8), spacing=8.0, pet_spacing=16.0)
    for item in datalist:
        img = nib.load(item["pet"])
        arr = np.asarray(img.get_fdata(dtype=np.float32)).copy()
        arr[1, 1, 1] = np.nan
        nib.save(nib.Nifti1Image(arr, img.affine), item["pet"])
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run_workflow(
            "train_segmentation.json",
            **grid_overrides(output_dir=str(out), dataset_dir=str(root), synthetic_ratio=0, epochs=1),
        )
    err = _setting_error(info.value)
    assert err is not None, f"not a BundleSettingError: {info.value!r}"
    assert re.search(r"pet file .*__PT.nii.gz \(case \w+-\d+\) holds non-finite values: 1 NaN", str(err)), (
        str(err)
    )
    assert not list(out.rglob("*.pt"))  # no model with NaN weights was saved
