"""Tests of the ``generate`` entry point: NIfTI triplets, datalist JSON, preview, atomic output."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist

import monai_pairsynth.data.nifti_io as nifti_io
import monai_pairsynth.inferers.generate as generate_module
from monai_pairsynth.data import load_datalist_json, make_phantom_case, write_phantom_hecktor
from monai_pairsynth.engines import save_paired_checkpoint
from monai_pairsynth.inferers import PairedDiffusionInferer
from monai_pairsynth.inferers.generate import generate, main
from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS
from monai_pairsynth.networks import PairedDiffusionModel

KEYS = ("ct", "pet", "label")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = PairedDiffusionModel(KEYS, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # untrained but not zero-output: every prediction depends on its inputs
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    return save_paired_checkpoint(
        path, model, noise_scheduler={"num_train_timesteps": 100}, spatial_size=(16, 16), spacing=8.0
    )


def _volumes(folder, case_id):
    names = {"ct": f"{case_id}__CT.nii.gz", "pet": f"{case_id}__PT.nii.gz", "label": f"{case_id}.nii.gz"}
    return {k: nib.load(str(folder / case_id / n)) for k, n in names.items()}


def test_generate_writes_loadable_triplets(tmp_path, checkpoint):
    out = generate(checkpoint, tmp_path / "synthetic", 3, num_inference_steps=2, batch_size=2, progress=False)
    assert out == tmp_path / "synthetic"
    assert sorted(p.name for p in out.iterdir()) == [
        "SYNTH-0000",
        "SYNTH-0001",
        "SYNTH-0002",
        "datalist.json",
        "preview.png",
    ]
    for i in range(3):
        vols = _volumes(out, f"SYNTH-{i:04d}")
        for k, img in vols.items():
            assert img.shape == (16, 16), k
            np.testing.assert_allclose(img.affine, np.diag([8.0, 8.0, 1.0, 1.0]))
            assert img.header.get_zooms()[:2] == (8.0, 8.0)
        ct, pet, label = (np.asarray(vols[k].dataobj) for k in KEYS)
        assert ct.dtype == np.float32 and -1000 <= ct.min() and ct.max() <= 1000 and ct.std() > 1
        assert pet.dtype == np.float32 and 0 <= pet.min() and pet.max() <= 15
        assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
    # datalist: valid JSON, read by our loader and by MONAI's
    content = json.loads((out / "datalist.json").read_text())
    assert content["numTraining"] == 3 and content["generation"]["num_inference_steps"] == 2
    assert content["generation"]["spacing"] == [8.0, 8.0]
    items = load_datalist_json(out / "datalist.json")
    assert [it["case_id"] for it in items] == ["SYNTH-0000", "SYNTH-0001", "SYNTH-0002"]
    assert items[0]["ct"] == str(out / "SYNTH-0000" / "SYNTH-0000__CT.nii.gz")
    monai_items = load_decathlon_datalist(out / "datalist.json", data_list_key="training")
    assert all((out / it["label"]).is_file() for it in monai_items)
    assert (out / "preview.png").read_bytes()[:4] == b"\x89PNG"
    # no temporary folder left beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_generate_is_reproducible_and_independent_of_batch_size(tmp_path, checkpoint):
    kw = {"num_inference_steps": 2, "progress": False, "preview_cases": 0}
    a = generate(checkpoint, tmp_path / "a", 3, batch_size=3, seed=5, **kw)
    b = generate(checkpoint, tmp_path / "b", 3, batch_size=1, seed=5, **kw)
    c = generate(checkpoint, tmp_path / "c", 3, batch_size=3, seed=6, **kw)
    assert not (a / "preview.png").exists()
    for i in range(3):
        va, vb, vc = (_volumes(d, f"SYNTH-{i:04d}") for d in (a, b, c))
        np.testing.assert_allclose(np.asarray(va["ct"].dataobj), np.asarray(vb["ct"].dataobj), atol=0.5)
        assert np.abs(np.asarray(va["ct"].dataobj) - np.asarray(vc["ct"].dataobj)).mean() > 10.0


def test_interrupted_generation_leaves_nothing(tmp_path, checkpoint, monkeypatch):
    calls = {"n": 0}
    real_write = nifti_io.write_nifti

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # in the middle of the second case
            raise KeyboardInterrupt
        real_write(*args, **kwargs)

    monkeypatch.setattr(nifti_io, "write_nifti", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate(checkpoint, tmp_path / "out", 3, num_inference_steps=2, progress=False)
    assert calls["n"] == 5
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary folder


def test_existing_output_is_kept_unless_overwrite(tmp_path, checkpoint, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        generate(checkpoint, out, 1, num_inference_steps=2, progress=False)
    # a failing overwrite keeps the old output
    monkeypatch.setattr(nifti_io, "write_nifti", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        generate(checkpoint, out, 1, num_inference_steps=2, progress=False, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    monkeypatch.undo()
    generate(checkpoint, out, 1, num_inference_steps=2, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["SYNTH-0000", "datalist.json", "preview.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_noise_seeding_from_a_hecktor_folder_and_from_memory(tmp_path, checkpoint):
    root = tmp_path / "hecktor"
    write_phantom_hecktor(root, 2, spatial_dims=3, spatial_size=(24, 24, 12), spacing=8.0, pet_spacing=None)
    kw = {"num_inference_steps": 10, "progress": False, "preview_cases": 0}
    seeded = generate(checkpoint, tmp_path / "seeded", 2, strength=0.2, seed_datalist=root, **kw)
    free = generate(checkpoint, tmp_path / "free", 2, **kw)
    content = json.loads((seeded / "datalist.json").read_text())
    assert content["generation"]["strength"] == 0.2 and content["generation"]["seeded_from"] == str(
        root.resolve()
    )
    # a lightly noised real case stays close to one of the (preprocessed) seed slices; unseeded samples do not
    inferer, _ = PairedDiffusionInferer.from_checkpoint(checkpoint)
    pool = generate_module._seed_samples(root, inferer, KEYS, 2, inferer.specs)
    pool_hu = DEFAULT_MODALITY_SPECS["ct"].denormalize(pool["ct"][:, 0]).numpy()
    distance = {}
    for d in (seeded, free):
        ct = np.asarray(_volumes(d, "SYNTH-0000")["ct"].dataobj)
        distance[d.name] = float(np.abs(pool_hu - ct[None]).mean(axis=(1, 2)).min())
    assert distance["seeded"] < 0.3 * distance["free"], distance  # measured: ~140 HU vs ~720 HU
    cases = [make_phantom_case(s, spatial_dims=3, spatial_size=(24, 24, 12), spacing=8.0) for s in (3, 4)]
    mem = generate(checkpoint, tmp_path / "mem", 1, strength=0.2, seed_datalist=cases, **kw)
    assert (mem / "SYNTH-0000" / "SYNTH-0000.nii.gz").is_file()


def test_cli(tmp_path, checkpoint, capsys):
    out = main(
        [
            "--checkpoint",
            str(checkpoint),
            "--output-dir",
            str(tmp_path / "cli"),
            "--num-samples",
            "2",
            "--num-inference-steps",
            "2",
            "--scheduler",
            "ddim",
            "--no-progress",
            "--preview-cases",
            "1",
        ]
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert (out / "SYNTH-0001" / "SYNTH-0001__PT.nii.gz").is_file() and (out / "preview.png").is_file()
    assert json.loads((out / "datalist.json").read_text())["generation"]["scheduler"] == "ddim"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_samples": 0}, ValueError, "num_samples must be a positive integer"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
        ({"strength": 0.5}, ValueError, "needs seed_datalist"),
        ({"strength": 1.5}, ValueError, "strength must be in \\(0, 1\\]"),
        ({"seed_datalist": "x.json"}, ValueError, "only used with strength < 1"),
        ({"strength": 0.5, "seed_datalist": "missing.json"}, FileNotFoundError, "missing.json"),
        ({"checkpoint": "nope.pt"}, FileNotFoundError, "nope.pt"),
        ({"case_prefix": "a/b"}, ValueError, "case_prefix"),
        ({"num_inference_steps": 101}, ValueError, "num_inference_steps must be in \\[1, 100\\]"),
        ({"scheduler": "euler"}, ValueError, "Unknown sampler name"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, checkpoint, kwargs, error, match):
    args = {
        "checkpoint": checkpoint,
        "output_dir": tmp_path / "out",
        "num_samples": 1,
        "num_inference_steps": 2,
        "progress": False,
    }
    args.update(kwargs)
    if isinstance(args["checkpoint"], str):
        args["checkpoint"] = tmp_path / args["checkpoint"]
    if isinstance(args.get("seed_datalist"), str):
        args["seed_datalist"] = tmp_path / args["seed_datalist"]
    with pytest.raises(error, match=match):
        generate(**args)
    assert list(tmp_path.iterdir()) == []
