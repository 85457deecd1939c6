"""The plausibility rules of the quality filter: impossible triplets are rejected before the centroid test.

Measured with these seeds (64×64 at 4 mm): every real phantom case passes every rule (0 of 1000 held-out cases
rejected; the smallest real PET uptake ratio 1.73 against a learned threshold of 1.39), ``tumour_removed_pet``
is rejected as ``no_pet_uptake`` 64/64, a mask moved into the air 64/64 as ``mask_outside_body``.
"""

from __future__ import annotations

import math

import pytest
import torch
from quality_phantom import KEYS, NUM_TEST, SIZE, SPACING, phantom_cases, stack

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS
from monai_pairsynth.quality import (
    EmptyMaskRule,
    FeatureCentroidFilter,
    body_mask,
    build_feature_segmenter,
    corrupt_triplets,
    fill_holes_2d,
    mask_in_body_fraction,
    pet_uptake_ratio,
)
from monai_pairsynth.quality.feature_centroid_filter import _PLAUSIBILITY_CONFIG

RULES = ("mask_outside_body", "empty_mask", "no_pet_uptake")
GRID = {"spatial_size": SIZE, "spacing": SPACING}


def tiny_network(in_channels: int = 2) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_feature_segmenter(2, in_channels=in_channels, channels=(4, 8), dropout=0.2).eval()


@pytest.fixture(scope="module")
def real():
    """48 real phantom triplets at 64×64 / 4 mm (every one has tumour)."""
    return phantom_cases(48, base_seed=0, **GRID)


@pytest.fixture(scope="module")
def held_out():
    return stack(phantom_cases(16, base_seed=3000, **GRID))


@pytest.fixture(scope="module")
def fitted(real):
    """A filter on an untrained tiny network (the rules do not depend on the network), K = 1."""
    return FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(real)


def mask_in_corner(batch: dict[str, torch.Tensor], size: int = 3) -> dict[str, torch.Tensor]:
    """The same triplets with the mask moved to the image corner (air around the phantom's body)."""
    out = {k: v.clone() for k, v in batch.items()}
    out["label"] = torch.full_like(batch["label"], -1.0)
    out["label"][..., :size, :size] = 1.0
    return out


def reasons(result) -> list[str]:
    return [r.value for r in result.reasons]


# ---------------------------------------------------------------- the measurements


def test_fill_holes_fills_inner_air_but_not_the_outside_or_a_diagonal_gap():
    ring = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
    ring[..., 2:7, 2:7] = True
    ring[..., 4, 4] = False  # an airway inside the body
    filled = fill_holes_2d(ring)
    assert bool(filled[0, 0, 4, 4]) and not bool(filled[0, 0, 0, 0])
    assert int(filled.sum()) == 25
    # a ring open to the outside only through a diagonal step is still closed (4-connected background)
    diagonal = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    diagonal[..., 1:6, 1:6] = True
    diagonal[..., 2:5, 2:5] = False  # a 3×3 hole
    diagonal[..., 1, 1] = False  # the corner of the ring: the hole touches the outside only diagonally
    assert bool(fill_holes_2d(diagonal)[0, 0, 3, 3])
    opened = diagonal.clone()
    opened[..., 1, 3] = False  # a real gap in the ring: the hole is outside
    assert not bool(fill_holes_2d(opened)[0, 0, 3, 3])
    # 3D: each axial slice (the last axis) on its own; a batch of them at once
    volume = torch.stack([ring[0, 0]] * 4, dim=-1)[None, None].repeat(2, 1, 1, 1, 1)
    assert torch.equal(
        fill_holes_2d(volume), torch.stack([filled[0, 0]] * 4, -1)[None, None].repeat(2, 1, 1, 1, 1)
    )


def test_measurements_are_per_sample_and_batch_independent(held_out):
    ct = DEFAULT_MODALITY_SPECS["ct"].denormalize(held_out["ct"])
    pet = DEFAULT_MODALITY_SPECS["pet"].denormalize(held_out["pet"])
    mask = held_out["label"] > 0
    body = body_mask(ct, -500.0, 1)
    fraction, ratio = mask_in_body_fraction(mask, body), pet_uptake_ratio(pet, mask)
    for i in (0, 5, 15):
        alone = body_mask(ct[i : i + 1], -500.0, 1)
        assert torch.equal(alone[0], body[i])
        assert torch.equal(mask_in_body_fraction(mask[i : i + 1], alone), fraction[i : i + 1])
        assert torch.allclose(pet_uptake_ratio(pet[i : i + 1], mask[i : i + 1]), ratio[i : i + 1])
    # empty masks: both measurements NaN (the rules let them pass; the empty_mask rule decides)
    empty = torch.zeros_like(mask)
    assert bool(torch.isnan(mask_in_body_fraction(empty, body)).all())
    assert bool(torch.isnan(pet_uptake_ratio(pet, empty)).all())


def test_pet_uptake_ratio_of_flat_and_hot_lesions():
    pet = torch.full((3, 1, 16, 16), 1.5)
    mask = torch.zeros(3, 1, 16, 16, dtype=torch.bool)
    mask[..., 6:9, 6:9] = True
    pet[0][mask[0]] = 6.0  # hot: 4x its surroundings
    pet[2] = 0.0  # everything at SUV 0: the reference is floored, no division by zero
    ratio = pet_uptake_ratio(pet, mask)
    assert ratio.tolist() == pytest.approx([4.0, 1.0, 0.0])
    whole = torch.ones(1, 1, 8, 8, dtype=torch.bool)  # no ring, no background: cannot judge
    assert math.isnan(float(pet_uptake_ratio(torch.ones(1, 1, 8, 8), whole)[0]))


# ---------------------------------------------------------------- the rules in select


def test_real_phantom_triplets_pass_every_rule(phantom_setup):
    """False rejection rate on real triplets: none of 32 new held-out phantom cases (nor the 64 test cases) is
    rejected by a plausibility rule, with the filter of the other quality tests (trained segmenter, K = 4)."""
    filt = phantom_setup.filter
    rules = filt.plausibility_rules
    assert all(rules[r]["active"] for r in RULES), rules
    assert "128/128 real training samples" in rules["empty_mask"]["note"]
    for batch in (stack(phantom_cases(32, base_seed=80_000, **GRID)), phantom_setup.test):
        counts = filt.select(batch).reason_counts()
        assert [counts[r] for r in RULES] == [0, 0, 0], counts
    # the real training samples the rules were learned from pass too, with a margin for the PET rule
    learned = filt.real_plausibility
    assert float(learned["mask_in_body"].min()) == 1.0
    assert float(learned["pet_uptake"].min()) > 1.2 * filt.thresholds["min_pet_uptake"] > 1.2


def test_mask_in_the_air_outside_the_body_is_rejected(phantom_setup):
    filt = phantom_setup.filter
    moved = mask_in_corner(phantom_setup.test)
    ct_hu = DEFAULT_MODALITY_SPECS["ct"].denormalize(moved["ct"][..., :3, :3])
    assert float(ct_hu.max()) < -900  # the corner is air
    result = filt.select(moved)
    assert reasons(result) == ["mask_outside_body"] * NUM_TEST
    assert float(result.scores["mask_in_body"].max()) == 0.0
    assert result.thresholds["min_mask_in_body"] == 0.9
    assert "mask_outside_body" in result.explain(0) and "min_mask_in_body=0.9" in result.explain(0)
    # the rule off: the same triplets reach the network's checks
    assert "mask_outside_body" not in reasons(filt.select(moved, plausibility=False))


def test_mask_in_the_airway_is_inside_the_body(fitted, held_out):
    """Air inside the patient (the airway) is body: the holes of the body are filled."""
    ct_hu = DEFAULT_MODALITY_SPECS["ct"].denormalize(held_out["ct"])
    inner_air = (ct_hu < -500) & fill_holes_2d(ct_hu > -500)
    has_airway = inner_air.flatten(1).any(1)
    assert int(has_airway.sum()) >= 8
    batch = {k: v[has_airway] for k, v in held_out.items()}
    batch["label"] = torch.where(inner_air[has_airway], 1.0, -1.0)
    scores = fitted.score(batch)
    assert float(scores["mask_in_body"].min()) == 1.0
    # without filling, the same masks would lie outside the body
    ct_in = ct_hu[has_airway]
    assert float(mask_in_body_fraction(inner_air[has_airway], ct_in > -500).max()) == 0.0


def test_flat_pet_in_the_mask_is_rejected_as_no_pet_uptake(phantom_setup):
    filt = phantom_setup.filter
    flat = corrupt_triplets(phantom_setup.test, "tumour_removed_pet")
    result = filt.select(flat)
    assert reasons(result) == ["no_pet_uptake"] * NUM_TEST
    assert float(result.scores["pet_uptake"].max()) < 1.05  # flat: about 1
    assert result.thresholds["min_pet_uptake"] == pytest.approx(filt.thresholds["min_pet_uptake"])
    # the learned threshold: margin × the 0.01 quantile of the real training ratios
    ratios = filt.real_plausibility["pet_uptake"].double()
    assert filt.thresholds["min_pet_uptake"] == pytest.approx(0.75 * float(torch.quantile(ratios, 0.01)))


def test_empty_mask_is_rejected_when_every_real_slice_has_tumour(fitted, real, held_out):
    empty = {**held_out, "label": torch.full_like(held_out["label"], -1.0)}
    assert fitted.plausibility_rules["empty_mask"]["active"]
    assert fitted.thresholds["min_mask_voxels"] == 1
    assert reasons(fitted.select(empty)) == ["empty_mask"] * 16
    # auto mode: fitted on real data with empty slices, an empty mask is plausible
    with_empty = [dict(c) for c in real]
    for c in with_empty[:8]:  # 40/48 = 0.83 < 0.95
        c["label"] = torch.full_like(c["label"], -1.0)
    auto = FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(with_empty)
    rule = auto.plausibility_rules["empty_mask"]
    assert not rule["active"] and auto.thresholds["min_mask_voxels"] is None
    assert "only 40/48" in rule["note"]
    assert "empty_mask" not in reasons(auto.select(empty))
    assert "mask_voxels" in auto.score(empty)  # still measured
    # "on" applies it anyway, "off" never; the real fraction decides at the boundary
    forced = FeatureCentroidFilter(tiny_network(), mc_passes=1, empty_mask="on").fit(with_empty)
    assert reasons(forced.select(empty)) == ["empty_mask"] * 16
    off = FeatureCentroidFilter(tiny_network(), mc_passes=1, empty_mask=False).fit(real)
    assert off.empty_mask == EmptyMaskRule.OFF and "mask_voxels" not in off.score(empty)
    assert "empty_mask" not in reasons(off.select(empty))
    two_empty = [dict(c) for c in real]
    for c in two_empty[:2]:  # 46/48 = 0.958 >= 0.95: on; with 0.97 required: off
        c["label"] = torch.full_like(c["label"], -1.0)
    assert (
        FeatureCentroidFilter(tiny_network(), mc_passes=1)
        .fit(two_empty)
        .plausibility_rules["empty_mask"]["active"]
    )
    strict = FeatureCentroidFilter(tiny_network(), mc_passes=1, empty_mask_real_fraction=0.97).fit(two_empty)
    assert not strict.plausibility_rules["empty_mask"]["active"]


def test_min_mask_voxels_rejects_specks(fitted, real, held_out):
    speck = {**held_out, "label": torch.full_like(held_out["label"], -1.0)}
    speck["label"][..., 30, 30] = 1.0  # one voxel inside the body
    assert "empty_mask" not in reasons(fitted.select(speck))
    k3 = FeatureCentroidFilter(tiny_network(), mc_passes=1, empty_mask="on", min_mask_voxels=3).fit(real)
    assert reasons(k3.select(speck)) == ["empty_mask"] * 16  # checked before the PET rule


def test_counts_order_and_pool_mode(fitted, held_out):
    """Each rule has its own count (result and running counts); the first failing rule is reported; pool mode
    removes the implausible candidates before ranking and still keeps r·N."""
    good = {k: v[:4] for k, v in held_out.items()}
    outside = mask_in_corner({k: v[4:8] for k, v in held_out.items()})
    flat = corrupt_triplets({k: v[8:12] for k, v in held_out.items()}, "tumour_removed_pet")
    empty = {k: v[12:16].clone() for k, v in held_out.items()}
    empty["label"].fill_(-1.0)
    batch = {k: torch.cat([good[k], outside[k], flat[k], empty[k]]) for k in KEYS}
    fitted.reset_counts()
    result = fitted.select(batch, memorisation_guard=False)
    assert reasons(result)[4:] == ["mask_outside_body"] * 4 + ["no_pet_uptake"] * 4 + ["empty_mask"] * 4
    counts = result.reason_counts()
    assert (counts["mask_outside_body"], counts["empty_mask"], counts["no_pet_uptake"]) == (4, 4, 4)
    running = fitted.counts
    assert (running["rejected_mask_outside_body"], running["rejected_empty_mask"]) == (4, 4)
    assert running["rejected_no_pet_uptake"] == 4 and running["seen"] == 16
    # a mask in the air has no uptake either: the body rule comes first
    assert float(result.scores["pet_uptake"][4:8].max()) < fitted.thresholds["min_pet_uptake"]
    # pool mode, r·N = 4 of 16: the 12 implausible ones never compete, the 4 real ones are kept
    pool = fitted.select(batch, mode="pool", ratio=1.0, num_real=4, memorisation_guard=False)
    assert pool.indices.tolist() == [0, 1, 2, 3]
    assert pool.reason_counts()["mask_outside_body"] == 4
    # precomputed scores without the measurements (an older score()) skip the rules
    scores = {
        k: v for k, v in result.scores.items() if k not in ("mask_in_body", "mask_voxels", "pet_uptake")
    }
    assert not set(RULES) & set(reasons(fitted.select(scores=scores, memorisation_guard=False)))


def test_physical_units_give_the_same_measurements(fitted, held_out):
    physical = {k: DEFAULT_MODALITY_SPECS[k].denormalize(v) for k, v in held_out.items()}
    a, b = fitted.score(held_out), fitted.score(physical, units="physical")
    for name in ("mask_in_body", "mask_voxels", "pet_uptake"):
        assert torch.allclose(a[name], b[name], rtol=1e-4), name


def test_rules_of_a_missing_modality_are_skipped(real, held_out):
    ct_only = FeatureCentroidFilter(tiny_network(1), image_keys=("ct",), mc_passes=1).fit(real)
    rules = ct_only.plausibility_rules
    assert rules["mask_outside_body"]["active"] and not rules["no_pet_uptake"]["active"]
    assert "not among image_keys" in rules["no_pet_uptake"]["note"]
    scores = ct_only.score({k: held_out[k] for k in ("ct", "label")})  # no PET in the batch at all
    assert "pet_uptake" not in scores and "mask_in_body" in scores
    flat = corrupt_triplets(held_out, "tumour_removed_pet")
    assert "no_pet_uptake" not in reasons(ct_only.select(flat))
    pet_only = FeatureCentroidFilter(tiny_network(1), image_keys=("pet",), mc_passes=1).fit(real)
    assert not pet_only.plausibility_rules["mask_outside_body"]["active"]
    moved = mask_in_corner(held_out)
    assert "mask_outside_body" not in reasons(pet_only.select(moved))
    assert "no_pet_uptake" in reasons(pet_only.select(moved))  # the corner has no uptake either


# ---------------------------------------------------------------- state


def test_save_load_round_trip_keeps_the_rules(real, held_out, tmp_path):
    settings = {
        "body_threshold": -300.0,
        "body_dilation": 2,
        "min_mask_in_body": 0.8,
        "empty_mask": "on",
        "min_mask_voxels": 2,
        "min_pet_uptake": 1.25,
        "pet_ring": (2, 4),
    }
    filt = FeatureCentroidFilter(tiny_network(), mc_passes=1, **settings).fit(real)
    loaded = FeatureCentroidFilter.load(filt.save(tmp_path / "filter.pt"), tiny_network())
    assert loaded.config() == filt.config()
    assert loaded.thresholds == filt.thresholds
    assert loaded.thresholds["min_pet_uptake"] == 1.25 and loaded.thresholds["min_mask_voxels"] == 2
    assert loaded.plausibility_rules == filt.plausibility_rules
    for name, values in filt.real_plausibility.items():
        assert torch.equal(loaded.real_plausibility[name], values), name
    a, b = filt.score(held_out), loaded.score(held_out)
    for name in ("mask_in_body", "mask_voxels", "pet_uptake"):
        assert torch.equal(a[name], b[name]), name
    # learned (auto) thresholds survive too
    auto = FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(real)
    reloaded = FeatureCentroidFilter.load(auto.save(tmp_path / "auto.pt"), tiny_network())
    assert reloaded.thresholds == auto.thresholds and reloaded.thresholds["min_pet_uptake"] > 1.0
    # a filter fitted with another PET ring learned from other ratios: refused
    with pytest.raises(ValueError, match=r"pet_ring: saved \[1, 3\], this filter \[2, 4\]"):
        FeatureCentroidFilter(tiny_network(), mc_passes=1, pet_ring=(2, 4)).load_state_dict(auto.state_dict())


def old_state(state: dict) -> dict:
    """``state`` as written before the plausibility rules existed (version 1)."""
    config = {k: v for k, v in state["config"].items() if k not in _PLAUSIBILITY_CONFIG}
    fitted = {k: v for k, v in state["fitted"].items() if k != "plausibility"}
    scores = {
        k: v
        for k, v in fitted["real_scores"].items()
        if k not in ("mask_in_body", "mask_voxels", "pet_uptake")
    }
    return {"version": 1, "config": config, "fitted": {**fitted, "real_scores": scores}}


def test_old_state_without_the_rules_loads(fitted, held_out, tmp_path):
    """A version-1 state: the body rule at its default (it learns nothing), the learned rules off."""
    state = old_state(fitted.state_dict())
    path = tmp_path / "old.pt"
    torch.save(state, path)
    loaded = FeatureCentroidFilter.load(path, tiny_network())
    rules = loaded.plausibility_rules
    assert rules["mask_outside_body"]["active"] and loaded.thresholds["min_mask_in_body"] == 0.9
    assert not rules["empty_mask"]["active"] and not rules["no_pet_uptake"]["active"]
    assert "predates the plausibility rules" in rules["no_pet_uptake"]["note"]
    assert loaded.thresholds["min_mask_voxels"] is None and loaded.thresholds["min_pet_uptake"] is None
    assert loaded.real_plausibility == {}
    a, b = fitted.score(held_out), loaded.score(held_out)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert reasons(loaded.select(mask_in_corner(held_out))) == ["mask_outside_body"] * 16
    # a fixed PET threshold or empty_mask="on" needs nothing learned: they apply to an old state too
    fixed = FeatureCentroidFilter(tiny_network(), mc_passes=1, min_pet_uptake=1.3, empty_mask="on")
    fixed.load_state_dict(state)
    assert fixed.thresholds["min_pet_uptake"] == 1.3 and fixed.thresholds["min_mask_voxels"] == 1
    # and it saves as a current (version 2) state
    assert loaded.state_dict()["version"] == 2
    with pytest.raises(ValueError, match=r"unsupported filter state version 7; expected one of \[1, 2\]"):
        loaded.load_state_dict({**state, "version": 7})


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"body_threshold": -2000.0},
            r"body_threshold -2000 HU lies outside the CT spec's range \(-1000, 1000\)",
        ),
        ({"body_threshold": math.nan}, "body_threshold must be a finite number"),
        ({"body_dilation": -1}, "body_dilation must be an integer >= 0"),
        ({"body_dilation": 1.5}, "body_dilation must be an integer >= 0"),
        ({"min_mask_in_body": 1.5}, r"min_mask_in_body must be a fraction in \[0, 1\] or None"),
        (
            {"empty_mask": "sometimes"},
            r"(?s)'sometimes'.*Available options are \{'(auto|on|off)', '(auto|on|off)', '(auto|on|off)'\}",
        ),
        ({"min_mask_voxels": 0}, "min_mask_voxels must be an integer >= 1, got 0"),
        ({"empty_mask_real_fraction": 1.2}, "empty_mask_real_fraction must be a fraction"),
        ({"min_pet_uptake": "high"}, "min_pet_uptake must be a number >= 0, 'auto' or None"),
        ({"min_pet_uptake": -1.0}, "min_pet_uptake must be a number >= 0"),
        ({"pet_uptake_quantile": 1.5}, "pet_uptake_quantile"),
        ({"pet_uptake_margin": 0.0}, "pet_uptake_margin must be a positive number, got 0.0"),
        ({"pet_ring": (3, 1)}, r"pet_ring must be two integers \(inner, outer\) with 0 <= inner < outer"),
        ({"pet_ring": 3}, "pet_ring must be two integers"),
        ({"ct_key": "label"}, "ct_key 'label' is the label_key"),
        ({"ct_key": "pet"}, "ct_key and pet_key must differ"),
        (
            {"specs": {"ct": {"kind": "mask"}, "pet": {"low": 0.0, "high": 15.0}}},
            "needs an image spec for ct_key",
        ),
    ],
)
def test_bad_rule_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureCentroidFilter(tiny_network(), **kwargs)


def test_rule_settings_that_switch_rules_off_need_no_spec():
    specs = {"ct": {"low": -1000.0, "high": 1000.0}, "label": {"kind": "mask"}}  # no PET spec
    with pytest.raises(ValueError, match="no_pet_uptake rule needs an image spec for pet_key 'pet'"):
        FeatureCentroidFilter(tiny_network(), specs=specs)
    filt = FeatureCentroidFilter(tiny_network(), specs=specs, min_pet_uptake=None)
    assert filt.min_pet_uptake is None
    # a body threshold far outside the range is fine when the CT rule is off
    FeatureCentroidFilter(tiny_network(), min_mask_in_body=None, body_threshold=-5000.0)
