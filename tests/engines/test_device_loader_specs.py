"""DeviceTripletLoader keeps the specs it is given: a custom modality (or mask) name works, and a mask spec is
resampled nearest; ``device_training_loader`` moves the field-of-view mask through the same path."""

from __future__ import annotations

import pytest
import torch

from monai_pairsynth.engines import DeviceTripletLoader, device_training_loader
from monai_pairsynth.modalities import FOV_KEY, ModalitySpec


def _samples(n=4, keys=("ct", "lesion")):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        item = {k: torch.rand(1, 8, 8, generator=g) * 2 - 1 for k in keys}
        for k in keys:
            if k in ("lesion", "label"):
                item[k] = torch.where(item[k] > 0, 1.0, -1.0)
        out.append(item)
    return out


CUSTOM = {"ct": None, "lesion": ModalitySpec("mask", 0.0, 1.0)}


@pytest.mark.parametrize("from_samples", [False, True])
def test_custom_mask_modality_is_kept_and_resampled_nearest(from_samples):
    samples = _samples()
    kwargs = {"modality_specs": CUSTOM, "seed": 0, "prob": 1.0, "flip_prob": 0.0, "rotate_degrees": 30.0}
    if from_samples:
        loader = DeviceTripletLoader.from_samples(samples, 2, **kwargs)
    else:
        data = {k: torch.stack([s[k] for s in samples]) for k in ("ct", "lesion")}
        loader = DeviceTripletLoader(data, 2, **kwargs)
    assert loader.modalities == ("ct", "lesion")
    assert loader.is_mask == {"ct": False, "lesion": True}
    for batch in loader:
        assert set(batch["lesion"].unique().tolist()) <= {-1.0, 1.0}  # nearest: stays binary
        assert len(batch["ct"].unique()) > 2  # bilinear image


def test_custom_image_modality_without_default_spec():
    samples = _samples(keys=("mri", "label"))
    specs = {"mri": ModalitySpec("image", 0.0, 500.0), "label": None}
    loader = DeviceTripletLoader.from_samples(samples, 2, modality_specs=specs, seed=0)
    assert loader.is_mask == {"mri": False, "label": True}
    # a bare unknown name still says it has no default spec
    with pytest.raises(ValueError, match="no default spec"):
        DeviceTripletLoader.from_samples(samples, 2, modality_specs=["mri", "label"])


def test_device_training_loader_fov_with_custom_specs():
    samples = _samples(keys=("ct", "lesion"))
    for s in samples:
        s[FOV_KEY] = torch.ones(1, 8, 8)
        s[FOV_KEY][:, :2] = 0
    loader = device_training_loader(
        samples, 2, use_fov_mask=True, modality_specs=CUSTOM, seed=0, prob=1.0, rotate_degrees=30.0
    )
    assert loader.is_mask == {"ct": False, "lesion": True, FOV_KEY: True}
    for batch in loader:
        assert set(batch[FOV_KEY].unique().tolist()) <= {0.0, 1.0}
    plain = device_training_loader(samples, 2, modality_specs=CUSTOM, seed=0)
    assert FOV_KEY not in next(iter(plain))
    # without modality_specs: the default names found in the samples, plus the mask
    default = device_training_loader(
        [{"ct": s["ct"], "label": s["lesion"], FOV_KEY: s[FOV_KEY]} for s in samples], 2, use_fov_mask=True
    )
    assert sorted(next(iter(default))) == ["ct", "fov", "label"]
    del samples[1][FOV_KEY]
    with pytest.raises(KeyError, match="sample 1 lacks modality 'fov'"):
        device_training_loader(samples, 2, use_fov_mask=True, modality_specs=CUSTOM)
