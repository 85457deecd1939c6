"""Pairedness: real phantom triplets score above shuffled or misaligned ones; definitions on toy images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_pairsynth.data import make_phantom_case
from monai_pairsynth.metrics import body_outline, pairedness, summarize


@pytest.fixture(scope="module", params=[(64, 4.0), (128, 2.0)], ids=["64px", "128px"])
def phantoms(request):
    size, spacing = request.param
    return [make_phantom_case(s, spatial_size=(size, size), spacing=spacing) for s in range(16)]


def test_real_triplets_beat_shuffled_masks(phantoms):
    real = pairedness(phantoms)
    shuffled = pairedness([{**c, "label": phantoms[(i + 5) % 16]["label"]} for i, c in enumerate(phantoms)])
    real_mean = summarize(real["lesion_dice"])["mean"]
    shuffled_mean = summarize(shuffled["lesion_dice"])["mean"]
    # measured on seeds 0-15: 0.81 vs 0.25 (64 px), 0.76 vs 0.24 (128 px)
    assert real_mean > 0.7
    assert real_mean - shuffled_mean > 0.4
    assert not real["mask_empty"].any()


def test_a_flipped_ct_lowers_the_body_term(phantoms):
    real = pairedness(phantoms)
    for axis in (-1, -2):  # anterior-posterior and left-right
        flipped = pairedness([{**c, "ct": c["ct"].flip(axis)} for c in phantoms])
        # measured: 0.99 (64 px) / 0.98 (128 px) vs 0.88 for either flip; every case drops
        assert (real["body_dice"] > flipped["body_dice"]).all()
        assert real["body_dice"].mean() - flipped["body_dice"].mean() > 0.08
        torch.testing.assert_close(flipped["lesion_dice"], real["lesion_dice"])  # the CT plays no part there
    assert real["body_dice"].min() > 0.95


BROKEN_PAIRINGS = {
    "masks swapped between cases": lambda c, o: {**c, "label": o["label"]},
    "CT of another case": lambda c, o: {**c, "ct": o["ct"]},
    "CT flipped anterior-posterior": lambda c, o: {**c, "ct": c["ct"].flip(-1)},
    "PET flipped left-right": lambda c, o: {**c, "pet": c["pet"].flip(-2)},
    "flat PET": lambda c, o: {**c, "pet": torch.full_like(c["pet"], float(c["pet"].mean()))},
}


@pytest.mark.parametrize("broken", list(BROKEN_PAIRINGS))
def test_score_real_phantoms_beat_broken_pairings(phantoms, broken):
    real = pairedness(phantoms)["score"]
    other = pairedness([BROKEN_PAIRINGS[broken](c, phantoms[(i + 5) % 16]) for i, c in enumerate(phantoms)])
    # measured on seeds 0-15: real 0.39 (64 px and 128 px), every broken set 0.09-0.14 (flat PET: 0)
    assert real.mean() > 0.3
    assert real.mean() - other["score"].mean() > 0.15
    assert (real > other["score"]).double().mean() >= 0.8


def test_new_terms_on_toy_triplets():
    ct = torch.full((1, 1, 32, 32), -1000.0)
    ct[..., 4:28, 4:28] = 40.0
    body = torch.zeros(1, 1, 32, 32)
    body[..., 4:28, 4:28] = 1.0
    label = torch.zeros(1, 1, 32, 32)
    label[..., 10:20, 10:20] = 1.0
    # a necrotic tumour: uptake on a ring, the centre at background; the filled threshold region is the mask
    ring = body.clone() * 1.0
    ring[..., 10:20, 10:20] = 6.0
    ring[..., 12:18, 12:18] = 1.0
    out = pairedness({"ct": ct, "pet": ring, "label": label}, spacing=2.0)
    assert out["lesion_score"].item() == 1.0 and out["background_suv"].item() == 1.0
    # the 40 % SUVmax Dice misses the cold centre: T is the 64-voxel ring of the 100-voxel mask
    assert out["lesion_dice"].item() == pytest.approx(2 * 64 / (100 + 64))
    # high local background (3 SUV) and a modest lesion (4.5 SUV): the threshold 3 + 0.3 * 1.5 finds it
    warm = body * 3.0
    warm[..., 10:20, 10:20] = 4.5
    assert pairedness({"ct": ct, "pet": warm, "label": label}, spacing=2.0)["lesion_score"].item() == 1.0
    # a flat PET has no uptake above background and no edges: every new term is 0, the old lesion Dice is not
    flat = torch.full_like(body, 2.0)
    out = pairedness({"ct": ct, "pet": flat, "label": label}, spacing=2.0)
    assert out["lesion_score"].item() == 0.0 and out["structure_score"].item() == 0.0
    assert out["score"].item() == 0.0 and out["lesion_dice"].item() > 0.3
    # the structure term: PET edges where the CT has them score 1; PET edges at right angles to them score 0
    edges = pairedness({"ct": ct, "pet": body, "label": label}, spacing=2.0)["structure_score"]
    assert edges.item() == pytest.approx(1.0)
    stripes_ct = torch.zeros(1, 1, 32, 32)
    stripes_ct[..., :, 16:] = 500.0
    stripes_pet = torch.zeros(1, 1, 32, 32)
    stripes_pet[..., 16:, :] = 2.0
    crossed = pairedness({"ct": stripes_ct, "pet": stripes_pet, "label": label}, spacing=2.0)
    assert crossed["structure_score"].item() == pytest.approx(0.0, abs=1e-6)


def test_lesion_term_on_a_toy_triplet():
    ct = torch.full((1, 1, 32, 32), -1000.0)
    ct[..., 4:28, 4:28] = 40.0
    pet = torch.zeros(1, 1, 32, 32)
    pet[..., 4:28, 4:28] = 1.0
    pet[..., 12:18, 12:18] = 8.0
    label = torch.zeros(1, 1, 32, 32)
    label[..., 12:18, 12:18] = 1.0
    out = pairedness({"ct": ct, "pet": pet, "label": label}, spacing=2.0)
    assert out["lesion_dice"].item() == 1.0 and out["suvmax"].item() == 8.0
    # a mask half over the lesion: |M| = 36, T = the lesion (36 voxels >= 0.4 * 8 SUV), overlap 18
    shifted = torch.zeros_like(label)
    shifted[..., 12:18, 15:21] = 1.0
    out = pairedness({"ct": ct, "pet": pet, "label": shifted}, spacing=2.0)
    assert out["lesion_dice"].item() == pytest.approx(2 * 18 / (36 + 36))
    # suvmax_margin_mm: with 0 the peak must lie in the mask; a mask just beside the lesion then sees SUV 1
    beside = torch.zeros_like(label)
    beside[..., 12:18, 18:20] = 1.0
    near = pairedness({"ct": ct, "pet": pet, "label": beside}, spacing=2.0, suvmax_margin_mm=4.0)
    inside = pairedness({"ct": ct, "pet": pet, "label": beside}, spacing=2.0, suvmax_margin_mm=0.0)
    assert near["suvmax"].item() == 8.0 and inside["suvmax"].item() == 1.0
    assert near["lesion_dice"].item() == 0.0  # T is the lesion, which does not overlap the mask


def test_empty_mask_gives_nan_lesion_term():
    case = make_phantom_case(3, spatial_size=(32, 32), spacing=8.0)
    empty = {**case, "label": torch.zeros_like(case["label"])}
    out = pairedness([case, empty])
    assert out["mask_empty"].tolist() == [False, True]
    assert not math.isnan(out["lesion_dice"][0].item()) and math.isnan(out["lesion_dice"][1].item())
    assert math.isnan(out["suvmax"][1].item()) and out["body_dice"][1] == out["body_dice"][0]
    assert summarize(out["lesion_dice"])["n_nan"] == 1


def test_spacing_from_metatensor_or_argument():
    cases = [make_phantom_case(s, spatial_size=(32, 32), spacing=8.0) for s in range(3)]
    from_meta = pairedness(cases)
    plain = [{k: c[k].as_tensor() for k in ("ct", "pet", "label")} for c in cases]
    torch.testing.assert_close(pairedness(plain, spacing=8.0)["lesion_dice"], from_meta["lesion_dice"])
    with pytest.raises(ValueError, match="needs the voxel spacing"):
        pairedness(plain)
    # the margins are in mm: the same arrays read at 1 mm have a VOI 8x smaller in voxels
    assert not torch.equal(pairedness(plain, spacing=1.0)["lesion_dice"], from_meta["lesion_dice"])


def test_3d_volumes():
    cases = [make_phantom_case(s, spatial_dims=3, spatial_size=(32, 32, 16), spacing=8.0) for s in range(2)]
    out = pairedness(cases)
    assert (
        out["lesion_dice"].shape == (2,)
        and (out["lesion_dice"] > 0.5).all()
        and (out["body_dice"] > 0.95).all()
    )


def test_custom_keys():
    case = make_phantom_case(1, spatial_size=(32, 32), spacing=8.0)
    renamed = {"CT": case["ct"], "PT": case["pet"], "gtv": case["label"]}
    a = pairedness([renamed], ct_key="CT", pet_key="PT", label_key="gtv")
    torch.testing.assert_close(a["lesion_dice"], pairedness([case])["lesion_dice"])


def test_body_outline_fills_the_airway_and_keeps_the_largest_component():
    ct = np.full((12, 12), -1000.0)
    ct[2:9, 2:9] = 40.0
    ct[5, 5] = -1000.0  # airway
    ct[10:12, 10:12] = 40.0  # a separate small blob (e.g. the table)
    body = body_outline(ct, -500.0)
    assert body.sum() == 49 and body[5, 5] and not body[11, 11]


@pytest.mark.parametrize(
    ("batch", "kwargs", "error", "match"),
    [
        ({"ct": torch.zeros(1, 1, 8, 8), "pet": torch.zeros(1, 1, 8, 8)}, {}, KeyError, "'label'"),
        (
            {"ct": torch.zeros(1, 1, 8, 8), "pet": torch.zeros(1, 1, 8, 9), "label": torch.zeros(1, 1, 8, 8)},
            {},
            ValueError,
            "different shapes|has shape",
        ),
        (
            {"ct": torch.zeros(1, 2, 8, 8), "pet": torch.zeros(1, 2, 8, 8), "label": torch.zeros(1, 2, 8, 8)},
            {"spacing": 1.0},
            ValueError,
            "one channel",
        ),
        (
            {
                "ct": torch.full((1, 1, 8, 8), math.nan),
                "pet": torch.zeros(1, 1, 8, 8),
                "label": torch.zeros(1, 1, 8, 8),
            },
            {"spacing": 1.0},
            ValueError,
            "NaN/Inf",
        ),
        ([], {"spacing": 1.0}, ValueError, "empty"),
        (
            {"ct": torch.zeros(1, 1, 8, 8), "pet": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8)},
            {"suv_fraction": 1.5},
            ValueError,
            "suv_fraction",
        ),
        (
            {"ct": torch.zeros(1, 1, 8, 8), "pet": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8)},
            {"background_fraction": 0.0},
            ValueError,
            "background_fraction",
        ),
        (
            {"ct": torch.zeros(1, 1, 8, 8), "pet": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8)},
            {"shell_inner_mm": 5.0, "shell_outer_mm": 5.0},
            ValueError,
            "shell_outer_mm",
        ),
        (
            {"ct": torch.zeros(1, 1, 8, 8), "pet": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8)},
            {"voi_margin_mm": -1},
            ValueError,
            "voi_margin_mm",
        ),
        (
            {"ct": torch.zeros(1, 1, 8, 8), "pet": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8)},
            {"spacing": [1.0, -1.0]},
            ValueError,
            "positive mm",
        ),
    ],
)
def test_bad_input(batch, kwargs, error, match):
    with pytest.raises(error, match=match):
        pairedness(batch, **kwargs)


def test_metatensor_batch_spacing():
    cases = [make_phantom_case(s, spatial_size=(32, 32), spacing=8.0) for s in range(2)]
    batch = {
        k: MetaTensor(torch.stack([c[k].as_tensor() for c in cases]), affine=cases[0][k].affine)
        for k in ("ct", "pet", "label")
    }
    torch.testing.assert_close(pairedness(batch)["lesion_dice"], pairedness(cases)["lesion_dice"])
