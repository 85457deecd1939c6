"""FeatureCentroidFilter logic on a tiny untrained network and 16×16 phantom cases (fast, no training)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from quality_phantom import KEYS, phantom_cases, stack
from torch import nn
from torch.utils.data import DataLoader

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS
from monai_pairsynth.quality import (
    FeatureCentroidFilter,
    FilterNotFittedError,
    RejectionReason,
    SelectionMode,
    build_feature_segmenter,
    centroid_distances,
    unit_normalize_channels,
)

TINY = {"spatial_size": (16, 16), "spacing": 16.0}


def tiny_network(seed: int = 0, channels=(4, 8)) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_feature_segmenter(2, channels=channels, dropout=0.2).eval()


@pytest.fixture(scope="module")
def real():
    return phantom_cases(24, base_seed=0, **TINY)


@pytest.fixture(scope="module")
def candidates():
    return stack(phantom_cases(16, base_seed=1000, **TINY))


@pytest.fixture(scope="module")
def fitted(real):
    return FeatureCentroidFilter(tiny_network(), mc_passes=3, seed=0).fit(real)


def make_scores(distance, certainty, entropy=None, nearest_real=None):
    n = len(distance)
    return {
        "distance": torch.tensor(distance, dtype=torch.float32),
        "certainty": torch.tensor(certainty, dtype=torch.float32),
        "entropy": torch.tensor(entropy if entropy is not None else [0.5] * n, dtype=torch.float32),
        "nearest_real": torch.tensor(
            nearest_real if nearest_real is not None else [1.0] * n, dtype=torch.float32
        ),
        "stratum": torch.zeros(n, dtype=torch.long),
    }


# ---------------------------------------------------------------- scores


def test_score_shapes_ranges_and_reproducibility(fitted, candidates):
    scores = fitted.score(candidates)
    plausibility = ["mask_in_body", "mask_voxels", "pet_uptake"]  # tests/quality/test_plausibility_rules.py
    assert sorted(scores) == sorted(
        ["certainty", "distance", "entropy", "nearest_real", "stratum", *plausibility]
    )
    for name, values in scores.items():
        assert values.shape == (16,), name
        assert values.device.type == "cpu"
    assert bool((scores["distance"] > 0).all()) and bool(
        (scores["distance"] < 4.0 * 2).all()
    )  # 2 layers, <= 4 each
    assert bool(((scores["certainty"] >= 0) & (scores["certainty"] <= 1)).all())
    assert bool(((scores["entropy"] >= 0) & (scores["entropy"] <= 1)).all())
    assert bool((scores["nearest_real"] > 0).all())
    again = fitted.score(candidates)
    for name in scores:
        assert torch.equal(scores[name], again[name]), name


def test_k1_is_deterministic_and_equals_the_formula(real, candidates):
    net = tiny_network()
    k1 = FeatureCentroidFilter(net, mc_passes=1, seed=0).fit(real)
    k1_other_seed = FeatureCentroidFilter(net, mc_passes=1, seed=7).fit(real)
    s1, s1b = k1.score(candidates), k1_other_seed.score(candidates)
    assert torch.equal(s1["distance"], s1b["distance"])  # no randomness at K = 1
    # the formula by hand: deterministic eval forward with hooks, unit-normalise, distance to the centroid
    acts: dict[str, torch.Tensor] = {}
    modules = dict(net.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, a, o, n=n: acts.__setitem__(n, o)) for n in k1.layers
    ]
    with torch.no_grad():
        net(torch.cat([candidates["ct"], candidates["pet"]], 1))
    for h in handles:
        h.remove()
    centroids = k1.state_dict()["fitted"]["centroids"]
    expected = centroid_distances([unit_normalize_channels(acts[n]) for n in k1.layers], centroids)[:, 0]
    assert torch.allclose(s1["distance"], expected, atol=1e-5)
    # K = 3 MC-dropout passes give other (seed-dependent) values
    k3a = FeatureCentroidFilter(net, mc_passes=3, seed=0).fit(real).score(candidates)["distance"]
    k3b = FeatureCentroidFilter(net, mc_passes=3, seed=1).fit(real).score(candidates)["distance"]
    assert not torch.allclose(k3a, s1["distance"])
    assert not torch.allclose(k3a, k3b)


def test_physical_units_give_the_same_scores(fitted, candidates):
    physical = {k: DEFAULT_MODALITY_SPECS[k].denormalize(v) for k, v in candidates.items()}
    a = fitted.score(candidates)
    b = fitted.score(physical, units="physical")
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_real_scores_and_thresholds_are_calibrated(fitted):
    real_scores, thr = fitted.real_scores, fitted.thresholds
    assert real_scores["distance"].shape == (24,)
    assert thr["distance"][0] == pytest.approx(float(torch.quantile(real_scores["distance"].double(), 0.95)))
    assert thr["min_certainty"] == pytest.approx(
        float(torch.quantile(real_scores["certainty"].double(), 0.05))
    )
    assert thr["min_nearest_real"] == pytest.approx(
        float(torch.quantile(real_scores["nearest_real"].double(), 0.01))
    )
    assert thr["max_entropy"] == math.inf
    # by construction about 5% of the (in-sample) real distances lie above the 95% threshold
    assert int((real_scores["distance"] > thr["distance"][0]).sum()) in (1, 2)


def test_calibrate_changes_thresholds_without_refitting(real):
    filt = FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(real)
    loose = filt.calibrate(distance_quantile=1.0, certainty_quantile=0.0, entropy_quantile=1.0)
    assert loose["distance"][0] == pytest.approx(float(filt.real_scores["distance"].max()))
    assert loose["min_certainty"] == pytest.approx(float(filt.real_scores["certainty"].min()))
    assert loose["max_entropy"] == pytest.approx(float(filt.real_scores["entropy"].max()))
    result = filt.select({k: torch.stack([c[k] for c in real]) for k in KEYS}, memorisation_guard=False)
    assert result.num_accepted == 24  # every real sample passes thresholds at its extremes
    with pytest.raises(ValueError, match="distance_quantile"):
        filt.calibrate(distance_quantile=1.5)


# ---------------------------------------------------------------- pool mode


@pytest.mark.parametrize(("ratio", "num_real", "keep"), [(0.5, 4, 2), (1.0, 3, 3), (0.25, 8, 2), (2.0, 2, 4)])
def test_pool_mode_keeps_exactly_rn(fitted, ratio, num_real, keep):
    pool = stack(phantom_cases(4 * keep, base_seed=2000, **TINY))
    # the pool's arithmetic alone: without the guard and the plausibility rules (at 16 mm voxels a one-voxel
    # tumour's PET uptake ratio is noisy enough for the learned threshold to catch a real case now and then)
    result = fitted.select(
        pool, mode="pool", ratio=ratio, num_real=num_real, memorisation_guard=False, plausibility=False
    )
    assert result.num_accepted == keep
    counts = result.reason_counts()
    assert counts["uncertain"] == 2 * keep and counts["far_from_centroid"] == keep
    assert result.mode == SelectionMode.POOL
    accepted = result.indices
    # the accepted ones are among the more certain half and the closest of it
    assert float(result.scores["certainty"][accepted].min()) >= result.thresholds["certainty_cut"]
    assert float(result.scores["distance"][accepted].max()) == result.thresholds["distance_cut"]


def test_pool_mode_ranking_is_certainty_half_then_closest_half(fitted):
    # 8 candidates, r·N = 2: certain half = 4 most certain (ties broken by lower entropy), then the 2 closest
    scores = make_scores(
        distance=[0.10, 0.90, 0.20, 0.30, 0.80, 0.05, 0.40, 0.70],
        certainty=[0.10, 0.95, 0.80, 0.90, 0.85, 0.20, 0.80, 0.30],
        entropy=[0.5, 0.5, 0.1, 0.5, 0.5, 0.5, 0.9, 0.5],
    )
    result = fitted.select(scores=scores, mode="pool", ratio=0.5, num_real=4)
    # certain half: 1 (0.95), 3 (0.90), 4 (0.85), 2 (0.80, entropy 0.1 beats 6's 0.9); closest two: 2, 3
    assert result.indices.tolist() == [2, 3]
    reasons = [r.value for r in result.reasons]
    assert reasons == [
        "uncertain",
        "far_from_centroid",
        "accepted",
        "accepted",
        "far_from_centroid",
        "uncertain",
        "uncertain",
        "uncertain",
    ]
    # a memorised candidate (nearest real below the guard) is never taken; rN is still reached
    guarded = dict(scores)
    guarded["nearest_real"] = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    result = fitted.select(scores=guarded, mode="pool", ratio=0.5, num_real=4)
    assert result.reasons[2] == RejectionReason.MEMORISED
    assert result.indices.tolist() == [3, 6]  # 6 moves into the certain half and is the next closest
    assert result.num_accepted == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 0.5, "num_real": 4}, r"4·r·N = 4 × 0.5 × 4 = 8 candidates .* got 7"),
        ({"ratio": 0.5, "num_real": 3}, "whole number"),
        ({"ratio": -1.0, "num_real": 3}, "ratio"),
        ({"ratio": 0.5, "num_real": 0}, "num_real"),
        ({"ratio": 0.5}, "needs ratio"),
        ({"ratio": 0.5, "num_real": 4, "max_accept": 1}, "max_accept"),
    ],
)
def test_pool_mode_validates_the_candidate_count(fitted, kwargs, match):
    scores = make_scores([0.1] * 7, [0.5] * 7)
    with pytest.raises(ValueError, match=match):
        fitted.select(scores=scores, mode="pool", **kwargs)


def test_unknown_selection_mode_names_the_choices(fitted):
    with pytest.raises(
        ValueError, match=r"(?s)'batch'.*Available options are \{'(pool|streaming)', '(pool|streaming)'\}"
    ):
        fitted.select(scores=make_scores([0.1] * 4, [0.5] * 4), mode="batch")


# ---------------------------------------------------------------- streaming mode and the guard


def test_streaming_reasons_follow_the_thresholds(fitted):
    thr = fitted.thresholds
    d, c, m = thr["distance"][0], thr["min_certainty"], thr["min_nearest_real"]
    scores = make_scores(
        distance=[d * 0.9, d * 1.1, d * 0.9, d * 0.9, d * 2.0, math.nan],
        certainty=[c + 0.01, c + 0.01, c - 0.01, c + 0.01, c - 0.01, math.nan],
        nearest_real=[m * 2, m * 2, m * 2, m * 0.5, m * 0.5, math.nan],
    )
    result = fitted.select(scores=scores)
    assert [r.value for r in result.reasons] == [
        "accepted",
        "far_from_centroid",
        "uncertain",
        "memorised",
        "memorised",
        "non_finite",
    ]
    assert result.mask.tolist() == [True, False, False, False, False, False]
    assert "far_from_centroid" in result.explain(1) and f"distance/0={d:.4g}" in result.explain(1)
    unguarded = fitted.select(scores=scores, memorisation_guard=False)
    assert unguarded.reasons[3] == RejectionReason.ACCEPTED
    assert unguarded.reasons[4] == RejectionReason.UNCERTAIN


def test_streaming_max_accept_keeps_the_closest(fitted):
    d = fitted.thresholds["distance"][0]
    scores = make_scores([d * 0.5, d * 0.2, d * 0.9, d * 0.1], [1.0] * 4)
    result = fitted.select(scores=scores, max_accept=2)
    assert result.indices.tolist() == [1, 3]
    assert [r.value for r in result.reasons] == ["not_selected", "accepted", "not_selected", "accepted"]


def test_memorisation_guard_rejects_near_copies_of_training_samples(fitted, real, candidates):
    g = torch.Generator().manual_seed(0)
    copies = stack(real[:8])
    copies = {
        k: (v + 0.01 * torch.randn(v.shape, generator=g)).clamp(-1, 1) if k != "label" else v
        for k, v in copies.items()
    }
    copy_result = fitted.select(copies, memorisation_guard=True)
    assert [r.value for r in copy_result.reasons] == ["memorised"] * 8
    # the near-copies sit far below the real nearest-neighbour distances
    assert float(copy_result.scores["nearest_real"].max()) < 0.25 * fitted.thresholds["min_nearest_real"]
    independent = fitted.select(candidates)
    assert independent.reason_counts()["memorised"] <= 1


def test_memorisation_guard_with_a_calibration_set(real):
    # held-out calibration cases add their own distances to the training samples (what a new, non-copied case
    # gives); the guard takes the smaller of the two quantiles. One calibration case is a training case here, so
    # that the low quantile comes from the calibration set and the median from the training set.
    calibration = [*phantom_cases(15, base_seed=2000, **TINY), real[0]]
    filt = FeatureCentroidFilter(tiny_network(), mc_passes=3, seed=0).fit(real, calibration=calibration)
    real_scores = filt.real_scores
    loo, held_out = real_scores["nearest_real"], real_scores["calibration_nearest_real"]
    assert loo.shape == (24,) and held_out.shape == (16,)
    assert torch.allclose(held_out, filt.score(stack(calibration))["nearest_real"])

    def smaller_quantile(p):
        return min(float(torch.quantile(loo.double(), p)), float(torch.quantile(held_out.double(), p)))

    assert filt.thresholds["min_nearest_real"] == pytest.approx(smaller_quantile(0.01))
    assert smaller_quantile(0.01) < float(torch.quantile(loo.double(), 0.01))
    assert smaller_quantile(0.5) < float(torch.quantile(held_out.double(), 0.5))
    median = filt.calibrate(memorisation_quantile=0.5)["min_nearest_real"]
    assert median == pytest.approx(smaller_quantile(0.5))
    # reloaded (with its own quantile, 0.01)
    reloaded = FeatureCentroidFilter(tiny_network(), mc_passes=3, seed=0).load_state_dict(filt.state_dict())
    assert reloaded.thresholds["min_nearest_real"] == pytest.approx(smaller_quantile(0.01))
    # a state without them (fitted without calibration, or saved before) uses the training distances alone
    state = filt.state_dict()
    del state["fitted"]["real_scores"]["calibration_nearest_real"]
    older = FeatureCentroidFilter(tiny_network(), mc_passes=3, seed=0).load_state_dict(state)
    assert older.thresholds["min_nearest_real"] == pytest.approx(float(torch.quantile(loo.double(), 0.01)))


def test_running_counts(real, candidates):
    filt = FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(real)
    assert filt.counts["seen"] == 0
    r1 = filt.select(candidates)
    r2 = filt.select(candidates, mode="pool", ratio=1.0, num_real=4)
    counts = filt.counts
    assert counts["seen"] == 32
    assert counts["accepted"] == r1.num_accepted + r2.num_accepted
    assert counts["rejected"] == 32 - counts["accepted"]
    assert counts["rejected"] == sum(v for k, v in counts.items() if k.startswith("rejected_"))
    assert counts["rejected_uncertain"] == r1.reason_counts()["uncertain"] + r2.reason_counts()["uncertain"]
    filt.reset_counts()
    assert set(filt.counts.values()) == {0}


def test_selection_result_apply_and_explain(fitted, candidates):
    result = fitted.select(candidates)
    kept = result.apply({**candidates, "names": [f"c{i}" for i in range(16)], "scalar": 3})
    assert kept["ct"].shape[0] == result.num_accepted
    assert kept["names"] == [f"c{i}" for i in result.indices.tolist()]
    assert kept["scalar"] == 3
    assert result.explain(0).startswith(f"sample 0: {result.reasons[0].value}")
    with pytest.raises(IndexError, match="out of range"):
        result.explain(16)


def test_non_finite_generated_sample_is_rejected_not_crashing(fitted, candidates):
    broken = {k: v.clone() for k, v in candidates.items()}
    broken["pet"][3, 0, 2, 2] = math.nan
    broken["ct"][5, 0, 0, 0] = math.inf
    scores = fitted.score(broken)
    assert math.isnan(float(scores["distance"][3])) and int(scores["stratum"][5]) == -1
    result = fitted.select(broken)
    assert result.reasons[3] == result.reasons[5] == RejectionReason.NON_FINITE
    clean = fitted.score(candidates)
    assert torch.equal(scores["distance"][:3], clean["distance"][:3])


# ---------------------------------------------------------------- strata


def test_kmeans_strata(real, candidates):
    filt = FeatureCentroidFilter(tiny_network(), mc_passes=1, num_strata=3, strata="kmeans").fit(real)
    state = filt.state_dict()["fitted"]
    assert all(c.shape[0] == 3 for c in state["centroids"])
    assert state["strata_centers"].shape[0] == 3
    assert len(filt.thresholds["distance"]) == 3
    scores = filt.score(candidates)
    assert set(scores["stratum"].tolist()) <= {0, 1, 2}
    # distance is to the nearest centroid: never larger than with one global centroid of the same data... per
    # sample it is the minimum over the three
    one = FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(real).score(candidates)
    assert float(scores["distance"].mean()) <= float(one["distance"].mean())


def test_tumour_size_strata(real):
    # at 16 mm most tumours are one voxel: the median split leaves the lower bin empty, which is reported
    with pytest.raises(ValueError, match=r"strata \[0\] of 2 \(tumour_size\) have no real sample"):
        FeatureCentroidFilter(tiny_network(), mc_passes=1, num_strata=2, strata="tumour_size").fit(real)
    finer = phantom_cases(24, base_seed=0, spatial_size=(32, 32), spacing=8.0)
    filt = FeatureCentroidFilter(tiny_network(), mc_passes=1, num_strata=2, strata="tumour_size").fit(finer)
    edges = filt.state_dict()["fitted"]["size_edges"]
    assert edges.shape == (1,)
    batch = stack(finer)
    fraction = (batch["label"] > 0).float().flatten(1).mean(1)
    scores = filt.score(batch)
    assert torch.equal(scores["stratum"], (fraction >= edges[0]).long())
    assert 8 <= int((scores["stratum"] == 0).sum()) <= 16  # median split of 24


def test_dataloader_and_list_give_the_same_fit(real):
    net = tiny_network()
    from_list = FeatureCentroidFilter(net, mc_passes=1, num_strata=2).fit(real)
    loader = DataLoader(real, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0))
    from_loader = FeatureCentroidFilter(net, mc_passes=1, num_strata=2).fit(loader)
    for a, b in zip(
        from_list.state_dict()["fitted"]["centroids"], from_loader.state_dict()["fitted"]["centroids"]
    ):
        assert torch.allclose(a, b, atol=1e-5)
    batched = FeatureCentroidFilter(net, mc_passes=1).fit(stack(real))
    single = FeatureCentroidFilter(net, mc_passes=1).fit(real)
    assert torch.allclose(batched.real_scores["distance"], single.real_scores["distance"], atol=1e-6)


def test_fit_on_a_phantom_dataset_of_metatensors():
    from monai_pairsynth.data import NormalizeModalitiesd, PhantomDataset

    ds = PhantomDataset(8, spatial_size=(16, 16), spacing=16.0, transform=NormalizeModalitiesd(list(KEYS)))
    net = tiny_network()
    from_dataset = FeatureCentroidFilter(net, mc_passes=2, batch_size=3).fit(ds)
    from_list = FeatureCentroidFilter(net, mc_passes=2, batch_size=3).fit(phantom_cases(8, 0, **TINY))
    assert torch.allclose(from_dataset.real_scores["distance"], from_list.real_scores["distance"], atol=1e-6)
    loader = DataLoader(ds, batch_size=4)  # MONAI MetaTensor batches with string/int metadata keys
    from_loader = FeatureCentroidFilter(net, mc_passes=2, batch_size=3).fit(loader)
    assert torch.allclose(from_loader.real_scores["distance"], from_list.real_scores["distance"], atol=1e-5)


# ---------------------------------------------------------------- state


def test_save_load_round_trip_gives_identical_scores(fitted, candidates, tmp_path):
    path = fitted.save(tmp_path / "filter" / "state.pt")
    assert os.listdir(tmp_path / "filter") == ["state.pt"]  # atomic write, no temporary left
    loaded = FeatureCentroidFilter.load(path, tiny_network())
    assert loaded.mc_passes == 3 and loaded.layers == fitted.layers
    a, b = fitted.score(candidates), loaded.score(candidates)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert loaded.thresholds == fitted.thresholds
    via_state = FeatureCentroidFilter(tiny_network(), mc_passes=3).load_state_dict(fitted.state_dict())
    assert torch.equal(via_state.score(candidates)["distance"], a["distance"])
    # a sample's dropout masks do not depend on the batch size: equal up to float rounding of batched convs
    small_batches = FeatureCentroidFilter.load(path, tiny_network(), batch_size=5)
    assert small_batches.batch_size == 5
    assert torch.allclose(small_batches.score(candidates)["distance"], a["distance"], rtol=1e-5, atol=1e-6)


def test_load_errors(fitted, tmp_path):
    path = fitted.save(tmp_path / "state.pt")
    with pytest.raises(ValueError, match="mc_passes: saved 3, this filter 2"):
        FeatureCentroidFilter(tiny_network(), mc_passes=2).load_state_dict(fitted.state_dict())
    other = FeatureCentroidFilter.load(path, tiny_network(channels=(6, 8)))
    with pytest.raises(ValueError, match=r"layer 'model.0' produced activations of shape \(6, 8, 8\)"):
        other.score(stack(phantom_cases(2, 5, **TINY)))
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        FeatureCentroidFilter.load(tmp_path / "missing.pt", tiny_network())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read filter state"):
        FeatureCentroidFilter.load(tmp_path / "junk.pt", tiny_network())
    with pytest.raises(ValueError, match="only override batch_size"):
        FeatureCentroidFilter.load(path, tiny_network(), mc_passes=1)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("method", ["score", "select", "state_dict", "save", "thresholds", "calibrate"])
def test_use_before_fit(method, candidates, tmp_path):
    filt = FeatureCentroidFilter(tiny_network(), mc_passes=1)
    with pytest.raises(FilterNotFittedError, match=r"call fit\(real_data\) first"):
        if method == "thresholds":
            _ = filt.thresholds
        elif method == "save":
            filt.save(tmp_path / "x.pt")
        elif method in ("state_dict", "calibrate"):
            getattr(filt, method)()
        else:
            getattr(filt, method)(candidates)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda b: {k: v for k, v in b.items() if k != "pet"}, KeyError, "'pet' is missing"),
        (lambda b: {"ct": b["ct"], "mr": b["pet"], "label": b["label"]}, KeyError, "'pet' is missing"),
        (
            lambda b: {k: torch.nn.functional.interpolate(v, size=(32, 32)) for k, v in b.items()},
            ValueError,
            r"spatial size \(32, 32\) .* fitted on, \(16, 16\)",
        ),
        (
            lambda b: {**b, "pet": torch.cat([b["pet"], b["pet"]], 1)},
            ValueError,
            "'pet' must be .* one channel",
        ),
        (lambda b: {**b, "pet": b["pet"][:3]}, ValueError, "same B|share batch"),
        (lambda b: {**b, "ct": b["ct"][:, :, :, :8]}, ValueError, "'pet' has shape .* but key 'ct' has"),
    ],
)
def test_bad_batches(fitted, candidates, change, error, match):
    with pytest.raises(error, match=match):
        fitted.score(change(candidates))


@pytest.mark.parametrize(
    "empty",
    [[], {k: torch.zeros(0, 1, 16, 16) for k in KEYS}, DataLoader([], batch_size=2)],
    ids=["list", "batched-dict", "dataloader"],
)
def test_empty_real_set(empty):
    with pytest.raises(ValueError, match="real set is empty"):
        FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(empty)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mc_passes": 0}, "mc_passes"),
        ({"mc_passes": -2}, "mc_passes"),
        ({"num_strata": 0}, "num_strata"),
        (
            {"strata": "random"},
            r"(?s)'random'.*Available options are \{'(kmeans|tumour_size)', '(kmeans|tumour_size)'\}",
        ),
        (
            {"units": "hu"},
            r"(?s)'hu'.*Available options are \{'(normalized|physical)', '(normalized|physical)'\}",
        ),
        ({"distance_quantile": 1.2}, "distance_quantile"),
        ({"image_keys": "ct"}, "string"),
        ({"image_keys": ["ct", "label"]}, "also one of image_keys"),
        ({"layers": ["model.7"]}, "not sub-modules"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureCentroidFilter(tiny_network(), **kwargs)


def test_bad_real_data(real):
    with pytest.raises(ValueError, match="units='physical'"):
        physical = [{k: DEFAULT_MODALITY_SPECS[k].denormalize(v) for k, v in c.items()} for c in real[:4]]
        FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(physical)
    broken = [dict(c) for c in real[:4]]
    broken[1] = {**broken[1], "ct": broken[1]["ct"].clone()}
    broken[1]["ct"][0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="real triplets contain NaN/inf"):
        FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(broken)
    with pytest.raises(ValueError, match="at least 4 real samples"):
        FeatureCentroidFilter(tiny_network(), mc_passes=1, num_strata=4).fit(real[:3])
    with pytest.raises(ValueError, match="at least 2 real samples"):
        FeatureCentroidFilter(tiny_network(), mc_passes=1).fit(real[:1])


def test_non_segmenter_network_needs_certainty_off(real, candidates):
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
            self.drop = nn.Dropout(0.2)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.drop(self.conv(x)).mean((2, 3)))

    with pytest.raises(ValueError, match="certainty=True needs a segmentation output"):
        FeatureCentroidFilter(Encoder(), layers=["conv"], mc_passes=1).fit(real)
    filt = FeatureCentroidFilter(Encoder(), layers=["conv", "drop"], mc_passes=2, certainty=False).fit(real)
    scores = filt.score(candidates)
    # the plausibility rules read the mask even with certainty=False
    assert sorted(scores) == [
        "distance",
        "mask_in_body",
        "mask_voxels",
        "nearest_real",
        "pet_uptake",
        "stratum",
    ]
    assert filt.select(candidates).num_accepted >= 0
    with pytest.raises(ValueError, match="pool mode ranks by certainty first"):
        filt.select(candidates, mode="pool", ratio=1.0, num_real=4)
    with pytest.raises(ValueError, match="cannot name encoder layers of a Encoder"):
        FeatureCentroidFilter(Encoder())
