from __future__ import annotations

import pytest
import torch
from quality_phantom import phantom_cases, stack

from monai_pairsynth.quality import TripletCorruption, corrupt_triplets


@pytest.fixture(scope="module")
def batch():
    return stack(phantom_cases(6, base_seed=300, spatial_size=(32, 32), spacing=8.0))


def test_shifted_mask_leaves_the_tumour(batch):
    out = corrupt_triplets(batch, "shifted_mask")
    tumour, moved = batch["label"] > 0, out["label"] > 0
    assert torch.equal(tumour.flatten(1).sum(1), moved.flatten(1).sum(1))  # same mask, moved
    assert int((tumour & moved).sum()) == 0
    assert torch.equal(out["ct"], batch["ct"]) and torch.equal(out["pet"], batch["pet"])
    assert set(out["label"].unique().tolist()) == {-1.0, 1.0}  # normalised mask convention kept


def test_tumour_removed_pet(batch):
    out = corrupt_triplets(batch, "tumour_removed_pet", dilation=1)
    tumour = batch["label"] > 0
    for b in range(batch["pet"].shape[0]):
        inside_before = batch["pet"][b][tumour[b]].mean()
        inside_after = out["pet"][b][tumour[b]]
        assert torch.allclose(inside_after, inside_after[0].expand_as(inside_after))  # flat background value
        assert float(inside_after.mean()) < float(inside_before)
    assert torch.equal(out["label"], batch["label"]) and torch.equal(out["ct"], batch["ct"])


def test_pure_noise_and_flip(batch):
    noise = corrupt_triplets(batch, TripletCorruption.PURE_NOISE, generator=torch.Generator().manual_seed(0))
    again = corrupt_triplets(batch, "pure_noise", generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise["ct"], again["ct"])
    assert -1.0 <= float(noise["pet"].min()) and float(noise["pet"].max()) <= 1.0
    assert abs(float(noise["ct"].mean())) < 0.05
    flipped = corrupt_triplets(batch, "flipped_ct")
    assert torch.equal(flipped["ct"], torch.flip(batch["ct"], dims=(2,)))
    assert torch.equal(flipped["pet"], batch["pet"])


def test_input_not_modified_and_errors(batch):
    before = {k: v.clone() for k, v in batch.items()}
    for kind in TripletCorruption:
        corrupt_triplets(batch, kind)
    for k in batch:
        assert torch.equal(batch[k], before[k])
    with pytest.raises(ValueError, match=r"'blur'(?s:.*)Available options are"):
        corrupt_triplets(batch, "blur")
    with pytest.raises(KeyError, match="'pet' is missing"):
        corrupt_triplets({"ct": batch["ct"], "label": batch["label"]}, "flipped_ct")
