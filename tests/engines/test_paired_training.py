from __future__ import annotations

import json

import pytest
import torch
from monai.engines.utils import IterationEvents

from monai_pairsynth.engines import (
    build_training_dataset,
    create_paired_trainer,
    load_paired_checkpoint,
    paired_data_loader,
    train_paired_diffusion,
)
from monai_pairsynth.engines.train import main
from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS
from monai_pairsynth.networks import PairedDiffusionModel

TINY = {"channels": (8, 16), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4}
TINY_CLI = [
    "--channels",
    "8",
    "16",
    "--attention-levels",
    "0",
    "0",
    "--norm-num-groups",
    "4",
    "--num-head-channels",
    "4",
]
# two 16x16 phantom cases, one batch: a training run of a second or two
SMALL_RUN_CLI = [
    "--num-cases",
    "2",
    "--spatial-size",
    "16",
    "16",
    "--spacing",
    "16",
    "--batch-size",
    "2",
    *TINY_CLI,
]


def test_phantom_dataset_is_normalised():
    ds = build_training_dataset(num_cases=2, spatial_size=(16, 16), spacing=16.0)
    sample = ds[1]
    for m in ("ct", "pet", "label"):
        assert tuple(sample[m].shape) == (1, 16, 16)
        assert float(sample[m].min()) >= -1.0 and float(sample[m].max()) <= 1.0
    assert set(torch.unique(sample["label"]).tolist()) <= {-1.0, 1.0}
    raw = __import__("monai_pairsynth.data", fromlist=["PhantomDataset"]).PhantomDataset(
        2, spatial_size=(16, 16), spacing=16.0
    )[1]
    assert torch.allclose(sample["ct"], DEFAULT_MODALITY_SPECS["ct"].normalize(raw["ct"]))


def test_in_memory_samples_and_errors():
    items = [{"ct": torch.zeros(1, 8, 8), "pet": torch.full((1, 8, 8), 15.0)}]
    ds = build_training_dataset(items, modality_specs=("ct", "pet"), cache=False)
    assert float(ds[0]["ct"].mean()) == 0.0 and float(ds[0]["pet"].mean()) == 1.0
    assert (
        float(
            build_training_dataset(items, modality_specs=("ct", "pet"), data_normalized=True)[0]["pet"].mean()
        )
        == 15.0
    )
    with pytest.raises(ValueError, match="empty"):
        build_training_dataset([], modality_specs=("ct", "pet"))
    with pytest.raises(ValueError, match="data must be"):
        build_training_dataset(3.0)


def test_train_paired_diffusion_writes_a_loadable_checkpoint(tmp_path):
    path = train_paired_diffusion(
        tmp_path,
        num_cases=2,
        spatial_size=(16, 16),
        spacing=16.0,
        epochs=1,
        batch_size=2,
        model_kwargs=TINY,
        log_every=0,
        progress_bar=False,
        seed=3,
    )
    assert path == tmp_path / "checkpoint.pt"
    model, ckpt = load_paired_checkpoint(path)
    assert isinstance(model, PairedDiffusionModel) and model.modalities == ("ct", "pet", "label")
    assert ckpt["spatial_size"] == [16, 16] and ckpt["spacing"] == 16.0
    assert ckpt["modality_specs"]["pet"] == {"kind": "image", "low": 0.0, "high": 15.0, "unit": "SUV"}
    assert ckpt["perceptual_weight"] == 0.0  # before the default start epoch (50)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["iterations"] == 1 and summary["seconds_per_iteration"] > 0
    config = json.loads((tmp_path / "run_config.json").read_text())
    assert config["model_config"]["channels"] == [8, 16] and config["seed"] == 3


def test_max_minutes_stops_at_an_epoch_end_and_writes_that_checkpoint(tmp_path, capsys):
    common = [*SMALL_RUN_CLI, "--log-every", "0", "--no-progress"]
    # a budget of ~0 s: the first epoch end is past it, so 1 of the 5 epochs runs
    assert main(["--output-dir", str(tmp_path), "--epochs", "5", "--max-minutes", "1e-9", *common]) == 0
    assert "epochs: 1, iterations: 1" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["iterations"] == 1
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["trainer"]["epoch"] == 1
    assert json.loads((tmp_path / "run_config.json").read_text())["max_minutes"] == 1e-9
    # a generous budget does not stop anything
    train_paired_diffusion(
        tmp_path / "long",
        num_cases=2,
        spatial_size=(16, 16),
        spacing=16.0,
        epochs=2,
        batch_size=2,
        model_kwargs=TINY,
        log_every=0,
        progress_bar=False,
        max_minutes=60,
    )
    assert json.loads((tmp_path / "long" / "summary.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("bad", [0, -1.0, True])
def test_max_minutes_must_be_positive(tmp_path, bad):
    with pytest.raises(ValueError, match="max_minutes"):
        train_paired_diffusion(
            tmp_path, num_cases=1, spatial_size=(16, 16), spacing=16.0, model_kwargs=TINY, max_minutes=bad
        )


def test_spatial_size_not_divisible_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"spatial_size \(17, 17\) is not divisible by 2"):
        train_paired_diffusion(tmp_path, spatial_size=(17, 17), spacing=16.0, model_kwargs=TINY, num_cases=1)


def test_model_kwargs_cannot_override_the_data(tmp_path):
    with pytest.raises(ValueError, match="modalities"):
        train_paired_diffusion(tmp_path, model_kwargs={**TINY, "modalities": ("a", "b")})


def test_cli_trains_and_resumes(tmp_path, capsys):
    common = [*SMALL_RUN_CLI, "--log-every", "0", "--no-progress", "--lr", "ct=1e-3,pet=2e-4,label=5e-4"]
    assert main(["--output-dir", str(tmp_path), "--epochs", "1", *common]) == 0
    out = capsys.readouterr().out
    assert "checkpoint:" in out and "s per training step" in out
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [1e-3, 2e-4, 5e-4]
    assert ckpt["trainer"]["epoch"] == 1
    resume = ["--resume-from", str(tmp_path / "checkpoint.pt")]
    assert main(["--output-dir", str(tmp_path / "more"), "--epochs", "2", *common, *resume]) == 0
    assert torch.load(tmp_path / "more" / "checkpoint.pt", weights_only=True)["trainer"]["epoch"] == 2


def test_cli_reports_bad_input(tmp_path, capsys):
    code = main(
        [
            "--output-dir",
            str(tmp_path),
            "--resume-from",
            str(tmp_path / "none.pt"),
            *TINY_CLI,
            "--num-cases",
            "1",
        ]
    )
    assert code == 2
    assert "none.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_loss_falls_on_phantom_data():
    # measured (2-core CPU): mean loss of the first 4 steps 2.96, of the last 4 steps 1.06 (ratio 0.36)
    torch.manual_seed(0)
    model = PairedDiffusionModel(**TINY)
    dataset = build_training_dataset(num_cases=16, spatial_size=(32, 32), spacing=8.0)
    loader = paired_data_loader(dataset, batch_size=8, seed=0)
    trainer = create_paired_trainer(
        model,
        loader,
        max_epochs=20,
        device="cpu",
        lr=1e-3,
        generator=torch.Generator().manual_seed(1),
        ema_momentum=None,
        stats_log=False,
        progress_bar=False,
    )
    losses = []
    trainer.add_event_handler(
        IterationEvents.LOSS_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach()))
    )
    trainer.run()
    assert len(losses) == 40
    early, late = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert early > 2.5  # about 1 per modality at initialisation
    assert late / early < 0.6


def test_cli_new_recipe_options_reach_the_run(tmp_path, capsys):
    recipe = ["--prediction-type", "v_prediction", "--schedule", "cosine", "--perceptual-weight", "0",
              "--snr-gamma", "5", "--foreground-weight", "label=4", "--device-loader", "--augment",
              "--autocast", "bfloat16"]  # fmt: skip
    common = [*SMALL_RUN_CLI, "--log-every", "0", "--no-progress", *recipe]
    assert main(["--output-dir", str(tmp_path), "--epochs", "2", *common]) == 0
    cfg = json.loads((tmp_path / "run_config.json").read_text())
    assert cfg["snr_gamma"] == 5.0 and cfg["foreground_weight"] == {"label": 4.0}
    assert cfg["device_loader"] is True and cfg["autocast_dtype"] == "bfloat16" and cfg["amp"] is False
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["noise_scheduler"]["prediction_type"] == "v_prediction" and ckpt["trainer"]["epoch"] == 2
    assert main(["--output-dir", str(tmp_path / "x"), *common, "--foreground-weight", "4"]) == 2
    assert "MODALITY=WEIGHT" in capsys.readouterr().err


def test_run_summary_counts_cases_whose_empty_mask_gave_no_slice(tmp_path):
    """Issue 15: a case with an all-zero mask is not dropped silently: it is named in the training summary."""
    import nibabel as nib
    import numpy as np

    from monai_pairsynth.data import hecktor_datalist, write_phantom_hecktor

    write_phantom_hecktor(tmp_path / "data", 2, spatial_size=(32, 32, 12), spacing=8.0, pet_spacing=None)
    items = hecktor_datalist(tmp_path / "data")
    label = nib.load(items[1]["label"])
    nib.save(nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine), items[1]["label"])
    summary: dict = {}
    ds = build_training_dataset(items, spatial_size=(16, 16), spacing=16.0, data_summary=summary)
    assert len(ds) == summary["samples"] > 0
    assert summary["cases"] == 2
    assert summary["empty_cases"] == [items[1]["case_id"]]
