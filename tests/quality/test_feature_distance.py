from __future__ import annotations

import pytest
import torch

from monai_pairsynth.quality import centroid_distances, kmeans, pooled_embedding, unit_normalize_channels


def naive_distance(acts: list[torch.Tensor], centroid: list[torch.Tensor]) -> torch.Tensor:
    """The formula written out with loops: sum_l 1/|S_l| sum_s ||a_l[:, s] / ||a_l[:, s]|| - c_l[:, s]||^2."""
    out = torch.zeros(acts[0].shape[0], dtype=torch.float64)
    for a, c in zip(acts, centroid):
        for b in range(a.shape[0]):
            flat, cflat = a[b].double().flatten(1), c.double().flatten(1)
            total = 0.0
            for s in range(flat.shape[1]):
                v = flat[:, s] / (flat[:, s].norm() + 1e-8)
                total += float(((v - cflat[:, s]) ** 2).sum())
            out[b] += total / flat.shape[1]
    return out


@pytest.mark.parametrize("spatial", [(5, 4), (3, 2, 4)])
def test_centroid_distance_matches_the_formula(spatial):
    g = torch.Generator().manual_seed(0)
    acts = [
        torch.randn(3, 4, *spatial, generator=g),
        torch.randn(3, 6, *[max(1, s // 2) for s in spatial], generator=g),
    ]
    centroids = [torch.randn(2, *a.shape[1:], generator=g) * 0.3 for a in acts]
    got = centroid_distances([unit_normalize_channels(a) for a in acts], centroids)
    assert got.shape == (3, 2)
    for s in range(2):
        expected = naive_distance(acts, [c[s] for c in centroids])
        assert torch.allclose(got[:, s].double(), expected, rtol=1e-4, atol=1e-5)


def test_distance_properties():
    g = torch.Generator().manual_seed(1)
    a = unit_normalize_channels(torch.randn(4, 3, 6, 6, generator=g))
    assert torch.allclose(a.norm(dim=1), torch.ones(4, 6, 6), atol=1e-6)
    own = centroid_distances([a], [a])  # each sample against every sample as a "centroid"
    assert torch.allclose(own.diagonal(), torch.zeros(4), atol=1e-5)
    assert float(own.max()) <= 4.0 + 1e-5  # two unit vectors are at most 2 apart
    # scale invariance along channels: the distance ignores the activation's magnitude
    assert torch.allclose(unit_normalize_channels(a * 7.0), a, atol=1e-6)
    with pytest.raises(ValueError, match="one centroid tensor per layer"):
        centroid_distances([a], [])
    with pytest.raises(ValueError, match="does not match the centroid shape"):
        centroid_distances([a], [torch.zeros(1, 3, 5, 5)])


def test_pooled_embedding_distance_is_the_formula_at_pooled_resolution():
    g = torch.Generator().manual_seed(2)
    acts = [
        unit_normalize_channels(torch.randn(2, 3, 4, 4, generator=g)),
        unit_normalize_channels(torch.randn(2, 5, 2, 2, generator=g)),
    ]
    e = pooled_embedding(acts, size=4)  # no pooling at this size
    assert e.shape == (2, 3 * 16 + 5 * 4)
    sq = float(((e[0] - e[1]) ** 2).sum())
    direct = float(centroid_distances([a[:1] for a in acts], [a[1:] for a in acts])[0, 0])
    assert sq == pytest.approx(direct, rel=1e-5)
    assert pooled_embedding(acts, size=2).shape == (2, 3 * 4 + 5 * 4)
    with pytest.raises(ValueError, match="embedding size"):
        pooled_embedding(acts, size=0)


def test_kmeans_finds_blobs_and_is_seeded():
    g = torch.Generator().manual_seed(3)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.3 * torch.randn(20, 2, generator=g) for c in centers])
    found, labels = kmeans(points, 3, generator=torch.Generator().manual_seed(0))
    for blob in range(3):
        members = labels[blob * 20 : (blob + 1) * 20]
        assert bool((members == members[0]).all())
    assert len(set(labels.tolist())) == 3
    assert torch.cdist(found, centers).min(1).values.max() < 0.5
    again, labels_again = kmeans(points, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, found) and torch.equal(labels_again, labels)


def test_kmeans_never_leaves_a_cluster_empty():
    points = torch.cat([torch.zeros(6, 2), torch.ones(1, 2)])  # only two distinct points, four clusters
    _, labels = kmeans(points, 4, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(labels, minlength=4).min() >= 1
    with pytest.raises(ValueError, match="at least num_clusters=4 points"):
        kmeans(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(torch.zeros(3, 2), 0)
