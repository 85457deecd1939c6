"""The bundle's ``synthesis`` setting (issue 14, item 4): ``"joint"`` (default) or ``"label_first"`` pools, in
``generate.json`` and ``train_segmentation.json``; the pool file records which synthesis made it. The label-first
knobs are settings too: ``label_first_conditioning`` and the ``mask_placement`` component."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from bundle_helpers import BUNDLE, SIZE, grid_overrides, make_workflow, run_workflow

from monai_pairsynth.bundle_checks import BundleSettingError
from monai_pairsynth.inferers import MaskPlacement
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


# --- label_first_conditioning and mask_placement (the label-first knobs as bundle settings) ---

PLACEMENT_DEFAULTS = {
    "rotate_degrees": 15.0,
    "scale_range": (0.8, 1.25),
    "elastic_magnitude": (0.0, 1.0),
    "elastic_spacing": None,
    "max_tries": 20,
    "margin": 1,
}


def _placement_attributes(placement) -> dict:
    return {name: getattr(placement, name) for name in PLACEMENT_DEFAULTS}


def test_generate_label_first_with_clean_conditioning_and_a_placement_override(tmp_path, tiny_checkpoint):
    """``label_first_conditioning clean`` reaches the sampler (the tiny checkpoint has shared timesteps: "auto"
    would clamp) and is recorded; an identity ``mask_placement`` with one try reaches the source: every kept
    label is a real mask moved by whole voxels (its size unchanged) and each mask took exactly one try."""
    out = tmp_path / "generate"
    with pytest.warns(UserWarning, match="not trained with per-modality timesteps"):
        workflow = run_workflow(
            "generate.json",
            **grid_overrides(
                diffusion_checkpoint=str(tiny_checkpoint),
                synthesis="label_first",
                label_first_conditioning="clean",
                num_train_cases=6,
                pool_size=3,
                num_inference_steps=2,
                filter_mode="none",
                preview_cases=0,
                output_dir=str(out),
                **{
                    "mask_placement#rotate_degrees": 0,
                    "mask_placement#scale_range": [1.0, 1.0],
                    "mask_placement#elastic_magnitude": [0.0, 0.0],
                    "mask_placement#max_tries": 1,
                },
            ),
        )
    counts = json.loads((out / "counts.json").read_text())
    record = pool_generation_record(out / "pool.pt")
    assert record == counts["generation"] and record["synthesis"] == "label_first"
    assert record["conditioning"] == "clean"
    assert counts["settings"]["label_first_conditioning"] == "clean"
    placement = record["placement"]
    assert placement["drawn"] == counts["generated"] == 3 and placement["tries"] == placement["drawn"]
    real = workflow.parser.get_parsed_content("real_train")
    real_sizes = {int(c["label"].sum()) for c in real if c["label"].any()}
    pool = SynthesisPool.load(out / "pool.pt")
    assert len(pool) == 3 and all(int(pool[i]["label"].sum()) in real_sizes for i in range(len(pool)))


def test_auto_conditioning_is_the_default_and_recorded(generated):
    counts = json.loads((generated / "counts.json").read_text())
    assert counts["settings"]["label_first_conditioning"] == "auto"


@pytest.mark.parametrize("config", ["generate.json", "train_segmentation.json"])
def test_mask_placement_defaults_are_the_class_defaults_and_overridable(tmp_path, tiny_checkpoint, config):
    pool_id = "pool" if config == "generate.json" else "synthetic_pool"
    default = make_workflow(
        config, **grid_overrides(diffusion_checkpoint=str(tiny_checkpoint), output_dir=str(tmp_path / "a"))
    )
    placement = default.parser.get_parsed_content("mask_placement")
    assert _placement_attributes(placement) == _placement_attributes(MaskPlacement())
    assert _placement_attributes(placement) == PLACEMENT_DEFAULTS
    assert default.parser.get_parsed_content(f"{pool_id}#conditioning") == "auto"
    overridden = make_workflow(
        config,
        **grid_overrides(
            diffusion_checkpoint=str(tiny_checkpoint),
            output_dir=str(tmp_path / "b"),
            label_first_conditioning="clamp",
            **{"mask_placement#rotate_degrees": 30, "mask_placement#scale_range": [0.9, 1.1]},
        ),
    )
    placement = overridden.parser.get_parsed_content("mask_placement")
    assert placement.rotate_degrees == 30.0 and placement.scale_range == (0.9, 1.1)
    # the pool builder (build_synthesis_pool / mixing_pool) gets both
    assert overridden.parser.get_parsed_content(f"{pool_id}#placement") is placement
    assert overridden.parser.get_parsed_content(f"{pool_id}#conditioning") == "clamp"


def test_mixing_pool_forwards_conditioning_and_placement(monkeypatch, tiny_checkpoint):
    """train_segmentation.json's ``mixing_pool`` passes both to ``build_synthesis_pool``."""
    from monai_pairsynth.mixing import pool_builder

    seen = {}
    monkeypatch.setattr(pool_builder, "build_synthesis_pool", lambda *a, **kw: seen.update(kw))
    placement = MaskPlacement(rotate_degrees=5)
    real = [{"ct": torch.zeros(1, *SIZE), "pet": torch.zeros(1, *SIZE), "label": torch.zeros(1, *SIZE)}] * 2
    pool_builder.mixing_pool(
        0.5,
        real_data=real,
        diffusion_checkpoint=str(tiny_checkpoint),
        filter_mode="none",
        spatial_size=SIZE,
        synthesis="label_first",
        conditioning="clean",
        placement=placement,
    )
    assert seen["conditioning"] == "clean" and seen["placement"] is placement


@pytest.mark.parametrize("config", ["generate.json", "train_segmentation.json"])
def test_bad_conditioning_value_is_named(tmp_path, tiny_checkpoint, config, capsys):
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        make_workflow(
            config,
            **grid_overrides(
                diffusion_checkpoint=str(tiny_checkpoint),
                label_first_conditioning="clear",
                output_dir=str(out),
            ),
        )
    err = _setting_error(info.value)
    assert err is not None, f"not a BundleSettingError: {info.value!r}"
    message = "label_first_conditioning must be one of ['auto', 'clean', 'clamp'], got 'clear'."
    assert str(err) == message and not out.exists()
    # the config's initialize installed the one-line excepthook: what the command line prints
    capsys.readouterr()
    sys.excepthook(type(info.value), info.value, info.value.__traceback__)
    assert capsys.readouterr().err == f"BundleSettingError: {message}\n"


@pytest.mark.parametrize("config", ["generate.json", "train_segmentation.json"])
def test_bad_mask_placement_value_stops_at_initialize_naming_the_argument(
    tmp_path, tiny_checkpoint, config, capsys
):
    """``initialize`` builds ``mask_placement`` (``check_mask_placement``): a bad argument stops the run before
    anything is trained, with one line naming it as the config path that sets it."""
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        make_workflow(
            config,
            **grid_overrides(
                diffusion_checkpoint=str(tiny_checkpoint),
                output_dir=str(out),
                **{"mask_placement#rotate_degrees": -5},
            ),
        )
    err = info.value
    while err is not None and type(err) is not ValueError:
        err = err.__cause__ or err.__context__
    assert err is not None, f"no ValueError in {info.value!r}"
    assert str(err) == "rotate_degrees must be a finite number >= 0, got -5."
    assert not out.exists()
    capsys.readouterr()
    sys.excepthook(type(info.value), info.value, info.value.__traceback__)
    assert capsys.readouterr().err == (
        "ValueError: mask_placement#rotate_degrees must be a finite number >= 0, got -5.\n"
    )


def test_check_mask_placement():
    from monai_pairsynth.bundle_checks import check_mask_placement

    placement = MaskPlacement()
    assert check_mask_placement(placement) is placement and check_mask_placement(None) is None
    with pytest.raises(BundleSettingError, match=r"^mask_placement must be a MaskPlacement .*got 15\.$"):
        check_mask_placement(15)


@pytest.mark.parametrize("setting", ["label_first_conditioning", "mask_placement"])
def test_readme_settings_table_lists_the_label_first_knobs(setting):
    rows = [
        line
        for line in (BUNDLE / "docs" / "README.md").read_text().splitlines()
        if line.startswith("| `") and f"`{setting}`" in line.split("|")[1]
    ]
    assert len(rows) == 1, f"the README's settings table has {len(rows)} rows for {setting!r}"
    for config in ("generate", "train_segmentation"):
        assert config in rows[0].split("|")[2]


@pytest.mark.parametrize("value", ["clear", "Clean", None, 1, ["auto"]])
def test_check_conditioning_names_the_value_and_the_options(value):
    from monai_pairsynth.bundle_checks import check_conditioning, check_mixing_settings

    message = f"label_first_conditioning must be one of ['auto', 'clean', 'clamp'], got {value!r}."
    with pytest.raises(BundleSettingError) as info:
        check_conditioning(value)
    assert str(info.value) == message
    if value is not None:  # check_mixing_settings: None means "not given", nothing to check
        with pytest.raises(BundleSettingError, match=r"^label_first_conditioning must be one of"):
            check_mixing_settings(0, conditioning=value)
    assert [check_conditioning(v) for v in ("auto", "clean", "clamp")] == ["auto", "clean", "clamp"]
    assert check_mixing_settings(0, synthesis="joint", conditioning="clamp") == 0.0
