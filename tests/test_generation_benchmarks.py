"""benchmarks/generation_throughput.py (FLOP count, throughput) and benchmarks/sampler_trace.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/ holds scripts, not a package

import generation_throughput  # noqa: E402
import sampler_trace  # noqa: E402

from monai_pairsynth.networks import PairedDiffusionModel  # noqa: E402

TINY = {"channels": (8, 16), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4}


def test_flops_are_counted_and_scale_with_the_pixels():
    model = PairedDiffusionModel(**TINY)
    small, large = (generation_throughput.flops_per_step(model, s) for s in (16, 32))
    assert small > 0
    # without attention the work is convolutions, linear in the number of pixels (the timestep MLPs are tiny)
    assert large / small == pytest.approx(4.0, rel=0.02)
    wider = PairedDiffusionModel(channels=(16, 32), attention_levels=(False, False), norm_num_groups=4)
    assert generation_throughput.flops_per_step(wider, 16) > 3 * small


def test_cpu_throughput_and_json(tmp_path):
    out = tmp_path / "r.json"
    result = generation_throughput.main(
        [
            "--config",
            "cpu",
            "--size",
            "16",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--amp",
            "none",
            "--batch",
            "2",
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    assert result["flops_per_triplet"] == 2 * result["flops_per_step"]
    (run,) = result["runs"]
    assert run["batch"] == 2 and run["triplets_per_s"] > 0 and "fraction_of_floor" not in run  # no GPU floor
    assert out.is_file()
    with pytest.raises(ValueError, match="config"):
        generation_throughput.build_model("huge")


def test_trace_with_clipping_keeps_x0_in_range():
    rows = sampler_trace.trace(sampler_trace.DEMO, "ddim", steps=3, clip=True, num_samples=2)
    assert [r["t"] for r in rows] == sorted((r["t"] for r in rows), reverse=True) and len(rows) == 3
    for row in rows:
        for m in ("ct", "pet", "label"):
            assert -1.0 <= row[m]["x0_min"] <= row[m]["x0_max"] <= 1.0
            assert row[m]["x_std"] > 0
