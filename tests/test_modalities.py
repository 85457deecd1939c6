from __future__ import annotations

import pytest
import torch

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, ModalitySpec, resolve_specs


@pytest.mark.parametrize("name", ["ct", "pet"])
def test_image_round_trip(name):
    spec = DEFAULT_MODALITY_SPECS[name]
    x = torch.linspace(spec.low, spec.high, 101)
    y = spec.normalize(x)
    assert y.min() == -1 and y.max() == 1
    torch.testing.assert_close(spec.denormalize(y), x, atol=1e-3, rtol=1e-5)


def test_image_clips_out_of_range():
    spec = DEFAULT_MODALITY_SPECS["ct"]
    assert spec.normalize(torch.tensor([-3000.0, 3000.0])).tolist() == [-1.0, 1.0]


def test_mask_round_trip_is_binary():
    spec = DEFAULT_MODALITY_SPECS["label"]
    m = torch.tensor([0.0, 1.0, 1.0, 0.0])
    n = spec.normalize(m)
    assert n.tolist() == [-1.0, 1.0, 1.0, -1.0]
    assert spec.denormalize(n * 0.3).tolist() == m.tolist()


def test_resolve_specs_errors():
    with pytest.raises(ValueError, match="mr"):
        resolve_specs(["ct", "mr"])
    with pytest.raises(ValueError, match="kind"):
        ModalitySpec("volume", 0, 1)
    with pytest.raises(ValueError, match="high > low"):
        ModalitySpec("image", 1, 0)
    specs = resolve_specs({"ct": None, "mr": {"kind": "image", "low": 0, "high": 500}})
    assert specs["mr"].high == 500 and specs["ct"] is DEFAULT_MODALITY_SPECS["ct"]
