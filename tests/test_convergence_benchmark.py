"""The convergence benchmark (benchmarks/convergence.py): metric helpers on hand-made tensors, log and checkpoint
selection, and an end-to-end evaluate / resume / render pass on two tiny 16x16 checkpoints."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/ holds scripts, not a package

import convergence  # noqa: E402


# ------------------------------------------------------------------------------------------- metric helpers
def test_empty_mask_rate():
    label = torch.zeros(4, 1, 8, 8)
    label[0, 0, 2, 2] = 1.0  # one foreground pixel is not empty
    label[1, 0, 3:5, 3:5] = 1.0
    label[3, 0, 0, 0] = 0.4  # below the {0, 1} threshold: still empty
    assert convergence.empty_mask_rate(label) == 0.5
    assert convergence.mask_pixels(label).tolist() == [1, 4, 0, 0]
    # the same masks in [-1, 1]: threshold 0
    assert convergence.empty_mask_rate(label * 2 - 1, threshold=0.0) == 0.5


def test_bone_fractions_and_presence():
    ct = torch.full((3, 1, 20, 20), -1000.0)
    ct[0, 0, :10, :10] = 40.0  # 100 body pixels
    ct[0, 0, 0, 0] = 700.0  # 1 bone pixel: 1 % of the body, present
    ct[1, 0, :10, :20] = 40.0  # 200 body pixels
    ct[1, 0, 5, 5] = 700.0  # 0.5 %: not present
    ct[1, 0, 6, 6] = 250.0  # soft tissue above -500 but below the bone threshold
    # sample 2: no body at all
    fractions = convergence.bone_fractions(ct)
    assert fractions.tolist() == pytest.approx([0.01, 0.005, 0.0])
    assert convergence.bone_presence_rate(ct) == pytest.approx(1 / 3)
    assert convergence.bone_presence_rate(ct, min_fraction=0.004) == pytest.approx(2 / 3)


def test_tumour_contrast():
    ct = torch.full((3, 1, 32, 32), -1000.0)
    ct[:, :, 2:30, 2:30] = 40.0
    pet = torch.zeros(3, 1, 32, 32)
    pet[:, :, 2:30, 2:30] = 1.0  # background 1 SUV in the body
    pet[:, :, 12:20, 12:20] = 3.0  # halo inside the 10 mm (5 px at 2 mm) margin: left out of the background
    pet[:, :, 14:18, 14:18] = 8.0  # tumour
    label = torch.zeros(3, 1, 32, 32)
    label[0, 0, 14:18, 14:18] = 1.0
    label[1, 0, 14:18, 14:18] = 1.0
    pet[1, 0, 2:30, 2:30] = pet[1, 0, 2:30, 2:30] * 2  # twice everything: same contrast
    # sample 2: empty mask -> NaN
    c = convergence.tumour_contrast(pet, label, ct, spacing=2.0)
    assert c[0].item() == pytest.approx(8.0)
    assert c[1].item() == pytest.approx(8.0)
    assert math.isnan(c[2].item())
    # without a margin the halo counts as background: 48 px at 3 SUV and 720 px at 1 SUV
    no_margin = convergence.tumour_contrast(pet, label, ct, spacing=2.0, margin_mm=0.0)
    assert no_margin[0].item() == pytest.approx(8.0 / ((48 * 3 + 720) / 768))


def test_mask_in_body():
    ct = torch.full((2, 1, 8, 8), -1000.0)
    ct[:, :, :, :4] = 40.0
    label = torch.zeros(2, 1, 8, 8)
    label[0, 0, 0, 2:6] = 1.0  # 2 of 4 inside
    out = convergence.mask_in_body(label, ct)
    assert out[0].item() == 0.5 and math.isnan(out[1].item())


def test_relative_to_real_handles_missing_values():
    rel = convergence.relative_to_real(
        {
            "fid_vs_real": 0.3,
            "lesion_dice": 0.35,
            "body_dice": 0.9,
            "bone_fraction": 0.04,
            "pet_contrast": None,
        },
        {"fid_floor": 0.1, "lesion_dice": 0.7, "body_dice": 0.0, "bone_fraction": 0.08, "pet_contrast": 4.0},
    )
    assert rel["fid_over_floor"] == pytest.approx(3.0)
    assert rel["lesion_ratio"] == pytest.approx(0.5)
    assert rel["bone_fraction_ratio"] == pytest.approx(0.5)
    assert rel["body_ratio"] is None and rel["pet_contrast_ratio"] is None


# ------------------------------------------------------------------------------------------- logs, selection
LOG_HEAD = """2026-12-03 08:40:20,078 - INFO - --- input summary of monai.bundle.scripts.run ---
2026-12-03 08:40:20,078 - INFO - > output_dir: '/x'
2026-12-03 08:40:20,078 - INFO - > num_phantom_cases: 3
2026-12-03 08:40:20,078 - INFO - > snr_gamma: '$None'
"""


def _epoch_line(epoch: int, seconds: str) -> str:
    return (
        f"2026-12-03 08:40:54,485 - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[{epoch}] Complete. "
        f"Time taken: {seconds}\n"
    )


def test_log_parsing(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        LOG_HEAD
        + _epoch_line(1, "00:00:32.824")
        + "2026-12-03 08:40:54,485 - INFO - Epoch[1] Metrics -- loss: 2.2 mse: 2.2\n"
        + _epoch_line(2, "00:01:00.000")
        + _epoch_line(3, "01:00:00.500")
        + _epoch_line(3, "00:00:10.000")  # resumed: the last line of an epoch wins
        + _epoch_line(5, "00:00:01.000")
    )
    times = convergence.epoch_seconds(log)
    assert times == pytest.approx({1: 32.824, 2: 60.0, 3: 10.0, 5: 1.0})
    assert convergence.wall_seconds_at(times, 2) == pytest.approx(92.824)
    assert convergence.wall_seconds_at(times, 3) == pytest.approx(102.824)
    assert convergence.wall_seconds_at(times, 5) is None  # epoch 4 missing
    overrides = convergence.read_log_overrides(log)
    assert overrides["num_phantom_cases"] == "3" and overrides["snr_gamma"] == "$None"
    assert convergence.training_phantom_set(overrides) == (3, 0)
    assert convergence.training_phantom_set({}) == (320, 0)  # the bundle config's default
    assert convergence.training_phantom_set({"dataset_dir": "/data/hecktor"}) is None


def test_select_checkpoints():
    ckpts = [(e, Path(f"c{e}")) for e in (10, 20, 30, 40, 50, 55)]
    epochs = lambda sel: [e for e, _ in sel]  # noqa: E731
    assert epochs(convergence.select_checkpoints(ckpts)) == [10, 20, 30, 40, 50, 55]
    assert epochs(convergence.select_checkpoints(ckpts, every=2)) == [20, 40, 55]
    assert epochs(convergence.select_checkpoints(ckpts, every=3)) == [30, 55]
    assert epochs(convergence.select_checkpoints(ckpts, max_checkpoints=3)) == [10, 30, 55]
    assert epochs(convergence.select_checkpoints(ckpts, max_checkpoints=1)) == [10]
    assert convergence.select_checkpoints([], every=2) == []
    with pytest.raises(ValueError):
        convergence.select_checkpoints(ckpts, every=0)


def test_parse_run(tmp_path):
    folder = tmp_path / "A"
    folder.mkdir()
    assert convergence.parse_run(f"a={folder}").log is None
    (tmp_path / "A.log").write_text(LOG_HEAD)
    spec = convergence.parse_run(f"a={folder}")
    assert spec.name == "a" and spec.log == tmp_path / "A.log" and spec.overrides["num_phantom_cases"] == "3"
    other = tmp_path / "other.log"
    other.write_text("")
    assert convergence.parse_run(f"a={folder}:{other}").log == other
    with pytest.raises(ValueError):
        convergence.parse_run(str(folder))
    with pytest.raises(FileNotFoundError):
        convergence.parse_run(f"a={tmp_path / 'missing'}")


# ------------------------------------------------------------------------------------------- end to end
TINY = {"channels": (8, 16), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from monai_pairsynth.engines import train_paired_diffusion

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("conv")
    folder = root / "tiny"
    train_paired_diffusion(
        folder,
        num_cases=3,
        spatial_size=(16, 16),
        spacing=16.0,
        epochs=2,
        batch_size=2,
        model_kwargs=TINY,
        noise_scheduler={"schedule": "cosine", "prediction_type": "v_prediction"},
        perceptual_weight=0.0,
        ema_warmup_iters=1,
        keep_epoch_checkpoints=True,
        log_every=0,
        progress_bar=False,
        tensorboard=False,
        device="cpu",
    )
    (root / "tiny.log").write_text(LOG_HEAD + _epoch_line(1, "00:00:30.000") + _epoch_line(2, "00:00:45.000"))
    torch.set_num_threads(n)
    return root, folder


def test_evaluate_resume_render(tiny_run, tmp_path, capsys):
    _root, folder = tiny_run
    assert [e for e, _ in convergence.epoch_checkpoints(folder)] == [1, 2]
    out = tmp_path / "conv.json"
    args = ["evaluate", "--quick", "--workers", "0", "--quiet", "--json", str(out), "--run", f"tiny={folder}"]
    convergence.main(args)
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {(r["epoch"], r["sampler"]) for r in rows} == {
        (e, s) for e in (1, 2) for s in ("DDPM-10", "DPM-Solver++-4")
    }
    keys = {
        "recipe", "epoch", "iteration", "wall_seconds", "sampler", "fid_vs_real", "fid_floor", "fid_over_floor",
        "lesion_dice", "body_dice", "lesion_ratio", "body_ratio", "empty_mask_rate", "bone_rate", "bone_fraction",
        "bone_fraction_ratio", "pet_contrast", "pet_contrast_ratio", "mask_in_body", "memorised", "nn_median_ratio",
        "sample_cpu_seconds_per_triplet", "sample_wall_seconds",
    }  # fmt: skip
    for r in rows:
        assert keys <= set(r), keys - set(r)
        assert r["recipe"] == "tiny" and r["num_samples"] == 4 and r["ema"] is True
        assert r["fid_vs_real"] >= 0 and 0 <= r["empty_mask_rate"] <= 1 and 0 <= r["bone_rate"] <= 1
        assert r["memorised"] is not None and 0 <= r["memorised"] <= 4
    by_sampler = {}
    for r in rows:
        by_sampler.setdefault(r["sampler"], []).append(r)
    for seq in by_sampler.values():
        seq.sort(key=lambda r: r["epoch"])
        assert [r["iteration"] for r in seq] == [2, 4]  # 3 cases, batch 2: 2 steps per epoch
        assert [r["wall_seconds"] for r in seq] == pytest.approx([30.0, 75.0])
    # the training set of the memorisation check comes from the log's overrides
    assert data["runs"]["tiny"]["training_phantoms"] == {"num_cases": 3, "seed": 0}
    ref = data["references"]["16x16@16mm"]
    assert ref["fid_floor"] > 0 and ref["bone_rate"] == 1.0 and ref["empty_mask_rate"] == 0.0
    assert 0.9 < ref["mask_in_body"] <= 1.0 and ref["pet_contrast"] > 1.0

    # resumable: a second invocation adds nothing and leaves the rows as they were
    before = out.read_text()
    convergence.main(args)
    assert json.loads(out.read_text())["rows"] == json.loads(before)["rows"]
    # other settings in the same file are refused
    with pytest.raises(ValueError, match="other settings"):
        convergence.main(
            ["evaluate", "--workers", "0", "--quiet", "--json", str(out), "--run", f"tiny={folder}"]
        )

    # a broken checkpoint is reported at the end; the others' rows are kept (here: all already done)
    (folder / "checkpoint_epoch0003.pt").write_bytes(b"not a checkpoint")
    try:
        with pytest.raises(RuntimeError, match="checkpoint_epoch0003"):
            convergence.main(args)
    finally:
        (folder / "checkpoint_epoch0003.pt").unlink()
    assert json.loads(out.read_text())["rows"] == json.loads(before)["rows"]

    capsys.readouterr()
    md, steps_png, time_png = tmp_path / "c.md", tmp_path / "s.png", tmp_path / "t.png"
    convergence.main(
        ["render", "--from-json", str(out), "--output", str(md), "--plot-steps", str(steps_png),
         "--plot-time", str(time_png)]
    )  # fmt: skip
    text = md.read_text()
    table = [line for line in text.splitlines() if line.startswith("| tiny |")]
    assert len(table) == 4
    assert "| *real, 16x16@16mm* |" in text and "Quick rehearsal" in text
    for png in (steps_png, time_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    convergence.main(["render", "--from-json", str(out), "--plot-steps", "", "--plot-time", ""])
    assert "| tiny | 2 | 4 | 1.2 | DDPM-10 |" in capsys.readouterr().out
