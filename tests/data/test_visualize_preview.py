from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from monai_pairsynth.data import NormalizeModalitiesd, make_phantom_case
from monai_pairsynth.data.preview import main, write_phantom_preview
from monai_pairsynth.modalities import ModalitySpec
from monai_pairsynth.visualize import save_triplet_grid, select_axial_slice

KEYS = ["ct", "pet", "label"]


def _lime_pixels(png: np.ndarray) -> int:
    """Pixels dominated by green: grey (CT) and ``hot`` (PET) never have green above red, so only contours."""
    r, g, b = png[..., 0], png[..., 1], png[..., 2]
    return int((g - np.maximum(r, b) > 0.25).sum())


def _case(seed: int = 1, **kw) -> dict:
    return make_phantom_case(seed, spatial_size=(32, 32), spacing=8.0, **kw)


def test_grid_png_size_and_contour(tmp_path):
    samples = [_case(1), _case(2), _case(3)]
    path = save_triplet_grid(
        samples, tmp_path / "sub" / "grid.png", samples_per_row=2, panel_inches=1.0, dpi=50
    )
    png = imread(path)
    # 2 rows x (2 samples x 2 image columns) panels of 1 inch at 50 dpi, plus header and title lines
    assert png.shape[1] == 4 * 50
    assert abs(png.shape[0] - (0.35 + 2 * (1.0 + 0.22)) * 50) <= 1
    assert _lime_pixels(png) > 20  # the tumour contour is drawn
    no_tumour = [{**s, "label": torch.zeros_like(s["label"])} for s in samples]
    assert (
        _lime_pixels(imread(save_triplet_grid(no_tumour, tmp_path / "empty.png", samples_per_row=2, dpi=50)))
        == 0
    )
    assert not list(tmp_path.rglob("*.tmp"))


def test_normalized_samples_render_like_physical(tmp_path):
    phys = _case(4, noise=False)
    norm = NormalizeModalitiesd(KEYS)(phys)
    a = imread(save_triplet_grid([phys], tmp_path / "a.png", titles=["x"], dpi=40))
    b = imread(save_triplet_grid([norm], tmp_path / "b.png", titles=["x"], normalized=True, dpi=40))
    c = imread(save_triplet_grid([norm], tmp_path / "c.png", titles=["x"], normalized=False, dpi=40))
    # identical up to the CT above 1000 HU / PET above 15 SUV, which the window clips anyway
    assert np.abs(a - b).max() < 0.02
    assert np.abs(a - c).max() > 0.2  # forgetting normalized=True shows something else


def test_3d_sample_shows_slice_with_most_tumour(tmp_path):
    vol = make_phantom_case(2, spatial_dims=3, spatial_size=(32, 32, 16), spacing=8.0, noise=False)
    z = select_axial_slice([vol["label"][0].numpy()], 16)
    assert z == int(vol["label"][0].sum(dim=(0, 1)).argmax())
    sliced = {k: vol[k][..., z] for k in KEYS}
    a = imread(save_triplet_grid([vol], tmp_path / "a.png", titles=["v"], dpi=40))
    b = imread(save_triplet_grid([sliced], tmp_path / "b.png", titles=["v"], dpi=40))
    assert np.array_equal(a, b)


def test_any_modality_names(tmp_path):
    specs = {
        "mr": ModalitySpec("image", 0.0, 500.0),
        "oar": ModalitySpec("mask", 0.0, 1.0),
        "gtv": ModalitySpec("mask", 0.0, 1.0),
    }
    mr = torch.rand(1, 16, 16) * 500
    oar = torch.zeros(1, 16, 16)
    oar[0, 3:8, 3:8] = 1
    sample = {"mr": mr, "oar": oar, "gtv": torch.roll(oar, 6, dims=1)}
    png = imread(
        save_triplet_grid([sample], tmp_path / "g.png", keys=["mr", "oar", "gtv"], specs=specs, dpi=100)
    )
    assert png.shape[1] == 220  # one image column; masks are overlaid
    assert _lime_pixels(png) > 5
    # only masks: they are shown as images
    only = save_triplet_grid([sample], tmp_path / "m.png", keys=["oar"], specs=specs, dpi=40)
    assert imread(only).shape[1] == round(2.2 * 40)


@pytest.mark.parametrize(
    ("samples", "kwargs", "error", "match"),
    [
        ([], {}, ValueError, "at least one sample"),
        ([{"ct": torch.zeros(1, 4, 4)}], {}, KeyError, r"sample 0 has no key\(s\) \['pet', 'label'\]"),
        (
            [{"ct": torch.zeros(1, 4, 4), "pet": torch.zeros(1, 4, 5), "label": torch.zeros(1, 4, 4)}],
            {},
            ValueError,
            "different spatial shapes",
        ),
        (
            [{"ct": torch.zeros(4), "pet": torch.zeros(4), "label": torch.zeros(4)}],
            {},
            ValueError,
            "channel-first",
        ),
        ([{"ct": torch.zeros(1, 4, 4)}], {"keys": ["ct"], "titles": ["a", "b"]}, ValueError, "titles"),
        (
            [{"ct": torch.zeros(1, 4, 4)}],
            {"keys": ["ct"], "samples_per_row": 0},
            ValueError,
            "samples_per_row",
        ),
        ([{"xx": torch.zeros(1, 4, 4)}], {"keys": ["xx"]}, ValueError, "no default spec"),
    ],
)
def test_grid_bad_input(tmp_path, samples, kwargs, error, match):
    with pytest.raises(error, match=match):
        save_triplet_grid(samples, tmp_path / "x.png", **kwargs)
    assert not (tmp_path / "x.png").exists()


def test_preview_command(tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert (
        main(
            [
                "--num-cases",
                "3",
                "--out",
                str(out),
                "--seed",
                "5",
                "--spatial-size",
                "32",
                "32",
                "--spacing",
                "8",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    png = imread(out)
    assert png.shape[1] == round(2 * 2 * 2.2 * 100) and _lime_pixels(png) > 20
    with pytest.raises(SystemExit):
        main(["--num-cases", "0", "--out", str(tmp_path / "bad.png")])
    assert not (tmp_path / "bad.png").exists()


def test_preview_3d(tmp_path):
    path = write_phantom_preview(
        tmp_path / "p3.png", num_cases=1, spatial_dims=3, spatial_size=(24, 24, 12), spacing=10.0
    )
    assert imread(path).shape[1] == 440  # one case: one block of two 2.2-inch panels at 100 dpi


def test_preview_stats(capsys):
    assert main(["--stats", "--num-cases", "3", "--spatial-size", "32", "32", "--spacing", "8"]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.strip().splitlines())
    assert float(lines["num_cases"]) == 3.0
    assert 0.0 <= float(lines["fraction_hotter_non_tumour"]) <= 1.0
    assert float(lines["tumour_pet_max_p50"]) > float(lines["background_pet_p50"]) > 0.0
    assert 0.0 <= float(lines["pet_40pct_baseline_dice_mean"]) <= 1.0
    with pytest.raises(SystemExit):
        main(["--stats", "--num-cases", "0"])
