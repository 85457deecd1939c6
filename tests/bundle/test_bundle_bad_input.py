"""Bad settings stop a bundle config in its ``initialize`` section, with one clear line, before anything is written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from bundle_helpers import BUNDLE, grid_overrides, make_workflow

from monai_pairsynth.bundle_checks import BundleSettingError


def _setting_error(err: BaseException) -> BundleSettingError | None:
    while err is not None:
        if isinstance(err, BundleSettingError):
            return err
        err = err.__cause__ or err.__context__
    return None


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    """A checkpoint of another configuration (16x16 at 16 mm)."""
    from monai_pairsynth.engines import save_paired_checkpoint
    from monai_pairsynth.networks import PairedDiffusionModel

    model = PairedDiffusionModel(channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    return save_paired_checkpoint(
        tmp_path_factory.mktemp("other") / "other.pt", model, spatial_size=(16, 16), spacing=16.0
    )


CASES = [
    ("train_segmentation.json", {"dataset_dir": "{tmp}/missing"}, r"dataset_dir '.*missing' does not exist"),
    ("train_segmentation.json", {"dataset_dir": "{tmp}/empty"}, r"dataset_dir '.*empty'.*no imagesTr folder"),
    ("train_segmentation.json", {"synthetic_ratio": -0.25}, r"synthetic_ratio must be a finite number >= 0"),
    (
        "train_segmentation.json",
        {"synthetic_ratio": 0.5, "diffusion_checkpoint": "{other}"},
        r"is of another configuration: it was trained at 16x16, this run uses 32x32; it was trained at 16.0 mm",
    ),
    ("train_segmentation.json", {"pool_file": "{tmp}/nope.pt"}, r"pool_file '.*nope.pt' does not exist"),
    ("generate.json", {"diffusion_checkpoint": "{other}"}, r"is of another configuration"),
    ("generate.json", {"diffusion_checkpoint": "{tmp}/missing.pt"}, r"does not exist; train one with"),
    ("generate.json", {"dataset_dir": "{tmp}/missing"}, r"does not exist"),
    ("train_diffusion.json", {"dataset_dir": "{tmp}/empty"}, r"no imagesTr folder"),
    (
        "train_diffusion.json",
        {"max_minutes": 0},
        r"max_minutes must be a positive number of minutes or null, got 0",
    ),
    ("train_diffusion.json", {"max_minutes": -2.5}, r"max_minutes must be a positive number .* got -2.5"),
    ("train_diffusion.json", {"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
    (
        "evaluate.json",
        {"segmentation_checkpoint": "{tmp}/model.pt"},
        r"segmentation_checkpoint '.*model.pt' does not",
    ),
]


@pytest.mark.parametrize(("config", "overrides", "message"), CASES)
def test_bad_setting_stops_before_anything_is_written(tmp_path, other_checkpoint, config, overrides, message):
    (tmp_path / "empty").mkdir()
    values = {
        k: v.format(tmp=tmp_path, other=other_checkpoint) if isinstance(v, str) else v
        for k, v in overrides.items()
    }
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        make_workflow(config, **grid_overrides(output_dir=str(out), export_path=str(out / "x.pt"), **values))
    err = _setting_error(info.value)
    assert err is not None, f"not a BundleSettingError: {info.value!r}"
    assert "\n" not in str(err)
    assert re.search(message, str(err)), str(err)
    assert not out.exists()


def test_command_line_prints_one_clear_line(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore:parsing config_file:UserWarning"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/train_segmentation.json",
            "--synthetic_ratio",
            "-1",
            "--output_dir",
            str(out),
        ],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "BundleSettingError: synthetic_ratio must be a finite number >= 0 (0 = real only), got -1."
    ]
    assert "Traceback" not in proc.stdout and not out.exists()


def test_other_errors_keep_their_traceback(capsys):
    from monai_pairsynth.bundle_checks import install_one_line_errors

    install_one_line_errors()
    try:
        raise RuntimeError("wrapped") from KeyError("not a setting")
    except RuntimeError as err:
        sys.excepthook(type(err), err, err.__traceback__)
    assert "Traceback" in capsys.readouterr().err
    try:
        raise RuntimeError("Failed to evaluate") from BundleSettingError("dataset_dir 'x'\ndoes not exist.")
    except RuntimeError as err:
        sys.excepthook(type(err), err, err.__traceback__)
    assert capsys.readouterr().err == "BundleSettingError: dataset_dir 'x' does not exist.\n"
