from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor

from monai_pairsynth.data import (
    CentreOfMassCrop,
    CentreOfMassCropd,
    CheckBinaryLabeld,
    DatasetError,
    DenormalizeModalitiesd,
    ExtractTumourSlicesd,
    NormalizeModalitiesd,
    augmentation_transforms,
    make_phantom_case,
    preprocess_datalist,
    preprocessing_transforms,
)
from monai_pairsynth.modalities import ModalitySpec

KEYS = ["ct", "pet", "label"]


# ---------------------------------------------------------------- normalisation


@settings(max_examples=50, deadline=None)
@given(
    ct=st.lists(st.floats(-1000, 1000), min_size=1, max_size=20),
    pet=st.lists(st.floats(0, 15), min_size=1, max_size=20),
    mask=st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=20),
)
def test_normalise_round_trip(ct, pet, mask):
    d = {"ct": torch.tensor([ct]), "pet": torch.tensor([pet]), "label": torch.tensor([mask])}
    n = NormalizeModalitiesd(KEYS)(d)
    for k in KEYS:
        assert float(n[k].min()) >= -1.0 and float(n[k].max()) <= 1.0
    assert set(n["label"].unique().tolist()) <= {-1.0, 1.0}
    back = DenormalizeModalitiesd(KEYS)(n)
    assert torch.allclose(back["ct"], d["ct"], atol=1e-3)
    assert torch.allclose(back["pet"], d["pet"], atol=1e-4)
    assert torch.equal(back["label"], d["label"])


def test_normalise_keeps_metadata_type_and_clips():
    case = make_phantom_case(0, spatial_size=(16, 16), spacing=16.0)
    case["ct"][0, 0, 0] = 1800.0  # e.g. dental metal
    n = NormalizeModalitiesd(KEYS)(case)
    assert isinstance(n["ct"], MetaTensor) and torch.equal(n["ct"].affine, case["ct"].affine)
    assert n["ct"].meta["filename_or_obj"] == "PHANTOM-0000__CT"
    assert n["case_id"] == "PHANTOM-0000"
    assert case["ct"].max() == 1800.0  # the input is not modified, the output clipped
    assert float(n["ct"].max()) == 1.0
    arr = NormalizeModalitiesd(["pet"])({"pet": np.array([[0.0, 30.0]], dtype=np.float32)})["pet"]
    assert isinstance(arr, np.ndarray) and arr.tolist() == [[-1.0, 1.0]]


def test_normalise_custom_specs_and_unknown_key():
    specs = {"mr": ModalitySpec("image", 0.0, 500.0), "oar": {"kind": "mask", "low": 0.0, "high": 1.0}}
    out = NormalizeModalitiesd(["mr", "oar"], specs)(
        {"mr": torch.tensor([250.0]), "oar": torch.tensor([1.0])}
    )
    assert out["mr"].tolist() == [0.0] and out["oar"].tolist() == [1.0]
    with pytest.raises(ValueError, match="modality 'mr' has no default spec"):
        NormalizeModalitiesd(["mr"])
    with pytest.raises(KeyError):
        NormalizeModalitiesd(["ct"])({"pet": torch.zeros(1)})


# ---------------------------------------------------------------- label check


def test_check_binary_label_names_file():
    label = MetaTensor(
        torch.tensor([[0.0, 1.0, 4.0]]), meta={"filename_or_obj": "/data/labelsTr/CHUV-003.nii.gz"}
    )
    with pytest.raises(
        DatasetError, match=r"label file /data/labelsTr/CHUV-003.nii.gz \(case CHUV-003\).*values 4"
    ):
        CheckBinaryLabeld("label")({"label": label, "case_id": "CHUV-003"})
    kept = CheckBinaryLabeld("label", foreground_values=(1,))({"label": torch.tensor([0.0, 1.0])})
    assert kept["label"].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="foreground_values"):
        CheckBinaryLabeld("label", foreground_values=(0, 1))


# ---------------------------------------------------------------- centre-of-mass crop


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(4, 60),
    w=st.integers(4, 60),
    size=st.tuples(st.integers(4, 40), st.integers(4, 40)),
    data=st.data(),
)
def test_centre_of_mass_crop_size_and_centre(h, w, size, data):
    # a foreground block that fits in the window and leaves some background (air) in the image
    bh, bw = data.draw(st.integers(1, min(h - 1, size[0]))), data.draw(st.integers(1, min(w, size[1])))
    y0, x0 = data.draw(st.integers(0, h - bh)), data.draw(st.integers(0, w - bw))
    img = torch.full((1, h, w), -1000.0)
    img[0, y0 : y0 + bh, x0 : x0 + bw] = 40.0
    out = CentreOfMassCrop(size, threshold=-500.0)(img)
    assert tuple(out.shape) == (1, *size)
    assert float((out > -500).sum()) == bh * bw  # the whole foreground is inside the window
    if size[0] > h or size[1] > w:
        assert float(out.min()) == -1000.0  # padding with the image minimum (air)
    com = torch.nonzero(out[0] > -500).float().mean(0)
    centre = torch.tensor([(size[0] - 1) / 2, (size[1] - 1) / 2])
    assert torch.all((com - centre).abs() <= 0.5 + 1e-6)


def test_crop_follows_body_not_geometric_centre_and_tracks_affine():
    img = MetaTensor(torch.full((1, 60, 50), -1000.0), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    img[0, 40:56, 30:46] = 40.0  # body near a corner
    pet = img.clone()
    pet[:] = 0.0
    pet[0, 48, 38] = 5.0
    out = CentreOfMassCropd(["ct", "pet"], spatial_size=(20, 20), threshold=-500.0)({"ct": img, "pet": pet})
    assert tuple(out["ct"].shape) == (1, 20, 20)
    assert int((out["ct"] > -500).sum()) == 256
    # crop window starts at voxel (38, 28): the affine translation moves by 2 mm per voxel
    assert out["ct"].affine[:2, 3].tolist() == [76.0, 56.0]
    assert out["pet"][0, 10, 10] == 5.0  # the same voxel in both keys
    too_big = CentreOfMassCropd(
        ["ct", "pet"], spatial_size=(80, 80), threshold=-500.0, pad_value={"pet": -7.0}
    )
    padded = too_big({"ct": img, "pet": pet})
    assert tuple(padded["pet"].shape) == (1, 80, 80)
    assert float(padded["pet"].min()) == -7.0 and float(padded["ct"].min()) == -1000.0
    # centre of mass (47.5, 37.5): window starts at voxel (8, -2), i.e. 2 voxels of padding before y = 0
    assert padded["ct"].affine[:2, 3].tolist() == [16.0, -4.0]
    assert float(padded["ct"][0, :, :2].max()) == -1000.0


def test_crop_3d_keeps_depth_and_validates():
    case = make_phantom_case(1, spatial_dims=3, spatial_size=(40, 40, 6), spacing=8.0)
    out = CentreOfMassCropd(KEYS, spatial_size=(16, 16), threshold=-500.0)(case)
    assert tuple(out["label"].shape) == (1, 16, 16, 6)
    assert out["label"].sum() == case["label"].sum()
    with pytest.raises(ValueError, match="spatial shape"):
        CentreOfMassCropd(["ct", "pet"], spatial_size=(8, 8))(
            {"ct": torch.zeros(1, 10, 10), "pet": torch.zeros(1, 9, 10)}
        )
    with pytest.raises(ValueError, match="more axes"):
        CentreOfMassCrop((4, 4, 4))(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="pad_value"):
        CentreOfMassCrop((4, 4), pad_value="max")


def test_crop_without_foreground_uses_geometric_centre():
    img = torch.arange(100.0).reshape(1, 10, 10)
    out = CentreOfMassCrop((4, 4), threshold=1e6)(img)
    assert out[0, 0, 0] == img[0, 3, 3]


# ---------------------------------------------------------------- slice extraction


def test_extract_tumour_slices():
    case = make_phantom_case(5, spatial_dims=3, spatial_size=(24, 24, 16), spacing=8.0)
    before = {k: v.clone() for k, v in case.items() if isinstance(v, torch.Tensor)}
    slices = ExtractTumourSlicesd(KEYS, min_tumour_voxels=2)(case)
    per_slice = case["label"][0].sum(dim=(0, 1))
    assert [s["slice_index"] for s in slices] == torch.nonzero(per_slice >= 2).flatten().tolist()
    assert len(slices) == 7
    for s in slices:
        k = s["slice_index"]
        assert s["case_id"] == "PHANTOM-0005"
        assert torch.equal(s["pet"].as_tensor(), case["pet"][..., k].as_tensor())
        assert tuple(s["ct"].shape) == (1, 24, 24) and s["ct"].pixdim.tolist() == [8.0, 8.0]
        assert s["ct"].affine[2, 3].item() == pytest.approx(case["ct"].affine[2, 3].item() + 8.0 * k)
    for k, v in before.items():  # input not modified
        assert torch.equal(case[k], v)
    # normalised masks ({-1, 1}) work with the default threshold 0
    norm = NormalizeModalitiesd(KEYS)(case)
    assert [s["slice_index"] for s in ExtractTumourSlicesd(KEYS, min_tumour_voxels=2)(norm)] == [
        s["slice_index"] for s in slices
    ]


def test_extract_tumour_slices_2d_and_errors():
    d = {"label": torch.zeros(1, 4, 4)}
    assert ExtractTumourSlicesd(["label"])(d) == []
    d["label"][0, 1, 1] = 1
    assert ExtractTumourSlicesd(["label"])(d) == [d]
    with pytest.raises(ValueError, match="min_tumour_voxels"):
        ExtractTumourSlicesd(["label"], min_tumour_voxels=0)
    with pytest.raises(KeyError, match="label key"):
        ExtractTumourSlicesd(["ct"])({"ct": torch.zeros(1, 4, 4, 4)})


def test_preprocessing_in_memory_3d_phantom():
    cases = [make_phantom_case(s, spatial_dims=3, spatial_size=(32, 32, 16), spacing=8.0) for s in range(2)]
    slices = preprocess_datalist(
        cases, preprocessing_transforms(spacing=8.0, spatial_size=(24, 24), load=False)
    )
    assert {s["case_id"] for s in slices} == {"PHANTOM-0000", "PHANTOM-0001"}
    for s in slices:
        assert tuple(s["ct"].shape) == (1, 24, 24) and float((s["label"] > 0).sum()) >= 1
    with pytest.raises(ValueError, match="label_key"):
        preprocessing_transforms(keys=("ct", "pet"))
    with pytest.raises(ValueError, match="reference_key"):
        preprocessing_transforms(reference_key="mr")


# ---------------------------------------------------------------- augmentation


def _sample(seed: int = 3) -> dict:
    return NormalizeModalitiesd(KEYS)(make_phantom_case(seed, spatial_size=(32, 32), spacing=8.0))


def test_augmentation_seeded_and_identical_on_modalities():
    d = _sample()
    d["ct_copy"] = d["ct"].clone()
    aug = augmentation_transforms(
        ["ct", "ct_copy", "label"],
        prob=1.0,
        flip_prob=0.5,
        specs={"ct_copy": ModalitySpec("image", -1000.0, 1000.0)},
    )
    a = aug.set_random_state(7)(d)
    b = aug.set_random_state(7)(d)
    c = aug.set_random_state(8)(d)
    assert torch.equal(a["ct"], b["ct"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["ct"], c["ct"])
    assert torch.equal(a["ct"], a["ct_copy"])  # the same draw on every key
    assert set(a["label"].unique().tolist()) <= {-1.0, 1.0}  # nearest: the mask stays binary
    assert not torch.equal(a["ct"].as_tensor(), d["ct"].as_tensor())


def test_augmentation_moves_mask_with_images():
    d = _sample()
    d["label_as_image"] = d["label"].clone()
    specs = {"label_as_image": ModalitySpec("image", -1.0, 1.0)}
    aug = augmentation_transforms(
        ["ct", "label", "label_as_image"], prob=1.0, flip_prob=1.0, specs=specs
    ).set_random_state(1)
    out = aug(d)
    agree = ((out["label_as_image"] > 0) == (out["label"] > 0)).float().mean()
    assert agree > 0.97


def test_augmentation_identity_flip_and_3d():
    d = _sample()
    same = augmentation_transforms(KEYS, prob=0.0, flip_prob=0.0)(d)
    assert all(torch.equal(same[k].as_tensor(), d[k].as_tensor()) for k in KEYS)
    flipped = augmentation_transforms(KEYS, prob=0.0, flip_prob=1.0)(d)
    assert all(torch.equal(flipped[k].as_tensor(), torch.flip(d[k].as_tensor(), dims=[1])) for k in KEYS)
    vol = make_phantom_case(0, spatial_dims=3, spatial_size=(16, 16, 8), spacing=16.0)
    out = augmentation_transforms(KEYS, prob=1.0, spatial_dims=3).set_random_state(0)(vol)
    assert tuple(out["pet"].shape) == (1, 16, 16, 8) and set(out["label"].unique().tolist()) <= {0.0, 1.0}
    for bad in ({"prob": 1.5}, {"flip_prob": -0.1}, {"spatial_dims": 1}, {"rotate_degrees": -1.0}):
        with pytest.raises(ValueError):
            augmentation_transforms(KEYS, **bad)
