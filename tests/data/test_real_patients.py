"""Preprocessing on real FDG-PET/CT sarcoma patients (skipped where ``../shared/data/sts_pet_ct`` is absent)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_pairsynth.data import DatasetError, hecktor_datalist, preprocessing_transforms
from monai_pairsynth.evaluate import load_triplet_set

CASE = "STS_004"


@pytest.fixture(scope="module")
def labelled_1_2(sts_data_dir, tmp_path_factory):
    """One real patient whose GTV is split into label 1 (upper half of its slices) and 2 (the rest), HECKTOR
    2022 style; returns (folder, voxels labelled 1, voxels labelled 2)."""
    root = tmp_path_factory.mktemp("sts_1_2")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for mod in ("CT", "PT"):
        shutil.copy(sts_data_dir / "imagesTr" / f"{CASE}__{mod}.nii.gz", root / "imagesTr")
    img = nib.load(str(sts_data_dir / "labelsTr" / f"{CASE}.nii.gz"))
    arr = np.asarray(img.dataobj).astype(np.uint8)
    zs = np.nonzero(arr.any(axis=(0, 1)))[0]
    split = int(zs[len(zs) // 2])
    arr[..., split:][arr[..., split:] == 1] = 2
    nib.save(nib.Nifti1Image(arr, img.affine), str(root / "labelsTr" / f"{CASE}.nii.gz"))
    return root, int((arr == 1).sum()), int((arr == 2).sum())


def _tumour_slices(root, foreground_values):
    t = preprocessing_transforms(
        spacing=4.0, spatial_size=(64, 64), foreground_values=foreground_values, extract_slices=False
    )
    out = t(hecktor_datalist(root)[0])
    return out["label"]


def test_foreground_values_on_real_labels(labelled_1_2):
    root, n1, n2 = labelled_1_2
    assert n1 > 0 and n2 > 0
    both = _tumour_slices(root, (1, 2))
    primary = _tumour_slices(root, (1,))
    nodes = _tumour_slices(root, (2,))
    tumour = [int((x > 0).sum()) for x in (both, primary, nodes)]
    assert all(v > 0 for v in tumour), tumour
    # the primary-only and nodes-only masks partition the merged one (2 became 0, resp. 1 became 0)
    assert torch.equal((primary > 0) | (nodes > 0), both > 0)
    assert not bool(((primary > 0) & (nodes > 0)).any())
    with pytest.raises(DatasetError, match=rf"{CASE}.*not a binary mask: values 2 outside \{{0, 1\}}"):
        _tumour_slices(root, None)


def test_evaluate_loader_takes_foreground_values(labelled_1_2):
    root, _, _ = labelled_1_2
    kwargs = dict(spatial_size=(64, 64), spacing=4.0)
    merged, _ = load_triplet_set(str(root), **kwargs)  # default (1, 2): a HECKTOR folder loads as is
    primary, _ = load_triplet_set(str(root), foreground_values=(1,), **kwargs)
    assert merged and primary and len(primary) < len(merged)  # slices with only label 2 are gone
    with pytest.raises(DatasetError, match="values 2 outside"):
        load_triplet_set(str(root), foreground_values=None, **kwargs)


def test_non_integer_label_still_rejected(labelled_1_2, tmp_path):
    root, _, _ = labelled_1_2
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    path = bad / "labelsTr" / f"{CASE}.nii.gz"
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[arr == 2] = 0.5
    nib.save(nib.Nifti1Image(arr, img.affine), str(path))
    with pytest.raises(DatasetError, match=r"values 0\.5 are not non-negative integers"):
        _tumour_slices(bad, (1,))
