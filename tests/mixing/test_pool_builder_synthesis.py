"""``build_synthesis_pool`` / ``mixing_pool`` with ``synthesis="joint"`` (default, unchanged) or ``"label_first"``,
and the generation record the pool file keeps."""

from __future__ import annotations

import json

import pytest
import torch

from monai_pairsynth.bundle_checks import BundleSettingError, check_mixing_settings, check_synthesis
from monai_pairsynth.data.sources import real_samples
from monai_pairsynth.engines import save_paired_checkpoint
from monai_pairsynth.inferers import DiffusionPoolSource
from monai_pairsynth.mixing import SynthesisPool
from monai_pairsynth.mixing.pool_builder import (
    _merge_generation_records,
    build_synthesis_pool,
    mixing_pool,
    pool_generation_record,
    save_generation_outputs,
)
from monai_pairsynth.networks import PairedDiffusionModel
from monai_pairsynth.quality.plausibility import body_mask

SHAPE = (16, 16)
SPACING = 8.0
TINY = {"channels": (4, 8), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = PairedDiffusionModel(("ct", "pet", "label"), **TINY)
    return save_paired_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny.pt",
        model,
        noise_scheduler={"num_train_timesteps": 50},
        spatial_size=list(SHAPE),
        spacing=SPACING,
    )


@pytest.fixture(scope="module")
def cases():
    return real_samples(None, "train", spatial_size=SHAPE, spacing=SPACING, num_phantom_cases=4)


def test_joint_is_the_default_and_samples_as_before(ckpt):
    pool = build_synthesis_pool(
        ckpt, None, 3, filter_mode="none", num_inference_steps=2, device="cpu", seed=5
    )
    # what build_synthesis_pool filled before the option: a DiffusionPoolSource pool with the same seed
    source = DiffusionPoolSource(str(ckpt), num_inference_steps=2, device="cpu")
    before = SynthesisPool(3, keys=source.keys, source=source, seed=5, max_attempts=50)
    before.fill()
    for k in source.keys:
        assert torch.equal(
            torch.stack([pool[i][k] for i in range(3)]), torch.stack([before[i][k] for i in range(3)])
        ), k
    assert pool.generation == {"synthesis": "joint"}


def test_label_first_pool_draws_the_training_masks(ckpt, cases):
    pool = build_synthesis_pool(
        ckpt,
        None,
        3,
        filter_mode="none",
        num_inference_steps=2,
        device="cpu",
        synthesis="label_first",
        real_data=cases,
    )
    assert len(pool) == 3 and pool.generation["synthesis"] == "label_first"
    assert pool.generation["conditioning"] == "clamp"
    assert pool.generation["placement"] == {
        "drawn": 3,
        "placed": 3,
        "fallbacks": 0,
        "tries": pool.generation["placement"]["tries"],
    }
    bodies = torch.stack([body_mask(c["ct"].as_tensor()[None], -500.0, dilation=0)[0] for c in cases])
    union = bodies.any(0)
    for i in range(3):
        mask = pool[i]["label"].as_tensor() > 0.5
        assert mask.any() and not (mask & ~union).any()  # inside a training case's body
    again = build_synthesis_pool(
        ckpt,
        None,
        3,
        filter_mode="none",
        num_inference_steps=2,
        device="cpu",
        synthesis="label_first",
        real_data=cases,
    )
    assert all(torch.equal(pool[i]["ct"], again[i]["ct"]) for i in range(3))  # reproducible from the seed


def test_generation_outputs_record_the_synthesis(tmp_path, ckpt, cases):
    pool = build_synthesis_pool(
        ckpt,
        None,
        2,
        filter_mode="none",
        num_inference_steps=1,
        device="cpu",
        synthesis="label_first",
        real_data=cases,
    )
    counts = save_generation_outputs(
        pool, None, tmp_path, settings={"synthesis": "label_first"}, preview_cases=0
    )
    record = pool_generation_record(tmp_path / "pool.pt")
    assert record == counts["generation"] == json.loads((tmp_path / "counts.json").read_text())["generation"]
    assert record["synthesis"] == "label_first" and record["placement"]["drawn"] == 2
    loaded = SynthesisPool.load(tmp_path / "pool.pt")  # the extra field does not disturb loading
    assert torch.equal(loaded[1]["label"], pool[1]["label"])
    # a pool saved without the record (SynthesisPool.save) has none
    pool.save(tmp_path / "plain.pt")
    assert pool_generation_record(tmp_path / "plain.pt") is None
    # mixing_pool keeps the file's record
    mixed = mixing_pool(0.5, pool_file=tmp_path / "pool.pt", spatial_size=SHAPE)
    assert mixed.generation == record


def test_mixing_pool_builds_label_first(ckpt, cases):
    pool = mixing_pool(
        0.5,
        real_data=cases,
        diffusion_checkpoint=ckpt,
        filter_mode="none",
        num_inference_steps=1,
        spatial_size=SHAPE,
        spacing=SPACING,
        device="cpu",
        progress=False,
        synthesis="label_first",
        conditioning="clamp",
    )
    assert len(pool) == 2 and pool.generation["synthesis"] == "label_first"
    assert pool.generation["conditioning"] == "clamp"


def test_rank_records_are_merged():
    records = [
        {
            "synthesis": "label_first",
            "conditioning": "clean",
            "placement": {"drawn": 3, "placed": 2, "fallbacks": 1},
        },
        {
            "synthesis": "label_first",
            "conditioning": None,
            "placement": {"drawn": 0, "placed": 0, "fallbacks": 0},
        },
        {
            "synthesis": "label_first",
            "conditioning": "clean",
            "placement": {"drawn": 2, "placed": 2, "fallbacks": 0},
        },
    ]
    assert _merge_generation_records(records) == {
        "synthesis": "label_first",
        "conditioning": "clean",
        "placement": {"drawn": 5, "placed": 4, "fallbacks": 1},
    }
    assert _merge_generation_records([{"synthesis": "joint"}] * 2) == {"synthesis": "joint"}


@pytest.mark.parametrize("value", ["label-first", "JOINT", None, 1])
def test_bad_synthesis_is_named(ckpt, cases, value):
    message = f"synthesis must be one of ['joint', 'label_first'], got {value!r}."
    with pytest.raises(BundleSettingError) as info:
        check_synthesis(value)
    assert str(info.value) == message
    if value is not None:  # check_mixing_settings: None means "not given", nothing to check
        with pytest.raises(BundleSettingError, match="synthesis must be one of"):
            check_mixing_settings(0, synthesis=value)
    with pytest.raises(BundleSettingError, match="synthesis must be one of"):
        build_synthesis_pool(ckpt, None, 2, filter_mode="none", synthesis=value, real_data=cases)
    assert (
        check_synthesis("label_first") == "label_first" and check_mixing_settings(0, synthesis="joint") == 0.0
    )
