from __future__ import annotations

import gc
import logging
import threading

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from monai_pairsynth.data.phantom import make_phantom_case
from monai_pairsynth.mixing.synthesis_pool import (
    EmptyPoolError,
    PhantomPoolSource,
    PoolGenerationError,
    SynthesisPool,
)
from monai_pairsynth.quality.selection_result import RejectionReason, SelectionMode, SelectionResult

SHAPE = (16, 16)
KEYS = ("ct", "pet", "label")


class CountingSource:
    """Every call returns triplets whose every voxel holds the call number (ct), 10x it (pet), a full mask."""

    def __init__(self, shape=SHAPE):
        self.shape = shape
        self.calls = 0

    def __call__(self, num, generator):
        self.calls += 1
        value = float(self.calls)
        ct = torch.full((num, 1, *self.shape), value)
        return {"ct": ct, "pet": ct * 10, "label": torch.ones_like(ct)}


class RandomSource:
    def __call__(self, num, generator):
        pet = torch.rand(num, 1, *SHAPE, generator=generator) * 15
        return {"ct": pet * 100 - 500, "pet": pet, "label": (pet > 7.5).float()}


class FailingSource:
    def __init__(self, error):
        self.error = error

    def __call__(self, num, generator):
        raise self.error


class NaNSource:
    def __call__(self, num, generator):
        ct = torch.full((num, 1, *SHAPE), float("nan"))
        return {"ct": ct, "pet": ct.clone(), "label": torch.zeros_like(ct)}


class LabelFilter:
    """Quality-filter protocol for tests: accepts triplets whose mask is not empty."""

    def __init__(self):
        self.calls = 0

    def select(self, batch, mode="streaming", units=None):
        self.calls += 1
        mask = batch["label"].flatten(1).sum(1) > 0
        reasons = [
            RejectionReason.ACCEPTED if m else RejectionReason.FAR_FROM_CENTROID for m in mask.tolist()
        ]
        return SelectionResult(mask=mask, reasons=reasons, scores={}, thresholds={}, mode=SelectionMode(mode))


def _snapshot(pool):
    return {k: pool._data[k][: len(pool)].clone() for k in pool.keys}


def test_fill_from_phantom_source_matches_the_phantom_and_is_seeded():
    source = PhantomPoolSource(SHAPE, spacing=16.0)
    pool = SynthesisPool(3, spatial_shape=SHAPE, source=source, spacing=16.0, seed=5)
    update = pool.fill()
    assert (update.requested, update.accepted, update.generated, len(pool)) == (3, 3, 3, 3)
    # the seeds the source drew with the pool's generator reproduce the stored cases
    seeds = torch.randint(source.max_seed, (3,), generator=torch.Generator().manual_seed(5)).tolist()
    for i, seed in enumerate(seeds):
        case = make_phantom_case(seed, spatial_size=SHAPE, spacing=16.0)
        for k in KEYS:
            assert torch.equal(pool[i][k].as_tensor(), case[k].as_tensor())
    item = pool[1]
    assert item["ct"].pixdim.tolist() == [16.0, 16.0] and tuple(item["label"].shape) == (1, *SHAPE)
    assert item["ct"].meta["synthetic"] is True
    again = SynthesisPool(3, spatial_shape=SHAPE, source=source, spacing=16.0, seed=5)
    again.fill()
    assert all(torch.equal(a, b) for a, b in zip(_snapshot(pool).values(), _snapshot(again).values()))
    assert pool._data["ct"].is_shared()


def test_refill_oldest_replaces_the_oldest_slots_in_order():
    source = CountingSource()
    pool = SynthesisPool(4, spatial_shape=SHAPE, source=source, request_size=1)
    pool.fill()  # four calls: slot i holds value i + 1
    assert [float(pool[i]["ct"][0, 0, 0]) for i in range(4)] == [1.0, 2.0, 3.0, 4.0]
    assert pool.refill(0.5).slots == [0, 1]
    assert pool.refill(0.5).slots == [2, 3]
    assert pool.refill(0.25).slots == [0]
    assert [float(pool[i]["ct"][0, 0, 0]) for i in range(4)] == [9.0, 6.0, 7.0, 8.0]


def test_refill_random_order_is_seeded():
    def slots(seed):
        pool = SynthesisPool(
            8, spatial_shape=SHAPE, source=CountingSource(), seed=seed, refill_order="random"
        )
        pool.fill()
        return [pool.refill(0.25).slots for _ in range(3)]

    assert slots(1) == slots(1)
    assert slots(1) != slots(2)
    assert all(len(set(s)) == 2 for s in slots(1))


def test_partial_pool_refill_fills_empty_slots_first():
    pool = SynthesisPool(4, spatial_shape=SHAPE, source=CountingSource())
    assert pool.refill(0.5).slots == [0, 1] and len(pool) == 2
    assert pool.refill(0.75).slots == [2, 3, 0]
    assert len(pool) == 4 and pool.is_full


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"keys": ()}, "keys"),
        ({"keys": ("ct", "ct")}, "keys"),
        ({"spatial_shape": (16,)}, "spatial_shape"),
        ({"spatial_shape": (16, 0)}, "spatial_shape"),
        ({"spacing": -1.0}, "spacing"),
        ({"spacing": (1.0, 2.0, 3.0)}, "spacing"),
        ({"storage": "hu"}, r"'hu'(?s:.*)Available options are"),
        ({"refill_order": "newest"}, r"'newest'(?s:.*)Available options are"),
        ({"keys": ("ct", "mr")}, "mr"),
        ({"source": 3}, "source"),
        ({"quality_filter": object()}, "select"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_constructor_validation(kwargs, match):
    args = {"capacity": 2, "spatial_shape": SHAPE, "source": CountingSource(), **kwargs}
    with pytest.raises(ValueError, match=match):
        SynthesisPool(**args)


def test_refill_fraction_validation_and_index_errors():
    pool = SynthesisPool(2, spatial_shape=SHAPE, source=CountingSource())
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            pool.refill(bad)
    with pytest.raises(ValueError, match=r"'newest'(?s:.*)Available options are"):
        pool.refill(0.5, order="newest")
    with pytest.raises(EmptyPoolError, match="empty"):
        pool.sample(torch.Generator().manual_seed(0))
    with pytest.raises(IndexError, match="out of range"):
        pool[0]
    pool.fill()
    with pytest.raises(IndexError, match="index 2"):
        pool[2]
    assert torch.equal(pool[-1]["ct"].as_tensor(), pool[1]["ct"].as_tensor())


@pytest.mark.parametrize(
    "error, reason",
    [(RuntimeError("boom"), "exception"), (torch.OutOfMemoryError("CUDA out of memory"), "out_of_memory")],
)
def test_source_failure_is_counted_and_the_pool_is_unchanged(error, reason):
    pool = SynthesisPool(4, spatial_shape=SHAPE, source=CountingSource())
    pool.fill()
    before = _snapshot(pool)
    pool.source = FailingSource(error)
    with pytest.raises(PoolGenerationError, match=reason) as info:
        pool.refill(0.5)
    assert info.value.reason == reason
    assert pool.stats["failures"] == {reason: 1}
    assert len(pool) == 4 and all(torch.equal(before[k], _snapshot(pool)[k]) for k in KEYS)


def test_nan_source_is_counted_and_the_pool_is_unchanged(caplog):
    pool = SynthesisPool(4, spatial_shape=SHAPE, source=CountingSource())
    pool.fill()
    before = _snapshot(pool)
    pool.source = NaNSource()
    pool.max_attempts = 3
    with caplog.at_level(logging.WARNING, logger="monai_pairsynth.mixing.synthesis_pool"):
        update = pool.refill(0.5)
    assert (update.accepted, update.attempts, update.rejected) == (0, 3, {"non_finite": update.generated})
    assert update.generated >= 6 and not update.complete and update.slots == []
    assert pool.stats["failures"] == {"non_finite": update.generated}
    assert pool.stats["incomplete_updates"] == 1
    assert "only 0 of 2" in caplog.text
    assert all(torch.equal(before[k], _snapshot(pool)[k]) for k in KEYS)


def test_source_output_with_wrong_shape_or_keys_is_named():
    pool = SynthesisPool(2, spatial_shape=(8, 8), source=CountingSource(shape=SHAPE))
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\).*\(2, 1, 8, 8\)"):
        pool.fill()
    pool = SynthesisPool(2, keys=("ct", "mr"), specs={"ct": {"kind": "image"}, "mr": {"kind": "image"}},
                         spatial_shape=SHAPE, source=CountingSource())  # fmt: skip
    with pytest.raises(ValueError, match="'mr'"):
        pool.fill()


def test_quality_filter_rejections_are_counted_and_only_accepted_stored():
    flt = LabelFilter()
    pool = SynthesisPool(6, spatial_shape=SHAPE, source=RandomSource(), quality_filter=flt, seed=3)

    def empty_masks_half(num, generator):
        batch = RandomSource()(num, generator)
        batch["label"][::2] = 0  # every other triplet has an empty mask -> rejected
        return batch

    pool.source = empty_masks_half
    update = pool.fill()
    assert update.accepted == 6 and len(pool) == 6
    assert all(float(pool[i]["label"].sum()) > 0 for i in range(6))
    stats = pool.stats
    # request 6 -> 3 accepted; the acceptance rate 1/2 scales the next request to 6 -> 3 more accepted
    assert (update.attempts, update.generated, flt.calls) == (2, 12, 2)
    assert stats["rejected"] == {"far_from_centroid": 6} == update.rejected
    assert stats["generated"] == 12 and stats["accepted"] == 6 and stats["surplus"] == 0
    assert stats["throughput"] > 0 and stats["generation_throughput"] == pytest.approx(
        2 * stats["throughput"]
    )


def test_surplus_accepted_triplets_are_counted():
    pool = SynthesisPool(3, spatial_shape=SHAPE, source=CountingSource(), request_size=2)
    update = pool.fill()
    assert (update.generated, update.accepted, update.surplus, pool.stats["surplus"]) == (4, 3, 1, 1)


def test_max_attempts_gives_a_partial_fill_with_a_warning(caplog):
    class RejectAll(LabelFilter):
        def select(self, batch, mode="streaming", units=None):
            mask = torch.zeros(batch["ct"].shape[0], dtype=torch.bool)
            return SelectionResult(mask, [RejectionReason.UNCERTAIN] * len(mask), {}, {}, SelectionMode(mode))

    pool = SynthesisPool(
        4, spatial_shape=SHAPE, source=RandomSource(), quality_filter=RejectAll(), max_attempts=2
    )
    with caplog.at_level(logging.WARNING):
        update = pool.fill()
    assert (update.accepted, update.attempts, len(pool)) == (0, 2, 0)
    assert pool.stats["rejected"] == {"uncertain": update.generated}
    assert "after 2 source calls" in caplog.text


def test_normalized_storage_roundtrips_to_physical_units():
    phys = SynthesisPool(2, spatial_shape=SHAPE, source=RandomSource(), seed=1)
    norm = SynthesisPool(2, spatial_shape=SHAPE, source=RandomSource(), seed=1, storage="normalized")
    phys.fill()
    norm.fill()
    assert float(norm[0]["ct"].abs().max()) <= 1.0
    assert set(norm[0]["label"].unique().tolist()) <= {-1.0, 1.0}
    back = norm.get(0, units="physical")
    assert torch.allclose(back["ct"], phys[0]["ct"], atol=1e-3)
    assert torch.allclose(back["pet"], phys[0]["pet"], atol=1e-4)
    assert torch.equal(back["label"].as_tensor(), phys[0]["label"].as_tensor())
    assert torch.allclose(phys.get(0, units="normalized")["pet"], norm[0]["pet"], atol=1e-6)


def test_save_and_load_roundtrip(tmp_path):
    pool = SynthesisPool(4, spatial_shape=SHAPE, source=CountingSource(), spacing=(2.0, 3.0), request_size=1)
    pool.fill()
    pool.refill(0.5)
    path = tmp_path / "pool.pt"
    pool.save(path)
    loaded = SynthesisPool.load(path, source=CountingSource(), capacity=6)
    assert (len(loaded), loaded.capacity, loaded.keys, loaded.spacing) == (4, 6, KEYS, (2.0, 3.0))
    for i in range(4):
        for k in KEYS:
            assert torch.equal(loaded[i][k].as_tensor(), pool[i][k].as_tensor())
    assert loaded[0]["ct"].pixdim.tolist() == [2.0, 3.0]
    assert loaded.stats["accepted"] == 6 and loaded.stats["generated"] == 6
    # the refill order continues from the saved stamps: slots 2 and 3 are now the oldest
    assert loaded.refill(1 / 3).slots == [4, 5]
    assert loaded.refill(1 / 3).slots == [2, 3]
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        SynthesisPool.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt.*not a SynthesisPool"):
        SynthesisPool.load(bad)
    pool = SynthesisPool(3, spatial_shape=SHAPE, source=CountingSource())
    pool.fill()
    pool.save(tmp_path / "p.pt")
    with pytest.raises(ValueError, match="capacity 2 is smaller than the 3"):
        SynthesisPool.load(tmp_path / "p.pt", capacity=2)
    with pytest.raises(RuntimeError, match="no source"):
        SynthesisPool.load(tmp_path / "p.pt").refill(0.5)


def test_background_refill_never_shows_a_torn_triplet():
    source = CountingSource()
    pool = SynthesisPool(32, spatial_shape=SHAPE, source=source)
    pool.fill()
    stop = threading.Event()
    torn, reads = [], [0]

    def read():
        g = torch.Generator().manual_seed(0)
        while not stop.is_set():
            item = pool.sample(g)
            reads[0] += 1
            v = float(item["ct"][0, 0, 0])
            if not (torch.all(item["ct"] == v) and torch.all(item["pet"] == 10 * v)):
                torn.append(v)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        updates = [pool.refill_async(0.5).result(timeout=30) for _ in range(20)]
    finally:
        stop.set()
        reader.join()
        pool.shutdown()
    assert torn == [] and reads[0] > 0
    assert all(u.accepted == 16 for u in updates)
    assert sorted({float(pool[i]["ct"][0, 0, 0]) for i in range(32)}) == [20.0, 21.0]


def test_background_refill_error_surfaces_in_the_future():
    pool = SynthesisPool(2, spatial_shape=SHAPE, source=FailingSource(ValueError("bad weights")))
    future = pool.refill_async(0.5)
    with pytest.raises(PoolGenerationError, match="bad weights"):
        future.result(timeout=30)
    pool.shutdown()
    assert pool.stats["failures"] == {"exception": 1}


class _PoolView(Dataset):
    def __init__(self, pool, fill_in_worker=False):
        self.pool, self.fill_in_worker = pool, fill_in_worker

    def __len__(self):
        return len(self.pool)

    def __getitem__(self, i):
        if self.fill_in_worker:
            self.pool.refill(0.5)
        return self.pool[i]["ct"].as_tensor()


def test_persistent_workers_see_main_process_refills_through_shared_memory():
    pool = SynthesisPool(4, spatial_shape=(4, 4), source=CountingSource(shape=(4, 4)))
    pool.fill()  # one call: every slot holds 1
    loader = DataLoader(_PoolView(pool), batch_size=4, num_workers=2, persistent_workers=True)
    first = next(iter(loader))
    pool.refill(1.0)  # main process: every slot now holds 2
    second = next(iter(loader))
    assert torch.all(first == 1.0) and torch.all(second == 2.0)


@pytest.fixture
def fast_worker_shutdown(monkeypatch):
    """torch waits MP_STATUS_CHECK_INTERVAL (5 s) to shut down a worker that raised; make that quick in tests."""
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    yield
    gc.collect()  # shut the failed iterator's workers down while the short interval is in force


def test_pool_is_read_only_in_worker_processes(fast_worker_shutdown):
    pool = SynthesisPool(2, spatial_shape=(4, 4), source=CountingSource(shape=(4, 4)))
    pool.fill()
    loader = DataLoader(_PoolView(pool, fill_in_worker=True), batch_size=2, num_workers=1)
    with pytest.raises(RuntimeError, match="read-only inside DataLoader worker"):
        next(iter(loader))


def test_pickled_pool_is_a_read_only_copy_without_source():
    import pickle

    pool = SynthesisPool(
        2, spatial_shape=(4, 4), source=CountingSource(shape=(4, 4)), quality_filter=LabelFilter()
    )
    pool.fill()
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.source is None and clone.quality_filter is None and len(clone) == 2
    assert torch.equal(clone[1]["pet"].as_tensor(), pool[1]["pet"].as_tensor())
    with pytest.raises(RuntimeError, match="no source"):
        clone.fill()


def test_concurrent_refills_generate_one_at_a_time():
    import time

    active, peak = [0], [0]
    guard = threading.Lock()
    counting = CountingSource()

    def source(num, generator):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with guard:
            active[0] -= 1
        return counting(num, generator)

    pool = SynthesisPool(4, spatial_shape=SHAPE, source=source)
    future = pool.refill_async(0.5)
    update = pool.refill(0.5)
    background = future.result(timeout=30)
    pool.shutdown()
    assert peak[0] == 1
    assert sorted(update.slots + background.slots) == [0, 1, 2, 3] and len(pool) == 4


def test_nifti_export_and_import_roundtrip(tmp_path):
    import json

    pool = SynthesisPool(3, spatial_shape=SHAPE, source=RandomSource(), spacing=(2.0, 2.5), seed=2)
    pool.fill()
    out = pool.export_nifti(tmp_path / "pool_nifti")
    datalist = json.loads((out / "datalist.json").read_text())
    assert [e["label"] for e in datalist["training"]] == [f"POOL-000{i}/POOL-000{i}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (out / "POOL-0001").iterdir()) == [
        "POOL-0001.nii.gz", "POOL-0001__CT.nii.gz", "POOL-0001__PT.nii.gz"]  # fmt: skip
    loaded = SynthesisPool.from_nifti(out, capacity=5)
    assert (len(loaded), loaded.capacity, loaded.spacing, loaded.keys) == (3, 5, (2.0, 2.5), KEYS)
    for i in range(3):
        for k in KEYS:
            assert torch.allclose(loaded[i][k].as_tensor(), pool[i][k].as_tensor())
    with pytest.raises(FileExistsError, match="already exists"):
        pool.export_nifti(out)
    with pytest.raises(FileNotFoundError, match="datalist"):
        SynthesisPool.from_nifti(tmp_path)
    (out / "POOL-0002" / "POOL-0002__PT.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"POOL-0002__PT\.nii\.gz"):
        SynthesisPool.from_nifti(out / "datalist.json")


def test_pool_from_the_generate_module_output(tmp_path):
    from monai_pairsynth.engines import save_paired_checkpoint
    from monai_pairsynth.inferers.generate import generate
    from monai_pairsynth.networks import PairedDiffusionModel

    model = PairedDiffusionModel(KEYS, channels=(4, 8), attention_levels=(False, False), norm_num_groups=4)
    checkpoint = save_paired_checkpoint(tmp_path / "diffusion.pt", model, spatial_size=(8, 8), spacing=3.0)
    out = generate(checkpoint, tmp_path / "generated", num_samples=2, num_inference_steps=2, progress=False,
                   preview_cases=0)  # fmt: skip
    pool = SynthesisPool.from_nifti(out)
    assert (len(pool), pool.spatial_shape, pool.spacing) == (2, (8, 8), (3.0, 3.0))
    assert set(pool[1]["label"].unique().tolist()) <= {0.0, 1.0}
    assert 0.0 <= float(pool[0]["pet"].min()) and float(pool[0]["pet"].max()) <= 15.0
