from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_pairsynth.data import (
    DatasetError,
    DenormalizeModalitiesd,
    hecktor_datalist,
    load_datalist_json,
    make_phantom_case,
    preprocess_datalist,
    preprocessing_transforms,
    split_by_patient,
    write_phantom_hecktor,
)

SMALL = {"spatial_size": (32, 32, 16), "spacing": 8.0, "pet_spacing": 12.0}


@pytest.fixture
def small_dataset(tmp_path):
    root = tmp_path / "hecktor"
    datalist = write_phantom_hecktor(root, 3, axcodes="LPS", **SMALL)
    return root, datalist


def _write_nifti(path: Path, arr: np.ndarray, spacing: float = 8.0) -> None:
    nib.save(nib.Nifti1Image(arr, np.diag([spacing, spacing, spacing, 1.0])), str(path))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_and_list_hecktor_layout(small_dataset):
    root, written = small_dataset
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [
        "CHUM-001__CT.nii.gz",
        "CHUM-001__PT.nii.gz",
        "CHUP-001__CT.nii.gz",
        "CHUP-001__PT.nii.gz",
        "CHUS-001__CT.nii.gz",
        "CHUS-001__PT.nii.gz",
    ]
    datalist = hecktor_datalist(root)
    assert datalist == written
    assert [d["patient_id"] for d in datalist] == ["CHUM-001", "CHUP-001", "CHUS-001"]
    assert datalist[0]["label"] == str(root / "labelsTr" / "CHUM-001.nii.gz")
    # the JSON written beside it holds relative paths that resolve to the same files
    raw = json.loads((root / "dataset.json").read_text())
    assert raw["training"][0]["ct"] == os.path.join("imagesTr", "CHUM-001__CT.nii.gz")
    assert load_datalist_json(root / "dataset.json") == datalist


def test_pet_and_ct_on_different_grids(small_dataset):
    _, datalist = small_dataset
    ct, pet, label = (nib.load(datalist[0][k]) for k in ("ct", "pet", "label"))
    assert ct.header.get_zooms() == (8.0, 8.0, 8.0) and pet.header.get_zooms() == (12.0, 12.0, 12.0)
    assert ct.shape == label.shape == (32, 32, 16)
    assert pet.shape == (24, 24, 13)  # covers the CT field of view plus a margin
    assert not np.allclose(ct.affine[:3, 3], pet.affine[:3, 3])
    assert np.allclose(np.diag(ct.affine)[:2], [-8.0, -8.0])  # stored LPS, as DICOM-derived NIfTIs are
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) == {0, 1}


def test_pipeline_resamples_pet_onto_ct_grid(small_dataset):
    """PET on its own 12 mm grid (LPS) comes back on the 8 mm RAS CT grid, matching the phantom PET there."""
    _, datalist = small_dataset
    t = preprocessing_transforms(spacing=8.0, spatial_size=(-1, -1), extract_slices=False)
    out = DenormalizeModalitiesd(["ct", "pet", "label"])(t(datalist[0]))
    ref = make_phantom_case(0, spatial_dims=3, spatial_size=(32, 32, 16), spacing=8.0)
    assert tuple(out["pet"].shape) == (1, 32, 32, 16)
    assert torch.allclose(out["ct"].affine, ref["ct"].affine)
    assert torch.equal(out["label"].as_tensor(), ref["label"].as_tensor())
    corr = np.corrcoef(out["pet"].numpy().ravel(), ref["pet"].numpy().ravel())[0, 1]
    assert corr > 0.85
    # clipped to the spec range, so compare CT inside [-1000, 1000]
    ct_ref = ref["ct"].clamp(-1000, 1000)
    assert torch.allclose(out["ct"].as_tensor(), ct_ref.as_tensor(), atol=1e-2)


def test_pipeline_to_128_crops_with_tumour_inside(tmp_path):
    """Default pipeline: 2 mm, 2D tumour slices cropped to 128×128 around the body, tumour kept whole."""
    root = tmp_path / "d"
    datalist = write_phantom_hecktor(
        root, 1, spatial_size=(64, 64, 12), spacing=4.0, pet_spacing=6.0, axcodes="LPS"
    )
    slices = preprocessing_transforms()(datalist[0])
    uncropped = preprocessing_transforms(spatial_size=(-1, -1))(datalist[0])
    assert len(slices) == len(uncropped) >= 3
    for s, u in zip(slices, uncropped):
        assert s["case_id"] == "CHUM-001" and s["slice_index"] == u["slice_index"]
        for k in ("ct", "pet", "label"):
            assert tuple(s[k].shape) == (1, 128, 128), k
            assert s[k].pixdim.tolist() == [2.0, 2.0]
            assert float(s[k].min()) >= -1.0 and float(s[k].max()) <= 1.0
        assert set(s["label"].unique().tolist()) == {-1.0, 1.0}
        # all tumour voxels of the slice are inside the crop
        assert int((s["label"] > 0).sum()) == int((u["label"] > 0).sum()) > 0
        # PET is hotter in the tumour than in the rest of the body
        pet, lab, body = s["pet"][0], s["label"][0] > 0, s["ct"][0] > -0.5
        assert pet[lab].mean() > pet[body & ~lab].mean()


def test_pipeline_is_deterministic_and_flattens(small_dataset):
    _, datalist = small_dataset
    t = preprocessing_transforms(spacing=8.0, spatial_size=(24, 24))
    a, b = preprocess_datalist(datalist, t), preprocess_datalist(datalist, t)
    assert len(a) == len(b) > 3 and {s["case_id"] for s in a} == {"CHUM-001", "CHUP-001", "CHUS-001"}
    assert all(torch.equal(x["pet"], y["pet"]) for x, y in zip(a, b))


def test_refuses_to_overwrite_and_writes_nothing(small_dataset):
    root, _ = small_dataset
    before = _snapshot(root)
    with pytest.raises(FileExistsError, match="CHUM-001"):
        write_phantom_hecktor(root, 4, **SMALL)
    assert _snapshot(root) == before  # not even the 4th case was written
    write_phantom_hecktor(root, 1, base_seed=5, overwrite=True, **SMALL)
    assert _snapshot(root)["imagesTr/CHUM-001__CT.nii.gz"] != before["imagesTr/CHUM-001__CT.nii.gz"]
    assert not [p for p in root.rglob("*.tmp")]


def test_2d_hecktor_files(tmp_path):
    datalist = write_phantom_hecktor(
        tmp_path, 2, spatial_dims=2, spatial_size=(32, 32), spacing=8.0, pet_spacing=None
    )
    assert nib.load(datalist[1]["ct"]).shape == (32, 32)
    assert hecktor_datalist(tmp_path)[1]["case_id"] == "CHUP-001"


# ---------------------------------------------------------------- bad input


def _remove(root: Path, rel: str) -> None:
    (root / rel).unlink()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda r: _remove(r, "imagesTr/CHUP-001__PT.nii.gz"), r"CHUP-001.*no matching PET.*CHUP-001__PT"),
        (lambda r: _remove(r, "imagesTr/CHUP-001__CT.nii.gz"), r"CHUP-001.*no matching CT"),
        (
            lambda r: _remove(r, "labelsTr/CHUS-001.nii.gz"),
            r"CHUS-001.*missing label.*labelsTr/CHUS-001.nii.gz",
        ),
        (  # a PET whose patient id matches no CT
            lambda r: (r / "imagesTr/CHUM-001__PT.nii.gz").rename(r / "imagesTr/CHUM-009__PT.nii.gz"),
            r"CHUM-001.*no matching PET[\s\S]*CHUM-009.*PET file .*CHUM-009__PT.nii.gz has no matching CT",
        ),
        (
            lambda r: (r / "labelsTr/extra.nii.gz").write_bytes(b"x"),
            r"extra.*label file .*extra.nii.gz has no CT/PET",
        ),
        (
            lambda r: (r / "imagesTr/CHUM-002_ct.nii.gz").write_bytes(b"x"),
            r"CHUM-002_ct.nii.gz: unrecognised",
        ),
        (
            lambda r: (r / "imagesTr/CHUP-001__PT.nii.gz").write_bytes(os.urandom(2000)),
            r"cannot read pet \(case CHUP-001\) file .*CHUP-001__PT.nii.gz",
        ),
        (
            lambda r: (r / "labelsTr/CHUM-001.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30)),
            r"cannot read label \(case CHUM-001\) file .*labelsTr/CHUM-001.nii.gz",
        ),
    ],
    ids=[
        "missing-pet",
        "missing-ct",
        "missing-label",
        "mismatched-ids",
        "orphan-label",
        "bad-name",
        "garbage",
        "bad-header",
    ],
)
def test_bad_folder_names_the_file_or_case(small_dataset, damage, match):
    root, _ = small_dataset
    damage(root)
    with pytest.raises(DatasetError, match=match):
        hecktor_datalist(root)


@pytest.mark.parametrize("layout", ["missing", "no-images", "empty-images"])
def test_empty_or_missing_folder(tmp_path, layout):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "empty-images":
        (root / "imagesTr").mkdir()
        (root / "imagesTr" / "README.txt").write_text("nothing here")
    with pytest.raises(DatasetError, match=str(root)):
        hecktor_datalist(root)


def test_unlabelled_folder_allowed_when_asked(small_dataset):
    root, _ = small_dataset
    for f in (root / "labelsTr").iterdir():
        f.unlink()
    datalist = hecktor_datalist(root, require_labels=False)
    assert len(datalist) == 3 and "label" not in datalist[0]


def test_unreadable_file_in_pipeline_names_file(small_dataset):
    _, datalist = small_dataset
    bad = Path(datalist[1]["ct"])
    bad.write_bytes(os.urandom(500))
    with pytest.raises(DatasetError, match=r"cannot read ct file .*CHUP-001__CT.nii.gz \(case CHUP-001\)"):
        preprocessing_transforms(spacing=8.0, spatial_size=(24, 24))(datalist[1])
    with pytest.raises(DatasetError, match="CHUP-001__CT"):
        preprocess_datalist(datalist, preprocessing_transforms(spacing=8.0, spatial_size=(24, 24)))


@pytest.mark.parametrize(
    ("value", "foreground", "ok"),
    [(3.0, None, False), (2.0, None, False), (0.5, None, False), (2.0, (1, 2), True)],
)
def test_non_binary_label(small_dataset, value, foreground, ok):
    _, datalist = small_dataset
    label_path = Path(datalist[0]["label"])
    img = nib.load(str(label_path))
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[arr > 0] = value
    nib.save(nib.Nifti1Image(arr, img.affine), str(label_path))
    t = preprocessing_transforms(spacing=8.0, spatial_size=(24, 24), foreground_values=foreground)
    if ok:
        slices = t(datalist[0])
        assert slices and all(set(s["label"].unique().tolist()) <= {-1.0, 1.0} for s in slices)
    else:
        with pytest.raises(
            DatasetError,
            match=rf"label file .*CHUM-001.nii.gz \(case CHUM-001\) is not a binary mask: values {value:g}",
        ):
            t(datalist[0])


def test_datalist_json_bad_inputs(tmp_path, small_dataset):
    root, _ = small_dataset
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(DatasetError, match=r"bad\.json"):
        load_datalist_json(bad_json)
    j = tmp_path / "d.json"
    j.write_text(json.dumps({"validation": []}))
    with pytest.raises(DatasetError, match=r"no list 'training' \(found \['validation'\]\)"):
        load_datalist_json(j)
    j.write_text(json.dumps({"training": [{"ct": "a__CT.nii.gz", "pet": "a__PT.nii.gz"}]}))
    with pytest.raises(DatasetError, match=r"entry 0.*missing keys \['label'\]"):
        load_datalist_json(j)
    j.write_text(
        json.dumps(
            {
                "training": [
                    {
                        "ct": "imagesTr/CHUM-001__CT.nii.gz",
                        "pet": "nope.nii.gz",
                        "label": "labelsTr/CHUM-001.nii.gz",
                    }
                ]
            }
        )
    )
    with pytest.raises(DatasetError, match=r"pet file .*nope.nii.gz does not exist"):
        load_datalist_json(j, base_dir=root)
    loaded = load_datalist_json(j, base_dir=root, check_files=False)
    assert loaded[0]["case_id"] == "CHUM-001" and loaded[0]["ct"] == str(
        root / "imagesTr/CHUM-001__CT.nii.gz"
    )


# ---------------------------------------------------------------- split


def _datalist(n_patients: int, scans_per_patient: int = 1) -> list[dict]:
    return [
        {"case_id": f"CHUM-{p:03d}_{s}", "patient_id": f"CHUM-{p:03d}"}
        for p in range(n_patients)
        for s in range(scans_per_patient)
    ]


def test_split_80_10_10_patient_disjoint_reproducible():
    dl = _datalist(100, scans_per_patient=2)
    split = split_by_patient(dl, seed=3)
    patients = {k: {d["patient_id"] for d in v} for k, v in split.items()}
    assert {k: len(v) for k, v in patients.items()} == {"train": 80, "val": 10, "test": 10}
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    assert sum(len(v) for v in split.values()) == 200  # both scans of a patient in the same split
    reordered = split_by_patient(list(reversed(dl)), seed=3)
    assert {k: sorted(d["case_id"] for d in v) for k, v in reordered.items()} == {
        k: sorted(d["case_id"] for d in v) for k, v in split.items()
    }
    assert split_by_patient(dl, seed=3) == split
    assert split_by_patient(dl, seed=4)["test"] != split["test"]


def test_split_falls_back_to_case_id_and_validates():
    split = split_by_patient([{"case_id": f"X-{i}"} for i in range(5)], fractions=(0.6, 0.2, 0.2))
    assert [len(v) for v in split.values()] == [3, 1, 1]
    with pytest.raises(ValueError, match="sum"):
        split_by_patient(_datalist(5), fractions=(0.5, 0.5, 0.5))
    with pytest.raises(DatasetError, match="neither"):
        split_by_patient([{"ct": "a"}])
    with pytest.raises(DatasetError, match="empty"):
        split_by_patient([])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    scans=st.integers(1, 3),
    weights=st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 10)).filter(
        lambda w: sum(w) > 0
    ),
    seed=st.integers(0, 2**16),
)
def test_split_is_a_patient_partition(n, scans, weights, seed):
    fractions = tuple(w / sum(weights) for w in weights)
    dl = _datalist(n, scans)
    split = split_by_patient(dl, fractions=fractions, seed=seed)
    ids = [d["case_id"] for v in split.values() for d in v]
    assert sorted(ids) == sorted(d["case_id"] for d in dl)
    owner = {}
    for name, items in split.items():
        for d in items:
            assert owner.setdefault(d["patient_id"], name) == name
    for name, f in zip(("train", "val", "test"), fractions):
        n_p = len({d["patient_id"] for d in split[name]})
        assert abs(n_p - f * n) <= 1.0 + (1 if n < 3 else 0) or (f > 0 and n_p == 1)
        if f == 0:
            assert n_p == 0
