"""Deprecated: the bundle's helpers moved into the role folders (issue 16); every old name still resolves here.

=============================  =========================================================================
old ``bundle_support`` names   new home
=============================  =========================================================================
one-line errors, checks        :mod:`monai_pairsynth.bundle_checks` (pool / generator / ratio checks are
                               defined in :mod:`monai_pairsynth.mixing.pool_checks`)
real data of a split           :mod:`monai_pairsynth.data.sources` (``real_datalist``, ``real_samples``)
filter training, pool building :mod:`monai_pairsynth.mixing.pool_builder`
progress bar                   :mod:`monai_pairsynth.handlers.training_progress_bar`
DDP helpers                    :mod:`monai_pairsynth.distributed`
test Dice, results report      :mod:`monai_pairsynth.metrics.segmentation_dice`, :mod:`monai_pairsynth.metrics.report`
=============================  =========================================================================
"""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

_NEW_HOMES = {
    "monai_pairsynth.bundle_checks": (
        "BundleSettingError",
        "check_dataset_dir",
        "check_files_exist",
        "check_generator_checkpoint",
        "check_mixing_settings",
        "check_pool_file",
        "check_synthetic_ratio",
        "describe",
        "install_one_line_errors",
    ),
    "monai_pairsynth.data.sources": ("PHANTOM_SPLIT_SEED_OFFSETS", "real_datalist", "real_samples"),
    "monai_pairsynth.mixing.pool_builder": (
        "FilterMode",
        "build_synthesis_pool",
        "export_pool_nifti",
        "merge_pool_states",
        "mixing_pool",
        "save_generation_outputs",
        "train_quality_filter",
    ),
    "monai_pairsynth.handlers.training_progress_bar": ("TrainingProgressBar",),
    "monai_pairsynth.distributed": ("distributed_trainer", "is_main_process"),
    "monai_pairsynth.metrics.segmentation_dice": ("segmentation_test_dice",),
    "monai_pairsynth.metrics.report": ("format_results_table", "write_evaluation_report"),
}

__getattr__ = moved_names(__name__, {name: module for module, names in _NEW_HOMES.items() for name in names})
