"""Every public name that issue 16's package layout moved still imports from its old path, with a warning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from monai_pairsynth._moved import MovedNameWarning

# (old module, name, new module)
MOVED = [
    ("monai_pairsynth.generate", "generate", "monai_pairsynth.inferers.generate"),
    ("monai_pairsynth.generate", "main", "monai_pairsynth.inferers.generate"),
    ("monai_pairsynth.generate", "modality_file_names", "monai_pairsynth.data.nifti_io"),
    ("monai_pairsynth.data", "DiffusionPoolSource", "monai_pairsynth.inferers.pool_source"),
    ("monai_pairsynth.data", "SynthesisPool", "monai_pairsynth.mixing"),
    ("monai_pairsynth.data", "MixedDataset", "monai_pairsynth.mixing"),
    ("monai_pairsynth.data", "PhantomPoolSource", "monai_pairsynth.mixing"),
    ("monai_pairsynth.data.synthesis_pool", "SynthesisPool", "monai_pairsynth.mixing.synthesis_pool"),
    ("monai_pairsynth.data.synthesis_pool", "DiffusionPoolSource", "monai_pairsynth.inferers.pool_source"),
    ("monai_pairsynth.data.synthesis_pool", "PoolStorage", "monai_pairsynth.mixing.synthesis_pool"),
    ("monai_pairsynth.data.mixed_dataset", "MixedDataset", "monai_pairsynth.mixing.mixed_dataset"),
    ("monai_pairsynth.transforms.synthesize_paired", "SynthesizePairedd", "monai_pairsynth.mixing"),
    ("monai_pairsynth.handlers.pool_refresh_handler", "PoolRefreshHandler", "monai_pairsynth.mixing"),
    ("monai_pairsynth.handlers", "PoolRefreshHandler", "monai_pairsynth.mixing"),
    ("monai_pairsynth.handlers", "MixedDatasetEpochHandler", "monai_pairsynth.mixing"),
    ("monai_pairsynth.engines", "ClipGradNormHandler", "monai_pairsynth.handlers"),
    ("monai_pairsynth.engines", "LossComponentsHandler", "monai_pairsynth.handlers"),
    ("monai_pairsynth.engines", "LOSS_COMPONENTS_KEY", "monai_pairsynth.handlers"),
    ("monai_pairsynth.engines", "paired_loss_output_transform", "monai_pairsynth.handlers"),
    ("monai_pairsynth.engines", "PerceptualWarmup", "monai_pairsynth.handlers"),
    ("monai_pairsynth.engines", "EpochTimeLimit", "monai_pairsynth.handlers"),
    ("monai_pairsynth.engines", "LinearLRWarmup", "monai_pairsynth.handlers"),
    ("monai_pairsynth.engines.paired_trainer", "EpochTimeLimit", "monai_pairsynth.handlers.epoch_time_limit"),
    ("monai_pairsynth.engines.paired_trainer", "LinearLRWarmup", "monai_pairsynth.handlers.linear_lr_warmup"),
    (
        "monai_pairsynth.engines.clip_grad_norm_handler",
        "ClipGradNormHandler",
        "monai_pairsynth.handlers.clip_grad_norm_handler",
    ),
    (
        "monai_pairsynth.engines.loss_components_handler",
        "LossComponentsHandler",
        "monai_pairsynth.handlers.loss_components_handler",
    ),
    (
        "monai_pairsynth.engines.loss_components_handler",
        "paired_loss_output_transform",
        "monai_pairsynth.handlers.loss_components_handler",
    ),
    (
        "monai_pairsynth.engines.perceptual_warmup",
        "PerceptualWarmup",
        "monai_pairsynth.handlers.perceptual_warmup",
    ),
    (
        "monai_pairsynth.handlers.mixed_dataset_epoch_handler",
        "MixedDatasetEpochHandler",
        "monai_pairsynth.mixing",
    ),
    ("monai_pairsynth.evaluate", "evaluate", "monai_pairsynth.metrics.evaluation"),
    ("monai_pairsynth.evaluate", "load_triplet_set", "monai_pairsynth.metrics.evaluation"),
    ("monai_pairsynth.evaluate", "main", "monai_pairsynth.metrics.evaluation"),
    ("monai_pairsynth.evaluate", "metrics_markdown", "monai_pairsynth.metrics.report"),
    ("monai_pairsynth.bundle_support", "install_one_line_errors", "monai_pairsynth.bundle_checks"),
    ("monai_pairsynth.bundle_support", "BundleSettingError", "monai_pairsynth.data.sources"),
    ("monai_pairsynth.bundle_support", "check_pool_file", "monai_pairsynth.mixing.pool_checks"),
    ("monai_pairsynth.bundle_support", "real_samples", "monai_pairsynth.data.sources"),
    ("monai_pairsynth.bundle_support", "build_synthesis_pool", "monai_pairsynth.mixing.pool_builder"),
    ("monai_pairsynth.bundle_support", "TrainingProgressBar", "monai_pairsynth.handlers"),
    ("monai_pairsynth.bundle_support", "distributed_trainer", "monai_pairsynth.distributed"),
    ("monai_pairsynth.bundle_support", "segmentation_test_dice", "monai_pairsynth.metrics.segmentation_dice"),
    ("monai_pairsynth.bundle_support", "write_evaluation_report", "monai_pairsynth.metrics.report"),
]

# every name the bundle_support module exported before issue 16
BUNDLE_SUPPORT_NAMES = [
    "PHANTOM_SPLIT_SEED_OFFSETS", "BundleSettingError", "FilterMode", "TrainingProgressBar", "build_synthesis_pool",
    "check_dataset_dir", "check_files_exist", "check_generator_checkpoint", "check_mixing_settings",
    "check_pool_file", "check_synthetic_ratio", "distributed_trainer", "export_pool_nifti", "format_results_table",
    "install_one_line_errors", "is_main_process", "merge_pool_states", "mixing_pool", "real_datalist",
    "real_samples", "save_generation_outputs", "segmentation_test_dice", "train_quality_filter",
    "write_evaluation_report",
]  # fmt: skip


@pytest.mark.parametrize("name", BUNDLE_SUPPORT_NAMES)
def test_every_old_bundle_support_name_resolves(name):
    import monai_pairsynth.bundle_support as old

    # recorded rather than pytest.warns: the first access imports the new home, whose own import-time warnings
    # (e.g. torch's about torch.jit.script) pytest.warns would re-raise as errors here
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert getattr(old, name) is not None
    assert any(
        issubclass(w.category, MovedNameWarning) and f"bundle_support.{name} moved" in str(w.message)
        for w in seen
    )


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_old_path_warns_and_gives_the_same_object(old, name, new):
    module = importlib.import_module(old)
    expected = getattr(importlib.import_module(new), name)  # imported first: only the alias warns below
    with pytest.warns(MovedNameWarning, match=rf"{old}\.{name} moved to"):
        obj = getattr(module, name)
    assert obj is expected


def test_from_import_of_an_old_path_works():
    from monai_pairsynth.mixing import SynthesisPool as new

    with pytest.warns(MovedNameWarning):
        from monai_pairsynth.data.synthesis_pool import SynthesisPool
    assert SynthesisPool is new


def test_unknown_name_is_an_attribute_error():
    module = importlib.import_module("monai_pairsynth.data")
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        module.NoSuchThing  # noqa: B018


def test_the_data_package_imports_neither_the_sampler_nor_the_mixing():
    code = (
        "import sys, monai_pairsynth.data; "
        "print([m for m in ('monai_pairsynth.inferers', 'monai_pairsynth.mixing', 'monai_pairsynth.engines') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_handlers_package_imports_neither_the_engines_nor_the_mixing():
    """handlers/ stands below engines/ (whose trainer attaches its handlers) and mixing/."""
    code = (
        "import sys, monai_pairsynth.handlers; "
        "print([m for m in ('monai_pairsynth.engines', 'monai_pairsynth.mixing', 'monai_pairsynth.inferers') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_old_generate_cli_still_runs():
    out = subprocess.run(
        [sys.executable, "-m", "monai_pairsynth.generate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--checkpoint" in out.stdout
