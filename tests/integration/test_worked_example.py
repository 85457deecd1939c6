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


def test_transform_alternative_replaces_a_third_of_the_samples():
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- transform-alternative:start -->\s*```python\n(.*?)```", text, re.S)
    assert block is not None
    from monai.data import Dataset
    from monai.transforms import Compose, ConcatItemsd, RandFlipd, ScaleIntensityRanged

    from monai_pairsynth.data.phantom import PhantomDataset
    from monai_pairsynth.mixing.synthesis_pool import PhantomPoolSource, SynthesisPool

    size, spacing = (32, 32), 8.0
    pool = SynthesisPool(
        8, spatial_shape=size, spacing=spacing, source=PhantomPoolSource(size, spacing=spacing)
    )
    pool.fill()
    phantom = PhantomDataset(30, spatial_size=size, spacing=spacing)
    namespace = {
        "pool": pool,
        "train_cases": [phantom[i] for i in range(30)],
        "preprocess": [
            ScaleIntensityRanged("ct", a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=True),
            ScaleIntensityRanged("pet", a_min=0, a_max=15, b_min=0, b_max=1, clip=True),
            ConcatItemsd(["ct", "pet"], "image"),
        ],
        "Compose": Compose,
        "RandFlipd": RandFlipd,
        "Dataset": Dataset,
    }
    exec(compile(block.group(1), str(DOC), "exec"), namespace)
    namespace["synthesize"].set_random_state(seed=0)
    items = [namespace["train_ds"][i] for i in range(30)]
    synthetic = sum(item["synthetic"] for item in items)
    assert 4 <= synthetic <= 18  # Binomial(30, 1/3): mean 10, this band holds with probability > 0.99
    assert all(
        tuple(item["image"].shape) == (2, *size) and float(item["image"].max()) <= 1.0 for item in items
    )
