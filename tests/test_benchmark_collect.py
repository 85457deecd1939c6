"""The benchmark collector's markdown (benchmarks/collect.py) from a hand-made results dict: fast, no measuring."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/ holds scripts, not a package

import collect  # noqa: E402
import sampler_quality  # noqa: E402


def _sampler(label, scheduler, steps, cpu, fid_ref, fid_real, lesion, body):
    return {
        "label": label,
        "scheduler": scheduler,
        "steps": steps,
        "cpu_seconds_per_triplet": cpu,
        "wall_seconds": 10.0,
        "fid_vs_reference": fid_ref,
        "fid_vs_real": fid_real,
        "lesion_dice": lesion,
        "lesion_dice_sd": 0.1,
        "body_dice": body,
        "body_dice_sd": 0.01,
        "empty_masks": 0,
        "ct_gradient": 40.0,
        "ct_std": 400.0,
    }


def _results(step_ratio: float = 1.2, mixing_ratio: float = 1.01, dpm_fid: float = 0.021) -> dict:
    ref = _sampler("DDPM-1000", "ddpm", 1000, 54.25, None, 0.020, 0.70, 0.98)
    dpm = _sampler("DPM-Solver++-20", "dpmpp", 20, 1.1, 0.01, dpm_fid, 0.69, 0.97)
    dpm.update(sampler_quality.within_tolerance(dpm, ref))
    return {
        "date": "2026-11-27 12:00 UTC",
        "quick": False,
        "command": "python benchmarks/collect.py",
        "machine": {
            "platform": "Linux-x86_64",
            "cpu": "AMD EPYC",
            "cpu_count": 2,
            "python": "3.11.7",
            "torch": "2.13.0+cpu",
            "torch_threads": 1,
            "load_average": [1.5, 1.0, 0.5],
            "gpu": None,
        },
        "timings": {"mixing epoch": 15.0, "flops": 4.0, "step ratio": 60.0, "sampler cost": 20.0},
        "rss_kib": {"flops": 500 * 1024, "sampler cost": 540 * 1024, "gpu throughput": 560 * 1024},
        "total_seconds": 1200.0,
        "mixing": {
            "per_sample_ratio": mixing_ratio,
            "per_epoch_ratio": 1.5 * mixing_ratio,
            "ratio": 0.5,
            "repeats": 15,
            "command": "python benchmarks/mixing_epoch_cost.py --repeats 15",
            "max_rss_kib": 480 * 1024,
        },
        "flops": [
            {
                "config": "default",
                "size": 128,
                "steps": 20,
                "parameters": 3754530,
                "flops_per_step": 26185791744,
                "flops_per_triplet": 523715834880,
                "command": "python benchmarks/generation_throughput.py --config default --size 128 --steps 20",
            }
        ],
        "step_ratio": [
            {
                "config": c,
                "channels": ch,
                "size": 64,
                "batch": 4,
                "repeats": 15,
                "inner": 3,
                "linked_cpu_ms": 500.0,
                "independent_cpu_ms": 500.0 / step_ratio,
                "ratio": step_ratio,
                "ratio_q1": step_ratio - 0.03,
                "ratio_q3": step_ratio + 0.03,
                "ratio_of_medians": step_ratio,
            }
            for c, ch in (("default", [32, 64, 64]), ("cpu", [16, 32, 32]))
        ],
        "step_ratio_command": "python benchmarks/sampling_cost.py --step-only --config both --repeats 15",
        "sampler_cost": [
            {
                "sampler": "DPM-Solver++-20",
                "steps": 20,
                "steps_timed": 10,
                "cpu_seconds_per_triplet": 2.5,
                "wall_seconds_per_triplet": 2.6,
            }
        ],
        "sampler_cost_command": "python benchmarks/sampling_cost.py",
        "sampler_cost_quick_steps": 10,
        "quality": {
            "checkpoint": "bundles/pet_ct_pairsynth/models/diffusion_demo.pt",
            "num_samples": 32,
            "batch_size": 8,
            "workers": 2,
            "spatial_size": [64, 64],
            "spacing": 4.0,
            "reference": "DDPM-1000",
            "samplers": [ref, dpm],
            "real": {**_sampler("real", "", 0, 0, 0.03, 0.01, 0.75, 0.99), "label": "real phantom triplets"},
            "feature_network": "train_feature_segmenter",
            "feature_seconds": 5.0,
            "max_rss_kib": 600 * 1024,
            "eps_diagnostic": [
                {
                    "t": 999,
                    "alphabar": 4.04e-05,
                    "amplification": 157.4,
                    "eps_mse": 0.0075,
                    "x0_rms_error": 13.59,
                    "x0_max_abs": 112.1,
                }
            ],
        },
        "quality_command": "python benchmarks/sampler_quality.py --num-samples 32",
        "gpu": [
            {
                "config": "default",
                "size": 128,
                "steps": 20,
                "device_name": "NVIDIA H200",
                "floor_triplets_per_s": 1518.57,
                "bf16_matmul_flops": 7.95e14,
                "flops_per_triplet": 523715834880,
                "flops_per_triplet_now": 523715834880,
                "runs": [
                    {
                        "batch": 64,
                        "triplets_per_s": 44.07,
                        "fraction_of_floor": 0.029,
                        "peak_memory_gib": 1.69,
                    }
                ],
                "command": "python benchmarks/generation_throughput.py --device cuda --amp bf16 --batch 64",
                "source": "measured on NVIDIA H200 on 2026-11-27 by `MINUTES=6 bash benchmarks/gpu_session.sh`",
                "stored": True,
            }
        ],
    }


def _target_row(markdown: str, start: str) -> str:
    rows = [line for line in markdown.splitlines() if line.startswith("| " + start)]
    assert rows, f"no row starting with {start!r}"
    return rows[0]


def test_targets_met_and_not_met():
    good = collect.render_markdown(_results(step_ratio=1.2, mixing_ratio=1.01, dpm_fid=0.021))
    bad = collect.render_markdown(_results(step_ratio=1.31, mixing_ratio=1.12, dpm_fid=0.03))
    assert "| met |" in _target_row(good, "linked sampling step")
    assert "**not met**" in _target_row(bad, "linked sampling step")
    assert "| met |" in _target_row(good, "segmentation epoch")
    assert "**not met**" in _target_row(bad, "segmentation epoch")
    assert "| met |" in _target_row(good, "DPM-Solver++-20 within 10 %")
    row = _target_row(bad, "DPM-Solver++-20 within 10 %")
    assert "**not met**" in row and "FID 1.50×" in row  # 0.03 / 0.02


def test_numbers_formatted_with_command_and_machine():
    md = collect.render_markdown(_results(step_ratio=1.2345))
    row = _target_row(md, "linked sampling step")
    assert "1.234×" in row or "1.235×" in row  # three decimals
    assert row.count("|") == 5  # target | measured | status | command
    assert "`python benchmarks/sampling_cost.py --step-only --config both --repeats 15`" in row
    assert "| `default` | 3,754,530 | 128×128 | 26.19 | 523.7 |" in md
    assert "44.1 | 1,519 | 2.9 %" in md
    assert "measured on NVIDIA H200 on 2026-11-27 by `MINUTES=6 bash benchmarks/gpu_session.sh`" in md
    assert "load average (1, 5, 15 min) at the start: 1.50, 1.00, 0.50" in md
    assert "| DDPM-1000 | 54.25 | — |" in md  # the reference has no FID against itself
    assert "| 999 | 4.04e-05 | 157.4 | 0.0075 | 13.59 | 112.1 |" in md


def test_within_tolerance_bounds():
    ref = {"fid_vs_real": 0.02, "lesion_dice": 0.7, "body_dice": 0.98}
    assert sampler_quality.within_tolerance({**ref, "fid_vs_real": 0.0219}, ref)["within_tolerance"]
    assert not sampler_quality.within_tolerance({**ref, "fid_vs_real": 0.0221}, ref)["within_tolerance"]
    assert not sampler_quality.within_tolerance({**ref, "lesion_dice": 0.62}, ref)["within_tolerance"]
    assert not sampler_quality.within_tolerance({**ref, "body_dice": float("nan")}, ref)["within_tolerance"]


def test_mixing_output_parsed_and_missing_line_rejected():
    line = (
        "[cpu median] real-32 0.146s, mixed 0.219s, real-48 0.221s | per-epoch ratio 1.497 (x1.50 samples), "
        "per-sample ratio 0.998 (target <= 1.10), equal-length ratio 0.992"
    )
    parsed = collect.parse_mixing_output("[wall median] ...\n" + line + "\n")
    assert parsed["per_sample_ratio"] == pytest.approx(0.998)
    assert parsed["per_epoch_ratio"] == pytest.approx(1.497)
    with pytest.raises(ValueError, match="cpu median"):
        collect.parse_mixing_output("[wall median] nothing else")


def test_render_from_json_roundtrip(tmp_path):
    results = _results()
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "benchmarks.md"
    collect.main(["--from-json", str(path), "--output", str(out)])
    assert out.read_text(encoding="utf-8") == collect.render_markdown(copy.deepcopy(results))
    with pytest.raises(SystemExit):
        collect.main(["--from-json", str(tmp_path / "missing.json"), "--output", str(out)])


def test_training_iteration_targets_rendered():
    r = _results()
    r["training_iteration"] = {
        "baseline_ref": "3c2737b",
        "command": "python benchmarks/training_iteration.py --repeats 3",
        "real": {
            "size": 64,
            "batch": 8,
            "engine_ms": 707.0,
            "bare_step_ms": 690.0,
            "ratio_engine_to_bare_step": 1.025,
        },
        "tiny": {"size": 16, "baseline_overhead_ms": 80.0, "current_overhead_ms": 20.0, "overhead_cut": 4.0},
    }
    md = collect.render_markdown(r)
    row = _target_row(md, "training iteration of the engine")
    assert "1.025× (707 vs 690 ms CPU time) | met |" in row and "--repeats 3" in row
    row = _target_row(md, "non-network overhead")
    assert "4.0× (80.0 → 20.0 ms CPU time) | **not met** |" in row and "3c2737b" in row
    assert "non-network overhead" not in collect.render_markdown(_results())  # absent when not measured


def test_update_remeasures_named_stages_and_says_so(monkeypatch):
    calls = []
    monkeypatch.setattr(
        collect,
        "measure_training_iteration",
        lambda quick: (
            calls.append(quick)
            or {
                "baseline_ref": "b",
                "command": "python benchmarks/training_iteration.py --repeats 3",
                "real": {
                    "size": 64,
                    "batch": 8,
                    "engine_ms": 1.0,
                    "bare_step_ms": 1.0,
                    "ratio_engine_to_bare_step": 1.0,
                },
                "tiny": {
                    "size": 16,
                    "baseline_overhead_ms": 10.0,
                    "current_overhead_ms": 1.0,
                    "overhead_cut": 10.0,
                },
            }
        ),
    )
    old = _results()
    args = collect.argparse.Namespace(
        update=["training_iteration"], quick=False, num_samples=None, workers=None
    )
    new = collect.update(old, args)
    assert calls == [False] and "training_iteration" not in old and new["quality"] == old["quality"]
    md = collect.render_markdown(new)
    assert "**Re-measured later**: the `training_iteration` stage on" in md
    assert "| met |" in _target_row(md, "non-network overhead")
