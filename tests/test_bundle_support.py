from __future__ import annotations

import json

import pytest
import torch

from monai_pairsynth.bundle_support import BundleSettingError, check_synthetic_ratio, real_datalist
from monai_pairsynth.data import write_phantom_hecktor
from monai_pairsynth.engines import export_sampling_checkpoint, load_paired_checkpoint, save_paired_checkpoint
from monai_pairsynth.networks import PairedDiffusionModel


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "abc", None])
def test_synthetic_ratio_rejects(bad):
    with pytest.raises(BundleSettingError, match="synthetic_ratio"):
        check_synthetic_ratio(bad)


@pytest.mark.parametrize("ok", [0, 0.25, "0.5", 2])
def test_synthetic_ratio_accepts(ok):
    assert check_synthetic_ratio(ok) == float(ok)


def test_real_datalist_phantom_default_and_errors(tmp_path):
    assert real_datalist(None) is None and real_datalist("") is None
    with pytest.raises(BundleSettingError, match="does not exist"):
        real_datalist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleSettingError, match="empty"):
        real_datalist(tmp_path / "empty")


def test_real_datalist_hecktor_split_is_patient_disjoint(tmp_path):
    write_phantom_hecktor(
        tmp_path / "h", num_cases=10, spatial_size=(24, 24, 8), spacing=4.0, pet_spacing=8.0
    )
    parts = {s: real_datalist(tmp_path / "h", s) for s in ("train", "val", "test")}
    ids = {s: {d["patient_id"] for d in v} for s, v in parts.items()}
    assert sum(len(v) for v in parts.values()) == 10
    assert (
        not (ids["train"] & ids["val"])
        and not (ids["train"] & ids["test"])
        and not (ids["val"] & ids["test"])
    )
    assert parts["train"] == real_datalist(tmp_path / "h", "train")


def test_real_datalist_json(tmp_path):
    write_phantom_hecktor(tmp_path / "h", num_cases=5, spatial_size=(24, 24, 8), spacing=4.0, pet_spacing=8.0)
    items = real_datalist(tmp_path / "h" / "dataset.json", "train", fractions=(1.0, 0.0, 0.0))
    assert len(items) == 5 and all(json.dumps(i) for i in items)


def test_export_sampling_checkpoint_is_slim_and_loads(tmp_path):
    model = PairedDiffusionModel(channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    ema = PairedDiffusionModel(**model.get_config())
    for p in ema.parameters():
        p.data.add_(0.01)
    opt = torch.optim.Adam(model.parameters())
    src = save_paired_checkpoint(
        tmp_path / "full.pt", model, ema_model=ema, optimizer=opt, spatial_size=(16, 16), spacing=4.0
    )
    dst = export_sampling_checkpoint(src, tmp_path / "slim.pt")
    assert dst.stat().st_size < src.stat().st_size
    loaded, ckpt = load_paired_checkpoint(dst)
    assert ckpt["optimizer"] is None and ckpt["spatial_size"] == [16, 16]
    x = {m: torch.randn(1, 1, 16, 16) for m in model.modalities}
    t = torch.tensor([10])
    with torch.no_grad():
        expected = ema.eval()(x, t)
        got = loaded(x, t)
    for m in model.modalities:
        torch.testing.assert_close(got[m], expected[m])
