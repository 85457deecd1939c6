"""The bundle on a user's own folder: a few real sarcoma patients (skipped where ``../shared/data/sts_pet_ct`` is
absent). train_segmentation and evaluate with ``dataset_dir``, labels 1/2 and ``foreground_values`` (issue 13)."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import grid_overrides, run_workflow

#: small patients (few slices), so the whole module stays well under a minute on two CPU cores
PATIENTS = ("STS_005", "STS_008", "STS_010", "STS_012", "STS_015", "STS_016")


@pytest.fixture(scope="module")
def own_folder(sts_data_dir, tmp_path_factory):
    """Six real patients as a user's HECKTOR-layout folder; each GTV split into label 1 (lower half of its
    slices) and 2 (upper half), as HECKTOR 2022 labels are."""
    root = tmp_path_factory.mktemp("own_data")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for case in PATIENTS:
        for mod in ("CT", "PT"):
            (root / "imagesTr" / f"{case}__{mod}.nii.gz").symlink_to(
                sts_data_dir / "imagesTr" / f"{case}__{mod}.nii.gz"
            )
        img = nib.load(str(sts_data_dir / "labelsTr" / f"{case}.nii.gz"))
        arr = np.asarray(img.dataobj).astype(np.uint8)
        zs = np.nonzero(arr.any(axis=(0, 1)))[0]
        upper = arr[..., int(zs[len(zs) // 2]) :]
        upper[upper == 1] = 2
        nib.save(nib.Nifti1Image(arr, img.affine), str(root / "labelsTr" / f"{case}.nii.gz"))
    return root


def _overrides(tmp_path, name, **extra):
    return grid_overrides(epochs=1, val_interval=1, batch_size=4, output_dir=str(tmp_path / name), **extra)


def test_bundle_trains_and_evaluates_on_real_patients(tmp_path, own_folder):
    from monai_pairsynth.data.sources import real_datalist

    workflow = run_workflow(
        "train_segmentation.json",
        **_overrides(tmp_path, "seg", synthetic_ratio=0, dataset_dir=str(own_folder)),
    )
    train = workflow.parser.get_parsed_content("train#real_data")
    train_ids = {d["case_id"] for d in real_datalist(own_folder, "train")}
    assert {s["case_id"] for s in train} == train_ids and set(train_ids) <= set(PATIENTS)
    ct, pet = torch.stack([s["ct"] for s in train]), torch.stack([s["pet"] for s in train])
    assert ct.min() >= -1000.5 and ct.max() > 0 and pet.max() > 1.0  # decoded to HU / SUV
    assert (tmp_path / "seg" / "model_final.pt").is_file()

    results = {}
    for fg in ([1, 2], [1]):
        out = tmp_path / f"eval_{len(fg)}"
        run_workflow(
            "evaluate.json",
            **grid_overrides(
                dataset_dir=str(own_folder),
                foreground_values=fg,
                segmentation_checkpoint=str(tmp_path / "seg" / "model_final.pt"),
                output_dir=str(out),
            ),
        )
        results[len(fg)] = json.loads((out / "evaluation.json").read_text())
    merged, primary = results[2]["dice"]["mixed"], results[1]["dice"]["mixed"]
    test_ids = {d["case_id"] for d in real_datalist(own_folder, "test")}
    assert test_ids and set(test_ids) <= set(PATIENTS)
    assert 0.0 <= merged["mean"] <= 1.0 and 0.0 <= primary["mean"] <= 1.0
    # primary tumour only: the slices holding only label 2 are gone
    assert len(primary["per_case"]) <= len(merged["per_case"])


def test_binary_only_labels_fail_with_one_line(tmp_path, own_folder):
    """``foreground_values '$None'`` (a bare None is dropped by the bundle runner) requires binary labels: the
    1/2 labels stop the run with one line naming the file and the values, not a traceback."""
    from monai_pairsynth.data.sources import BundleSettingError

    with pytest.raises(Exception) as info:
        run_workflow(
            "train_segmentation.json",
            **_overrides(
                tmp_path, "seg", synthetic_ratio=0, dataset_dir=str(own_folder), foreground_values="$None"
            ),
        )
    err = info.value
    while err is not None and not isinstance(err, BundleSettingError):
        err = err.__cause__ or err.__context__
    assert err is not None, repr(info.value)
    assert "\n" not in str(err) and re.search(
        r"labelsTr/STS_0\d\d.nii.gz.*values 2 outside \{0, 1\}", str(err)
    )


def test_log_pet_map_and_field_of_view_mask_on_real_patients(tmp_path, own_folder):
    """``pet_intensity log`` in train_segmentation and evaluate (real PET read up to 60 SUV, the segmenter's input
    on the log map) and ``use_fov_mask`` in evaluate (the test samples keep their field-of-view mask, the Dice
    ignores the padding)."""
    from monai_pairsynth.modalities import PET_LOG_SPEC

    workflow = run_workflow(
        "train_segmentation.json",
        **_overrides(tmp_path, "seg", synthetic_ratio=0, dataset_dir=str(own_folder), pet_intensity="log"),
    )
    assert workflow.parser.get_parsed_content("intensity_transforms")[0].specs["pet"] == PET_LOG_SPEC
    out = tmp_path / "eval"
    workflow = run_workflow(
        "evaluate.json",
        **grid_overrides(
            dataset_dir=str(own_folder),
            pet_intensity="log",
            use_fov_mask=True,
            segmentation_checkpoint=str(tmp_path / "seg" / "model_final.pt"),
            output_dir=str(out),
        ),
    )
    test = workflow.parser.get_parsed_content("test#real_data")
    fov = torch.stack([s["fov"] for s in test])
    assert set(fov.unique().tolist()) == {0.0, 1.0} and bool((fov[..., 0] == 0).all())  # padded border
    dice = json.loads((out / "evaluation.json").read_text())["dice"]["mixed"]
    assert 0.0 <= dice["mean"] <= 1.0 and len(dice["per_case"]) == len(test)
