"""experiments/generator_variants.py: the generator half of the PET-map and field-of-view choices on real patients
(commands, names, draw statistics, the report read off cached runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import generator_variants as gv  # noqa: E402
import real_patients  # noqa: E402

IDS = [f"STS_{i:03d}" for i in range(4, 40)]


def _split_root(tmp_path: Path) -> Path:
    root = tmp_path / "real"
    root.mkdir()
    split = {**real_patients.patient_split(IDS), "split_seed": 2026}
    (root / "split.json").write_text(json.dumps(split))
    train = real_patients.train_patients(split, gv.N_REAL)
    items = [
        {"case_id": p, "ct": f"{p}_ct.nii.gz", "pet": f"{p}_pet.nii.gz", "label": f"{p}_gt.nii.gz"}
        for p in IDS
    ]
    (root / "datalist_all.json").write_text(json.dumps({"training": items}))
    assert len(train) == gv.N_REAL
    return root


def test_variant_command_differs_from_the_reference_in_its_change_only(tmp_path):
    root = _split_root(tmp_path)
    ref = real_patients.generator_command(root, gv.N_REAL, device="cpu", max_minutes=5, threads=1, epochs=14)
    for variant, spec in gv.VARIANTS.items():
        cmd = real_patients.generator_command(
            root,
            gv.N_REAL,
            device="cpu",
            max_minutes=5,
            threads=1,
            epochs=14,
            name=gv.variant_name(variant),
            seed=spec["seed"],
            extra=spec["extra"],
        )
        out = cmd[cmd.index("--output-dir") + 1]
        assert out.endswith(f"gen_real_n24_{variant}")
        assert cmd[cmd.index("--seed") + 1] == str(spec["seed"])
        # take away the output folder, the seed and the variant's flags: the reference command is left
        stripped = [a for a in cmd if a != out]
        for flag in spec["extra"]:
            stripped.remove(flag)
        stripped[stripped.index("--seed") + 1] = "0"
        assert stripped == [a for a in ref if not a.endswith("gen_real_n24")]
    assert "--pet-intensity" not in ref and "--use-fov-mask" not in ref


def test_variant_names_pools_and_arms_keep_the_reference_apart(tmp_path):
    root = tmp_path
    assert gv.variant_name("linear") == "gen_real_n24"
    assert gv.VariantData(root).generator_file(root, 24, 0).name == "gen_real_n24.pt"
    log = gv.VariantData(root, variant="log")
    assert log.generator_file(root, 24, 0).name == "gen_real_n24_log.pt"
    assert log.pool_name(24, 0) == "pool_real_n24_log" != gv.VariantData(root).pool_name(24, 0)
    assert gv.arm("linear")["arm"] == "filtered_r0.5" and gv.arm("fov")["arm"] == "filtered_r0.5_fov"
    assert gv.arm("fov")["ratio"] == 0.5 and gv.arm("fov")["pool"] == "filtered"


def test_reference_epochs_needs_the_experiment_generators(tmp_path):
    with pytest.raises(SystemExit, match=r"generators\.json"):
        gv.reference_epochs(tmp_path)
    (tmp_path / "generators").mkdir()
    (tmp_path / "generators" / "generators.json").write_text(json.dumps({"gen_real_n8": {"epochs": 40}}))
    with pytest.raises(SystemExit, match="gen_real_n24"):
        gv.reference_epochs(tmp_path)


def _triplet(suv_inside: float, mask: bool = True) -> dict[str, torch.Tensor]:
    ct = torch.full((1, 32, 32), -1000.0)
    ct[:, 4:28, 4:28] = 40.0
    pet = torch.zeros(1, 32, 32)
    pet[:, 4:28, 4:28] = 1.0
    label = torch.zeros(1, 32, 32)
    if mask:
        pet[:, 12:18, 12:18] = suv_inside
        pet[:, 12:14, 12:18] = 2.0  # a third of the tumour below the peak
        label[:, 12:18, 12:18] = 1.0
    return {"ct": ct, "pet": pet, "label": label}


def test_tumour_stats_measure_the_tumour_in_physical_units():
    stats = gv.tumour_stats([_triplet(20.0), _triplet(8.0), _triplet(0.0, mask=False)], spacing=4.0)
    assert stats["has_tumour"].tolist() == [True, True, False]
    assert stats["suvmax"][:2].tolist() == [20.0, 8.0]
    assert stats["above15"][0] == pytest.approx(24 / 36) and stats["above15"][1] == 0.0
    assert stats["suvmean"][1] == pytest.approx((24 * 8.0 + 12 * 2.0) / 36)
    assert torch.isnan(torch.tensor(stats["suvmax"][2])) and torch.isnan(torch.tensor(stats["pairedness"][2]))
    # a batched dict gives the same numbers as the list of samples
    batched = {k: torch.stack([_triplet(20.0)[k], _triplet(8.0)[k]]) for k in ("ct", "pet", "label")}
    again = gv.tumour_stats(batched, spacing=4.0)
    assert again["suvmax"].tolist() == [20.0, 8.0]


def test_summarise_draws_weights_each_patient_once():
    stats = gv.tumour_stats([_triplet(20.0), _triplet(20.0), _triplet(20.0), _triplet(8.0)], spacing=4.0)
    by_sample = gv.summarise_draws(stats)
    by_patient = gv.summarise_draws(stats, ["A", "A", "A", "B"])
    assert by_sample["units"] == 4 and by_patient["units"] == 2
    assert by_sample["suvmax"] == pytest.approx((3 * 20 + 8) / 4)
    assert by_patient["suvmax"] == pytest.approx((20 + 8) / 2)  # patient A's three slices count once
    assert by_patient["suvmax_median"] == 8.0 and by_patient["suvmax_p90"] == 20.0
    empty = gv.summarise_draws(gv.tumour_stats([_triplet(0.0, mask=False)], spacing=4.0))
    assert empty["has_tumour"] == 0.0 and empty["suvmax_median"] != empty["suvmax_median"]  # NaN


def _fake_runs(root: Path, arm: str, shift: float, test: list[str]) -> None:
    for seed in real_patients.SEEDS:
        dice = [0.5 + shift + 0.01 * ((i + seed) % 3) for i in range(2 * len(test))]
        run = {"arm": arm, "n_real": 24, "seed": seed, "dice": dice, "test_patients": test + test}
        run["mean_dice"] = sum(dice) / len(dice)
        run["seconds"] = 1.0
        (root / "segment" / f"n24_s{seed}_{arm}.json").write_text(json.dumps(run))


def test_report_reads_the_cached_runs_and_says_what_differs(tmp_path):
    root = _split_root(tmp_path)
    (root / "segment").mkdir()
    (root / "pools").mkdir()
    (root / "generators").mkdir()
    split = json.loads((root / "split.json").read_text())
    slices = [{**_triplet(6.0 + i), "case_id": p} for i, p in enumerate(split["train_pool"])]
    torch.save(slices, root / "slices.pt")
    summary = {
        "epochs": 14,
        "iterations": 644,
        "cpu_seconds_per_iteration": 2.3,
        "last_epoch_metrics": {"loss": 0.03},
    }
    (root / "generators" / "generators.json").write_text(json.dumps({"gen_real_n24": summary}))
    variants = ["log", "seed1"]
    (root / "generators" / "variants.json").write_text(
        json.dumps({gv.variant_name(v): summary for v in variants})
    )
    for v, suv in (("linear", 9.0), ("log", 25.0), ("seed1", 9.0)):
        tensors = {k: torch.stack([_triplet(suv)[k]] * 4) for k in ("ct", "pet", "label")}
        info = {"candidates": 16, "rejections": {"mask_outside_body": 2}, "sample_seconds": 1.0}
        torch.save(
            {"unfiltered": tensors, "info": info},
            root / "pools" / f"{gv.VariantData(root, variant=v).pool_name(24, 0)}.pt",
        )
    test = split["test"]
    _fake_runs(root, "real", 0.0, test)
    _fake_runs(root, "filtered_r0.5", 0.02, test)
    _fake_runs(root, "filtered_r0.5_log", 0.10, test)
    _fake_runs(root, "filtered_r0.5_seed1", 0.021, test)
    text = gv.report(root, variants, minutes=1.0)
    assert "| log | PET log map (0-60 SUV) | 14 | 644 |" in text
    assert "| log (4 draws) | 1.00 | 25.0 |" in text  # the log generator's tumours keep their 25 SUV
    assert "| linear (4 draws) | 1.00 | 9.0 |" in text
    assert "2 / 0 of 16" in text
    # log: +0.08 against the reference, far beyond the seed-1 retrain's +0.001
    assert "**log** against the reference: +0.080" in text and "(larger than that)" in text
    assert (root / "variants_summary.json").is_file()
    # a missing run is named, not skipped
    (root / "segment" / "n24_s3_filtered_r0.5_log.json").unlink()
    with pytest.raises(SystemExit, match=r"n24_s3_filtered_r0\.5_log\.json"):
        gv.report(root, variants, minutes=1.0)
