"""benchmarks/pet_map_segmentation.py: the linear and log PET arms differ only in the PET map, the statistics are
by patient, and a rehearsal on the real patients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import pet_map_segmentation as bench  # noqa: E402

downstream = bench.downstream


def _sample(seed: int = 0) -> dict[str, torch.Tensor]:
    """A physical-unit slice: CT over [-1200, 1200] HU (beyond the clip on both sides), PET 0-50 SUV, a mask."""
    g = torch.Generator().manual_seed(seed)
    ct = torch.rand(1, 64, 64, generator=g) * 2400 - 1200
    pet = torch.rand(1, 64, 64, generator=g) * 50
    label = (torch.rand(1, 64, 64, generator=g) > 0.7).float()
    return {"ct": ct, "pet": pet, "label": label}


def test_the_arms_differ_only_in_the_pet_map():
    from monai_pairsynth.modalities import PET_LOG_SPEC

    s = _sample()
    lin = bench.transforms("linear", train=False)(dict(s))
    log = bench.transforms("log", train=False)(dict(s))
    assert lin["image"].shape == log["image"].shape == (2, 64, 64)
    # CT (channel 0) and the mask: identical in both arms
    assert torch.equal(torch.as_tensor(lin["image"][0]), torch.as_tensor(log["image"][0]))
    assert torch.equal(torch.as_tensor(lin["label"]), torch.as_tensor(log["label"]))
    pet = s["pet"][0]
    lin_pet, log_pet = torch.as_tensor(lin["image"][1]), torch.as_tensor(log["image"][1])
    # linear: 0-15 SUV to [-1, 1], everything above 15 SUV on the cap
    torch.testing.assert_close(lin_pet, pet.clamp(0, 15) / 7.5 - 1)
    above = pet > 15
    assert above.sum() > 1000 and torch.all(lin_pet[above] == 1.0)
    # log: the package's own map, which still tells 20 SUV from 40 SUV
    torch.testing.assert_close(log_pet, PET_LOG_SPEC.normalize(pet))
    assert log_pet[above].max() < 1.0 and log_pet[above].unique().numel() > 1000
    order = torch.argsort(pet[above])
    assert torch.all(torch.diff(log_pet[above][order]) >= 0)  # monotone: no information lost above 15 SUV
    # what the linear arm sees does not change when PET above 15 SUV changes; the log arm's does
    capped = {**s, "pet": s["pet"].clamp(max=15)}
    lin_capped = bench.transforms("linear", train=False)(dict(capped))["image"]
    assert torch.equal(torch.as_tensor(lin_capped), torch.as_tensor(lin["image"]))
    assert not torch.equal(
        torch.as_tensor(bench.transforms("log", train=False)(dict(capped))["image"][1]), log_pet
    )


@pytest.mark.parametrize("train", [False, True])
def test_linear_arm_is_the_experiment_transform(train):
    ours, theirs = (
        bench.transforms("linear", train=train),
        downstream._transforms(downstream.IMAGE_KEYS, train),
    )
    ours.set_random_state(seed=3)
    theirs.set_random_state(seed=3)
    for seed in range(4):  # several draws: flips and affines happen in some of them
        s = _sample(seed)
        a, b = ours(dict(s)), theirs(dict(s))
        assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
        assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))


def test_log_arm_augments_exactly_like_the_linear_arm():
    lin, log = bench.transforms("linear", train=True), bench.transforms("log", train=True)
    lin.set_random_state(seed=5)
    log.set_random_state(seed=5)
    moved = 0
    for seed in range(6):
        s = _sample(seed)
        a, b = lin(dict(s)), log(dict(s))
        assert torch.equal(torch.as_tensor(a["image"][0]), torch.as_tensor(b["image"][0]))  # same CT
        assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))  # same geometry
        moved += not torch.equal(torch.as_tensor(a["label"]), s["label"])
    assert moved > 0  # the augmentation did act, so the equality above means something


def test_transforms_refuse_an_unknown_map():
    with pytest.raises(ValueError, match="pet_map"):
        bench.transforms("sqrt", train=False)


def test_test_dice_is_the_experiment_dice_for_the_linear_arm():
    torch.manual_seed(0)
    network = downstream._network(2)
    test = [_sample(i) for i in range(3)]
    ours = bench.test_dice(network, "linear", test)
    theirs = downstream._test_dice(network, downstream.IMAGE_KEYS, test)
    assert ours == theirs and len(ours) == 3
    assert bench.test_dice(network, "log", test) != ours  # the PET map reaches the network


def _runs(offsets: dict[str, float]) -> list[dict]:
    """Fake runs: 3 patients with 2, 1, 3 slices, 2 seeds, N = 8; the log arm = linear + a per-patient offset."""
    patients = ["P1", "P1", "P2", "P3", "P3", "P3"]
    out = []
    for seed in (0, 1):
        base = [0.4 + 0.05 * i + 0.02 * seed for i in range(len(patients))]
        for m in bench.MAPS:
            dice = [d + (offsets[p] if m == "log" else 0.0) for d, p in zip(base, patients, strict=True)]
            out.append(
                {"n_real": 8, "seed": seed, "pet_map": m, "dice": dice, "test_patients": patients,
                 "mean_dice": sum(dice) / len(dice)}
            )  # fmt: skip
    return out


def test_summary_is_by_patient():
    row = bench.summarise(_runs({"P1": 0.10, "P2": -0.02, "P3": 0.04}), (8,), (0, 1))["n8"]
    assert row["n_patients"] == 3 and row["n_slices"] == 12
    # every patient counts once, whatever its number of slices: (0.10 - 0.02 + 0.04) / 3
    assert row["patient_diff"] == pytest.approx(0.04)
    assert row["ci_low"] < row["patient_diff"] < row["ci_high"]
    assert row["per_patient"]["P1"]["log_minus_linear"] == pytest.approx(0.10)
    assert row["per_patient"]["P3"]["log_minus_linear"] == pytest.approx(0.04)
    assert row["log"]["mean"] > row["linear"]["mean"] and row["seed_diff"] > 0
    assert "+0.040" in bench.markdown({"n8": row})
    # a loss is reported as a loss
    worse = bench.summarise(_runs({"P1": -0.1, "P2": -0.1, "P3": -0.1}), (8,), (0, 1))["n8"]
    assert worse["patient_diff"] == pytest.approx(-0.1) and worse["seed_diff"] == pytest.approx(-0.1)


def test_summary_skips_unfinished_n_and_refuses_mismatched_slices():
    runs = _runs({"P1": 0.0, "P2": 0.0, "P3": 0.0})
    assert bench.summarise(runs[:-1], (8,), (0, 1)) == {}  # one run missing: no row rather than a wrong one
    runs[-1] = {**runs[-1], "test_patients": ["P1"] * 6}
    with pytest.raises(ValueError, match="different slices"):
        bench.summarise(runs, (8,), (0, 1))


@pytest.mark.slow
def test_quick_rehearsal_on_real_patients(tmp_path, sts_data_dir):
    """--quick on the real folder: 2 + 2 patients preprocessed once with the log spec (PET kept above 15 SUV),
    both arms trained and tested on the same slices, a resumable summary by patient."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "pet_map_segmentation.py"), "--quick"]
    cmd += ["--work", str(tmp_path / "w"), "--data-dir", str(sts_data_dir)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = tmp_path / "w" / "quick"
    summary = json.loads((work / "summary.json").read_text())
    split = summary["split"]
    assert len(split["test"]) == 2 and summary["train_patients"]["n2"] == split["train_pool"][:2]
    row = summary["table"]["n2"]
    assert row["n_patients"] == 2 and row["n_slices"] == summary["test_slices"]
    assert set(row["per_patient"]) == set(split["test"])
    assert "| 2 |" in proc.stdout and "log − linear" in proc.stdout
    # the cache holds physical PET beyond the linear cap (the log spec's 60 SUV), CT on the experiment's clip
    slices = torch.load(work / "slices_log.pt", weights_only=True)
    assert max(float(s["pet"].max()) for s in slices) > 15.0
    assert sum(summary["tumour_pixels_above_15_suv_per_patient"].values()) > 0
    assert min(float(s["ct"].min()) for s in slices) >= -1000.0
    runs = {m: json.loads((work / "runs" / f"n2_s0_{m}.json").read_text()) for m in bench.MAPS}
    assert runs["linear"]["test_patients"] == runs["log"]["test_patients"]
    assert runs["linear"]["train_slices"] == runs["log"]["train_slices"]
    # a second call reuses the cache and the runs
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[prepare]" not in again.stdout and "[n2 s0" not in again.stdout
    assert json.loads((work / "summary.json").read_text())["table"] == summary["table"]


def test_missing_folder_is_a_clear_message(tmp_path):
    script = str(REPO / "benchmarks" / "pet_map_segmentation.py")
    cmd = [sys.executable, script, "--quick", "--work", str(tmp_path), "--data-dir", str(tmp_path / "absent")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "real-patient folder is absent" in proc.stderr


def test_control_compares_the_linear_arm_with_the_experiment_runs(tmp_path):
    runs = _runs({"P1": 0.0, "P2": 0.0, "P3": 0.0})
    (tmp_path / "segment").mkdir()
    assert bench.control(runs, tmp_path, (8,), (0, 1)) == {}  # no experiment runs: no control
    for r in runs:
        if r["pet_map"] == "linear":  # the experiment's runs: 0.05 lower on every slice
            theirs = {**r, "dice": [d - 0.05 for d in r["dice"]], "mean_dice": r["mean_dice"] - 0.05}
            (tmp_path / "segment" / f"n8_s{r['seed']}_real.json").write_text(json.dumps(theirs))
    row = bench.control(runs, tmp_path, (8,), (0, 1))["n8"]
    assert row["patient_diff"] == pytest.approx(0.05) and row["mean_abs_seed_diff"] == pytest.approx(0.05)
    assert "+0.050" in bench.control_markdown({"n8": row})


def test_by_uptake_splits_the_test_patients_by_tumour_above_15_suv():
    table = bench.summarise(_runs({"P1": 0.10, "P2": -0.02, "P3": 0.04}), (8,), (0, 1))
    row = bench.by_uptake(table, {"P1": 12, "P2": 0, "P3": 0})["n8"]
    assert row["above_15_suv_patients"] == ["P1"]
    assert row["above_15_suv_mean_diff"] == pytest.approx(0.10) and row["others_mean_diff"] == pytest.approx(
        0.01
    )
    assert "+0.100" in bench.uptake_markdown({"n8": row})
