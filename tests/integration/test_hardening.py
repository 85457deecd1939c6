"""Bad inputs and faults at the pool / mixing / transform boundary (issue 15): clear errors, bounded resources."""

from __future__ import annotations

import logging
import os
import pickle
import re
import subprocess
import sys
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import DataLoader, Dataset

from monai_pairsynth.data import validation
from monai_pairsynth.data.validation import MAX_SYNTHETIC_RATIO, DatasetError
from monai_pairsynth.mixing import PoolRefreshHandler
from monai_pairsynth.mixing.mixed_dataset import MixedDataset
from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
from monai_pairsynth.transforms import SynthesizePairedd
from monai_pairsynth.utils import atomic_save_torch, remove_stale_tmp_files

KEYS = ("ct", "pet", "label")
SHAPE = (8, 8)


class LockedSource:
    """A source holding what cannot be pickled (a lock), like a source with CUDA state or a big model."""

    def __init__(self, shape=SHAPE):
        self.lock = threading.Lock()
        self.shape = shape

    def __call__(self, num, generator):
        pet = torch.rand(num, 1, *self.shape, generator=generator) * 15
        return {"ct": pet * 100 - 500, "pet": pet, "label": (pet > 10).float()}


class NaNSource:
    def __call__(self, num, generator):
        x = torch.full((num, 1, *SHAPE), float("nan"))
        return {"ct": x, "pet": x.clone(), "label": torch.zeros_like(x)}


def make_pool(capacity=4, shape=SHAPE):
    pool = SynthesisPool(capacity, spatial_shape=shape, source=LockedSource(shape))
    pool.fill()
    return pool


def real_items(n=4, shape=SHAPE):
    return [{k: torch.full((1, *shape), float(i)) for k in KEYS} | {"case_id": f"R{i}"} for i in range(n)]


# ---------------------------------------------------------------- pool files


def test_pool_file_with_nan_triplet_is_refused_naming_file_and_rows(tmp_path):
    pool = make_pool()
    state = pool.state_dict()
    state["data"]["pet"][2, 0, 3, 3] = float("nan")
    path = tmp_path / "pool.pt"
    torch.save(state, path)
    with pytest.raises(
        DatasetError, match=rf"{path}.* holds 1 triplet\(s\) with NaN/Inf \(rows 2; keys \['pet'\]\)"
    ):
        SynthesisPool.load(path)


def test_pool_file_without_stats_names_the_file(tmp_path):
    state = make_pool().state_dict()
    del state["stats"]
    path = tmp_path / "pool.pt"
    torch.save(state, path)
    with pytest.raises(DatasetError, match=rf"SynthesisPool file '{path}' has no field\(s\) \['stats'\]"):
        SynthesisPool.load(path)


def test_pool_file_with_non_binary_mask_is_refused(tmp_path):
    state = make_pool().state_dict()
    state["data"]["label"][0, 0, 0, 0] = 0.5
    path = tmp_path / "pool.pt"
    torch.save(state, path)
    with pytest.raises(DatasetError, match=r"data\['label'\] is not a binary mask: values 0.5"):
        SynthesisPool.load(path)


def test_pool_capacity_that_does_not_fit_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(validation, "available_memory_bytes", lambda: 1024**2)
    with pytest.raises(ValueError, match=r"capacity=100000 needs .* GiB .* lower capacity"):
        SynthesisPool(100_000, spatial_shape=(64, 64))
    SynthesisPool(4, spatial_shape=SHAPE)  # small pools still fit


def test_pool_that_does_not_fit_in_shared_memory_is_refused(monkeypatch):
    monkeypatch.setattr(validation, "shared_memory_free_bytes", lambda: 64 * 1024**2)  # a container's default
    with pytest.raises(ValueError, match=r"capacity=2000 needs 0.18 GiB of shared memory \(/dev/shm\)"):
        SynthesisPool(2000, spatial_shape=(64, 64, 2))
    SynthesisPool(100, spatial_shape=(64, 64, 2))


# ---------------------------------------------------------------- interrupted writes


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_orphan_tmp_files_are_removed_at_next_save_and_load(tmp_path):
    target = tmp_path / "pool.pt"
    host = validation_host()
    dead = tmp_path / f".pool.pt.{_dead_pid()}@{host}.abcd1234.tmp"  # a writer killed mid-save
    live = tmp_path / f".pool.pt.{os.getppid()}@{host}.efgh5678.tmp"  # a writer still running
    other_host = tmp_path / f".pool.pt.{_dead_pid()}@not-this-host.ijkl9012.tmp"
    other_target = tmp_path / f".other.pt.{_dead_pid()}@{host}.mnop3456.tmp"
    for f in (dead, live, other_host, other_target):
        f.write_bytes(b"partial")
    pool = make_pool()
    pool.save(target)
    assert not dead.exists() and live.exists() and other_host.exists() and other_target.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".pool.pt.")) == sorted(
        [live.name, other_host.name]
    )
    dead.write_bytes(b"partial again")  # an interrupted save after the last one: cleaned when loading
    assert len(SynthesisPool.load(target)) == 4 and not dead.exists()


def test_a_save_killed_mid_write_leaves_a_tmp_file_that_the_next_save_removes(tmp_path):
    target = tmp_path / "big.pt"
    code = (
        "import os, signal, torch\n"
        "from monai_pairsynth.utils import atomic_write\n"
        "def write(tmp):\n"
        "    open(tmp, 'wb').write(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"atomic_write({str(target)!r}, write)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    orphans = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and not target.exists()
    atomic_save_torch({"a": 1}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["big.pt"]
    assert remove_stale_tmp_files(target) == []


def validation_host() -> str:
    from monai_pairsynth.utils import _host

    return _host()


# ---------------------------------------------------------------- mixing ratio


@pytest.mark.parametrize("ratio", [1e9, MAX_SYNTHETIC_RATIO + 1])
def test_huge_ratio_is_refused_naming_the_setting(ratio):
    pool = make_pool()
    with pytest.raises(ValueError, match="^" + re.escape(f"ratio={ratio:g} is above the bound 100")):
        MixedDataset(real_items(), pool, ratio=ratio)
    ds = MixedDataset(real_items(), pool, ratio=MAX_SYNTHETIC_RATIO)  # the bound itself is fine
    assert len(ds) == 4 + 400 and ds.pool_indices().numel() == 400


def test_mixed_dataset_refuses_non_finite_real_item():
    items = real_items()
    items[0]["pet"][0, 1, 1] = float("inf")
    with pytest.raises(DatasetError, match=r"real item 0 key 'pet' holds non-finite values: 0 NaN, 1 \+Inf"):
        MixedDataset(items, make_pool(), ratio=0.5)


# ---------------------------------------------------------------- spawn-safe transform


def test_transform_pickles_only_the_pool_view_not_the_source():
    pool = make_pool()
    t = SynthesizePairedd(list(KEYS), pool, prob=1.0)
    with pytest.raises(TypeError, match="lock"):
        pickle.dumps(pool.source)  # the source itself cannot travel...
    clone = pickle.loads(pickle.dumps(t))  # ...the transform can: it carries the shared pool view only
    assert clone.synthesize.source is None and clone.pool.source is None
    assert t.synthesize.source is pool.source  # the original keeps it (refills in the main process)
    out = clone.set_random_state(0)(real_items(1)[0])
    assert out["synthetic"] and tuple(out["pet"].shape) == (1, *SHAPE)


@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_transform_in_spawn_and_fork_workers(context):
    pool = make_pool()
    t = SynthesizePairedd(list(KEYS), pool, prob=1.0)
    ds = Dataset(real_items(2), transform=t)
    loader = DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context=context)
    (batch,) = list(loader)
    assert batch["synthetic"].tolist() == [True, True]
    # every item is one of the pool's triplets (read from shared memory in the worker)
    rows = pool.state_dict()["data"]["pet"]
    assert all(any(torch.equal(torch.as_tensor(batch["pet"][i]), r) for r in rows) for i in range(2))


# ---------------------------------------------------------------- handler counts


def test_handler_counts_failed_refreshes_apart_from_non_finite_triplets(caplog):
    pool = make_pool()
    pool.source = NaNSource()
    pool.max_attempts = 2
    handler = PoolRefreshHandler(pool, fraction=0.5)
    with caplog.at_level(logging.ERROR):
        records = [handler.refresh(), handler.refresh()]
    assert [r["failure"] for r in records] == ["non_finite", "non_finite"]
    generated = pool.stats["generated"] - 4  # the 4 of the first fill were fine
    assert generated > 2
    assert handler.failures == {"non_finite": 2}  # refreshes, not triplets
    assert handler.non_finite_triplets == generated == pool.stats["rejected"]["non_finite"]


# ---------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(2, 6),
    w=st.integers(2, 6),
    capacity=st.integers(1, 5),
    prob=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_property_transform_keeps_keys_shapes_dtypes(h, w, capacity, prob, seed):
    pool = make_pool(capacity, (h, w))
    t = SynthesizePairedd(list(KEYS), pool, prob=prob).set_random_state(seed)
    sample = {
        "ct": torch.zeros(1, h, w),
        "pet": torch.zeros(1, h, w, dtype=torch.float64),
        "label": torch.zeros(1, h, w),
    }
    sample["case_id"] = "P"
    out = t(sample)
    assert set(out) == {*sample, "synthetic"} and "synthetic" not in sample
    for k in KEYS:
        assert out[k].shape == sample[k].shape and out[k].dtype == sample[k].dtype
        assert bool(torch.isfinite(torch.as_tensor(out[k])).all())
    assert set(torch.unique(torch.as_tensor(out["label"])).tolist()) <= {0.0, 1.0}
    if prob == 0.0:
        assert not out["synthetic"] and all(torch.equal(out[k], sample[k]) for k in KEYS)
    if prob == 1.0:
        assert out["synthetic"]
    assert t.set_random_state(seed)(sample)["synthetic"] == out["synthetic"]  # same seed, same draw


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(2, 6),
    w=st.integers(2, 6),
    capacity=st.integers(1, 6),
    bad_row=st.integers(0, 5),
    bad_key=st.sampled_from(KEYS),
    bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
)
def test_property_pool_round_trip_and_corrupt_rows(tmp_path_factory, h, w, capacity, bad_row, bad_key, bad):
    pool = make_pool(capacity, (h, w))
    path = tmp_path_factory.mktemp("pool") / "pool.pt"
    pool.save(path)
    loaded = SynthesisPool.load(path)
    assert len(loaded) == capacity and loaded.spatial_shape == (h, w)
    assert all(
        torch.equal(loaded[i][k].as_tensor(), pool[i][k].as_tensor()) for i in range(capacity) for k in KEYS
    )
    state = pool.state_dict()
    row = bad_row % capacity
    state["data"][bad_key][row, 0, 0, 0] = bad
    torch.save(state, path)
    with pytest.raises(DatasetError, match=rf"rows {row}; keys \['{bad_key}'\]"):
        SynthesisPool.load(path)


@settings(max_examples=25, deadline=None)
@given(
    num_real=st.integers(1, 6),
    capacity=st.integers(1, 5),
    ratio=st.one_of(st.just(0.0), st.floats(0.01, 5.0), st.just(MAX_SYNTHETIC_RATIO)),
    epoch=st.integers(0, 3),
)
def test_property_mixed_dataset_any_ratio_gives_valid_items(num_real, capacity, ratio, epoch):
    pool = make_pool(capacity)
    ds = MixedDataset(real_items(num_real), pool, ratio=ratio, seed=1)
    n_syn = int(ratio * num_real + 0.5)
    assert len(ds) == num_real + n_syn
    ds.set_epoch(epoch)
    idx = ds.pool_indices()
    assert idx.numel() == n_syn and (idx.numel() == 0 or (0 <= int(idx.min()) and int(idx.max()) < capacity))
    if n_syn:  # every entry used about equally often
        counts = torch.bincount(idx, minlength=capacity)
        assert int(counts.max() - counts.min()) <= 1
    for i in {0, num_real - 1, len(ds) - 1}:
        item = ds[i]
        assert item["synthetic"] == (i >= num_real)
        assert all(tuple(item[k].shape) == (1, *SHAPE) for k in KEYS)


@settings(max_examples=25, deadline=None)
@given(
    ratio=st.one_of(
        st.floats(MAX_SYNTHETIC_RATIO * 1.01, 1e300), st.just(float("nan")), st.floats(-1e9, -1e-6)
    )
)
def test_property_mixed_dataset_out_of_range_ratio_is_refused(ratio):
    with pytest.raises(
        ValueError, match=r"^ratio(=\S+ is above the bound 100| must be a finite number >= 0)"
    ):
        MixedDataset(real_items(2), None, ratio=ratio)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(2, 6), w=st.integers(2, 6), dh=st.integers(1, 3), key=st.sampled_from(KEYS))
def test_property_transform_wrong_shape_gives_the_documented_error(h, w, dh, key):
    pool = make_pool(2, (h, w))
    t = SynthesizePairedd(list(KEYS), pool, prob=1.0).set_random_state(0)
    sample = {k: torch.zeros(1, h, w) for k in KEYS}
    sample[key] = torch.zeros(1, h + dh, w)
    with pytest.raises(
        ValueError, match=rf"synthetic '{key}' has shape \(1, {h}, {w}\).*sample's '{key}' has shape"
    ):
        t(sample)
