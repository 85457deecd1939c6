"""benchmarks/training_throughput.py and benchmarks/training_iteration.py, rehearsed at tiny sizes on the CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/ holds scripts, not a package

import training_iteration  # noqa: E402
import training_throughput  # noqa: E402


def test_training_throughput_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "t.json"
    rows = training_throughput.main(
        [
            "--device",
            "cpu",
            "--size",
            "16",
            "--batch",
            "2",
            "--iters",
            "3",
            "--warmup",
            "1",
            "--num-cases",
            "4",
            "--variants",
            "fp32",
            "bf16",
            "--json",
            str(out),
        ]
    )
    assert [r["variant"] for r in rows] == ["fp32", "bf16"]
    for r in rows:
        assert "error" not in r, r
        assert r["iterations_per_s"] > 0 and r["samples_per_s"] == pytest.approx(2 * r["iterations_per_s"])
        assert r["iters"] == 3 and torch.isfinite(torch.tensor(r["final_loss"]))
    assert json.loads(out.read_text()) == rows
    assert "| fp32 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="variant"):
        training_throughput.measure("int8", "cpu", 16, 2, 1, 1, "cpu", 4)


def test_training_iteration_worker_measures_engine_and_bare_step():
    res = training_iteration.worker("current", 16, 1, 3, 1, 1)
    assert res["impl"] == "current" and Path(res["package"]).name == "monai_pairsynth"
    assert 0 < res["forward_backward"] and 0 < res["engine_iteration"]
    assert res["overhead"] == pytest.approx(res["engine_iteration"] - res["forward_backward"])
    table = training_iteration.report(
        {
            "machine": "m",
            "baseline_ref": "abc",
            "repeats": 1,
            "iters": 3,
            "real": {
                "size": 64,
                "batch": 8,
                "engine_ms": 11.0,
                "bare_step_ms": 10.0,
                "ratio_engine_to_bare_step": 1.1,
            },
            "tiny": {
                "size": 16,
                "baseline_overhead_ms": 50.0,
                "current_overhead_ms": 5.0,
                "overhead_cut": 10.0,
                "current_forward_backward_ms": 7.0,
            },
        }
    )
    assert "| 1.100 (11.0 vs 10.0 ms) | <= 1.10 |" in table and "10.0x (50.0 -> 5.0 ms" in table
