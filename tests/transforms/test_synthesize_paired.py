from __future__ import annotations

import copy
import gc
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose

from monai_pairsynth.mixing.synthesis_pool import EmptyPoolError, PoolGenerationError, SynthesisPool
from monai_pairsynth.transforms import (
    SynthesizePaired,
    SynthesizePairedD,
    SynthesizePairedd,
    SynthesizePairedDict,
)

SHAPE = (8, 8)
KEYS = ("ct", "pet", "label")


def _source(num, generator):
    pet = torch.rand(num, 1, *SHAPE, generator=generator) * 15
    return {"ct": pet * 100 - 700, "pet": pet, "label": (pet > 9).float()}


_POOL: SynthesisPool | None = None


def pool() -> SynthesisPool:
    global _POOL
    if _POOL is None:
        _POOL = SynthesisPool(16, spatial_shape=SHAPE, source=_source, spacing=3.0, seed=0)
        _POOL.fill()
    return _POOL


def real_sample(kind="meta", label_dtype=torch.float32, extra=True):
    g = torch.Generator().manual_seed(123)
    affine = torch.diag(torch.tensor([1.5, 1.5, 1.0, 1.0], dtype=torch.float64))
    values = {
        "ct": torch.rand(1, *SHAPE, generator=g) * 100,
        "pet": torch.rand(1, *SHAPE, generator=g),
        "label": (torch.rand(1, *SHAPE, generator=g) > 0.7).to(label_dtype),
    }
    out = {}
    for k, v in values.items():
        if kind == "meta":
            out[k] = MetaTensor(
                v, affine=affine, meta={"filename_or_obj": f"case7_{k}.nii.gz", "original_channel_dim": 0}
            )
        elif kind == "numpy":
            out[k] = v.numpy()
        else:
            out[k] = v
    if extra:
        out["case_id"] = "CASE-7"
        out["weight"] = 0.5
    return out


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and np.array_equal(a, b)
            and a.dtype == b.dtype
        )
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and torch.equal(torch.as_tensor(a), torch.as_tensor(b))
        )
    return a == b


kinds = st.sampled_from(["meta", "tensor", "numpy"])
label_dtypes = st.sampled_from([torch.float32, torch.uint8, torch.int64])
HSET = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HSET
@given(seed=st.integers(0, 2**31 - 1), prob=st.floats(0.0, 1.0), kind=kinds)
def test_same_seed_same_output(seed, prob, kind):
    sample = real_sample(kind)
    outs = []
    for _ in range(2):
        t = SynthesizePairedd(KEYS, pool(), prob=prob).set_random_state(seed=seed)
        outs.append([t(sample) for _ in range(5)])
    for a, b in zip(*outs):
        assert a.keys() == b.keys()
        assert all(_equal(a[k], b[k]) for k in a)


@HSET
@given(seed=st.integers(0, 2**31 - 1), kind=kinds, label_dtype=label_dtypes, prob=st.floats(0.0, 1.0))
def test_keys_shapes_dtypes_preserved_mask_binary_input_untouched(seed, kind, label_dtype, prob):
    if kind == "numpy" and label_dtype == torch.int64:
        label_dtype = torch.uint8
    sample = real_sample(kind, label_dtype)
    frozen = copy.deepcopy(sample)
    t = SynthesizePairedd(KEYS, pool(), prob=prob).set_random_state(seed=seed)
    for _ in range(4):
        out = t(sample)
        assert set(out) == set(sample) | {"synthetic"}
        assert out["case_id"] == "CASE-7" and out["weight"] == 0.5
        for k in KEYS:
            assert type(out[k]) is type(sample[k])
            assert tuple(out[k].shape) == tuple(sample[k].shape)
            assert out[k].dtype == sample[k].dtype
        label = torch.as_tensor(np.asarray(out["label"]) if kind == "numpy" else out["label"])
        assert set(torch.unique(label.float()).tolist()) <= {0.0, 1.0}
        # the input dict is not mutated: same keys, same objects, same values
        assert set(sample) == set(frozen) and all(_equal(sample[k], frozen[k]) for k in frozen)
        if out["synthetic"] and kind == "meta":
            assert torch.equal(out["ct"].affine, pool().affine)  # geometry of the synthetic sample
            assert out["ct"].meta["filename_or_obj"].startswith("synthesis_pool[")
            assert out["ct"].meta["original_channel_dim"] == 0
            index = out["ct"].meta["pool_index"]
            assert all(torch.equal(out[k].as_tensor().float(), pool()[index][k].as_tensor()) for k in KEYS)
        elif not out["synthetic"]:
            assert all(out[k] is sample[k] for k in KEYS)


@HSET
@given(seed=st.integers(0, 2**31 - 1), kind=kinds)
def test_prob_zero_is_the_identity(seed, kind):
    sample = real_sample(kind)
    t = SynthesizePairedd(KEYS, pool(), prob=0.0).set_random_state(seed=seed)
    for _ in range(3):
        out = t(sample)
        assert out["synthetic"] is False
        assert all(out[k] is sample[k] for k in sample)
    assert t.counts == {"real": 3}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), prob=st.floats(0.05, 0.95))
def test_replacement_frequency_matches_prob(seed, prob):
    n = 400
    t = SynthesizePairedd(KEYS, pool(), prob=prob).set_random_state(seed=seed)
    sample = real_sample("tensor")
    hits = sum(t(sample)["synthetic"] for _ in range(n))
    bound = 4.5 * math.sqrt(n * prob * (1 - prob)) + 1  # P(outside) < 1e-5 per example
    assert abs(hits - n * prob) <= bound
    assert t.counts["synthetic"] == hits and t.counts["real"] == n - hits


@HSET
@given(seed=st.integers(0, 2**31 - 1), missing=st.sampled_from(KEYS), prob=st.floats(0.0, 1.0))
def test_missing_key_raises_unless_allowed(seed, missing, prob):
    sample = real_sample("tensor")
    del sample[missing]
    with pytest.raises(KeyError, match=missing):
        SynthesizePairedd(KEYS, pool(), prob=prob).set_random_state(seed=seed)(sample)
    out = SynthesizePairedd(KEYS, pool(), prob=prob, allow_missing_keys=True).set_random_state(seed=seed)(
        sample
    )
    assert missing not in out and set(out) == set(sample) | {"synthetic"}


def test_all_modalities_come_from_one_pool_entry_drawn_with_the_random_state():
    t = SynthesizePairedd(KEYS, pool(), prob=1.0).set_random_state(seed=7)
    rs = np.random.RandomState(7)
    rs.rand()  # the array transform (its own R, same seed): its prob draw (prob=1), then the index
    expected = int(rs.randint(len(pool())))
    out = t(real_sample("meta"))
    assert {out[k].meta["pool_index"] for k in KEYS} == {expected}
    for k in KEYS:
        assert torch.equal(out[k].as_tensor(), pool()[expected][k].as_tensor())


def test_aliases_backend_and_array_transform():
    assert SynthesizePairedD is SynthesizePairedd and SynthesizePairedDict is SynthesizePairedd
    assert SynthesizePairedd.backend == SynthesizePaired.backend and len(SynthesizePaired.backend) == 2
    a = SynthesizePaired(pool()).set_random_state(seed=3)
    b = SynthesizePaired(pool()).set_random_state(seed=3)
    ta, tb = a(), b()
    assert sorted(ta) == sorted(KEYS) and all(torch.equal(ta[k], tb[k]) for k in KEYS)
    same = a(randomize=False)
    assert all(torch.equal(same[k], ta[k]) for k in KEYS)


def test_empty_pool_falls_back_to_real_counted_and_logged(caplog):
    empty = SynthesisPool(4, spatial_shape=SHAPE, source=_source)
    t = SynthesizePairedd(KEYS, empty, prob=1.0).set_random_state(seed=0)
    sample = real_sample("meta")
    with caplog.at_level(logging.WARNING, logger="monai_pairsynth.mixing.synthesize_paired"):
        outs = [t(sample) for _ in range(3)]
    assert [o["synthetic"] for o in outs] == [False] * 3
    assert all(o[k] is sample[k] for o in outs for k in KEYS)
    assert t.counts == {"fallback_empty_pool": 3, "real": 3}
    assert caplog.text.count("keeping the real sample") == 1  # first time (then every 100th)
    strict = SynthesizePairedd(KEYS, empty, prob=1.0, fallback="error")
    with pytest.raises(EmptyPoolError, match="empty"):
        strict(sample)


def test_pool_shape_different_from_the_sample_names_both_shapes():
    t = SynthesizePairedd(KEYS, pool(), prob=1.0)
    sample = {k: torch.zeros(1, 16, 12) for k in KEYS}
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(8, 8\).*\(1, 16, 12\)"):
        t(sample)
    two_channel = {**{k: torch.zeros(1, *SHAPE) for k in KEYS}, "label": torch.zeros(2, *SHAPE)}
    with pytest.raises(ValueError, match=r"'label'.*\(2, 8, 8\)"):
        t(two_channel)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"prob": 1.5}, ValueError, "prob"),
        ({"prob": -0.1}, ValueError, "prob"),
        ({"prob": float("nan")}, ValueError, "prob"),
        ({"keys": ["ct", "mr"]}, ValueError, r"\['mr'\] are not held by the synthesis pool"),
        ({"mode": "dream"}, ValueError, r"'dream'(?s:.*)Available options are"),
        ({"fallback": "skip"}, ValueError, r"'skip'(?s:.*)Available options are"),
        ({"strength": 0.0}, ValueError, "strength"),
        ({"units": "hu"}, ValueError, r"'hu'(?s:.*)Available options are"),
        ({"pool": None}, ValueError, "needs pool"),
        ({"mode": "seeded"}, ValueError, "generate_seeded"),
        ({"synthetic_key": "ct"}, ValueError, "synthetic_key"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    args = {"keys": KEYS, "pool": pool(), **kwargs}
    with pytest.raises(error, match=match):
        SynthesizePairedd(**args)


def test_normalized_units_follow_the_specs():
    t = SynthesizePairedd(KEYS, pool(), prob=1.0, units="normalized").set_random_state(seed=1)
    out = t(real_sample("tensor", extra=False))
    index_t = SynthesizePairedd(KEYS, pool(), prob=1.0).set_random_state(seed=1)(
        real_sample("meta", extra=False)
    )
    index = index_t["ct"].meta["pool_index"]
    assert torch.allclose(out["ct"], pool().specs["ct"].normalize(pool()[index]["ct"].as_tensor()))
    assert set(out["label"].unique().tolist()) <= {-1.0, 1.0}


class FakeSeededSource:
    """The seeded-source protocol: shifts the reference, records the generator device."""

    keys = KEYS

    def __init__(self, device="cpu", fail=None):
        self.device = torch.device(device)
        self.fail = fail
        self.calls = 0

    def __call__(self, num, generator):
        return _source(num, generator)

    def generate_seeded(self, reference, strength, generator):
        self.calls += 1
        if self.fail == "raise":
            raise RuntimeError("generator crashed")
        noise = torch.rand(reference["ct"].shape, generator=generator)
        out = {k: v + (0 if k == "label" else strength * noise) for k, v in reference.items()}
        if self.fail == "nan":
            out["pet"] = out["pet"] * float("nan")
        return out


def test_seeded_mode_generates_from_this_sample_on_its_grid():
    source = FakeSeededSource()
    t = SynthesizePairedd(KEYS, None, prob=1.0, mode="seeded", source=source, strength=0.5).set_random_state(
        seed=2
    )
    sample = real_sample("meta")
    out = t(sample)
    assert out["synthetic"] is True and source.calls == 1
    assert torch.equal(out["label"].as_tensor(), sample["label"].as_tensor())
    delta = out["ct"].as_tensor() - sample["ct"].as_tensor()
    assert 0 < float(delta.min()) and float(delta.max()) <= 0.5
    assert torch.equal(out["ct"].affine, sample["ct"].affine)  # same grid as the sample it was seeded from
    again = SynthesizePairedd(KEYS, None, prob=1.0, mode="seeded", source=FakeSeededSource(), strength=0.5)
    assert torch.equal(again.set_random_state(seed=2)(sample)["ct"], out["ct"])


@pytest.mark.parametrize("fail, reason", [("raise", "exception"), ("nan", "non_finite")])
def test_seeded_generation_failure_falls_back_or_raises(fail, reason):
    t = SynthesizePairedd(KEYS, None, prob=1.0, mode="seeded", source=FakeSeededSource(fail=fail))
    sample = real_sample("tensor")
    out = t(sample)
    assert out["synthetic"] is False and all(out[k] is sample[k] for k in KEYS)
    assert t.counts["fallback_generation_failed"] == 1
    strict = SynthesizePairedd(
        KEYS, None, prob=1.0, mode="seeded", source=FakeSeededSource(fail=fail), fallback="error"
    )
    with pytest.raises(PoolGenerationError) as info:
        strict(sample)
    assert info.value.reason == reason


class _Samples(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.transform(real_sample("tensor", extra=False))


@pytest.fixture
def fast_worker_shutdown(monkeypatch):
    """torch waits MP_STATUS_CHECK_INTERVAL (5 s) to shut down a worker that raised; make that quick in tests."""
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    yield
    gc.collect()  # shut the failed iterator's workers down while the short interval is in force


def test_seeded_mode_with_cuda_source_in_a_worker_says_what_to_do(fast_worker_shutdown):
    source = FakeSeededSource(device="cuda")  # never touched: the check comes first
    t = SynthesizePairedd(KEYS, None, prob=1.0, mode="seeded", source=source)
    loader = torch.utils.data.DataLoader(_Samples(t), batch_size=2, num_workers=1)
    with pytest.raises(RuntimeError, match=r'mode="pool".*ThreadDataLoader'):
        next(iter(loader))


def test_pool_mode_in_monai_dataloader_workers():
    t = Compose([SynthesizePairedd(KEYS, pool(), prob=0.5)])
    data = [real_sample("meta", extra=False) for _ in range(16)]
    for i, d in enumerate(data):
        d["index"] = i
    loader = DataLoader(Dataset(data, transform=t), batch_size=4, num_workers=2)
    batches = list(loader)
    flags = torch.cat([b["synthetic"] for b in batches])
    assert flags.dtype == torch.bool and flags.numel() == 16 and 0 < int(flags.sum()) < 16
    for b in batches:
        assert tuple(b["ct"].shape) == (4, 1, *SHAPE)
        for j in range(4):
            if not b["synthetic"][j]:
                assert torch.equal(b["ct"][j].as_tensor(), data[int(b["index"][j])]["ct"].as_tensor())
            else:
                pet = b["pet"][j].as_tensor()
                assert any(torch.equal(pet, pool()[i]["pet"].as_tensor()) for i in range(len(pool())))


def test_diffusion_source_fills_a_pool_and_seeds_from_a_sample():
    from monai_pairsynth.inferers import DiffusionPoolSource
    from monai_pairsynth.inferers.paired_diffusion_inferer import PairedDiffusionInferer
    from monai_pairsynth.networks import PairedDiffusionModel

    torch.manual_seed(0)
    model = PairedDiffusionModel(KEYS, channels=(4, 8), attention_levels=(False, False), norm_num_groups=4)
    inferer = PairedDiffusionInferer(spacing=3.0, spatial_shape=SHAPE)
    source = DiffusionPoolSource(inferer, model, num_inference_steps=2, batch_size=2, device="cpu")
    diffusion_pool = SynthesisPool(3, source=source, seed=4)
    assert (diffusion_pool.spatial_shape, diffusion_pool.spacing) == (SHAPE, (3.0, 3.0))
    update = diffusion_pool.fill()
    assert (update.accepted, update.generated, len(diffusion_pool)) == (3, 3, 3)
    item = diffusion_pool[2]
    assert set(item["label"].unique().tolist()) <= {0.0, 1.0}
    assert -1000.0 <= float(item["ct"].min()) and float(item["ct"].max()) <= 1000.0
    assert 0.0 <= float(item["pet"].min()) and float(item["pet"].max()) <= 15.0
    again = SynthesisPool(3, source=source, seed=4)
    again.fill()
    assert torch.equal(again[2]["ct"].as_tensor(), item["ct"].as_tensor())  # seeded generation

    t = SynthesizePairedd(KEYS, diffusion_pool, prob=1.0, mode="seeded", strength=0.5).set_random_state(
        seed=0
    )
    sample = real_sample("meta", extra=False)
    sample["pet"] = sample["pet"] * 10
    out = t(sample)
    assert out["synthetic"] is True and t.counts["synthetic"] == 1
    assert all(tuple(out[k].shape) == (1, *SHAPE) and bool(torch.isfinite(out[k]).all()) for k in KEYS)
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out["ct"].as_tensor(), sample["ct"].as_tensor())


def test_diffusion_source_from_a_training_checkpoint(tmp_path):
    from monai_pairsynth.engines import save_paired_checkpoint
    from monai_pairsynth.inferers import DiffusionPoolSource
    from monai_pairsynth.networks import PairedDiffusionModel

    model = PairedDiffusionModel(KEYS, channels=(4, 8), attention_levels=(False, False), norm_num_groups=4)
    path = save_paired_checkpoint(tmp_path / "diffusion.pt", model, spatial_size=SHAPE, spacing=2.5)
    source = DiffusionPoolSource(path, num_inference_steps=2, device="cpu")
    assert (source.keys, source.spatial_shape, source.device.type) == (KEYS, SHAPE, "cpu")
    checkpoint_pool = SynthesisPool(2, source=source)
    assert checkpoint_pool.fill().accepted == 2
    assert checkpoint_pool[0]["pet"].pixdim.tolist() == [2.5, 2.5]
    with pytest.raises(FileNotFoundError, match="missing"):
        DiffusionPoolSource(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="checkpoint path or a PairedDiffusionInferer"):
        DiffusionPoolSource(42)
    with pytest.raises(ValueError, match="model"):
        DiffusionPoolSource(source.inferer)
