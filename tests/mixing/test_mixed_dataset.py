from __future__ import annotations

from collections import Counter

import pytest
import torch
from monai.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from monai_pairsynth.data.phantom import PhantomDataset
from monai_pairsynth.mixing.mixed_dataset import MixedDataset
from monai_pairsynth.mixing.synthesis_pool import PhantomPoolSource, SynthesisPool

SHAPE = (16, 16)
KEYS = ("ct", "pet", "label")


def make_pool(capacity=12, seed=0):
    pool = SynthesisPool(
        capacity, spatial_shape=SHAPE, source=PhantomPoolSource(SHAPE, spacing=16.0), spacing=16.0, seed=seed
    )
    pool.fill()
    return pool


_POOL = None


def shared_pool():
    global _POOL
    if _POOL is None:
        _POOL = make_pool()
    return _POOL


def real(n=8):
    return PhantomDataset(n, base_seed=100, spatial_size=SHAPE, spacing=16.0)


def plain_real(n, dtype=torch.float32):
    return [
        {k: torch.full((1, *SHAPE), float(i)).to(dtype) for k in KEYS} | {"case_id": f"R{i}"}
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "num_real, ratio, expected_synthetic",
    [(10, 0.5, 5), (7, 0.5, 4), (4, 0.0, 0), (3, 1 / 3, 1), (5, 2.0, 10), (9, 0.25, 2), (1, 0.49, 0)],
)
def test_length_is_real_plus_rounded_ratio(num_real, ratio, expected_synthetic):
    ds = MixedDataset(plain_real(num_real), shared_pool(), ratio=ratio)
    assert (len(ds), ds.num_synthetic) == (num_real + expected_synthetic, expected_synthetic)
    flags = [ds[i]["synthetic"] for i in range(len(ds))]
    assert sum(flags) == expected_synthetic and flags == sorted(flags)  # real first, synthetic after


def test_each_epoch_has_the_ratio_and_a_new_deterministic_composition():
    ds = MixedDataset(plain_real(8), shared_pool(), ratio=0.5, seed=3)
    twin = MixedDataset(plain_real(8), shared_pool(), ratio=0.5, seed=3)
    other = MixedDataset(plain_real(8), shared_pool(), ratio=0.5, seed=4)
    compositions, others = [], []
    for epoch in range(4):
        for d in (ds, twin, other):
            d.set_epoch(epoch)
        items = [ds[i] for i in range(len(ds))]
        assert sum(it["synthetic"] for it in items) == 4
        indices = ds.pool_indices().tolist()
        assert len(set(indices)) == 4  # the pool holds 12: no repeats within an epoch
        assert indices == twin.pool_indices().tolist()
        for j, index in enumerate(indices):
            assert torch.equal(items[8 + j]["pet"].as_tensor(), shared_pool()[index]["pet"].as_tensor())
            assert items[8 + j]["pet"].meta["pool_index"] == index
        compositions.append(indices)
        others.append(other.pool_indices().tolist())
    assert len({tuple(c) for c in compositions}) == 4  # changes between epochs
    assert others != compositions  # another seed, another sequence


def test_small_pool_entries_repeat_evenly():
    pool = make_pool(capacity=3)
    ds = MixedDataset(plain_real(10), pool, ratio=1.0)
    counts = Counter(ds.pool_indices().tolist())
    assert sum(counts.values()) == 10 and set(counts) == {0, 1, 2}
    assert max(counts.values()) - min(counts.values()) <= 1


def test_ratio_zero_is_the_real_dataset():
    data = plain_real(5)
    for pool in (None, shared_pool()):
        ds = MixedDataset(data, pool, ratio=0)
        assert len(ds) == 5 and not any(ds[i]["synthetic"] for i in range(5))
        assert torch.equal(ds[3]["ct"], data[3]["ct"])
    assert MixedDataset(data, None, ratio=0)[0]["case_id"] == "R0"  # no pool: real items untouched


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": -0.5}, "ratio"),
        ({"ratio": float("nan")}, "ratio"),
        ({"ratio": float("inf")}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"ratio": 0.5, "pool": None}, "needs a pool"),
        ({"ratio": 0.5, "pool": "empty"}, r"pool is empty but ratio=0.5 asks for 2"),
        ({"seed": -1}, "seed"),
        ({"synthetic_key": "ct"}, "synthetic_key"),
        ({"extra_keys": {"patient": "x"}}, r"no key \['patient'\]"),
        ({"real_dataset": []}, "empty"),
        ({"real_dataset": [{k: torch.zeros(1, 8, 8) for k in KEYS}]}, r"\(1, 8, 8\).*\(1, 16, 16\)"),
        ({"real_dataset": [{"ct": torch.zeros(1, *SHAPE)}]}, r"no key \['pet', 'label'\]"),
    ],
)
def test_validation(kwargs, match):
    args = {"real_dataset": plain_real(4), "pool": shared_pool(), "ratio": 0.5, **kwargs}
    if args["pool"] == "empty":
        args["pool"] = SynthesisPool(4, spatial_shape=SHAPE, source=PhantomPoolSource(SHAPE, spacing=16.0))
    with pytest.raises(ValueError, match=match):
        MixedDataset(**args)


def test_extra_keys_transform_and_dtype_follow_the_real_items():
    seen = []

    def transform(item):
        seen.append(item["synthetic"])
        return {**item, "ct": item["ct"] / 1000.0}

    data = plain_real(4, dtype=torch.float32)
    for d in data:
        d["label"] = d["label"].to(torch.uint8)
    ds = MixedDataset(
        data, shared_pool(), ratio=0.5, transform=transform, extra_keys={"case_id": "synthetic"}
    )
    real_item, synthetic_item = ds[1], ds[5]
    assert real_item["case_id"] == "R1" and synthetic_item["case_id"] == "synthetic"
    assert real_item["label"].dtype == synthetic_item["label"].dtype == torch.uint8
    index = int(ds.pool_indices()[1])
    assert torch.allclose(synthetic_item["ct"], shared_pool()[index]["ct"] / 1000.0)
    assert seen == [False, True]
    with pytest.raises(IndexError, match="out of range for 6"):
        ds[6]
    assert ds[-1]["synthetic"] is True


def test_multiworker_dataloader_over_pool_backed_mixing_gives_correct_batches():
    ds = MixedDataset(real(8), shared_pool(), ratio=0.5, seed=1)
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    reference = {i: ds[i] for i in range(8)}
    for epoch in range(2):
        ds.set_epoch(epoch)  # the workers are already running: the epoch travels through shared memory
        expected = ds.pool_indices(epoch).tolist()
        batches = list(loader)
        assert len(batches) == 3
        flags = torch.cat([b["synthetic"] for b in batches])
        assert flags.dtype == torch.bool and int(flags.sum()) == 4 and flags.numel() == 12
        got_pool, got_real = [], []
        for b in batches:
            assert set(b) == {*KEYS, "synthetic"}
            assert tuple(b["ct"].shape) == (4, 1, *SHAPE) and b["label"].dtype == torch.float32
            assert set(b["label"].unique().tolist()) <= {0.0, 1.0}
            for j in range(4):
                ct = b["ct"][j].as_tensor()
                if b["synthetic"][j]:
                    index = int(b["ct"].meta["pool_index"][j]) if "pool_index" in b["ct"].meta else None
                    match = [i for i in expected if torch.equal(ct, shared_pool()[i]["ct"].as_tensor())]
                    assert match and (index is None or index in match)
                    got_pool.append(match[0])
                else:
                    match = [i for i, item in reference.items() if torch.equal(ct, item["ct"].as_tensor())]
                    assert len(match) == 1
                    got_real.append(match[0])
        assert sorted(got_pool) == sorted(expected) and sorted(got_real) == list(range(8))


def test_distributed_sampler_splits_the_mixed_epoch_across_ranks():
    ds = MixedDataset(plain_real(10), shared_pool(), ratio=0.5, seed=2)
    for epoch in range(2):
        ds.set_epoch(epoch)
        per_rank = []
        for rank in range(2):
            sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
        everything = per_rank[0] + per_rank[1]
        assert len(per_rank[0]) == len(per_rank[1]) == 8 and set(everything) == set(
            range(15)
        )  # padded 15 -> 16
        synthetic = {i for i in everything if ds[i]["synthetic"]}
        assert synthetic == set(range(10, 15))
        # every rank computes the same composition from (seed, epoch): no communication needed
        assert MixedDataset(plain_real(10), shared_pool(), ratio=0.5, seed=2).pool_indices(
            epoch
        ).tolist() == (ds.pool_indices().tolist())
