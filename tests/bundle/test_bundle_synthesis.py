"""The bundle's ``synthesis`` setting (issue 14, item 4): ``"joint"`` (default) or ``"label_first"`` pools, in
``generate.json`` and ``train_segmentation.json``; the pool file records which synthesis made it."""

from __future__ import annotations

import json

import pytest
import torch
from bundle_helpers import SIZE, grid_overrides, make_workflow, run_workflow

from monai_pairsynth.bundle_checks import BundleSettingError
from monai_pairsynth.mixing.pool_builder import pool_generation_record
from monai_pairsynth.mixing.synthesis_pool import SynthesisPool


def _setting_error(err: BaseException | None) -> BundleSettingError | None:
    while err is not None:
        if isinstance(err, BundleSettingError):
            return err
        err = err.__cause__ or err.__context__
    return None


def test_joint_is_the_default_and_is_recorded(generated):
    """The session's generate.json run (no synthesis override) made a joint pool and says so."""
    assert pool_generation_record(generated / "pool.pt") == {"synthesis": "joint"}
    counts = json.loads((generated / "counts.json").read_text())
    assert counts["generation"] == {"synthesis": "joint"} and counts["settings"]["synthesis"] == "joint"


def test_generate_makes_a_filtered_label_first_pool(tmp_path, tiny_checkpoint):
    out = tmp_path / "generate"
    workflow = run_workflow(
        "generate.json",
        **grid_overrides(
            diffusion_checkpoint=str(tiny_checkpoint),
            synthesis="label_first",
            num_train_cases=6,
            pool_size=3,
            num_inference_steps=2,
            segmenter_epochs=1,
            mc_passes=2,
            segmenter_channels=[4, 8],
            preview_cases=2,
            output_dir=str(out),
        ),
    )
    real = workflow.parser.get_parsed_content("real_train")
    pool = SynthesisPool.load(out / "pool.pt")
    assert len(pool) == 3 and list(pool.spatial_shape) == SIZE
    counts = json.loads((out / "counts.json").read_text())
    # filtered as usual: pool mode draws 4 candidates per kept triplet (12 a call; the untrained generator's
    # images fail plausibility rules, so it may take more calls), each for a placed real mask
    assert counts["generated"] % 12 == 0 and counts["generated"] >= 12 and counts["accepted"] >= 3
    assert counts["rejected_total"] > 0
    record = pool_generation_record(out / "pool.pt")
    assert record == counts["generation"] and record["synthesis"] == "label_first"
    assert record["conditioning"] == "clamp"  # the tiny checkpoint has shared timesteps
    placement = record["placement"]
    assert placement["drawn"] == counts["generated"] == placement["placed"] + placement["fallbacks"]
    assert counts["settings"]["synthesis"] == "label_first"
    # every kept label is a real mask moved (correct by construction): non-empty, of a real mask's size
    real_sizes = [float(c["label"].sum()) for c in real if c["label"].any()]
    for i in range(len(pool)):
        size = float(pool[i]["label"].sum())
        assert 0 < size <= 2.5 * max(real_sizes)


def test_train_segmentation_builds_a_label_first_pool(tmp_path, tiny_checkpoint):
    workflow = run_workflow(
        "train_segmentation.json",
        **grid_overrides(
            num_train_cases=6,
            num_val_cases=2,
            epochs=1,
            val_interval=1,
            batch_size=4,
            output_dir=str(tmp_path / "seg"),
            synthetic_ratio=0.5,
            diffusion_checkpoint=str(tiny_checkpoint),
            num_inference_steps=1,
            filter_mode="none",
            synthesis="label_first",
        ),
    )
    dataset = workflow.parser.get_parsed_content("train#dataset")
    pool = dataset.pool
    assert len(pool) == 3 and dataset.num_synthetic == 3
    assert pool.generation["synthesis"] == "label_first" and pool.generation["placement"]["drawn"] == 3
    assert all(pool[i]["label"].any() for i in range(len(pool)))
    assert (tmp_path / "seg" / "model.pt").is_file()


def test_train_segmentation_reads_the_record_of_a_pool_file(tmp_path, generated):
    workflow = make_workflow(
        "train_segmentation.json",
        **grid_overrides(
            num_train_cases=6, num_val_cases=2, synthetic_ratio=0.5, pool_file=str(generated / "pool.pt")
        ),
    )
    pool = workflow.parser.get_parsed_content("synthetic_pool")
    assert pool.generation == {"synthesis": "joint"} and len(pool) == 4


@pytest.mark.parametrize("config", ["generate.json", "train_segmentation.json"])
def test_bad_synthesis_value_is_named(tmp_path, tiny_checkpoint, config):
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        make_workflow(
            config,
            **grid_overrides(
                diffusion_checkpoint=str(tiny_checkpoint), synthesis="label-first", output_dir=str(out)
            ),
        )
    err = _setting_error(info.value)
    assert err is not None, f"not a BundleSettingError: {info.value!r}"
    assert str(err) == "synthesis must be one of ['joint', 'label_first'], got 'label-first'."
    assert not out.exists()


def test_label_first_without_tumours_is_a_setting_error(tiny_checkpoint):
    from monai_pairsynth.mixing.pool_builder import build_synthesis_pool

    empty = [{"ct": torch.zeros(1, *SIZE), "pet": torch.zeros(1, *SIZE), "label": torch.zeros(1, *SIZE)}]
    with pytest.raises(BundleSettingError, match="synthesis 'label_first': none of the 1 cases"):
        build_synthesis_pool(
            tiny_checkpoint,
            None,
            2,
            filter_mode="none",
            synthesis="label_first",
            real_data=empty,
            device="cpu",
        )
    with pytest.raises(BundleSettingError, match="needs the real training cases"):
        build_synthesis_pool(tiny_checkpoint, None, 2, filter_mode="none", synthesis="label_first")
