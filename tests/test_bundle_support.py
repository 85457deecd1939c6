from __future__ import annotations

import json

import pytest
import torch

from monai_pairsynth.bundle_checks import (
    BundleSettingError,
    check_dataset_dir,
    check_files_exist,
    check_generator_checkpoint,
    check_mixing_settings,
    check_pool_file,
    check_synthetic_ratio,
)
from monai_pairsynth.data import write_phantom_hecktor
from monai_pairsynth.data.sources import real_datalist, real_samples
from monai_pairsynth.distributed import distributed_trainer, is_main_process
from monai_pairsynth.engines import export_sampling_checkpoint, load_paired_checkpoint, save_paired_checkpoint
from monai_pairsynth.metrics.report import format_results_table, write_evaluation_report
from monai_pairsynth.metrics.segmentation_dice import segmentation_test_dice
from monai_pairsynth.mixing.pool_builder import (
    build_synthesis_pool,
    merge_pool_states,
    mixing_pool,
    train_quality_filter,
)
from monai_pairsynth.mixing.synthesis_pool import PhantomPoolSource, SynthesisPool
from monai_pairsynth.networks import PairedDiffusionModel


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "abc", None])
def test_synthetic_ratio_rejects(bad):
    with pytest.raises(BundleSettingError, match="synthetic_ratio"):
        check_synthetic_ratio(bad)


@pytest.mark.parametrize("ok", [0, 0.25, "0.5", 2])
def test_synthetic_ratio_accepts(ok):
    assert check_synthetic_ratio(ok) == float(ok)


def test_real_datalist_phantom_default_and_errors(tmp_path):
    assert real_datalist(None) is None and real_datalist("") is None
    with pytest.raises(BundleSettingError, match="does not exist"):
        real_datalist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleSettingError, match="empty"):
        real_datalist(tmp_path / "empty")


def test_real_datalist_hecktor_split_is_patient_disjoint(tmp_path):
    write_phantom_hecktor(
        tmp_path / "h", num_cases=10, spatial_size=(24, 24, 8), spacing=4.0, pet_spacing=8.0
    )
    parts = {s: real_datalist(tmp_path / "h", s) for s in ("train", "val", "test")}
    ids = {s: {d["patient_id"] for d in v} for s, v in parts.items()}
    assert sum(len(v) for v in parts.values()) == 10
    assert (
        not (ids["train"] & ids["val"])
        and not (ids["train"] & ids["test"])
        and not (ids["val"] & ids["test"])
    )
    assert parts["train"] == real_datalist(tmp_path / "h", "train")


def test_real_datalist_json(tmp_path):
    write_phantom_hecktor(tmp_path / "h", num_cases=5, spatial_size=(24, 24, 8), spacing=4.0, pet_spacing=8.0)
    items = real_datalist(tmp_path / "h" / "dataset.json", "train", fractions=(1.0, 0.0, 0.0))
    assert len(items) == 5 and all(json.dumps(i) for i in items)


def test_export_sampling_checkpoint_is_slim_and_loads(tmp_path):
    model = PairedDiffusionModel(channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    ema = PairedDiffusionModel(**model.get_config())
    for p in ema.parameters():
        p.data.add_(0.01)
    opt = torch.optim.Adam(model.parameters())
    src = save_paired_checkpoint(
        tmp_path / "full.pt", model, ema_model=ema, optimizer=opt, spatial_size=(16, 16), spacing=4.0
    )
    dst = export_sampling_checkpoint(src, tmp_path / "slim.pt")
    assert dst.stat().st_size < src.stat().st_size
    loaded, ckpt = load_paired_checkpoint(dst)
    assert ckpt["optimizer"] is None and ckpt["spatial_size"] == [16, 16]
    x = {m: torch.randn(1, 1, 16, 16) for m in model.modalities}
    t = torch.tensor([10])
    with torch.no_grad():
        expected = ema.eval()(x, t)
        got = loaded(x, t)
    for m in model.modalities:
        torch.testing.assert_close(got[m], expected[m])


# ---------------------------------------------------------------------------------------------- checks
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    model = PairedDiffusionModel(channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    return save_paired_checkpoint(
        tmp_path_factory.mktemp("c") / "tiny.pt", model, spatial_size=(16, 16), spacing=8.0
    )


def test_check_generator_checkpoint_accepts_its_own_grid(tiny_ckpt):
    info = check_generator_checkpoint(
        tiny_ckpt, spatial_size=[16, 16], spacing=8.0, modalities=["label", "ct", "pet"]
    )
    assert (
        info["spatial_size"] == [16, 16]
        and info["spacing"] == 8.0
        and info["modalities"] == ["ct", "pet", "label"]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"spatial_size": [32, 32]},
            r"trained at 16x16, this run uses 32x32 \(to use it: --spatial_size \"\[16, 16\]\" --spacing 8.0\)",
        ),
        ({"spacing": 4.0}, r"trained at 8.0 mm, this run uses 4.0 mm"),
        (
            {"modalities": ["ct", "mr", "label"]},
            r"it generates \['ct', 'pet', 'label'\], this run uses \['ct', 'mr', 'label'\]",
        ),
    ],
)
def test_check_generator_checkpoint_names_the_mismatch(tiny_ckpt, kwargs, message):
    with pytest.raises(BundleSettingError, match=message):
        check_generator_checkpoint(tiny_ckpt, **kwargs)


def test_check_generator_checkpoint_missing_or_unreadable(tmp_path):
    with pytest.raises(BundleSettingError, match="does not exist; train one with"):
        check_generator_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BundleSettingError, match="is unusable"):
        check_generator_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(BundleSettingError, match="is not set"):
        check_generator_checkpoint(None)


def _filled_pool(size=(8, 8), n=3, seed=0, spacing=2.0):
    pool = SynthesisPool(n, spatial_shape=size, source=PhantomPoolSource(size, spacing=spacing), seed=seed)
    pool.fill()
    return pool


def test_check_pool_file_and_mixing_settings(tmp_path, tiny_ckpt):
    pool = _filled_pool((16, 16), spacing=8.0)
    pool.save(tmp_path / "pool.pt")
    assert (
        check_pool_file(tmp_path / "pool.pt", spatial_size=[16, 16], keys=["ct", "pet", "label"])["size"] == 3
    )
    with pytest.raises(BundleSettingError, match="holds 16x16 triplets, this run uses 32x32"):
        check_pool_file(tmp_path / "pool.pt", spatial_size=[32, 32])
    with pytest.raises(
        BundleSettingError, match=r"holds keys \['ct', 'pet', 'label'\], this run uses \['ct', 'label'\]"
    ):
        check_pool_file(tmp_path / "pool.pt", keys=["ct", "label"])
    # ratio 0: nothing about the generator is checked; ratio > 0: the pool file, else the checkpoint
    assert check_mixing_settings(0, diffusion_checkpoint=tmp_path / "none.pt") == 0.0
    assert check_mixing_settings("0.5", pool_file=tmp_path / "pool.pt", spatial_size=[16, 16]) == 0.5
    assert check_mixing_settings(1, diffusion_checkpoint=tiny_ckpt, spatial_size=[16, 16], spacing=8.0) == 1.0
    with pytest.raises(BundleSettingError, match="diffusion_checkpoint"):
        check_mixing_settings(1, diffusion_checkpoint=tmp_path / "none.pt")


def test_check_files_exist(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x")
    assert check_files_exist({"a": tmp_path / "a.pt", "b": None, "c": ""}) == {"a": str(tmp_path / "a.pt")}
    with pytest.raises(BundleSettingError, match=r"^b '.*b.pt' does not exist; make it\.$"):
        check_files_exist({"b": tmp_path / "b.pt"}, hint="make it")


def test_check_dataset_dir_counts_each_split(tmp_path):
    assert check_dataset_dir(None, ["train", "val"]) == {}
    write_phantom_hecktor(
        tmp_path / "h", num_cases=10, spatial_size=(24, 24, 8), spacing=4.0, pet_spacing=8.0
    )
    assert check_dataset_dir(tmp_path / "h", ["train", "val", "test"]) == {"train": 8, "val": 1, "test": 1}


# ---------------------------------------------------------------------------------------------- data
def test_real_samples_phantom_splits_are_disjoint_and_physical():
    kw = {"spatial_size": (16, 16), "spacing": 16.0, "num_phantom_cases": 3}
    parts = {s: real_samples(None, s, **kw) for s in ("train", "val", "test")}
    ids = {s: [d["case_id"] for d in v] for s, v in parts.items()}
    assert ids["train"] == ["PHANTOM-0000", "PHANTOM-0001", "PHANTOM-0002"]
    assert ids["val"][0] == "PHANTOM-50000" and ids["test"][0] == "PHANTOM-100000"
    ct = torch.stack([d["ct"] for d in parts["train"]])
    assert ct.min() < -500 and ct.max() > 100  # HU, not [-1, 1]
    assert set(torch.stack([d["label"] for d in parts["test"]]).unique().tolist()) == {0.0, 1.0}
    with pytest.raises(BundleSettingError, match="split must be one of"):
        real_samples(None, "holdout", **kw)


def test_real_samples_hecktor_are_decoded_tumour_slices(tmp_path):
    write_phantom_hecktor(
        tmp_path / "h", num_cases=5, spatial_size=(24, 24, 8), spacing=8.0, pet_spacing=16.0
    )
    samples = real_samples(
        tmp_path / "h", "train", spatial_size=(16, 16), spacing=8.0, fractions=(1.0, 0.0, 0.0)
    )
    assert {s["case_id"] for s in samples} == {
        d["case_id"] for d in real_datalist(tmp_path / "h", "train", fractions=(1.0, 0.0, 0.0))
    }
    assert all(tuple(s["pet"].shape) == (1, 16, 16) and float(s["label"].sum()) > 0 for s in samples)
    pet = torch.stack([s["pet"] for s in samples])
    assert pet.min() >= 0 and pet.max() > 1.0  # SUV
    (tmp_path / "h" / "imagesTr" / "CHUM-001__PT.nii.gz").write_bytes(b"broken")
    with pytest.raises(BundleSettingError, match="CHUM-001"):
        real_samples(tmp_path / "h", "train", spatial_size=(16, 16), spacing=8.0, fractions=(1.0, 0.0, 0.0))


# ---------------------------------------------------------------------------------------------- pools
def test_merge_pool_states_concatenates_shards(tmp_path):
    a, b = _filled_pool(n=3, seed=0), _filled_pool(n=2, seed=1)
    merged = merge_pool_states([a.state_dict(), b.state_dict()])
    torch.save(merged, tmp_path / "m.pt")
    pool = SynthesisPool.load(tmp_path / "m.pt")
    assert len(pool) == 5 and pool.capacity == 5
    torch.testing.assert_close(pool[3]["pet"].as_tensor(), b[0]["pet"].as_tensor())
    torch.testing.assert_close(pool[0]["ct"].as_tensor(), a[0]["ct"].as_tensor())
    assert pool.stats["generated"] == 5 and pool.stats["accepted"] == 5
    with pytest.raises(ValueError, match="spatial_shape"):
        merge_pool_states([a.state_dict(), _filled_pool(size=(4, 4)).state_dict()])


def test_build_synthesis_pool_is_seeded_and_counts(tiny_ckpt):
    kw = {
        "filter_mode": "none",
        "num_inference_steps": 1,
        "batch_size": 2,
        "device": "cpu",
        "progress": False,
    }
    p1 = build_synthesis_pool(tiny_ckpt, None, 3, seed=5, **kw)
    p2 = build_synthesis_pool(tiny_ckpt, None, 3, seed=5, **kw)
    p3 = build_synthesis_pool(tiny_ckpt, None, 3, seed=6, **kw)
    assert len(p1) == 3 and p1.spatial_shape == (16, 16) and p1.stats["generated"] == 3
    torch.testing.assert_close(p1[2]["ct"].as_tensor(), p2[2]["ct"].as_tensor())
    assert not torch.equal(p1[0]["ct"].as_tensor(), p3[0]["ct"].as_tensor())
    with pytest.raises(BundleSettingError, match="filter_mode must be one of"):
        build_synthesis_pool(tiny_ckpt, None, 3, filter_mode="best")
    with pytest.raises(BundleSettingError, match="needs a quality filter"):
        build_synthesis_pool(tiny_ckpt, None, 3, filter_mode="pool")


def test_pool_mode_keeps_one_in_four(tiny_ckpt):
    real = real_samples(None, "train", spatial_size=(16, 16), spacing=8.0, num_phantom_cases=4)
    quality = train_quality_filter(real, channels=(4, 8), epochs=1, mc_passes=1, batch_size=4, seed=0)
    pool = build_synthesis_pool(
        tiny_ckpt, quality, 5, filter_mode="pool", num_inference_steps=1, keep_per_call=3, progress=False
    )
    # 5 kept in 2 calls of 4 x 3 candidates: 3 + 2 kept (the last call's extra one is surplus)
    stats = pool.stats
    assert len(pool) == 5 and stats["generated"] == 24
    assert stats["accepted"] + sum(stats["rejected"].values()) + stats["surplus"] == 24


def test_mixing_pool_ratio_zero_touches_nothing(tmp_path):
    assert mixing_pool(0, pool_file=tmp_path / "none.pt", diffusion_checkpoint=tmp_path / "none.pt") is None
    with pytest.raises(BundleSettingError, match="synthetic_ratio"):
        mixing_pool(-1)


# ---------------------------------------------------------------------------------------------- training / evaluation
def test_distributed_helpers_outside_torch_distributed():
    trainer = type("T", (), {"network": torch.nn.Linear(1, 1)})()
    assert distributed_trainer(trainer, "cpu") is trainer and isinstance(trainer.network, torch.nn.Linear)
    assert is_main_process()


class _SignNet(torch.nn.Module):
    """Tumour logit = scale * image channel 0 (so the checkpoint's ``scale`` decides the prediction)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), self.scale * x[:, :1]], dim=1)


def test_segmentation_test_dice_per_case(tmp_path):
    torch.save(_SignNet(-1.0).state_dict(), tmp_path / "model.pt")
    image = torch.zeros(2, 2, 8, 8)
    image[:, 0, :4] = 1.0  # scale +1 predicts the top half, scale -1 the bottom half
    image[:, 0, 4:] = -1.0
    label = torch.zeros(2, 1, 8, 8)
    label[0, :, :4] = 1  # the top half
    label[1, :, :, :2] = 1  # two columns: 8 pixels in each half
    loader = [{"image": image, "label": label}]
    dice = segmentation_test_dice(_SignNet(1.0), tmp_path / "model.pt", loader)
    assert dice == pytest.approx([0.0, 2 * 8 / (32 + 16)], abs=1e-6)
    with pytest.raises(BundleSettingError, match="does not exist"):
        segmentation_test_dice(_SignNet(), tmp_path / "none.pt", loader)


def test_write_evaluation_report(tmp_path, capsys):
    nan = float("nan")
    results = write_evaluation_report(
        tmp_path,
        {"real only": [0.5, 0.6, nan, 0.7], "mixed": [0.6, 0.6, nan, 0.9]},
        case_ids=["a", "b", "c", "d"],
        settings={"seed": 0},
    )
    assert results["excluded_cases"] == ["c"]  # empty ground truth: NaN in both arms
    assert results["dice"]["mixed"]["n"] == 3 and results["dice"]["mixed"]["mean"] == pytest.approx(0.7)
    assert results["comparison"]["mean_diff"] == pytest.approx(0.1)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["dice"]["real only"]["per_case"][2] is None
    printed = capsys.readouterr().out
    assert (
        "| test Dice, real only (n = 3 patients, 3 slices; mean ± sd over patients) | 0.600 ± 0.100 |"
        in printed
    )
    assert "| difference mixed - real only (paired over 3 patients) | +0.100 ± 0.100" in printed
    assert "| what the p-value counts | the test patients only: each arm is one trained network" in printed
    with pytest.raises(ValueError, match="different lengths"):
        write_evaluation_report(tmp_path, {"a": [0.1], "b": [0.1, 0.2]})


def test_evaluation_report_slices_of_one_patient_give_no_p_value(tmp_path, capsys):
    """The bundle once reported "paired over test cases ... p = 0.0199" from 13 slices of one patient."""
    real_only = [0.40 + 0.02 * i for i in range(13)]
    mixed = [v + 0.05 + 0.001 * i for i, v in enumerate(real_only)]
    results = write_evaluation_report(
        tmp_path, {"real only": real_only, "mixed": mixed}, case_ids=["STS_004"] * 13
    )
    comparison = results["comparison"]
    assert comparison["n"] == 1 and comparison["unit"] == "patient" and comparison["num_entries"] == 13
    assert comparison["t_pvalue"] is None and comparison["wilcoxon_pvalue"] == 1.0
    assert results["dice"]["mixed"]["n"] == 1 and results["dice"]["mixed"]["num_slices"] == 13
    printed = capsys.readouterr().out
    assert "(paired over 1 patients)" in printed and "p = n/a (a test needs at least 2 patients)" in printed
    assert "what the p-value counts" not in printed  # no p-value, nothing to qualify
    # HECKTOR-style case ids of one patient (CHUM-001, CHUM-001_2) are one patient; slice ids give the patient
    two = write_evaluation_report(
        tmp_path,
        {"a": [0.5, 0.6, 0.7, 0.2], "b": [0.6, 0.7, 0.8, 0.3]},
        case_ids=["CHUM-001", "CHUM-001_2", "CHUM-002", "CHUM-002"],
    )
    assert two["comparison"]["n"] == 2 and two["comparison"]["patients"] == ["CHUM-001", "CHUM-002"]
    assert two["dice"]["a"]["per_patient"] == pytest.approx({"CHUM-001": 0.55, "CHUM-002": 0.45})


def test_format_results_table_pool_rows():
    table = format_results_table(
        {
            "pool": {
                "accepted": 8,
                "generated": 32,
                "rejected": {"uncertain": 16, "far_from_centroid": 8},
                "rejected_total": 24,
                "generation_seconds": 12.34,
            }
        }
    )
    assert "| pool: accepted / generated | 8 / 32 |" in table
    assert "| pool: rejected (by reason) | 24 (far_from_centroid 8, uncertain 16) |" in table
    assert "| pool: generation time (incl. filter) | 12.3 s |" in table
