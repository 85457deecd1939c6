"""Scoring on the feature network's device (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from quality_phantom import phantom_cases, stack

from monai_pairsynth.quality import FeatureCentroidFilter, build_feature_segmenter

TINY = {"spatial_size": (16, 16), "spacing": 16.0}


@pytest.mark.gpu
def test_scoring_follows_the_network_to_cuda(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_feature_segmenter(2, channels=(4, 8), dropout=0.2).eval()
    real = phantom_cases(16, base_seed=0, **TINY)
    candidates = stack(phantom_cases(8, base_seed=1000, **TINY))
    deterministic = FeatureCentroidFilter(net, mc_passes=1).fit(real)
    on_cpu = deterministic.score(candidates)
    net.cuda()
    assert deterministic.device.type == "cuda"
    on_gpu = deterministic.score(candidates)  # centroids follow the network; scores come back on the CPU
    for name, values in on_cpu.items():
        assert on_gpu[name].device.type == "cpu"
        assert torch.allclose(values.float(), on_gpu[name].float(), atol=1e-4), name
    # fit and MC-dropout passes on the GPU: reproducible, and a reloaded state gives identical scores
    mc = FeatureCentroidFilter(net, mc_passes=3).fit(real)
    first, second = mc.score(candidates), mc.score(candidates)
    assert torch.equal(first["distance"], second["distance"])
    loaded = FeatureCentroidFilter.load(mc.save(tmp_path / "gpu_filter.pt"), net)
    assert torch.equal(loaded.score(candidates)["distance"], first["distance"])
    assert mc.select(candidates, mode="pool", ratio=0.5, num_real=4).num_accepted == 2
