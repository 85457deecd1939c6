"""The quality filter of the bundle's pool building maps physical PET with the generator's specs: ``specs`` of
``train_quality_filter`` reaches the feature segmenter's training and the filter; ``mixing_pool`` takes the
diffusion checkpoint's recorded specs; the default (no specs) is the linear 0-15 SUV map, as before."""

from __future__ import annotations

import pytest
import torch

from monai_pairsynth.data.sources import real_samples
from monai_pairsynth.engines import save_paired_checkpoint
from monai_pairsynth.mixing import pool_builder
from monai_pairsynth.mixing.pool_builder import mixing_pool, train_quality_filter
from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, PET_LOG_SPEC
from monai_pairsynth.networks import PairedDiffusionModel

LOG_SPECS = {**DEFAULT_MODALITY_SPECS, "pet": PET_LOG_SPEC}
FILTER = {"channels": (4, 8), "epochs": 1, "mc_passes": 1, "batch_size": 4, "seed": 0}


@pytest.fixture(scope="module")
def real():
    return real_samples(None, "train", spatial_size=(16, 16), spacing=8.0, num_phantom_cases=4)


def _spy_segmenter_specs(monkeypatch):
    seen = []
    original = pool_builder.train_feature_segmenter

    def spy(*args, **kwargs):
        seen.append(kwargs.get("specs"))
        return original(*args, **kwargs)

    monkeypatch.setattr(pool_builder, "train_feature_segmenter", spy)
    return seen


def _hot(real, suv):
    """The first real sample with its tumour set to ``suv`` (batched, physical units)."""
    sample = {k: torch.as_tensor(real[0][k]).clone()[None] for k in ("ct", "pet", "label")}
    sample["pet"][sample["label"] > 0] = suv
    return sample


def test_default_specs_are_the_linear_map_and_clip_at_15_suv(real, monkeypatch):
    seen = _spy_segmenter_specs(monkeypatch)
    quality = train_quality_filter(real, **FILTER)
    assert seen == [None]  # the segmenter's own default: DEFAULT_MODALITY_SPECS
    assert quality.specs["pet"] == DEFAULT_MODALITY_SPECS["pet"]
    # PET above 15 SUV is clipped: a 20 and a 40 SUV tumour are the same input
    a, b = quality.score(_hot(real, 20.0)), quality.score(_hot(real, 40.0))
    assert torch.equal(a["distance"], b["distance"])


def test_specs_reach_the_segmenter_and_the_filter(real, monkeypatch):
    seen = _spy_segmenter_specs(monkeypatch)
    quality = train_quality_filter(real, specs=LOG_SPECS, **FILTER)
    assert seen[0]["pet"] == PET_LOG_SPEC
    assert quality.specs["pet"] == PET_LOG_SPEC and quality.specs["ct"] == DEFAULT_MODALITY_SPECS["ct"]
    a, b = quality.score(_hot(real, 20.0)), quality.score(_hot(real, 40.0))
    assert not torch.equal(a["distance"], b["distance"])  # the log map keeps PET up to 60 SUV apart
    # dict specs (as a checkpoint records them) work too
    recorded = {m: s.to_dict() for m, s in LOG_SPECS.items()}
    assert train_quality_filter(real, specs=recorded, **FILTER).specs["pet"] == PET_LOG_SPEC


@pytest.mark.parametrize("log", [False, True])
def test_mixing_pool_fits_the_filter_with_the_checkpoints_specs(real, tmp_path, monkeypatch, log):
    model = PairedDiffusionModel(channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    specs = LOG_SPECS if log else DEFAULT_MODALITY_SPECS
    ckpt = save_paired_checkpoint(
        tmp_path / "tiny.pt", model, spatial_size=(16, 16), spacing=8.0, modality_specs=specs
    )
    fitted = []
    original = pool_builder.train_quality_filter

    def spy(*args, **kwargs):
        fitted.append(original(*args, **{**kwargs, "epochs": 1, "channels": (4, 8)}))
        return fitted[-1]

    monkeypatch.setattr(pool_builder, "train_quality_filter", spy)
    pool = mixing_pool(
        0.5,
        real_data=real,
        diffusion_checkpoint=ckpt,
        pool_size=2,
        filter_mode="pool",
        num_inference_steps=1,
        mc_passes=1,
        spatial_size=(16, 16),
        spacing=8.0,
        progress=False,
    )
    assert len(pool) == 2
    assert fitted[0].specs["pet"] == specs["pet"]
    assert pool.specs["pet"] == specs["pet"]  # the generator decodes with the same map
