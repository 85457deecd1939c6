"""Each bundle config run through ``monai.bundle`` (in this process) with tiny overrides, in a temporary folder."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import SIZE, grid_overrides, run_workflow
from monai.networks.nets import UNet

from monai_pairsynth.data import write_phantom_hecktor
from monai_pairsynth.mixing.mixed_dataset import MixedDataset
from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
from monai_pairsynth.quality import FeatureCentroidFilter, load_feature_segmenter

SEG_NET = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 2, "norm": "batch"}


def _seg_overrides(tmp_path, name, **extra):
    return grid_overrides(
        num_train_cases=6,
        num_val_cases=2,
        epochs=1,
        val_interval=1,
        batch_size=4,
        output_dir=str(tmp_path / name),
        **extra,
    )


def _load_unet(path):
    net = UNet(spatial_dims=2, in_channels=2, out_channels=2, **SEG_NET)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net


def test_generate_writes_filtered_pool_and_outputs(generated):
    pool = SynthesisPool.load(generated / "pool.pt")
    assert len(pool) == 4 and list(pool.spatial_shape) == SIZE and pool.keys == ("ct", "pet", "label")
    counts = json.loads((generated / "counts.json").read_text())
    # pool mode: 4 candidates per kept triplet, every rejection has a reason
    assert counts["accepted"] == 4 and counts["generated"] == 16
    assert counts["rejected_total"] == 12 == sum(counts["rejected"].values())
    assert counts["settings"]["filter_mode"] == "pool" and counts["settings"]["num_inference_steps"] == 2
    label = torch.stack([pool[i]["label"] for i in range(len(pool))])
    assert set(label.unique().tolist()) <= {0.0, 1.0}
    assert (generated / "preview.png").read_bytes()[:4] == b"\x89PNG"
    network = load_feature_segmenter(generated / "feature_segmenter.pt")
    restored = FeatureCentroidFilter.load(generated / "quality_filter.pt", network)
    assert restored.is_fitted and restored.spatial_shape == tuple(SIZE)


def test_generate_nifti_export_matches_pool(generated):
    pool = SynthesisPool.load(generated / "pool.pt")
    datalist = json.loads((generated / "nifti" / "datalist.json").read_text())
    assert datalist["numTraining"] == 4 and len(datalist["training"]) == 4
    entry = datalist["training"][2]
    mask = nib.load(generated / "nifti" / entry["label"])
    ct = nib.load(generated / "nifti" / entry["ct"])
    assert mask.get_data_dtype() == np.uint8 and np.allclose(np.diag(ct.affine)[:2], 8.0)
    np.testing.assert_allclose(ct.get_fdata()[None], pool[2]["ct"].numpy(), atol=1e-3)


def test_train_segmentation_real_only_needs_no_generator(tmp_path):
    workflow = run_workflow(
        "train_segmentation.json",
        **_seg_overrides(tmp_path, "seg", synthetic_ratio=0, diffusion_checkpoint=str(tmp_path / "none.pt")),
    )
    dataset = workflow.parser.get_parsed_content("train#dataset")
    assert isinstance(dataset, MixedDataset) and len(dataset) == 6 and dataset.num_synthetic == 0
    for name in ("model.pt", "model_final.pt"):
        net = _load_unet(tmp_path / "seg" / name)
        assert net(torch.zeros(1, 2, *SIZE)).shape == (1, 2, *SIZE)


def test_train_segmentation_mixes_the_generated_pool(tmp_path, generated):
    workflow = run_workflow(
        "train_segmentation.json",
        **_seg_overrides(tmp_path, "seg", synthetic_ratio=0.5, pool_file=str(generated / "pool.pt")),
    )
    dataset = workflow.parser.get_parsed_content("train#dataset")
    assert dataset.num_real == 6 and dataset.num_synthetic == 3 and len(dataset.pool) == 4
    assert dataset.epoch == 1  # MixedDatasetEpochHandler ran
    flags = [bool(dataset[i]["synthetic"]) for i in range(len(dataset))]
    assert flags == [False] * 6 + [True] * 3
    assert tuple(dataset[7]["image"].shape) == (2, *SIZE)  # CT + PET channels, like real items
    assert (tmp_path / "seg" / "model.pt").is_file()


def test_train_segmentation_builds_its_pool_from_the_checkpoint(tmp_path, tiny_checkpoint):
    workflow = run_workflow(
        "train_segmentation.json",
        **_seg_overrides(
            tmp_path,
            "seg",
            synthetic_ratio=0.5,
            diffusion_checkpoint=str(tiny_checkpoint),
            num_inference_steps=1,
            filter_mode="none",
        ),
    )
    dataset = workflow.parser.get_parsed_content("train#dataset")
    # pool_size null: r·N = 0.5 * 6
    assert len(dataset.pool) == 3 and dataset.num_synthetic == 3
    assert dataset.pool.stats["generated"] == 3


def test_evaluate_compares_two_checkpoints_and_the_pool(tmp_path, generated):
    for name, ratio in (("real", 0), ("mixed", 0.5)):
        run_workflow(
            "train_segmentation.json",
            **_seg_overrides(tmp_path, name, synthetic_ratio=ratio, pool_file=str(generated / "pool.pt")),
        )
    run_workflow(
        "evaluate.json",
        **grid_overrides(
            num_train_cases=6,
            num_test_cases=5,
            baseline_checkpoint=str(tmp_path / "real" / "model.pt"),
            segmentation_checkpoint=str(tmp_path / "mixed" / "model.pt"),
            pool_file=str(generated / "pool.pt"),
            feature_epochs=1,
            feature_channels=[4, 8],
            output_dir=str(tmp_path / "eval"),
        ),
    )
    results = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert list(results["dice"]) == ["real only", "mixed"]
    for arm in results["dice"].values():
        assert arm["n"] == 5 and len(arm["per_case"]) == 5 and 0.0 <= arm["mean"] <= 1.0
    diffs = np.array(results["dice"]["mixed"]["per_case"]) - np.array(
        results["dice"]["real only"]["per_case"]
    )
    assert results["comparison"]["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-9)
    assert results["pool"]["accepted"] == 4 and results["pool"]["generated"] == 16
    assert any(k.startswith("feature FID") for k in results["generation"])
    assert results["case_ids"][0] == "PHANTOM-100000"
    assert (
        "| test Dice, mixed (n = 5 patients, 5 slices; mean ± sd over patients) |"
        in (tmp_path / "eval" / "evaluation.md").read_text()
    )
    assert (tmp_path / "eval" / "generation" / "metrics.json").is_file()


@pytest.fixture(scope="module")
def hecktor_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hecktor")
    # 3D volumes at 8 mm; seeds 9-18: every case has a tumour slice at this coarse grid (seed 8 has none)
    write_phantom_hecktor(
        root, num_cases=10, base_seed=9, spatial_size=(32, 32, 8), spacing=8.0, pet_spacing=16.0
    )
    return root


def test_configs_on_a_hecktor_folder(tmp_path, hecktor_dir, tiny_checkpoint):
    from monai_pairsynth.data.sources import real_datalist

    workflow = run_workflow(
        "train_segmentation.json",
        **_seg_overrides(tmp_path, "seg", synthetic_ratio=0, dataset_dir=str(hecktor_dir)),
    )
    train = workflow.parser.get_parsed_content("train#real_data")
    train_cases = {d["case_id"] for d in real_datalist(hecktor_dir, "train")}
    val_cases = {d["case_id"] for d in real_datalist(hecktor_dir, "val")}
    assert {s["case_id"] for s in train} == train_cases and not train_cases & val_cases
    assert len(train) >= len(train_cases)  # tumour slices of the 8 training patients
    ct = torch.stack([s["ct"] for s in train])
    assert ct.min() >= -1000.5 and ct.max() > 0  # back in HU
    assert (tmp_path / "seg" / "model_final.pt").is_file()
    run_workflow(
        "generate.json",
        **grid_overrides(
            dataset_dir=str(hecktor_dir),
            diffusion_checkpoint=str(tiny_checkpoint),
            pool_size=2,
            num_inference_steps=1,
            segmenter_epochs=1,
            segmenter_channels=[4, 8],
            mc_passes=1,
            output_dir=str(tmp_path / "gen"),
        ),
    )
    counts = json.loads((tmp_path / "gen" / "counts.json").read_text())
    assert counts["accepted"] == 2 and counts["settings"]["dataset_dir"] == str(hecktor_dir)


def test_segmentation_checkpoint_records_its_input_map_and_evaluate_checks_it(tmp_path):
    """train_segmentation writes modality_specs.json beside its checkpoints; evaluating them with another PET map
    stops with one clear line instead of a silently lower Dice."""
    from monai_pairsynth.bundle_checks import BundleSettingError
    from monai_pairsynth.modalities import PET_LOG_SPEC, read_specs_record

    run_workflow(
        "train_segmentation.json",
        **_seg_overrides(
            tmp_path,
            "seg",
            synthetic_ratio=0,
            diffusion_checkpoint=str(tmp_path / "none.pt"),
            pet_intensity="log",
        ),
    )
    assert read_specs_record(tmp_path / "seg" / "model.pt")["pet"] == PET_LOG_SPEC
    evaluate = {
        "num_train_cases": 6,
        "num_test_cases": 3,
        "segmentation_checkpoint": str(tmp_path / "seg" / "model.pt"),
        "feature_epochs": 1,
        "feature_channels": [4, 8],
        "output_dir": str(tmp_path / "eval"),
    }
    with pytest.raises(Exception) as info:
        run_workflow("evaluate.json", **grid_overrides(**evaluate))
    err = info.value
    while err is not None and not isinstance(err, BundleSettingError):
        err = err.__cause__ or err.__context__
    assert err is not None and "was trained with pet mapped as" in str(err) and "pet_intensity" in str(err)
