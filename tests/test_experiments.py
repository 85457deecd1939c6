"""The downstream experiment's scripts (experiments/): splits, generator stage, a rehearsal of the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

from downstream_splits import (  # noqa: E402
    MAX_N_REAL,
    generator_name,
    held_out_seeds,
    train_base_seed,
    train_seeds,
)


def test_splits_are_patient_disjoint_and_nested():
    demo_training = set(range(320))  # the bundle's demo checkpoint saw phantom seeds 0-319
    test = set(held_out_seeds(256))
    assert len(test) == 256
    per_seed = {s: set(train_seeds(64, s)) for s in range(3)}
    for s, cases in per_seed.items():
        assert len(cases) == 64
        assert not cases & test and not cases & demo_training
        assert set(train_seeds(16, s)) < cases  # the 16-case set is part of the 64-case set
        for other, other_cases in per_seed.items():
            if other != s:
                assert not cases & other_cases
    assert not test & demo_training
    assert generator_name(16, 2) == "gen_n16_s2"
    with pytest.raises(ValueError, match="n_real"):
        train_seeds(MAX_N_REAL + 1, 0)
    with pytest.raises(ValueError, match="seed"):
        train_base_seed(-1)


def _run(args, cwd, timeout=600):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_summary_tests_over_test_patients_not_seed_times_slice():
    """3 seeds x 4 test patients: the paired tests run over the 4 patients (Dice averaged over seeds)."""
    import math

    import downstream

    settings = downstream.Settings(n_real=(16,), seeds=(0, 1, 2), num_test=4)
    real = {0: [0.5, 0.6, 0.7, 0.4], 1: [0.55, 0.6, 0.65, 0.45], 2: [0.5, 0.65, 0.7, 0.4]}
    results = []
    for seed, dice in real.items():
        for arm in downstream.arms():
            shift = 0.0 if arm["arm"] in ("real", "ct_real") else 0.03
            values = [d + shift + 0.001 * seed for d in dice]
            results.append(
                {"n_real": 16, "arm": arm["arm"], "seed": seed, "dice": values, "mean_dice": sum(values) / 4}
            )
    row = downstream.summarise(results, settings)["n16/filtered_r0.5"]
    assert row["n_patients"] == 4 and row["n_slices"] == 12
    assert row["diff"] == pytest.approx(0.03)
    # every patient gains 0.03 + 0.001 * mean seed: all differences equal, the degenerate t-test is p = 0;
    # the Wilcoxon test over 4 patients cannot go below 0.125 (it could with 12 seed x slice pairs)
    assert row["p_patient_wilcoxon"] == pytest.approx(0.125) and not math.isnan(row["p_patient_t"])
    assert "p (t, test patients)" in downstream.dice_tables(settings, {"n16/filtered_r0.5": row})


def test_reading_counts_the_retraining_noise():
    """Every patient gains the same in each seed but the gain flips between seeds (+0.03, +0.05, -0.02): the test over
    patients (seeds averaged away) calls it a gain, the patients x seeds test and so the reading do not."""
    import downstream

    settings = downstream.Settings(n_real=(16,), seeds=(0, 1, 2), num_test=4, ratios=(0.5,), ct_only=False)
    base = [0.5, 0.6, 0.7, 0.4]
    results = []
    for seed, gain in zip((0, 1, 2), (0.03, 0.05, -0.02), strict=True):
        for arm in downstream.arms(settings):
            values = [d + (0.0 if arm["arm"] == "real" else gain) + 0.002 * i for i, d in enumerate(base)]
            values = [d if arm["arm"] != "real" else d - 0.002 * i for i, d in enumerate(values)]
            results.append(
                {"n_real": 16, "arm": arm["arm"], "seed": seed, "dice": values, "mean_dice": sum(values) / 4}
            )
    row = downstream.summarise(results, settings)["n16/filtered_r0.5"]
    assert row["p_patient_t"] < 0.05 < row["p_crossed"]
    assert row["crossed_ci_low"] < 0 < row["crossed_ci_high"]
    assert downstream._verdict(row) == "no significant difference"
    table = downstream.dice_tables(settings, {"n16/real": {**row, "arm": "real"}, "n16/filtered_r0.5": row})
    assert "p (patients × seeds) [95 % CI]" in table and f"{row['p_crossed']:.2g}" in table
    # a table from before the crossed test keeps its by-patient reading
    old = {k: v for k, v in row.items() if not k.startswith(("p_crossed", "crossed_"))}
    assert downstream._verdict(old) == "significant gain"


@pytest.mark.slow
def test_generator_stage_then_quick_experiment(tmp_path):
    root = tmp_path / "ds"
    repo = EXPERIMENTS.parent
    out = _run(
        [
            str(EXPERIMENTS / "train_generators.py"),
            "--out",
            str(root / "generators"),
            "--n-real",
            "16",
            "--seeds",
            "0",
            "--steps",
            "1",
            "--device",
            "cpu",
        ],
        cwd=repo,
    )
    assert "[gen_n16_s0] 1 steps" in out
    # the generator saw exactly the arm's real cases: 16 phantom cases from the arm's base seed
    run_config = json.loads((root / "generators" / "gen_n16_s0" / "run_config.json").read_text())
    assert run_config["num_cases"] == 16 and run_config["seed"] == train_base_seed(0)
    assert (root / "generators" / "gen_n16_s0.pt").is_file()

    report = tmp_path / "results.md"
    _run(
        [
            str(EXPERIMENTS / "downstream.py"),
            "all",
            "--root",
            str(root),
            "--quick",
            "--jobs",
            "1",
            "--results-md",
            str(report),
        ],
        cwd=repo,
    )
    summary = json.loads((root / "summary.json").read_text())
    arms = {key.split("/")[1] for key in summary["table"]}
    assert arms == {
        "real",
        "unfiltered",
        "filtered_r0.25",
        "filtered_r0.5",
        "filtered_r1",
        "filtered_r2",
        "pretrain",
        "ct_real",
        "ct_filtered_r0.5",
        "label_first_r0.5",
        "label_first_r1",
    }
    for row in summary["table"].values():
        assert 0.0 <= row["mean"] <= 1.0
    assert summary["table"]["n16/filtered_r0.5"]["baseline"] == "real"
    assert summary["table"]["n16/ct_filtered_r0.5"]["baseline"] == "ct_real"
    pool, label_first = summary["pools"]
    assert pool["candidates"] == 4 * pool["pool_size"]
    # no per-modality generator in this rehearsal: the label-first pool clamps its masks into the joint one
    assert label_first["name"] == "gen_n16_s0_label_first" and label_first["generator"] == "gen_n16_s0.pt"
    assert (
        label_first["conditioning"] == "clamp" and label_first["candidates"] == 4 * label_first["pool_size"]
    )
    assert summary["table"]["n16/label_first_r1"]["baseline"] == "real"
    text = report.read_text()
    assert "### N_real = 16" in text and "real + filtered synthetic, r = 2" in text
    assert "real + label-first synthetic (filtered), r = 1" in text and "masks given clamp" in text
    assert (tmp_path / "results_dice_vs_ratio.png").stat().st_size > 1000
    # a second run reuses every finished result instead of recomputing it
    first = (root / "segment" / "n16_s0_real.json").stat().st_mtime_ns
    _run([str(EXPERIMENTS / "downstream.py"), "report", "--root", str(root), "--quick"], cwd=repo)
    assert (root / "segment" / "n16_s0_real.json").stat().st_mtime_ns == first


def test_label_first_arms_follow_the_settings():
    import downstream

    lf = [a for a in downstream.arms(downstream.FULL) if a["pool"] == "label_first"]
    assert [(a["ratio"], a["pretrain"], tuple(a["keys"])) for a in lf] == [
        (0.5, False, ("ct", "pet")),
        (1.0, False, ("ct", "pet")),
    ]
    none = downstream.Settings(label_first_ratios=())
    assert not [a for a in downstream.arms(none) if a["pool"] == "label_first"]
    assert downstream.arm_label("label_first_r2") == "real + label-first synthetic (filtered), r = 2"
    with pytest.raises(KeyError):
        downstream.arm_label("no_such_arm")


def test_label_first_pool_prefers_the_conditional_generator(tmp_path):
    import downstream

    data = downstream.PhantomData(4)
    joint = data.generator_file(tmp_path, 16, 0)
    assert downstream.label_first_generator(tmp_path, 16, 0, data) == joint  # none yet: the joint one
    joint.parent.mkdir(parents=True)
    cond = joint.with_name(joint.stem + "_cond.pt")
    cond.write_bytes(b"")
    assert downstream.label_first_generator(tmp_path, 16, 0, data) == cond
    assert downstream.pool_file(tmp_path, "g", "label_first").name == "g_label_first.pt"
    assert downstream.pool_file(tmp_path, "g", "filtered").name == "g.pt"


def test_conditional_generator_command_trains_per_modality_timesteps(tmp_path):
    import train_generators

    joint = train_generators.train_command(
        tmp_path, 16, 0, device="cpu", steps=1, max_minutes=None, threads=1
    )
    cond = train_generators.train_command(
        tmp_path, 16, 0, device="cpu", steps=1, max_minutes=None, threads=1, independent_timestep_prob=0.5
    )
    assert "--independent-timestep-prob" not in joint
    assert cond[: len(joint)] == joint and cond[len(joint) :] == ["--independent-timestep-prob", "0.5"]


def test_label_first_arms_are_compared_with_joint_mixing_by_patient():
    import downstream

    settings = downstream.Settings(n_real=(16,), seeds=(0, 1), num_test=4, ct_only=False)
    base = [0.5, 0.6, 0.7, 0.4]
    shifts = {"real": 0.0, "filtered_r0.5": -0.10, "label_first_r0.5": 0.02}
    results = []
    for seed in settings.seeds:
        for arm in downstream.arms(settings):
            noise = [0.01 * ((i + seed + len(arm["arm"])) % 3) for i in range(4)]
            values = [d + shifts.get(arm["arm"], 0.0) + e for d, e in zip(base, noise)]
            results.append(
                {"n_real": 16, "arm": arm["arm"], "seed": seed, "dice": values, "mean_dice": sum(values) / 4}
            )
    table = downstream.summarise(results, settings)
    vs = table["n16/label_first_r0.5"]["vs_joint"]
    assert vs["arm"] == "filtered_r0.5" and vs["ci_low"] <= vs["patient_diff"] <= vs["ci_high"]
    assert vs["patient_diff"] == pytest.approx(0.12, abs=0.02) and vs["p_patient_t"] < 0.05
    assert "vs_joint" not in table["n16/filtered_r0.5"]
    text = downstream.outcome(settings, table)
    assert "Label-first minus joint (filtered) mixing over test patients, r = 0.5: +0.1" in text


def _phantom_checkpoint(path, per_modality: bool):
    import torch

    from monai_pairsynth.engines import PairedDiffusionPrepareBatch, save_paired_checkpoint
    from monai_pairsynth.networks import PairedDiffusionModel

    mods = ("ct", "pet", "label")
    torch.manual_seed(0)
    tiny = {"channels": (4, 8), "attention_levels": (False, False), "norm_num_groups": 4}
    model = PairedDiffusionModel(mods, condition_timesteps=per_modality, **tiny)
    prep = PairedDiffusionPrepareBatch(mods, 50, independent_timestep_prob=0.5 if per_modality else 0.0)
    return save_paired_checkpoint(
        path,
        model,
        noise_scheduler={"num_train_timesteps": 50},
        spatial_size=[64, 64],
        spacing=4.0,
        prepare_batch=prep,
    )


def test_label_first_phantom_refuses_swapped_generators(tmp_path):
    import label_first_phantom

    shared = _phantom_checkpoint(tmp_path / "shared.pt", per_modality=False)
    cond = _phantom_checkpoint(tmp_path / "cond.pt", per_modality=True)
    with pytest.raises(ValueError, match="is not the shared variant"):
        label_first_phantom.export_generators(tmp_path / "swapped", cond, shared)
    with pytest.raises(FileNotFoundError, match=r"run benchmarks/conditional_sampling\.py first"):
        label_first_phantom.export_generators(tmp_path / "missing", tmp_path / "none.pt", cond)


@pytest.mark.slow
def test_label_first_phantom_rehearsal_writes_its_section(tmp_path, monkeypatch):
    import label_first_phantom

    from monai_pairsynth.mixing import pool_builder

    fits = []
    fit = pool_builder.train_quality_filter
    monkeypatch.setattr(pool_builder, "train_quality_filter", lambda *a, **k: fits.append(1) or fit(*a, **k))

    shared = _phantom_checkpoint(tmp_path / "shared.pt", per_modality=False)
    cond = _phantom_checkpoint(tmp_path / "cond.pt", per_modality=True)
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nphantom page\n")
    args = ["--root", str(tmp_path / "lf"), "--shared", str(shared), "--per-modality", str(cond)]
    assert label_first_phantom.main([*args, "--jobs", "1", "--quick", "--results-md", str(page)]) == 0
    summary = json.loads((tmp_path / "lf" / "summary.json").read_text())
    assert {"n16/real", "n16/filtered_r0.5", "n16/label_first_r0.5"} <= set(summary["table"])
    label_first = [p for p in summary["pools"] if "conditioning" in p]
    assert [(p["generator"], p["conditioning"]) for p in label_first] == [("demo_cond.pt", "clean")]
    # one filter fit for the arm: the label-first pool reuses the joint pool's, kept beside the pools
    assert len(fits) == 1 and (tmp_path / "lf" / "pools" / "demo_n16_filter.pt").is_file()
    text = page.read_text()
    assert text.startswith("# Results\n\nphantom page") and "## Label-first against joint mixing" in text
    # rewriting the section replaces it in place
    label_first_phantom.main([*args, "--jobs", "1", "--quick", "--results-md", str(page)])
    assert page.read_text().count("## Label-first against joint mixing") == 1


def test_named_sections_are_replaced_and_kept_independently():
    import downstream

    page = downstream.replace_section("# phantom\n", "## real v1", "real-patients")
    page = downstream.replace_section(page, "## lf v1", "label-first-phantom")
    page = downstream.replace_section(page, "## lf v2", "label-first-phantom")
    assert "## lf v1" not in page and page.count("## lf v2") == 1 and "## real v1" in page
    kept = [downstream.kept_section(page, name) for name in downstream.KEPT_SECTIONS]
    assert all(kept) and "## lf v2" in kept[0] and "## real v1" in kept[1]
    assert downstream.kept_section("# phantom only\n", "label-first-phantom") == ""
