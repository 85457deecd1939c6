"""The phantom reference table: each defective 'generator' is caught by the metric meant to catch it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(
    0, str(Path(__file__).resolve().parents[2] / "benchmarks")
)  # a benchmark script, not the package
from phantom_reference import PHANTOM_VARIANTS, _markdown, phantom_reference_table


@pytest.mark.slow
def test_each_defect_moves_its_metric():
    rows = {
        r["name"]: r
        for r in phantom_reference_table(
            num_real=12, num_synthetic=12, size=32, feature_epochs=1, feature_channels=(4, 8), max_pairs=30
        )
    }
    assert list(rows) == list(PHANTOM_VARIANTS)
    perfect = rows["independent phantoms (perfect generator)"]
    assert rows["near-copies of real training cases"]["flagged_fraction"] == 1.0
    assert rows["near-copies of real training cases"]["median_ratio"] < 0.1
    assert perfect["median_ratio"] > 0.7
    assert rows["one case repeated (mode collapse)"]["ms_ssim_ct"] > 0.99 > perfect["ms_ssim_ct"]
    assert rows["masks swapped between cases"]["lesion_dice"] < perfect["lesion_dice"] - 0.3
    assert rows["CT flipped anterior-posterior"]["body_dice"] < perfect["body_dice"] - 0.05
    for broken in ("masks swapped between cases", "CT flipped anterior-posterior"):
        # measured at this 32 x 32, 8 mm toy size: perfect 0.17, CT flipped 0.07 (0.39 vs 0.10-0.14 at 2-4 mm)
        assert rows[broken]["score"] < 0.6 * perfect["score"], broken
    assert rows["CT +150 HU, PET x1.5"]["mmd"] > perfect["mmd"]
    table = _markdown(list(rows.values()))
    assert table.count("\n") == len(rows) + 2 and "perfect generator" in table


def test_unknown_variant_and_sizes_raise():
    with pytest.raises(ValueError, match="unknown variants"):
        phantom_reference_table(variants=["no such defect"])
    with pytest.raises(ValueError, match="num_real >= 4"):
        phantom_reference_table(num_real=2)
