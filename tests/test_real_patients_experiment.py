"""The real-patient downstream experiment (experiments/real_patients.py): split, statistics, report, a rehearsal."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import downstream  # noqa: E402
import real_patients  # noqa: E402

IDS = [f"STS_{i:03d}" for i in range(4, 40)]


def test_patient_split_is_fixed_disjoint_and_order_free():
    split = real_patients.patient_split(IDS)
    assert len(split["test"]) == 12 and len(split["train_pool"]) == 24
    assert not set(split["test"]) & set(split["train_pool"])
    assert sorted(split["test"] + split["train_pool"]) == sorted(IDS)
    assert real_patients.patient_split(list(reversed(IDS))) == split  # the input order does not matter
    assert real_patients.patient_split(IDS, seed=1)["test"] != split["test"]
    # arms are nested and never touch the test patients
    n8, n16 = (set(real_patients.train_patients(split, n)) for n in (8, 16))
    assert len(n8) == 8 and n8 < n16 and not n16 & set(split["test"])


@pytest.mark.parametrize(
    "ids, kwargs, match",
    [(IDS + IDS[:1], {}, "unique"), (IDS, {"num_test": 36}, "num_test"), (IDS, {"num_test": 0}, "num_test")],
)
def test_patient_split_refuses_bad_input(ids, kwargs, match):
    with pytest.raises(ValueError, match=match):
        real_patients.patient_split(ids, **kwargs)


def test_train_patients_refuses_more_than_the_pool():
    with pytest.raises(ValueError, match="n_real"):
        real_patients.train_patients(real_patients.patient_split(IDS), 25)


def test_patient_effect_is_the_t_interval_over_patients():
    from monai_pairsynth.metrics import compare_dice

    base = [0.5, 0.5, 0.6, 0.6, 0.7, 0.7]
    arm = [0.6, 0.6, 0.8, 0.8, 1.0, 1.0]  # per patient P1: +0.1, P2: +0.2, P3: +0.3 (two slices each)
    cmp = compare_dice(base, arm, patient_ids=["P1", "P1", "P2", "P2", "P3", "P3"])
    effect = downstream.patient_effect(cmp)
    assert cmp["n"] == 3
    # mean 0.2, sd 0.1 over 3 patients: half width t(0.975, 2) * 0.1 / sqrt(3)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert effect["patient_diff"] == pytest.approx(0.2)
    assert effect["ci_low"] == pytest.approx(0.2 - half) and effect["ci_high"] == pytest.approx(0.2 + half)
    assert effect["effect_dz"] == pytest.approx(2.0)


def test_real_section_is_replaced_in_place_and_kept_by_the_phantom_page():
    page = "# Results\n\nphantom text\n"
    once = downstream.replace_section(page, "## Real patients\n\nfirst")
    twice = downstream.replace_section(once + "\ntrailer\n", "## Real patients\n\nsecond")
    assert "first" not in twice and "second" in twice and twice.count(downstream.SECTION_START) == 1
    assert twice.index("second") < twice.index("trailer")
    kept = downstream.kept_section(twice)
    assert kept.startswith(downstream.SECTION_START) and "second" in kept and "phantom" not in kept
    assert downstream.kept_section(page) == ""


def _run(args, cwd):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_real_patient_rehearsal_reports_by_patient(tmp_path, sts_data_dir):
    """prepare -> a 1-epoch generator on 2 patients -> pools, 4 arms, report: statistics over the 12 test patients."""
    root = tmp_path / "real"
    repo = EXPERIMENTS.parent
    script = str(EXPERIMENTS / "real_patients.py")
    common = ["--root", str(root), "--data-dir", str(sts_data_dir)]
    _run([script, "generators", *common, "--n-real", "2", "--epochs", "1", "--jobs", "1"], cwd=repo)
    split = json.loads((root / "split.json").read_text())
    assert len(split["test"]) == 12
    # the generator saw exactly the arm's two patients
    datalist = json.loads((root / "datalist_n2.json").read_text())["training"]
    assert [it["case_id"] for it in datalist] == split["train_pool"][:2]
    # the label-first arms' generator: the joint one fine-tuned with per-modality timesteps (one short call)
    _run([script, "conditional", *common, "--n-real", "2", "--max-minutes", "0.01", "--jobs", "1"], cwd=repo)
    tuned = json.loads((root / "generators" / "gen_real_n2_cond" / "finetune.json").read_text())
    assert tuned["iterations"] >= 1 and (root / "generators" / "gen_real_n2_cond.pt").is_file()
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nphantom part\n")
    _run([script, "all", *common, "--quick", "--jobs", "1", "--results-md", str(page)], cwd=repo)
    summary = json.loads((root / "summary_quick.json").read_text())
    assert set(summary["table"]) == {
        "n2/real",
        "n2/unfiltered",
        "n2/filtered_r0.5",
        "n2/filtered_r1",
        "n2/pretrain",
        "n2/label_first_r0.5",
        "n2/label_first_r1",
    }
    (label_first,) = [p for p in summary["pools"] if "conditioning" in p]
    assert label_first["generator"] == "gen_real_n2_cond.pt" and label_first["conditioning"] == "clean"
    row = summary["table"]["n2/filtered_r0.5"]
    assert row["n_patients"] == 12 and row["n_slices"] == sum(
        split["slices_per_patient"][p] for p in split["test"]
    )
    assert row["ci_low"] <= row["patient_diff"] <= row["ci_high"]
    run = json.loads((root / "segment" / "n2_s0_real.json").read_text())
    assert sorted(set(run["test_patients"])) == sorted(split["test"]) and len(run["test_patients"]) == len(
        run["dice"]
    )
    text = page.read_text()
    assert text.startswith("# Results\n\nphantom part") and "## Real patients" in text
    assert "12 test patients" in text and "[95 % CI]" in text
    assert "Label-first pools" in text and "masks given clean" in text
    assert "](results_real_preview.png)" in text
    assert (tmp_path / "results_real_preview.png").read_bytes()[:4] == b"\x89PNG"


def test_baseline_caveat_only_when_real_only_dice_falls_with_n():
    settings = real_patients.settings(quick=False)
    rising = {"n8/real": {"mean": 0.5}, "n16/real": {"mean": 0.6}, "n24/real": {"mean": 0.7}}
    assert real_patients.baseline_caveat(settings, rising) == ""
    falling = {**rising, "n24/real": {"mean": 0.4}}
    text = real_patients.baseline_caveat(settings, falling)
    assert "0.400 at N = 24" in text and "effects at N = 24 stand against the lowest" in text


def test_noise_floor_note_reads_the_control(tmp_path):
    assert real_patients.noise_floor_note(tmp_path / "missing.json") == ""
    path = tmp_path / "control.json"
    rows = {
        "n24": {"patient_diff": 0.015, "p_patient_t": 0.0499},
        "n8": {"patient_diff": -0.0197, "p_patient_t": 0.0292},
    }
    path.write_text(json.dumps({"control_vs_experiment": {"table": rows}}))
    note = real_patients.noise_floor_note(path)
    assert "-0.020 (p = 0.029) at N = 8, +0.015 (p = 0.05) at N = 24" in note
    path.write_text(json.dumps({"control_vs_experiment": None}))
    assert real_patients.noise_floor_note(path) == ""
