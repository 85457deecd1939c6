"""Runs the worked example of docs/integration.md exactly as written, with and without its synthetic lines."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "integration.md"
MARK = "# + synthetic"


def example_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(
        r"<!-- worked-example:start -->\s*```python\n(.*?)```\s*<!-- worked-example:end -->", text, re.S
    )
    assert block is not None, f"no worked example between markers in {DOC}"
    return block.group(1)


def real_only(code: str) -> str:
    return "\n".join(line for line in code.splitlines() if not line.rstrip().endswith(MARK))


def test_adding_synthetic_data_is_three_lines():
    code = example_code()
    marked = [line for line in code.splitlines() if line.rstrip().endswith(MARK)]
    assert len(marked) == 3
    assert any("MixedDataset(" in line for line in marked) and any(
        "PoolRefreshHandler(" in line for line in marked
    )
    assert "MixedDataset" not in real_only(code).split("import PoolRefreshHandler")[-1]


@pytest.mark.parametrize("variant", ["mixed", "real_only"])
def test_worked_example_trains_two_epochs_on_cpu(variant, capsys):
    code = example_code() if variant == "mixed" else real_only(example_code())
    namespace: dict = {"__name__": "worked_example"}
    exec(compile(code, str(DOC), "exec"), namespace)
    trainer, evaluator = namespace["trainer"], namespace["evaluator"]
    assert trainer.state.epoch == 2 and evaluator.state.epoch == 2
    dice = evaluator.state.metrics["val_mean_dice"]
    assert 0.0 <= dice <= 1.0 and not math.isnan(dice)
    assert "validation Dice:" in capsys.readouterr().out
    if variant == "mixed":
        handler = namespace["train_handlers"][-1]
        assert [(r["seen"], r["synthetic_seen"]) for r in handler.history] == [(24, 8), (24, 8)]
        assert [r["refreshed"] for r in handler.history] == [16, 16]
        assert namespace["train_ds"].epoch == 2 and len(namespace["pool"]) == 64
    else:
        assert "pool" not in namespace and len(namespace["train_ds"]) == 16
        assert trainer.state.iteration == 4  # 16 real samples, batch 8, two epochs
