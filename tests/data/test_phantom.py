from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from scipy import ndimage

from monai_pairsynth.data import PhantomDataset, PhantomTissue, make_phantom_case, phantom_affine
from monai_pairsynth.data.phantom import PHYSIOLOGICAL_UPTAKE

KEYS = ("ct", "pet", "label")
SMALL_3D = {"spatial_dims": 3, "spatial_size": (32, 32, 16), "spacing": 8.0}


@pytest.mark.parametrize("kwargs", [{}, {"spatial_size": (64, 64), "spacing": 4.0}, SMALL_3D])
def test_same_seed_same_arrays(kwargs):
    a, b = make_phantom_case(5, **kwargs), make_phantom_case(5, **kwargs)
    for k in KEYS:
        assert torch.equal(a[k].as_tensor(), b[k].as_tensor()), k
        assert torch.equal(a[k].affine, b[k].affine), k
    assert a["case_id"] == b["case_id"] == "PHANTOM-0005"
    assert a["seed"] == 5


@pytest.mark.parametrize("kwargs", [{}, SMALL_3D])
def test_different_seeds_differ(kwargs):
    a, b = make_phantom_case(1, **kwargs), make_phantom_case(2, **kwargs)
    for k in KEYS:
        assert not torch.equal(a[k].as_tensor(), b[k].as_tensor()), k


@pytest.mark.parametrize(
    ("kwargs", "shape", "spacing"),
    [
        ({}, (1, 128, 128), 2.0),
        ({"spatial_size": (64, 64), "spacing": 4.0}, (1, 64, 64), 4.0),
        ({"spatial_dims": 3, "spatial_size": (24, 20, 10), "spacing": 3.0}, (1, 24, 20, 10), 3.0),
    ],
)
def test_shapes_dtypes_affine(kwargs, shape, spacing):
    case = make_phantom_case(3, **kwargs)
    ndim = len(shape) - 1
    for k in KEYS:
        t = case[k]
        assert isinstance(t, MetaTensor) and t.dtype == torch.float32 and tuple(t.shape) == shape, k
        assert t.pixdim.tolist() == [spacing] * ndim
        aff = t.affine
        assert aff.shape == (4, 4)
        assert torch.allclose(torch.diagonal(aff)[:3], torch.full((3,), spacing, dtype=aff.dtype))
        # the field of view is centred on the origin: first voxel at -(n-1)/2 * spacing
        for i, n in enumerate(shape[1:]):
            assert aff[i, 3].item() == pytest.approx(-(n - 1) / 2 * spacing)
    if ndim == 2:  # 2D: the translation's z is the position of the slice through the tumour
        assert -40.0 < case["ct"].affine[2, 3].item() < 30.0


def test_default_3d_size():
    case = make_phantom_case(0, spatial_dims=3, noise=False)
    assert tuple(case["ct"].shape) == (1, 128, 128, 64)
    assert case["label"].sum() > 0
    # the brain (hot, SUV > 3) is at the top of the volume and absent from the bottom
    pet = case["pet"][0]
    assert pet[..., -4:].max() > 3.0
    assert pet[..., :8].amax(dim=(0, 1)).max() < 8.0


def test_phantom_affine_offset():
    aff = phantom_affine((10, 10, 4), 4.0, offset=(3.0, -5.0, 2.0))
    assert aff[:3, 3].tolist() == [3.0 - 18.0, -5.0 - 18.0, 2.0 - 6.0]


def test_same_field_of_view_at_coarser_grid():
    """The anatomy is in mm: body and tumour areas agree between 2 mm and 4 mm grids of the same FOV."""
    fine = make_phantom_case(11, noise=False, return_tissue=True)
    coarse = make_phantom_case(11, spatial_size=(64, 64), spacing=4.0, noise=False, return_tissue=True)
    body_fine = (fine["tissue"] != PhantomTissue.AIR).sum().item() * 4.0
    body_coarse = (coarse["tissue"] != PhantomTissue.AIR).sum().item() * 16.0
    assert body_coarse == pytest.approx(body_fine, rel=0.05)
    tum_fine, tum_coarse = fine["label"].sum().item() * 4.0, coarse["label"].sum().item() * 16.0
    assert tum_coarse == pytest.approx(tum_fine, rel=0.35)
    assert fine["ct"].affine[2, 3] == coarse["ct"].affine[2, 3]  # same slice position


def test_grid_offset_shifts_the_grid_not_the_anatomy():
    ref = make_phantom_case(4, spatial_dims=3, spatial_size=(32, 32, 16), spacing=8.0, noise=False)
    shifted = make_phantom_case(
        4, spatial_dims=3, spatial_size=(32, 32, 16), spacing=8.0, noise=False, grid_offset=(8.0, 0.0, 0.0)
    )
    assert shifted["ct"].affine[0, 3] == ref["ct"].affine[0, 3] + 8.0
    # voxel i+1 of the reference grid is voxel i of the shifted one
    assert torch.equal(shifted["label"][:, :-1], ref["label"][:, 1:])


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_value_ranges_and_anatomy(seed):
    case = make_phantom_case(seed, return_tissue=True)
    ct, pet, label, tissue = (case[k][0].numpy() for k in ("ct", "pet", "label", "tissue"))
    assert set(np.unique(label).tolist()) == {0.0, 1.0}  # 2D always contains tumour
    assert ct.min() >= -1024.0 and ct.max() <= 3071.0
    assert pet.min() >= 0.0 and pet.max() < 25.0
    tumour = label > 0
    body = ndimage.binary_fill_holes(tissue != PhantomTissue.AIR)
    assert body[tumour].all()  # tumour inside the body
    # soft-tissue CT around 40 HU, fat around -100 HU, air around -1000 HU, bone bright
    assert np.median(ct[tissue == PhantomTissue.MUSCLE]) == pytest.approx(42.0, abs=12.0)
    assert np.median(ct[tissue == PhantomTissue.FAT]) == pytest.approx(-100.0, abs=25.0)
    assert np.median(ct[~body]) == pytest.approx(-1000.0, abs=30.0)
    assert np.median(ct[tissue == PhantomTissue.BONE]) > 600.0
    # PET: tumour hotter than the soft-tissue background, background low, air ~ 0
    background = body & ~ndimage.binary_dilation(tumour, iterations=4)
    bg_level = np.median(pet[background])
    assert 0.3 < bg_level < 1.2
    assert pet[tumour].mean() > bg_level + 0.3
    assert np.median(pet[~ndimage.binary_dilation(body, iterations=6)]) < 0.15
    # physiological uptake that is not tumour: hot spots outside the (dilated) mask
    physio = np.isin(tissue, [int(t) for t in PHYSIOLOGICAL_UPTAKE]) & ~ndimage.binary_dilation(
        tumour, iterations=3
    )
    assert pet[physio].max() > max(1.5, 2.0 * bg_level)


def test_weak_ct_contrast_and_confounders_over_many_cases():
    """Tumour CT contrast is weak (≈ +10..+25 HU); in some cases a non-tumour blob is hotter than the tumour."""
    deltas, hotter_elsewhere = [], 0
    for seed in range(40):
        case = make_phantom_case(seed, spatial_size=(64, 64), spacing=4.0, noise=False, return_tissue=True)
        ct, pet, label, tissue = (case[k][0].numpy() for k in ("ct", "pet", "label", "tissue"))
        core = (tissue == PhantomTissue.TUMOUR) & ndimage.binary_erosion(label > 0)
        if core.any():
            deltas.append(np.median(ct[core]) - np.median(ct[tissue == PhantomTissue.MUSCLE]))
        outside = ~ndimage.binary_dilation(label > 0, iterations=2)
        hotter_elsewhere += int(pet[outside].max() > pet[label > 0].max())
    assert 5.0 < np.median(deltas) < 30.0
    assert 4 <= hotter_elsewhere <= 30


def test_coarse_grid_still_has_tumour():
    for seed in range(10):
        case = make_phantom_case(seed, spatial_size=(16, 16), spacing=16.0)
        assert case["label"].sum() >= 1


def test_phantom_dataset_and_loader():
    seen = []
    ds = PhantomDataset(
        4, base_seed=20, spatial_size=(16, 16), spacing=16.0, transform=lambda d: seen.append(d["seed"]) or d
    )
    assert len(ds) == 4 and ds.seeds == [20, 21, 22, 23]
    item = ds[2]
    assert item["case_id"] == "PHANTOM-0022" and seen == [22]
    assert torch.equal(item["pet"], make_phantom_case(22, spatial_size=(16, 16), spacing=16.0)["pet"])
    assert [d["seed"] for d in ds[1:3]] == [21, 22]
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert tuple(batch["ct"].shape) == (2, 1, 16, 16)
    assert batch["case_id"] == ["PHANTOM-0020", "PHANTOM-0021"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 0, "spatial_dims": 4}, "spatial_dims"),
        ({"seed": 0, "spatial_size": (32, 32, 8)}, "spatial_size"),
        ({"seed": 0, "spatial_size": (0, 32)}, "spatial_size"),
        ({"seed": 0, "spacing": 0.0}, "spacing"),
        ({"seed": 0, "grid_offset": (1.0,)}, "grid_offset"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom_case(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_cases": 0}, "num_cases"),
        ({"num_cases": 2, "base_seed": -3}, "base_seed"),
        ({"num_cases": 2, "spacing": -1.0}, "spacing"),
    ],
)
def test_bad_dataset_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhantomDataset(**kwargs)


def test_phantom_dataset_iteration_stops_and_negative_index():
    ds = PhantomDataset(3, base_seed=5, spatial_size=(16, 16), spacing=16.0)
    cases = list(ds)
    assert [c["seed"] for c in cases] == [5, 6, 7]
    assert ds[-1]["seed"] == 7
    with pytest.raises(IndexError, match="out of range"):
        ds[3]


# ---------------------------------------------------------------------------------------------- pinned draws
# The shipped demo checkpoint was trained on exactly these phantom cases: a change of any random draw (its
# order, range or count) must fail here. Recorded when _draw_anatomy was split into one function per part.
# Floats are compared to 9 significant digits (anatomy) or rel 1e-6 (images), not bit for bit, so that a
# last-bit difference of a platform's libm / SIMD does not fail the test while any changed draw does.
ANATOMY_SHA256 = {
    0: "659ef1222be143db",
    1: "0e3353de1914df76",
    2: "b138a9cee4ddd9b5",
    3: "5b37166246800d57",
    4: "799903edea466fb3",
    5: "a77a7d7b320a2d35",
    6: "d71a78b1dab3be1d",
    7: "1e4c5dd598122eb5",
}
# (make_phantom_case kwargs, tumour voxels, mean CT, mean PET, max PET)
PINNED_CASES = [
    ({"seed": 0, "spatial_size": (64, 64), "spacing": 4.0}, 77, -842.8744268582668, 0.30469600840916644, 15.87142562866211),
    ({"seed": 1, "spatial_size": (64, 64), "spacing": 4.0}, 12, -788.9351802889141, 0.1563058367967316, 3.7330517768859863),
    ({"seed": 2}, 14, -809.4421786931343, 0.18596860616138639, 7.716826438903809),
    (
        {"seed": 3, "spatial_dims": 3, "spatial_size": (32, 32, 16), "spacing": 8.0},
        6, -775.5054324486591, 0.19300496170641682, 7.154053211212158,
    ),
]  # fmt: skip


def _canonical(value) -> str:
    if isinstance(value, float):
        return f"{value:.9g}"
    if isinstance(value, (int, str)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_canonical(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    raise TypeError(f"unexpected {type(value).__name__} in the anatomy parameters")


@pytest.mark.parametrize("seed", sorted(ANATOMY_SHA256))
def test_anatomy_draws_are_pinned(seed):
    import hashlib

    from monai_pairsynth.data.phantom import _draw_anatomy

    digest = hashlib.sha256(_canonical(_draw_anatomy(seed)).encode()).hexdigest()[:16]
    assert digest == ANATOMY_SHA256[seed]


@pytest.mark.parametrize(("kwargs", "voxels", "ct_mean", "pet_mean", "pet_max"), PINNED_CASES)
def test_phantom_cases_are_pinned(kwargs, voxels, ct_mean, pet_mean, pet_max):
    case = make_phantom_case(**kwargs)
    assert int(case["label"].sum()) == voxels
    assert float(case["ct"].double().mean()) == pytest.approx(ct_mean, rel=1e-6)
    assert float(case["pet"].double().mean()) == pytest.approx(pet_mean, rel=1e-6)
    assert float(case["pet"].max()) == pytest.approx(pet_max, rel=1e-6)
