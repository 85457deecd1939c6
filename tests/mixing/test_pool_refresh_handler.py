from __future__ import annotations

import logging
import threading

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import Compose, ConcatItemsd, ScaleIntensityRanged

from monai_pairsynth.data.phantom import PhantomDataset
from monai_pairsynth.mixing import MixedDatasetEpochHandler, PoolRefreshHandler
from monai_pairsynth.mixing.mixed_dataset import MixedDataset
from monai_pairsynth.mixing.synthesis_pool import PhantomPoolSource, SynthesisPool
from monai_pairsynth.quality import FeatureCentroidFilter, build_feature_segmenter

SHAPE = (16, 16)
SPACING = 16.0


class Failing:
    def __init__(self, error):
        self.error = error

    def __call__(self, num, generator):
        raise self.error


class NaNs:
    def __call__(self, num, generator):
        x = torch.full((num, 1, *SHAPE), float("nan"))
        return {"ct": x, "pet": x.clone(), "label": torch.zeros_like(x)}


def make_pool(capacity=8, quality_filter=None):
    pool = SynthesisPool(
        capacity,
        spatial_shape=SHAPE,
        source=PhantomPoolSource(SHAPE, spacing=SPACING),
        spacing=SPACING,
        quality_filter=quality_filter,
    )
    pool.fill()
    return pool


def make_trainer(pool, ratio=0.5, epochs=2, num_workers=0):
    transform = Compose(
        [
            ScaleIntensityRanged("ct", -1000, 1000, -1, 1, clip=True),
            ScaleIntensityRanged("pet", 0, 15, 0, 1, clip=True),
            ConcatItemsd(["ct", "pet"], "image"),
        ]
    )
    real = PhantomDataset(8, base_seed=50, spatial_size=SHAPE, spacing=SPACING)
    dataset = MixedDataset(real, pool, ratio=ratio, seed=0, transform=transform)
    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=num_workers)
    net = UNet(2, 2, 1, channels=(4, 8), strides=(2,), num_res_units=0)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=DiceCELoss(sigmoid=True),
    )
    return trainer, dataset


def _snapshot(pool):
    return {k: pool._data[k][: len(pool)].clone() for k in pool.keys}


def test_refresh_during_training_counts_the_synthetic_share_and_replaces_the_oldest(caplog):
    pool = make_pool()
    first = _snapshot(pool)
    trainer, dataset = make_trainer(pool)
    handler = PoolRefreshHandler(pool, every_n_epochs=1, fraction=0.25, dataset=dataset)
    handler.attach(trainer)
    with caplog.at_level(logging.INFO, logger="monai_pairsynth.mixing.pool_refresh_handler"):
        trainer.run()
    assert [r["epoch"] for r in handler.history] == [1, 2]
    for record in handler.history:
        assert (record["seen"], record["synthetic_seen"]) == (12, 4)
        assert record["synthetic_share"] == pytest.approx(1 / 3)
        assert (record["refreshed"], record["failure"]) == (2, None)
    assert dataset.epoch == 2 and trainer.state.pool_refresh is handler.history[-1]
    now = _snapshot(pool)
    changed = [i for i in range(8) if not torch.equal(now["ct"][i], first["ct"][i])]
    assert changed == [0, 1, 2, 3]  # two refreshes of 2 slots each, oldest first
    assert pool.stats["accepted"] == 12 and handler.failures == {}
    assert "4/12 samples seen were synthetic (33.3%)" in caplog.text


def test_refresh_every_n_epochs():
    pool = make_pool()
    trainer, dataset = make_trainer(pool, epochs=3)
    handler = PoolRefreshHandler(pool, every_n_epochs=2, fraction=0.5)
    handler.attach(trainer)
    MixedDatasetEpochHandler(trainer.data_loader).attach(trainer)
    trainer.run()
    assert [r["refreshed"] for r in handler.history] == [0, 4, 0]
    assert dataset.epoch == 3


@pytest.mark.parametrize(
    "source, reason",
    [
        (Failing(RuntimeError("generator crashed")), "exception"),
        (Failing(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")), "out_of_memory"),
        (NaNs(), "non_finite"),
        (lambda num, generator: {"ct": torch.zeros(num, 1, 4, 4)}, "exception"),  # garbage output
    ],
)
def test_generator_failures_are_caught_counted_and_training_continues(source, reason, caplog):
    pool = make_pool()
    before = _snapshot(pool)
    pool.source = source
    pool.max_attempts = 2
    trainer, dataset = make_trainer(pool)
    handler = PoolRefreshHandler(pool, fraction=0.5, dataset=dataset)
    handler.attach(trainer)
    with caplog.at_level(logging.ERROR, logger="monai_pairsynth.mixing.pool_refresh_handler"):
        trainer.run()
    assert trainer.state.epoch == 2  # training was not interrupted
    assert [r["failure"] for r in handler.history] == [reason, reason]
    assert [r["synthetic_seen"] for r in handler.history] == [4, 4]  # still mixing from what the pool holds
    assert handler.failures[reason] >= 2 and pool.stats["failures"][reason] >= 2
    assert all(torch.equal(before[k], _snapshot(pool)[k]) for k in pool.keys)  # nothing the pool held is lost
    assert caplog.text.count("training continues on the 8 triplets the pool holds") == 2


def test_background_refresh_is_collected_and_written():
    pool = make_pool()
    first = _snapshot(pool)
    trainer, _ = make_trainer(pool)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: pool.wait(timeout=60))  # runs first
    handler = PoolRefreshHandler(pool, fraction=0.25, background=True)
    handler.attach(trainer)
    trainer.run()
    # epoch 1 started a refill; epoch 2 collected it and started another; COMPLETED waited for the last one
    assert [r["refreshed"] for r in handler.history] == [0, 2]
    assert handler.history[1]["background_result"] == {"refreshed": 2, "failure": None}
    assert pool.stats["updates"] == 3 and pool.stats["accepted"] == 12
    now = _snapshot(pool)
    assert [i for i in range(8) if not torch.equal(now["ct"][i], first["ct"][i])] == [0, 1, 2, 3]
    pool.shutdown()


def test_background_refresh_still_running_is_not_queued_twice():
    release = threading.Event()
    pool = make_pool()
    phantom = pool.source

    def slow(num, generator):
        assert release.wait(timeout=60)
        return phantom(num, generator)

    pool.source = slow
    trainer, _ = make_trainer(pool)
    handler = PoolRefreshHandler(pool, fraction=0.25, background=True)
    handler.attach(trainer)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED(once=2), lambda engine: release.set()
    )  # after the handler
    trainer.run()
    assert handler.failures == {"busy": 1}
    assert handler.history[1]["background_result"] == {"refreshed": 2, "failure": None}
    assert pool.stats["updates"] == 2  # the fill and one background refill
    pool.shutdown()


def test_filter_counts_are_reported():
    net = build_feature_segmenter(2, channels=(4, 8), dropout=0.2)
    real = PhantomDataset(8, base_seed=200, spatial_size=SHAPE, spacing=SPACING)
    quality = FeatureCentroidFilter(net, mc_passes=1, certainty=False, units="physical").fit(real)
    pool = make_pool(capacity=4, quality_filter=quality)
    trainer, _ = make_trainer(pool, epochs=1)
    handler = PoolRefreshHandler(pool, fraction=0.5)
    handler.attach(trainer)
    trainer.run()
    record = handler.history[0]
    assert record["filter_counts"] == quality.counts
    assert record["filter_counts"]["seen"] == pool.stats["generated"]
    assert (
        record["filter_counts"]["accepted"]
        == pool.stats["accepted"] + pool.stats["surplus"]
        == 6 + pool.stats["surplus"]
    )
    assert record["pool"]["rejected"] == pool.stats["rejected"]


def test_multiworker_training_with_refresh():
    pool = make_pool()
    trainer, dataset = make_trainer(pool, num_workers=2)
    handler = PoolRefreshHandler(pool, fraction=0.25, dataset=dataset)
    handler.attach(trainer)
    trainer.run()
    assert [(r["seen"], r["synthetic_seen"], r["refreshed"]) for r in handler.history] == [
        (12, 4, 2),
        (12, 4, 2),
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"fraction": 0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"order": "newest"}, r"'newest'(?s:.*)Available options are"),
        ({"dataset": [1, 2]}, "MixedDataset"),
        ({"pool": "pool"}, "SynthesisPool"),
    ],
)
def test_validation(kwargs, match):
    args = {"pool": make_pool(capacity=1), **kwargs}
    with pytest.raises(ValueError, match=match):
        PoolRefreshHandler(**args)
