"""Command-line runs of the bundle: train_diffusion.json, the multi-GPU overlays (2 processes, gloo), the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from bundle_helpers import BUNDLE, SIZE, SPACING, grid_overrides, run_workflow

from monai_pairsynth.bundle_checks import check_generator_checkpoint
from monai_pairsynth.demo import main as demo_main
from monai_pairsynth.demo import run_demo
from monai_pairsynth.mixing.synthesis_pool import SynthesisPool

TINY_CLI = [
    "--spatial_size",
    "[32, 32]",
    "--spacing",
    "8.0",
    "--network_def#channels",
    "[8, 16]",
    "--network_def#attention_levels",
    "[False, False]",
    "--network_def#norm_num_groups",
    "4",
    "--num_threads",
    "1",
    "--progress",
    "False",
]


def _env():
    return {**os.environ, "PYTHONWARNINGS": "ignore:parsing config_file:UserWarning"}


def _run(argv, timeout=300):
    proc = subprocess.run(argv, cwd=BUNDLE, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _bundle(*configs):
    """``-m monai.bundle run`` of one config, or of a base config and its overlays merged in order."""
    if len(configs) == 1:
        files = f"configs/{configs[0]}"
    else:
        files = "[" + ", ".join(f"'configs/{c}'" for c in configs) + "]"
    return ["-m", "monai.bundle", "run", "--config_file", files, "--logging_file", "configs/logging.conf"]


@pytest.mark.slow
def test_train_diffusion_exports_a_checkpoint_generate_uses(tmp_path):
    out = tmp_path / "diffusion"
    _run(
        [
            sys.executable,
            *_bundle("train_diffusion.json"),
            *TINY_CLI,
            "--epochs",
            "1",
            "--num_phantom_cases",
            "8",
            "--batch_size",
            "4",
            "--output_dir",
            str(out),
            "--export_path",
            str(out / "slim.pt"),
        ]
    )
    info = check_generator_checkpoint(out / "slim.pt", spatial_size=SIZE, spacing=SPACING)
    assert info["model_config"]["channels"] == [8, 16]
    assert info["model_config"]["attention_levels"] == [False, False]
    assert (out / "slim.pt").stat().st_size < (out / "checkpoint.pt").stat().st_size
    # resume_from continues the run; max_minutes stops it at the first epoch end past the budget
    _run(
        [
            sys.executable,
            *_bundle("train_diffusion.json"),
            *TINY_CLI,
            "--epochs",
            "5",
            "--num_phantom_cases",
            "8",
            "--batch_size",
            "4",
            "--resume_from",
            str(out / "checkpoint.pt"),
            "--max_minutes",
            "1e-9",
            "--output_dir",
            str(tmp_path / "resumed"),
            "--export_path",
            str(tmp_path / "resumed" / "slim.pt"),
        ]
    )
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["trainer"]
    assert (resumed["epoch"], resumed["iteration"], resumed["max_epochs"]) == (2, 4, 5)
    run_workflow(
        "generate.json",
        **grid_overrides(
            diffusion_checkpoint=str(out / "slim.pt"),
            num_train_cases=4,
            pool_size=2,
            num_inference_steps=2,
            filter_mode="none",
            output_dir=str(tmp_path / "gen"),
        ),
    )
    pool = SynthesisPool.load(tmp_path / "gen" / "pool.pt")
    assert len(pool) == 2 and torch.isfinite(pool[0]["pet"]).all()


@pytest.mark.slow
def test_multi_gpu_overlays_two_processes_gloo(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    out = tmp_path / "diffusion"
    proc = _run(
        [
            *torchrun,
            *_bundle("train_diffusion.json", "multi_gpu_train_diffusion.json"),
            *TINY_CLI,
            "--epochs",
            "1",
            "--num_phantom_cases",
            "8",
            "--batch_size",
            "2",
            "--output_dir",
            str(out),
            "--export_path",
            str(out / "slim.pt"),
        ]
    )
    # handlers on rank 0 only: one epoch log, one export; each rank saw half the data (8 cases / 2 ranks / batch 2)
    assert proc.stdout.count("Epoch[1] Metrics") == 1
    assert proc.stdout.count("sampling checkpoint written to") == 1
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    seg = tmp_path / "segmentation"
    proc = _run(
        [
            *torchrun,
            *_bundle("train_segmentation.json", "multi_gpu_train_segmentation.json"),
            "--spatial_size",
            "[32, 32]",
            "--spacing",
            "8.0",
            "--num_threads",
            "1",
            "--progress",
            "False",
            "--epochs",
            "2",
            "--val_interval",
            "1",
            "--num_train_cases",
            "6",
            "--num_val_cases",
            "3",
            "--batch_size",
            "2",
            "--synthetic_ratio",
            "0.5",
            "--diffusion_checkpoint",
            str(out / "slim.pt"),
            "--pool_size",
            "3",
            "--filter_mode",
            "none",
            "--num_inference_steps",
            "2",
            "--output_dir",
            str(seg),
        ]
    )
    # generation sharded: rank 0 makes 2, rank 1 makes 1 of the 3 triplets, both then hold all 3
    assert "rank 0/2 generated its share: 2 of 3 triplets" in proc.stdout
    assert "rank 1/2 generated its share: 1 of 3 triplets" in proc.stdout
    assert proc.stdout.count("Epoch[2] Metrics -- val_mean_dice") == 1  # rank 0's StatsHandler only
    state = torch.load(seg / "model_final.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    assert (seg / "model.pt").is_file()


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, tiny_checkpoint):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai_pairsynth.demo",
            "--quick",
            "--checkpoint",
            str(tiny_checkpoint),
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "toy-scale DEMO" in text
    for row in (
        "| test Dice, real only (n = 8 patients, 8 slices; mean ± sd over patients) |",
        "| test Dice, mixed (r = 0.5) (n = 8 patients, 8 slices; mean ± sd over patients) |",
        "| pool: accepted / generated | 4 / 16 |",
        "| pool: rejected (by reason) | 12 (",
    ):
        assert row in text, row
    preview = out / "generate" / "preview.png"
    assert f"Preview of the synthetic pool: {preview}" in text and preview.read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "evaluate" / "evaluation.json").read_text())
    assert results["comparison"]["n"] == 8 and results["pool"]["accepted"] == 4
    assert "generating" in proc.stderr  # progress bars go to the terminal


def test_demo_without_checkpoint_says_what_to_run(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"configs/train_diffusion\.json"):
        run_demo(tmp_path / "out", checkpoint=tmp_path / "missing.pt")
    assert demo_main(["--checkpoint", str(tmp_path / "missing.pt"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert (
        "is missing" in err and "python -m monai.bundle run --config_file configs/train_diffusion.json" in err
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
