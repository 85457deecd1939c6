"""The field-of-view mask on the training path: the prepare-batch hands it to the loss, training carries it."""

from __future__ import annotations

import json

import pytest
import torch

from monai_pairsynth.engines import PairedDiffusionPrepareBatch

MODALITIES = ("ct", "pet", "label")


def _batch(fov=None):
    g = torch.Generator().manual_seed(0)
    batch = {m: torch.rand(2, 1, 8, 8, generator=g) * 2 - 1 for m in MODALITIES}
    if fov is not None:
        batch["fov"] = fov
    return batch


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_prepare_batch_puts_the_fov_in_the_targets_and_draws_the_same(p):
    fov = torch.ones(2, 1, 8, 8)
    fov[..., :3] = 0
    prep = lambda: PairedDiffusionPrepareBatch(  # noqa: E731
        MODALITIES, 1000, generator=torch.Generator().manual_seed(3), independent_timestep_prob=p
    )
    inputs, targets, _, kwargs = prep()(_batch(fov))
    _, plain_targets, _, plain_kwargs = prep()(_batch())
    assert "fov" not in plain_targets and "fov" not in inputs and "fov" not in kwargs
    assert torch.equal(targets["fov"], fov)
    for m in MODALITIES:  # the mask draws nothing: noise and timesteps as without it
        assert torch.equal(kwargs["noise"][m], plain_kwargs["noise"][m])
        assert torch.equal(targets["target"][m], plain_targets["target"][m])


def test_prepare_batch_fov_checks():
    prep = PairedDiffusionPrepareBatch(MODALITIES, 1000)
    _, targets, _, _ = prep(_batch(torch.ones(2, 8, 8)))  # (B, *spatial): the channel is added
    assert tuple(targets["fov"].shape) == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="field-of-view mask 'fov' has shape"):
        prep(_batch(torch.ones(2, 1, 4, 8)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        prep(_batch(torch.full((2, 1, 8, 8), 0.5)))
    off = PairedDiffusionPrepareBatch(MODALITIES, 1000, fov_key=None)
    assert "fov" not in off(_batch(torch.ones(2, 1, 8, 8)))[1]
    with pytest.raises(ValueError, match="fov_key"):
        PairedDiffusionPrepareBatch(MODALITIES, 1000, fov_key="ct")


# ------------------------------------------------------------------------------------------ training path
TINY = {"channels": (8, 16), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4}


def _spy_fov(monkeypatch):
    """Record the field-of-view mask every loss call receives (None without one)."""
    from monai_pairsynth.losses import paired_diffusion_loss

    seen = []
    original = paired_diffusion_loss._field_of_view

    def spy(target, reference):
        out = original(target, reference)
        seen.append(None if out is None else out.detach().cpu().clone())
        return out

    monkeypatch.setattr(paired_diffusion_loss, "_field_of_view", spy)
    return seen


def _train(path, **kwargs):
    from monai_pairsynth.engines import train_paired_diffusion

    base = {"epochs": 1, "model_kwargs": TINY, "log_every": 0, "progress_bar": False, "seed": 1}
    return train_paired_diffusion(path, **{**base, **kwargs})


@pytest.mark.parametrize("device_loader", [False, True])
def test_phantom_with_fov_mask_trains_like_without(tmp_path, monkeypatch, device_loader):
    """The phantom never leaves its scan: use_fov_mask gives it an all-ones mask, which the loss receives and
    which changes nothing (the same losses as a run without it)."""
    from monai_pairsynth.engines import build_training_dataset

    ds = build_training_dataset(num_cases=2, spatial_size=(16, 16), spacing=16.0, use_fov_mask=True)
    assert float(ds[0]["fov"].min()) == 1.0 and tuple(ds[0]["fov"].shape) == (1, 16, 16)
    assert "fov" not in build_training_dataset(num_cases=2, spatial_size=(16, 16), spacing=16.0)[0]
    seen = _spy_fov(monkeypatch)
    common = {"num_cases": 2, "spatial_size": (16, 16), "spacing": 16.0, "batch_size": 2}
    common.update(device_loader=device_loader, augment=True, device="cpu")
    _train(tmp_path / "fov", use_fov_mask=True, **common)
    assert seen and all(f is not None and float(f.min()) == 1.0 for f in seen)
    seen.clear()
    _train(tmp_path / "plain", **common)
    assert seen and all(f is None for f in seen)
    fov_run = json.loads((tmp_path / "fov" / "summary.json").read_text())["last_epoch_metrics"]
    plain_run = json.loads((tmp_path / "plain" / "summary.json").read_text())["last_epoch_metrics"]
    assert fov_run == pytest.approx(plain_run, rel=1e-5)
    assert json.loads((tmp_path / "fov" / "run_config.json").read_text())["use_fov_mask"] is True


def test_real_patients_fov_mask_marks_the_padding_and_training_uses_it(sts_data_dir, tmp_path, monkeypatch):
    """On real sarcoma patients the 64 x 64 window at 4 mm reaches beyond the scan: the mask is 0 on every border
    of the window (crop padding), 1 over the tumour, and one training step with it hands it to the loss."""
    from monai_pairsynth.data import hecktor_datalist
    from monai_pairsynth.engines import build_training_dataset

    items = hecktor_datalist(sts_data_dir)[:2]
    ds = build_training_dataset(items, spatial_size=(64, 64), spacing=4.0, use_fov_mask=True, cache=False)
    assert len(ds) > 4
    for i in range(len(ds)):
        s = ds[i]
        fov, ct, label = s["fov"][0], s["ct"][0], s["label"][0]
        assert set(fov.unique().tolist()) == {0.0, 1.0}
        for border in (fov[0], fov[-1], fov[:, 0], fov[:, -1]):
            assert bool((border == 0).all())
        assert bool((fov[label > 0] == 1).all())  # the tumour was scanned
        assert float(ct[:, 0].max()) == -1.0  # the padded border is air in the CT
    samples = [ds[i] for i in range(4)]
    seen = _spy_fov(monkeypatch)
    path = _train(tmp_path, data=samples, data_normalized=True, use_fov_mask=True, batch_size=4, device="cpu")
    assert path.is_file() and json.loads((tmp_path / "summary.json").read_text())["iterations"] == 1
    assert seen and all(f is not None and 0 < float(f.mean()) < 1 for f in seen)


def test_cli_pet_intensity_and_fov_mask(tmp_path, capsys):
    from monai_pairsynth.engines.train import main

    small = ["--num-cases", "2", "--spatial-size", "16", "16", "--spacing", "16", "--batch-size", "2"]
    tiny = ["--channels", "8", "16", "--attention-levels", "0", "0", "--norm-num-groups", "4"]
    tiny += ["--num-head-channels", "4", "--epochs", "1", "--log-every", "0", "--no-progress"]
    argv = ["--output-dir", str(tmp_path), "--pet-intensity", "log", "--use-fov-mask", *small, *tiny]
    assert main(argv) == 0
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["modality_specs"]["pet"]["mapping"] == "log" and ckpt["modality_specs"]["pet"]["high"] == 60.0
    assert json.loads((tmp_path / "run_config.json").read_text())["use_fov_mask"] is True
    bad = ["--output-dir", str(tmp_path / "x"), "--modalities", "ct", "label", "--pet-intensity", "log"]
    assert main([*bad, *small, *tiny]) == 2
    assert "pet_intensity 'log' needs a 'pet' modality" in capsys.readouterr().err
