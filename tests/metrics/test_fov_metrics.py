"""Metrics on real samples that carry a field-of-view mask leave what the crop padded out; without it, as before."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader

from monai_pairsynth.data import make_phantom_case
from monai_pairsynth.metrics.pairedness import pairedness
from monai_pairsynth.metrics.segmentation_dice import segmentation_test_dice


def _triplet(seed=0):
    case = make_phantom_case(seed, spatial_size=(48, 48), spacing=4.0)
    return {k: case[k].as_tensor()[None] for k in ("ct", "pet", "label")}


def _padded(t, cols=16):
    """The triplet with its right ``cols`` columns replaced by crop padding (air, no uptake), and its mask."""
    out = {k: v.clone() for k, v in t.items()}
    out["ct"][..., -cols:] = -1000.0
    out["pet"][..., -cols:] = 0.0
    out["label"][..., -cols:] = 0.0
    fov = torch.ones_like(out["ct"])
    fov[..., -cols:] = 0
    return out, fov


def test_pairedness_with_a_full_mask_is_unchanged():
    t = _triplet()
    plain = pairedness(t, spacing=4.0)
    full = pairedness({**t, "fov": torch.ones_like(t["ct"])}, spacing=4.0)
    for key, value in plain.items():
        assert torch.equal(value, full[key]) or torch.allclose(value, full[key], equal_nan=True), key


def test_pairedness_leaves_the_padding_out():
    t = _triplet(3)
    padded, fov = _padded(t)
    plain = pairedness(padded, spacing=4.0)
    masked = pairedness({**padded, "fov": fov}, spacing=4.0)
    # the straight padding edge is shared CT/PET structure: the score without the mask counts it
    assert float(masked["structure_score"]) != pytest.approx(float(plain["structure_score"]), abs=1e-6)
    assert pairedness({**padded, "fov": fov}, spacing=4.0, fov_key=None)["structure_score"].equal(
        plain["structure_score"]
    )
    # a flipped PET still scores below the real one inside the field of view
    flipped = {**padded, "pet": padded["pet"].flip(-2), "fov": fov}
    assert float(pairedness(flipped, spacing=4.0)["structure_score"]) < float(masked["structure_score"])


def _always_tumour(tmp_path):
    net = torch.nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([0.0, 5.0]))  # predicts tumour everywhere
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_segmentation_dice_ignores_predictions_outside_the_fov(tmp_path):
    net, path = _always_tumour(tmp_path)
    label = torch.zeros(1, 8, 8)
    label[:, 2:4, 2:4] = 1  # 4 tumour pixels
    fov = torch.zeros(1, 8, 8)
    fov[:, :4, :4] = 1  # 16 scanned pixels
    sample = {"image": torch.zeros(2, 8, 8), "label": label}
    plain = segmentation_test_dice(net, path, DataLoader([sample], batch_size=1))
    masked = segmentation_test_dice(net, path, DataLoader([{**sample, "fov": fov}], batch_size=1))
    off = segmentation_test_dice(net, path, DataLoader([{**sample, "fov": fov}], batch_size=1), fov_key=None)
    assert plain == pytest.approx([2 * 4 / (64 + 4)]) and off == plain
    assert masked == pytest.approx([2 * 4 / (16 + 4)])


def test_specs_record_check(tmp_path, caplog):
    from monai_pairsynth.bundle_checks import BundleSettingError
    from monai_pairsynth.metrics.segmentation_dice import check_specs_record
    from monai_pairsynth.modalities import modality_specs_for, write_specs_record

    checkpoint = tmp_path / "model.pt"
    linear, log = (
        modality_specs_for(["ct", "pet", "label"]),
        modality_specs_for(["ct", "pet", "label"], "log"),
    )
    with caplog.at_level("WARNING"):
        assert check_specs_record(checkpoint, linear) is False  # no record: logged, accepted
    assert "has no modality_specs.json" in caplog.text
    write_specs_record(tmp_path, log)
    assert check_specs_record(checkpoint, log) is True
    assert check_specs_record(checkpoint, {"ct": linear["ct"]}) is True  # only the modalities both name
    with pytest.raises(
        BundleSettingError, match=r"trained with pet mapped as .*'mapping': 'log'.*pet_intensity"
    ):
        check_specs_record(checkpoint, linear)
    assert (
        write_specs_record(tmp_path / "other", log, enabled=False) is None
        and not (tmp_path / "other").exists()
    )
    (tmp_path / "modality_specs.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the modality specs record"):
        check_specs_record(checkpoint, log)
