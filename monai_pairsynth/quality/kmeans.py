"""A small seeded k-means (k-means++ initialisation, Lloyd iterations) in torch, used to stratify real features."""

from __future__ import annotations

import torch

__all__ = ["kmeans"]


def kmeans(
    points: torch.Tensor,
    num_clusters: int,
    generator: torch.Generator | None = None,
    max_iterations: int = 50,
    restarts: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``points`` into ``num_clusters`` groups by squared Euclidean distance.

    The best of ``restarts`` runs (lowest within-cluster sum of squares) is returned. An emptied cluster is
    re-seeded at the point farthest from its centre, so every cluster keeps at least one member.

    Args:
        points: ``(N, E)`` float tensor, ``N >= num_clusters``.
        num_clusters: ``k >= 1``.
        generator: CPU generator for the k-means++ draws (same seed -> same clustering).
        max_iterations: Lloyd iterations per run.
        restarts: independent k-means++ initialisations.

    Returns:
        ``(centers (k, E), assignment (N,) long)``, on the device of ``points``.

    Example:
        >>> import torch
        >>> pts = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
        >>> centers, labels = kmeans(pts, 2, torch.Generator().manual_seed(0))
        >>> sorted(round(c, 2) for c in centers.flatten().tolist())
        [0.05, 10.05]
        >>> bool(labels[0] == labels[1]) and bool(labels[0] != labels[2])
        True
    """
    if points.ndim != 2:
        raise ValueError(f"points must be (N, E), got shape {tuple(points.shape)}.")
    n = points.shape[0]
    if not isinstance(num_clusters, int) or num_clusters < 1:
        raise ValueError(f"num_clusters must be an integer >= 1, got {num_clusters!r}.")
    if n < num_clusters:
        raise ValueError(f"k-means needs at least num_clusters={num_clusters} points, got {n}.")
    if restarts < 1 or max_iterations < 1:
        raise ValueError(f"restarts and max_iterations must be >= 1, got {restarts} and {max_iterations}.")
    x = points.float()
    device = x.device
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(restarts):
        # k-means++ seeding
        first = int(torch.randint(n, (1,), generator=generator).item())
        centers = [x[first]]
        closest = ((x - x[first]) ** 2).sum(1)
        for _ in range(1, num_clusters):
            total = float(closest.sum())
            if total <= 0:
                idx = int(torch.randint(n, (1,), generator=generator).item())
            else:
                probs = (closest / total).cpu()
                idx = int(torch.multinomial(probs, 1, generator=generator).item())
            centers.append(x[idx])
            closest = torch.minimum(closest, ((x - x[idx]) ** 2).sum(1))
        c = torch.stack(centers)
        assignment = torch.zeros(n, dtype=torch.long, device=device)
        for it in range(max_iterations):
            d = torch.cdist(x, c) ** 2
            new_assignment = d.argmin(1)
            new_assignment = _fill_empty_clusters(new_assignment, d, num_clusters)
            counts = torch.bincount(new_assignment, minlength=num_clusters)
            sums = torch.zeros_like(c).index_add_(0, new_assignment, x)
            c = sums / counts[:, None].to(x)
            if it > 0 and torch.equal(new_assignment, assignment):
                break
            assignment = new_assignment
        d = torch.cdist(x, c) ** 2
        assignment = _fill_empty_clusters(d.argmin(1), d, num_clusters)
        inertia = float(((x - c[assignment]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, c, assignment)
    assert best is not None
    return best[1], best[2]


def _fill_empty_clusters(assignment: torch.Tensor, sq_dist: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Move the points farthest from their centre into empty clusters, never emptying a cluster in turn."""
    assignment = assignment.clone()
    counts = torch.bincount(assignment, minlength=num_clusters)
    own = sq_dist.gather(1, assignment[:, None]).squeeze(1).clone()
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        movable = counts[assignment] > 1
        candidates = torch.where(movable, own, torch.full_like(own, -1.0))
        far = int(candidates.argmax())
        counts[assignment[far]] -= 1
        assignment[far] = empty
        counts[empty] += 1
        own[far] = -1.0
    return assignment
