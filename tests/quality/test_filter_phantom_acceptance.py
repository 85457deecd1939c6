"""The filter on the phantom benchmark: real held-out triplets versus constructed misgenerations.

One segmenter (trained once per session on 128 cases at 64×64 / 4 mm, see conftest.py) and one filter (K = 4,
thresholds calibrated on 32 held-out cases). Rates below were measured with these seeds (streaming acceptance:
real 0.83, shifted mask 0.00, tumour removed from PET 0.00, pure noise 0.00, flipped CT 0.70; near-copies
memorised 32/32, independent held-out memorised 1/64) on the machine the bounds were first set on.

The seeds fix the segmenter only up to float rounding: 160 Adam steps at learning rate 2e-2 amplify the
rounding of the conv kernels, which differs between CPUs, into a different network of the same quality, and
every rate here moves with it. On an AVX-512 Xeon ("Intel(R) Xeon(R) Processor") the same seeds gave real 0.86,
flipped CT 0.73, memorised 2/64 (7/64 before the guard took the calibration set into account, see
docs/quality_filter.md). To size the bounds, 30 segmenters were trained there on the training inputs plus
Gaussian noise of 1e-6 (the spread rounding creates); "over 30" below is their range. Each bound leaves a
margin below both machines and those 30.
"""

from __future__ import annotations

import pytest
import torch
from quality_phantom import stack

from monai_pairsynth.quality import RejectionReason, corrupt_triplets

CORRUPTIONS = ("shifted_mask", "tumour_removed_pet", "pure_noise", "flipped_ct")


@pytest.fixture(scope="module")
def cases(phantom_setup):
    """``{name: (batch, scores)}`` for the 64 real held-out triplets and each corruption of them (scored once)."""
    out = {"real": (phantom_setup.test, phantom_setup.filter.score(phantom_setup.test))}
    for kind in CORRUPTIONS:
        bad = corrupt_triplets(phantom_setup.test, kind, generator=torch.Generator().manual_seed(0))
        out[kind] = (bad, phantom_setup.filter.score(bad))
    return out


def pool_real_share(filt, real_scores, bad_scores) -> float:
    """Pool mode, N = 16, r = 0.5: four pools of 4rN = 32 candidates (16 real + 16 corrupted), 8 kept from each;
    the share of real among the kept. The pool's scores are the candidates' own (precomputed) scores."""
    real_kept = 0
    for start in range(0, 64, 16):
        pool = {
            k: torch.cat([real_scores[k][start : start + 16], bad_scores[k][start : start + 16]])
            for k in real_scores
        }
        result = filt.select(scores=pool, mode="pool", ratio=0.5, num_real=16)
        assert result.num_accepted == 8
        real_kept += int((result.indices < 16).sum())
    return real_kept / 32


def test_segmenter_learned_the_tumour(phantom_setup):
    test = phantom_setup.test
    with torch.no_grad():
        pred = phantom_setup.network(torch.cat([test["ct"], test["pet"]], 1)).argmax(1, keepdim=True) > 0
    target = test["label"] > 0
    dice = 2 * (pred & target).flatten(1).sum(1) / (pred.flatten(1).sum(1) + target.flatten(1).sum(1))
    assert float(dice.mean()) > 0.5  # measured 0.69 on the 64 held-out cases


def test_real_held_out_triplets_are_mostly_accepted(phantom_setup, cases):
    result = phantom_setup.filter.select(scores=cases["real"][1])
    assert result.num_accepted / len(result) >= 0.70  # measured 0.83, 0.86; 0.77-0.91 over 30
    # the guard's rate on new cases is ~1-4 % (docs/quality_filter.md), and 64 cases give a count, not a rate
    assert result.reason_counts()["memorised"] <= 5  # measured 1, 2; 0-4 over 30 (mean 1.1)


# (corruption, max streaming acceptance, min share of real among pool-accepted); measured: 0.00 and >= 31/32
BROKEN = [("shifted_mask", 0.05, 0.90), ("tumour_removed_pet", 0.05, 0.90), ("pure_noise", 0.0, 1.0)]


@pytest.mark.parametrize(("kind", "max_accept_rate", "min_real_share"), BROKEN)
def test_broken_triplets_score_worse_and_are_rejected(
    phantom_setup, cases, kind, max_accept_rate, min_real_share
):
    filt = phantom_setup.filter
    real_scores, bad_scores = cases["real"][1], cases[kind][1]
    assert float(bad_scores["certainty"].median()) < 0.1 < 0.5 < float(real_scores["certainty"].median())
    result = filt.select(scores=bad_scores)
    assert result.num_accepted / len(result) <= max_accept_rate
    # the network's verdict alone: without the plausibility rules (they run first and catch most of these too,
    # see test_plausibility_rules.py) and without the memorisation guard (it runs before the certainty, and the
    # images of shifted_mask are the real ones: a real case the guard flags would not count as uncertain)
    network_only = filt.select(scores=bad_scores, plausibility=False, memorisation_guard=False)
    assert network_only.reason_counts()["uncertain"] >= 0.9 * len(result)  # measured 64/64, also over 30
    assert pool_real_share(filt, real_scores, bad_scores) >= min_real_share


def test_select_on_a_batch_equals_select_on_its_scores(phantom_setup, cases):
    batch, scores = cases["shifted_mask"]
    direct = phantom_setup.filter.select(batch)
    assert direct.reasons == phantom_setup.filter.select(scores=scores).reasons


def test_pure_noise_is_far_from_the_centroid_and_from_every_real_sample(cases):
    real, noise = cases["real"][1], cases["pure_noise"][1]
    assert float(noise["distance"].min()) > 2 * float(real["distance"].max())
    assert float(noise["nearest_real"].min()) > 5 * float(real["nearest_real"].max())


def test_flipped_ct_scores_worse_but_is_the_hard_case(phantom_setup, cases):
    # the phantom is nearly left-right symmetric with weak tumour CT contrast: a CT mirrored against its PET
    # looks plausible, so the filter only partly catches it (documented in docs/quality_filter.md)
    filt = phantom_setup.filter
    real_scores, flipped_scores = cases["real"][1], cases["flipped_ct"][1]
    # paired, the flipped copy is farther from the centroid (chance: 0.5)
    worse = (flipped_scores["distance"] > real_scores["distance"]).float().mean()
    assert float(worse) >= 0.65  # measured 0.95, 0.80; 0.73-0.98 over 30
    real_rate = filt.select(scores=real_scores).num_accepted / 64
    flipped_rate = filt.select(scores=flipped_scores).num_accepted / 64
    assert flipped_rate < real_rate  # measured 0.70 < 0.83, 0.73 < 0.86; the gap 0.08-0.25 over 30
    # pool mode at least does not prefer the flipped ones: measured 0.66, 0.69; 0.56-0.75 over 30, and 0.53 for
    # three of six other segmenter seeds (with the old guard), so "better than chance" cannot be asserted on 32
    assert pool_real_share(filt, real_scores, flipped_scores) >= 0.5


def test_near_copies_are_memorised_independent_phantoms_are_not(phantom_setup, cases):
    filt = phantom_setup.filter
    g = torch.Generator().manual_seed(1)
    copies = stack(phantom_setup.train[:32])
    for key in ("ct", "pet"):
        copies[key] = (copies[key] + 0.01 * torch.randn(copies[key].shape, generator=g)).clamp(-1, 1)
    copy_result = filt.select(copies)
    assert all(r == RejectionReason.MEMORISED for r in copy_result.reasons)  # measured 32/32, also over 30
    independent = filt.select(scores=cases["real"][1])
    assert independent.reason_counts()["memorised"] <= 5  # measured 1, 2; 0-4 over 30
    # the margin: near-copies are an order of magnitude closer than a typical independent case (the median:
    # the closest independent case is an extreme of 64 draws; the ratio to it was 0.05-0.29 over 30)
    assert float(copy_result.scores["nearest_real"].max()) < 0.3 * float(
        independent.scores["nearest_real"].median()
    )  # measured 0.09; 0.03-0.18 over 30
