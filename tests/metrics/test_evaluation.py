"""The ``evaluate`` entry point: end to end on phantom sets, every source type, the CLI, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from monai_pairsynth.data import make_phantom_case, write_phantom_hecktor
from monai_pairsynth.metrics.evaluation import evaluate, load_triplet_set, main
from monai_pairsynth.mixing.synthesis_pool import PhantomPoolSource, SynthesisPool
from monai_pairsynth.quality import build_feature_segmenter, save_feature_segmenter

KEYS = ("ct", "pet", "label")


@pytest.fixture(scope="module")
def tiny_network():
    torch.manual_seed(0)
    return build_feature_segmenter(2, channels=(4, 8, 16), dropout=0.2).eval()


def _strict_json(path):
    def reject(value):
        raise ValueError(f"invalid JSON constant {value}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def test_end_to_end_on_phantom_sets(tmp_path, tiny_network):
    metrics = evaluate(
        "phantom",
        "phantom",
        tmp_path / "eval",
        feature_network=tiny_network,
        num_real=16,
        num_synthetic=16,
        spatial_size=(64, 64),
        spacing=4.0,
        max_pairs=40,
    )
    out = tmp_path / "eval"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "samples.png"]
    assert _strict_json(out / "metrics.json") == metrics
    assert metrics["num_real"] == metrics["num_synthetic"] == 16 and metrics["spatial_size"] == [64, 64]
    assert metrics["per_sample"]["real_case_ids"][0] == "PHANTOM-0000"
    assert metrics["per_sample"]["synthetic_case_ids"][0] == "PHANTOM-100000"
    # two samples of one distribution: the matched FID/MMD are of the real-vs-real order
    ref = metrics["fid"]["reference"]
    assert ref["n_reference"] == 8 and ref["n_compared"] == 8
    assert ref["synthetic_vs_real"] < 5 * ref["real_vs_real"] + 1e-3
    assert 0.0 <= metrics["fid"]["synthetic_vs_real"] < 0.05
    for key in ("ct", "pet"):
        assert 0.7 < metrics["diversity"][key]["diversity_ratio"] < 1.4
    paired = metrics["pairedness"]
    assert paired["real"]["lesion_dice"]["mean"] > 0.7 and paired["synthetic"]["lesion_dice"]["mean"] > 0.7
    assert paired["real"]["body_dice"]["mean"] > 0.98 and paired["synthetic"]["num_empty_masks"] == 0
    assert len(paired and metrics["per_sample"]["pairedness"]["synthetic"]["lesion_dice"]) == 16
    memo = metrics["memorisation"]
    assert memo["num_flagged"] <= 3 and 0.7 < memo["median_ratio"] < 1.4
    md = (out / "metrics.md").read_text(encoding="utf-8")
    assert "| metric | synthetic | real reference | how to read |" in md
    for row in (
        "feature FID",
        "MMD²",
        "MS-SSIM, ct",
        "MS-SSIM, pet",
        "lesion Dice",
        "body Dice",
        "memorisation",
    ):
        assert row in md
    png = (out / "samples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_copies_of_the_real_set_are_flagged(tmp_path, tiny_network):
    real = [make_phantom_case(s, spatial_size=(32, 32), spacing=8.0) for s in range(12)]
    metrics = evaluate(real, real, tmp_path, feature_network=tiny_network, grid_samples=0)
    assert metrics["fid"]["synthetic_vs_real"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["memorisation"]["num_flagged"] == 12 and metrics["memorisation"]["median_ratio"] == 0.0
    assert metrics["diversity"]["ct"]["diversity_ratio"] == pytest.approx(1.0)
    assert metrics["pairedness"]["synthetic"] == metrics["pairedness"]["real"]
    assert metrics["files"]["samples_png"] is None and not (tmp_path / "samples.png").exists()


@pytest.mark.slow
def test_trained_feature_network_is_saved_and_reused(tmp_path):
    common = {"num_real": 8, "num_synthetic": 8, "spatial_size": (32, 32), "spacing": 8.0, "grid_samples": 1}
    first = evaluate(
        "phantom", "phantom", tmp_path / "a", feature_epochs=1, feature_channels=(4, 8), **common
    )
    saved = tmp_path / "a" / "feature_segmenter.pt"
    assert saved.is_file() and first["feature_network"]["saved_to"] == str(saved)
    assert "trained here" in first["feature_network"]["description"]
    again = evaluate("phantom", "phantom", tmp_path / "b", feature_network=saved, **common)
    assert again["fid"] == first["fid"] and again["memorisation"] == first["memorisation"]
    assert not (tmp_path / "b" / "feature_segmenter.pt").exists()
    # seeded: training again gives the same numbers
    third = evaluate(
        "phantom", "phantom", tmp_path / "c", feature_epochs=1, feature_channels=(4, 8), **common
    )
    assert third["fid"] == first["fid"]


def test_pool_file_source(tmp_path, tiny_network):
    pool = SynthesisPool(6, source=PhantomPoolSource((32, 32), spacing=8.0), seed=3)
    pool.fill()
    pool.save(tmp_path / "pool.pt")
    samples, info = load_triplet_set(tmp_path / "pool.pt", name="synthetic set")
    assert info["kind"] == "pool" and info["spatial_size"] == [32, 32] and info["spacing"] == [8.0, 8.0]
    assert len(samples) == 6 and samples[0]["ct"].shape == (1, 32, 32)
    metrics = evaluate(
        "phantom", tmp_path / "pool.pt", tmp_path / "eval", feature_network=tiny_network, num_real=6
    )
    # the real phantom set follows the pool's grid
    assert metrics["spatial_size"] == [32, 32] and metrics["real"]["spacing"] == [8.0, 8.0]
    assert metrics["pairedness"]["synthetic"]["lesion_dice"]["mean"] > 0.5


def test_generated_datalist_source(tmp_path, tiny_network):
    from monai_pairsynth.engines import save_paired_checkpoint
    from monai_pairsynth.inferers.generate import generate
    from monai_pairsynth.networks import PairedDiffusionModel

    torch.manual_seed(0)
    model = PairedDiffusionModel(KEYS, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    ckpt = save_paired_checkpoint(
        tmp_path / "ckpt.pt",
        model,
        noise_scheduler={"num_train_timesteps": 50},
        spatial_size=(32, 32),
        spacing=8.0,
    )
    out = generate(ckpt, tmp_path / "synthetic", 4, num_inference_steps=2, progress=False, preview_cases=0)
    metrics = evaluate(
        "phantom", out / "datalist.json", tmp_path / "eval", feature_network=tiny_network, num_real=8
    )
    assert metrics["synthetic"]["kind"] == "generated" and metrics["num_synthetic"] == 4
    assert metrics["spatial_size"] == [32, 32] and metrics["spacing"] == [8.0, 8.0]
    assert metrics["per_sample"]["synthetic_case_ids"] == [
        "SYNTH-0000",
        "SYNTH-0001",
        "SYNTH-0002",
        "SYNTH-0003",
    ]
    # an untrained generator: its triplets are far less paired than real ones (or have empty masks)
    syn, real = metrics["pairedness"]["synthetic"], metrics["pairedness"]["real"]
    assert syn["num_empty_masks"] == 4 or syn["lesion_dice"]["mean"] < real["lesion_dice"]["mean"]
    assert syn["body_dice"]["mean"] < real["body_dice"]["mean"]
    _strict_json(tmp_path / "eval" / "metrics.json")
    # a datalist of final samples without generate's record: read as is with real_preprocessed=True
    plain = json.loads((out / "datalist.json").read_text())
    del plain["generation"]
    (out / "plain.json").write_text(json.dumps(plain))
    samples, info = load_triplet_set(out / "plain.json", preprocessed=True)
    assert info["kind"] == "datalist" and len(samples) == 4 and info["spacing"] == [8.0, 8.0]
    again = evaluate(
        out / "plain.json", out / "datalist.json", tmp_path / "eval2", feature_network=tiny_network,
        real_preprocessed=True, grid_samples=0,
    )  # fmt: skip
    assert again["fid"]["synthetic_vs_real"] == pytest.approx(0.0, abs=1e-6)
    assert again["memorisation"]["num_flagged"] == 4


def test_real_hecktor_volumes_are_preprocessed_onto_the_synthetic_grid(tmp_path, tiny_network):
    write_phantom_hecktor(tmp_path / "hecktor", 2, spatial_size=(40, 40, 12), spacing=8.0, pet_spacing=8.0)
    synthetic = [make_phantom_case(500 + s, spatial_size=(32, 32), spacing=8.0) for s in range(4)]
    for source in (tmp_path / "hecktor", tmp_path / "hecktor" / "dataset.json"):
        metrics = evaluate(
            source, synthetic, tmp_path / "eval", feature_network=tiny_network, spacing=8.0, grid_samples=0
        )
        assert metrics["real"]["kind"] in ("hecktor", "datalist")
        assert metrics["num_real"] >= 2  # every tumour slice of each case
        assert metrics["real"]["spatial_size"] == [32, 32]
        assert metrics["pairedness"]["real"]["body_dice"]["mean"] > 0.9


def test_command_line(tmp_path, tiny_network, capsys):
    save_feature_segmenter(tiny_network, tmp_path / "net.pt")
    argv = [
        "--real", "phantom", "--synthetic", "phantom", "--output-dir", str(tmp_path / "cli"),
        "--num-real", "6", "--num-synthetic", "5", "--spatial-size", "32", "32", "--spacing", "8",
        "--feature-network", str(tmp_path / "net.pt"), "--quiet", "--max-pairs", "10",
    ]  # fmt: skip
    metrics = main(argv)
    printed = capsys.readouterr().out
    assert "| metric | synthetic |" in printed
    assert metrics["num_real"] == 6 and metrics["num_synthetic"] == 5
    assert _strict_json(tmp_path / "cli" / "metrics.json")["num_synthetic"] == 5
    assert metrics["diversity"]["ct"]["num_pairs_synthetic"] == 10


def test_nan_values_are_written_as_null(tmp_path, tiny_network):
    real = [make_phantom_case(s, spatial_size=(32, 32), spacing=8.0) for s in range(4)]
    empty = [{**c, "label": torch.zeros_like(c["label"])} for c in real]
    metrics = evaluate(real, empty, tmp_path, feature_network=tiny_network, grid_samples=0)
    assert metrics["pairedness"]["synthetic"]["num_empty_masks"] == 4
    assert metrics["pairedness"]["synthetic"]["lesion_dice"]["mean"] is None
    assert metrics["per_sample"]["pairedness"]["synthetic"]["lesion_dice"] == [None] * 4
    assert "lesion term undefined" in (tmp_path / "metrics.md").read_text(encoding="utf-8")
    _strict_json(tmp_path / "metrics.json")


def test_small_grids_skip_diversity(tmp_path, tiny_network):
    real = [make_phantom_case(s, spatial_size=(16, 16), spacing=16.0) for s in range(4)]
    metrics = evaluate(real, real[::-1], tmp_path, feature_network=tiny_network, grid_samples=0)
    assert "28 pixels" in metrics["diversity"]["skipped"]
    assert "skipped" in (tmp_path / "metrics.md").read_text(encoding="utf-8")


def _case(size=32):
    return make_phantom_case(0, spatial_size=(size, size), spacing=256.0 / size)


@pytest.mark.parametrize(
    ("real", "synthetic", "kwargs", "error", "match"),
    [
        ([], [_case()], {}, ValueError, "real set is empty"),
        ([_case()], [], {}, ValueError, "synthetic set is empty"),
        (
            [_case()],
            [{"ct": _case()["ct"], "pet": _case()["pet"]}],
            {},
            KeyError,
            "synthetic set sample 0 has no key 'label'",
        ),
        (
            [_case(32)],
            [_case(64)],
            {},
            ValueError,
            "spatial size \\(32, 32\\) but the synthetic set \\(64, 64\\)",
        ),
        ("phantom", "missing/datalist.json", {}, FileNotFoundError, "synthetic set source"),
        ([_case()], [_case()], {"feature_network": 3}, ValueError, "feature_network must be"),
        ([_case()], [_case()], {"image_keys": ("ct", "label")}, ValueError, "not contain label_key"),
        ([_case()], [_case()], {"image_keys": ("ct",)}, ValueError, "ct_key=None"),
        ([_case()], [{**_case(), "ct": torch.zeros(2, 32, 32)}], {}, ValueError, "channel-first \\(1, H, W"),
        (42, [_case()], {}, ValueError, "real set must be"),
    ],
)
def test_bad_input(tmp_path, real, synthetic, kwargs, error, match):
    with pytest.raises(error, match=match):
        evaluate(real, synthetic, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()  # nothing written


def test_statistics_are_by_patient_when_patients_have_several_slices(tmp_path, tiny_network):
    """Real patients with 4 near-identical slices each: references must not pair slices of one patient."""
    g = torch.Generator().manual_seed(0)
    real = []
    for seed in range(8):
        case = make_phantom_case(seed, spatial_size=(64, 64), spacing=4.0)
        for _ in range(4):  # neighbouring slices: the same anatomy, a little noise
            real.append({**case, "ct": case["ct"] + 5.0 * torch.randn(case["ct"].shape, generator=g)})
    new = [make_phantom_case(100 + s, spatial_size=(64, 64), spacing=4.0) for s in range(8)]
    metrics = evaluate(
        real, new, tmp_path / "eval", feature_network=tiny_network, max_pairs=40, grid_samples=0
    )
    assert metrics["num_real"] == 32 and metrics["num_real_patients"] == 8
    assert metrics["per_sample"]["real_patient_ids"][:5] == ["PHANTOM-0000"] * 4 + ["PHANTOM-0001"]
    ref = metrics["fid"]["reference"]
    assert ref["num_patients_reference"] == 4 and 1 <= ref["num_patients_compared"] <= 4
    assert ref["n_reference"] == 16 and ref["unit"] == "patient-disjoint halves of the real set"
    # new patients against leave-one-patient-out real distances: about as far as real patients are apart
    assert metrics["memorisation"]["reference_unit"] == "leave one patient out"
    assert 0.3 < metrics["memorisation"]["median_ratio"] < 3.0
    paired = metrics["pairedness"]["real"]
    assert paired["num_patients"] == 8 and paired["score"]["n"] == 8 and paired["score"]["num_slices"] == 32
    assert metrics["diversity"]["ct"]["num_pairs_real"] == 40  # subsampled from the 448 cross-patient pairs
    text = (tmp_path / "eval" / "metrics.md").read_text(encoding="utf-8")
    assert "32 samples of 8 patients" in text and "patient-disjoint real halves" in text
    # the same real set read slice by slice (every slice its own case) shows what the old reference did
    as_slices = [{**s, "case_id": f"slice-{i}"} for i, s in enumerate(real)]
    old = evaluate(
        as_slices, new, tmp_path / "old", feature_network=tiny_network, max_pairs=40, grid_samples=0
    )
    assert old["memorisation"]["median_ratio"] > 3 * metrics["memorisation"]["median_ratio"]
