"""benchmarks/conditional_sampling.py (issue 14, item 3): its metric helpers on hand-made tensors, and the
--quick rehearsal end to end (two tiny variants on one budget, every task, both conditionings)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/ holds scripts, not a package

import conditional_sampling  # noqa: E402

from monai_pairsynth.engines import read_paired_checkpoint  # noqa: E402


def test_mask_in_body_is_pooled_over_the_given_mask_pixels():
    ct = torch.full((2, 1, 10, 10), -1000.0)
    ct[:, :, 2:8, 2:8] = 40.0  # a body of 6x6
    label = torch.zeros(2, 1, 10, 10)
    label[0, 0, 3:5, 3:5] = 1.0  # 4 pixels inside
    label[1, 0, 0:2, 0:2] = 1.0  # 4 pixels in the air
    label[1, 0, 7, 7] = 1.0  # 1 pixel inside
    assert conditional_sampling.mask_in_body_pooled(label, ct) == pytest.approx(5 / 9)
    assert conditional_sampling.mask_in_body_pooled(torch.zeros_like(label), ct) is None


def test_dice_per_case():
    true = torch.zeros(3, 1, 4, 4)
    true[0, 0, :2, :2] = 1.0
    true[1, 0, :2, :2] = 1.0
    pred = torch.zeros(3, 1, 4, 4)
    pred[0, 0, :2, :2] = 1.0  # perfect
    pred[1, 0, :1, :2] = 1.0  # half: 2 * 2 / (2 + 4)
    dice = conditional_sampling.dice_per_case(pred, true)
    assert dice[0] == pytest.approx(1.0) and dice[1] == pytest.approx(2 / 3)
    assert math.isnan(float(dice[2]))  # no true mask: not counted


def test_parse_sampler():
    assert conditional_sampling.parse_sampler("ddpm:100") == ("ddpm", 100)
    for bad in ("euler:10", "ddpm", "ddpm:0", "dpmpp:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            conditional_sampling.parse_sampler(bad)


def test_bundle_recipe_reads_the_training_config():
    recipe = conditional_sampling.bundle_recipe()
    assert recipe["noise_scheduler"]["prediction_type"] == "v_prediction"
    assert recipe["model"]["channels"] == [16, 32, 32]
    assert recipe["epochs"] >= 1 and recipe["batch_size"] >= 1


def test_quick_run_compares_both_variants_on_one_budget(tmp_path):
    out = tmp_path / "result.json"
    md = tmp_path / "result.md"
    result = conditional_sampling.main(
        [
            "--quick",
            "--quiet",
            "--samplers",
            "ddpm:2",
            "dpmpp:2",
            "--output-dir",
            str(tmp_path / "runs"),
            "--json",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    assert json.loads(out.read_text()) == result
    assert "mask -> CT + PET" in md.read_text()
    variants = result["variants"]
    assert variants["shared"]["iterations"] == variants["per_modality"]["iterations"] > 0
    shared = read_paired_checkpoint(variants["shared"]["checkpoint"])
    per_modality = read_paired_checkpoint(variants["per_modality"]["checkpoint"])
    assert shared["per_modality_timesteps"]["independent_timestep_prob"] == 0.0
    assert per_modality["per_modality_timesteps"]["independent_timestep_prob"] == 0.5
    assert per_modality["model_config"]["condition_timesteps"] is True
    combos = {(r["task"], r["model"], r["conditioning"], r["sampler"]) for r in result["rows"]}
    for sampler in ("DDPM-2", "DPM-Solver++-2"):
        for task in ("mask -> CT + PET", "CT -> PET + mask"):
            assert (task, "shared", "clamp", sampler) in combos
            assert (task, "per_modality", "clean", sampler) in combos
            assert (task, "per_modality", "clamp", sampler) in combos
        assert ("joint", "shared", None, sampler) in combos and (
            "joint",
            "per_modality",
            None,
            sampler,
        ) in combos
    mask_rows = [r for r in result["rows"] if r["task"] == "mask -> CT + PET"]
    assert all(0.0 <= r["mask_in_body"] <= 1.0 and r["mask_in_body_real"] is not None for r in mask_rows)
    ct_rows = [r for r in result["rows"] if r["task"] == "CT -> PET + mask"]
    assert all(r["pet_mae"] >= 0 for r in ct_rows)
    assert torch.get_num_threads() >= 1
