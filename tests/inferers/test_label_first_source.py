"""Label-first pool source (issue 14, item 4): real masks moved inside the body, CT + PET generated for them."""

from __future__ import annotations

import logging

import pytest
import torch

from monai_pairsynth.data.sources import real_samples
from monai_pairsynth.engines import PairedDiffusionPrepareBatch, save_paired_checkpoint
from monai_pairsynth.inferers import (
    DiffusionPoolSource,
    LabelFirstPoolSource,
    MaskPlacement,
    PairedDiffusionInferer,
)
from monai_pairsynth.mixing import MixedDataset, SynthesisPool, SynthesizePairedd
from monai_pairsynth.networks import PairedDiffusionModel
from monai_pairsynth.quality.plausibility import body_mask, dilate

TINY = {"channels": (4, 8), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4}
MODS = ("ct", "pet", "label")
SHAPE = (16, 16)
SPACING = 8.0


def _cases(n: int = 4) -> list[dict]:
    return real_samples(None, "train", spatial_size=SHAPE, spacing=SPACING, num_phantom_cases=n)


def _body(case: dict) -> torch.Tensor:
    return body_mask(torch.as_tensor(case["ct"]).float()[None], -500.0, dilation=0)[0]


def _model(**kwargs) -> PairedDiffusionModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return PairedDiffusionModel(MODS, **TINY, **kwargs)


def _checkpoint(path, per_modality: bool):
    model = _model(condition_timesteps=True) if per_modality else _model()
    prep = PairedDiffusionPrepareBatch(MODS, 50, independent_timestep_prob=0.5 if per_modality else 0.0)
    return save_paired_checkpoint(
        path,
        model,
        noise_scheduler={"num_train_timesteps": 50},
        spatial_size=list(SHAPE),
        spacing=SPACING,
        prepare_batch=prep,
    )


@pytest.fixture(scope="module")
def cases():
    out = _cases()
    assert sum(bool(c["label"].any()) for c in out) >= 2  # the phantom has tumours to draw from
    return out


@pytest.fixture(scope="module")
def shared_ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("lf") / "shared.pt", per_modality=False)


# ---------------------------------------------------------------------------------------------- MaskPlacement
def test_placement_lies_inside_the_body_and_moves_the_mask(cases):
    placement = MaskPlacement()
    gen = torch.Generator().manual_seed(0)
    moved = 0
    for case in cases:
        if not case["label"].any():
            continue
        body = _body(case)
        for _ in range(5):
            placed, ok, tries = placement(case["label"], body, gen)
            assert ok and 1 <= tries <= placement.max_tries
            assert placed.dtype == torch.bool and placed.shape == (1, *SHAPE)
            assert placed.any() and not (placed & ~body).any()
            # the default margin: one voxel from the body outline
            assert not (placed & dilate(~body[None], 1)[0]).any()
            moved += not torch.equal(placed, case["label"].as_tensor() > 0.5)
    assert moved >= 5  # the masks are transformed, not copied


def test_placement_is_reproducible_from_the_generator(cases):
    case = next(c for c in cases if c["label"].any())
    body = _body(case)

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return [MaskPlacement()(case["label"], body, gen)[0] for _ in range(4)]

    first, again, other = draw(3), draw(3), draw(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_transform_ranges_are_used():
    mask = torch.zeros(1, 32, 32)
    mask[0, 12:20, 12:20] = 1.0  # 64 voxels
    gen = torch.Generator().manual_seed(0)
    grown = MaskPlacement(rotate_degrees=0, scale_range=(1.5, 1.5), elastic_magnitude=(0, 0)).transform(
        mask, gen
    )
    shrunk = MaskPlacement(rotate_degrees=0, scale_range=(0.5, 0.5), elastic_magnitude=(0, 0)).transform(
        mask, gen
    )
    assert 100 <= int(grown.sum()) <= 170 and 6 <= int(shrunk.sum()) <= 25  # 64 x 2.25, 64 x 0.25
    same = MaskPlacement(rotate_degrees=0, scale_range=(1, 1), elastic_magnitude=(0, 0)).transform(mask, gen)
    assert int(same.sum()) == 64


def test_placement_in_3d():
    mask = torch.zeros(1, 16, 16, 16)
    mask[0, 6:9, 6:9, 6:9] = 1.0
    body = torch.zeros(1, 16, 16, 16, dtype=torch.bool)
    body[0, 2:14, 2:14, 2:14] = True
    placed, ok, _ = MaskPlacement(elastic_magnitude=(0, 2))(mask, body, torch.Generator().manual_seed(1))
    assert ok and placed.shape == (1, 16, 16, 16) and placed.any() and not (placed & ~body).any()


def test_placement_falls_back_to_the_original_mask():
    mask = torch.zeros(1, 16, 16)
    mask[0, 6:9, 6:9] = 1.0
    body = torch.zeros(1, 16, 16, dtype=torch.bool)
    body[0, 7, 7] = True  # no room for a 3x3 mask
    placed, ok, tries = MaskPlacement(max_tries=3)(mask, body, torch.Generator().manual_seed(0))
    assert not ok and tries == 3 and torch.equal(placed, mask > 0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale_range": (1.2, 0.8)}, "scale_range"),
        ({"rotate_degrees": -1}, "rotate_degrees"),
        ({"elastic_magnitude": (-1, 1)}, "elastic_magnitude"),
        ({"max_tries": 0}, "max_tries"),
        ({"margin": -1}, "margin"),
        # values that are not numbers (e.g. a mistyped bundle override) name the argument too
        ({"rotate_degrees": "abc"}, "rotate_degrees"),
        ({"rotate_degrees": None}, "rotate_degrees"),
        ({"scale_range": 1.0}, "scale_range"),
        ({"scale_range": (0.8, 1.0, 1.2)}, "scale_range"),
        ({"elastic_magnitude": (0, "x")}, "elastic_magnitude"),
        ({"elastic_spacing": "x"}, "elastic_spacing"),
        ({"elastic_spacing": float("inf")}, "elastic_spacing"),
    ],
)
def test_placement_refuses_bad_ranges(kwargs, message):
    # the message starts with the argument's name: the bundle prints it as mask_placement#<name> ...
    with pytest.raises(ValueError, match=rf"^{message} must be "):
        MaskPlacement(**kwargs)


def test_placement_refuses_an_empty_mask():
    with pytest.raises(ValueError, match="non-empty"):
        MaskPlacement()(torch.zeros(1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool), torch.Generator())


# ---------------------------------------------------------------------------------------------- the source
def test_source_returns_the_placed_masks_inside_their_cases_body(cases, shared_ckpt):
    source = LabelFirstPoolSource(shared_ckpt, cases=cases, num_inference_steps=2, device="cpu")
    assert isinstance(source, DiffusionPoolSource) and source.spatial_shape == SHAPE
    gen = torch.Generator().manual_seed(0)
    twin = torch.Generator().manual_seed(0)
    out = source(5, gen)
    expected = LabelFirstPoolSource(shared_ckpt, cases=cases, num_inference_steps=2, device="cpu").draw_masks(
        5, twin
    )
    assert set(out) == set(MODS) and all(v.shape == (5, 1, *SHAPE) for v in out.values())
    assert torch.equal(out["label"], expected)  # the label is the given mask, exactly
    assert out["ct"].min() < -500 < out["ct"].max()  # physical units (HU)
    assert all(source.last_placed) and len(source.last_case_indices) == 5
    for mask, i in zip(out["label"], source.last_case_indices, strict=True):
        assert cases[i]["label"].any()
        assert mask.any() and not ((mask > 0.5) & ~_body(cases[i])).any()
    assert source.placement_counts() == {"drawn": 5, "placed": 5, "fallbacks": 0, "tries": source.tries}
    assert source.last_conditioning == "clamp"  # a shared-timestep model


def test_clean_conditioning_for_a_per_modality_checkpoint(cases, tmp_path):
    ckpt = _checkpoint(tmp_path / "per_modality.pt", per_modality=True)
    source = LabelFirstPoolSource(ckpt, cases=cases, num_inference_steps=2, device="cpu")
    assert source.inferer.clean_conditioning
    source(2, torch.Generator().manual_seed(0))
    assert source.last_conditioning == "clean"
    forced = LabelFirstPoolSource(
        ckpt, cases=cases, num_inference_steps=2, device="cpu", conditioning="clamp"
    )
    forced(2, torch.Generator().manual_seed(0))
    assert forced.last_conditioning == "clamp"


def test_fallbacks_are_counted_and_logged(shared_ckpt, caplog):
    ct = torch.full((1, *SHAPE), -1000.0)
    ct[0, 7, 7] = 40.0  # a one-voxel body: no transformed 3x3 mask fits
    label = torch.zeros(1, *SHAPE)
    label[0, 6:9, 6:9] = 1.0
    source = LabelFirstPoolSource(
        shared_ckpt,
        cases=[{"ct": ct, "label": label}],
        placement=MaskPlacement(max_tries=2),
        num_inference_steps=1,
        device="cpu",
    )
    with caplog.at_level(logging.WARNING, logger="monai_pairsynth.inferers.label_first_source"):
        out = source(3, torch.Generator().manual_seed(0))
    assert source.placement_counts() == {"drawn": 3, "placed": 0, "fallbacks": 3, "tries": 6}
    assert source.last_placed == [False] * 3
    assert all(torch.equal(m, label) for m in out["label"])  # the original mask at its original position
    assert "3 of 3 masks could not be placed" in caplog.text


def test_no_tumour_raises(shared_ckpt):
    empty = [{"ct": torch.zeros(1, *SHAPE), "label": torch.zeros(1, *SHAPE)} for _ in range(2)]
    with pytest.raises(ValueError, match="none of the 2 cases has a non-empty 'label' mask"):
        LabelFirstPoolSource(shared_ckpt, cases=empty, device="cpu")
    with pytest.raises(ValueError, match="cases is empty"):
        LabelFirstPoolSource(shared_ckpt, cases=[], device="cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"conditioning": "sometimes"}, "conditioning must be one of"),
        ({"label_key": "mask"}, "label_key 'mask' is not a modality"),
        (
            {"cases": [{"ct": torch.zeros(1, 8, 8), "label": torch.ones(1, 8, 8)}]},
            "generator's training grid",
        ),
        ({"cases": [{"label": torch.ones(1, *SHAPE)}]}, "case 0 needs 'ct' and 'label'"),
    ],
)
def test_bad_arguments_are_named(cases, shared_ckpt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabelFirstPoolSource(shared_ckpt, **{"cases": cases, "device": "cpu", **kwargs})


def test_source_fills_a_reproducible_pool_and_mixes(cases):
    inferer = PairedDiffusionInferer(num_train_timesteps=50, spacing=SPACING, spatial_shape=SHAPE)
    model = _model()

    def pool(seed):
        source = LabelFirstPoolSource(inferer, model, cases=cases, num_inference_steps=2, device="cpu")
        p = SynthesisPool(4, source=source, seed=seed)
        assert p.fill().accepted == 4
        return p

    first, again, other = pool(0), pool(0), pool(1)
    for k in MODS:
        a = torch.stack([first[i][k] for i in range(4)])
        assert torch.equal(a, torch.stack([again[i][k] for i in range(4)])), k
    assert not torch.equal(
        torch.stack([first[i]["label"] for i in range(4)]), torch.stack([other[i]["label"] for i in range(4)])
    )
    assert first.spacing == (SPACING, SPACING) and first.spatial_shape == SHAPE
    assert all(first[i]["label"].any() for i in range(4))  # every triplet has its tumour
    mixed = MixedDataset(cases, first, ratio=0.5, seed=0)
    assert mixed.num_synthetic == 2 and len(mixed) == len(cases) + 2
    item = mixed[len(cases)]
    assert item["synthetic"] and set(MODS) <= set(item) and item["label"].shape == (1, *SHAPE)
    pooled = SynthesizePairedd(MODS, pool=first, prob=1.0)
    pooled.set_random_state(seed=0)
    drawn = pooled(dict(cases[0]))
    assert drawn["label"].any() and drawn["ct"].shape == (1, *SHAPE)


def test_seeded_mode_places_the_reference_mask_in_its_body(cases, shared_ckpt):
    source = LabelFirstPoolSource(shared_ckpt, cases=cases, num_inference_steps=4, device="cpu")
    reference = next(c for c in cases if c["label"].any())
    batch = {k: torch.as_tensor(reference[k])[None] for k in MODS}
    out = source.generate_seeded(batch, 0.5, torch.Generator().manual_seed(0))
    assert out["label"].shape == (1, 1, *SHAPE) and out["label"].any()
    assert not ((out["label"][0] > 0.5) & ~_body(reference)).any()
    assert source.drawn == 1 and source.last_conditioning == "clamp"


def test_preview_script_runs_on_a_tiny_checkpoint(tmp_path, shared_ckpt):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import label_first_preview

    out = tmp_path / "preview.png"
    args = ["--checkpoint", str(shared_ckpt), "--output", str(out), "--num-cases", "4", "--num-samples", "3"]
    result = label_first_preview.main([*args, "--rows", "2", "--num-inference-steps", "1"])
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert (
        result["drawn"] == 3 == result["placed"] + result["fallbacks"] and result["conditioning"] == "clamp"
    )
    assert 0.0 <= result["mask_in_generated_body"] <= 1.0
