"""Ready-made pool sources that need no trained model: :class:`PhantomPoolSource`.

The diffusion source lives with the sampler it calls: :class:`monai_pairsynth.inferers.DiffusionPoolSource`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from monai_pairsynth.data.phantom import DEFAULT_SIZE_2D, make_phantom_case

__all__ = ["PhantomPoolSource"]


class PhantomPoolSource:
    """A pool source that returns phantom cases (:func:`monai_pairsynth.data.phantom.make_phantom_case`).

    Deterministic and cheap: case seeds are drawn from the generator handed in by the pool. Useful to test a
    pipeline end to end, and as the "perfect generator" upper bound on the phantom benchmark.

    Args:
        spatial_shape: ``(H, W)`` or ``(H, W, D)`` of the cases; ``None``: the phantom's default.
        spacing: isotropic voxel size in mm.
        keys: which of the case's modalities to return.
        max_seed: case seeds are drawn from ``[0, max_seed)``.
        case_kwargs: further arguments of ``make_phantom_case`` (e.g. ``noise=False``).

    Example:
        >>> import torch
        >>> source = PhantomPoolSource((32, 32), spacing=8.0)
        >>> batch = source(2, torch.Generator().manual_seed(0))
        >>> {k: tuple(v.shape) for k, v in batch.items()}
        {'ct': (2, 1, 32, 32), 'pet': (2, 1, 32, 32), 'label': (2, 1, 32, 32)}
    """

    device = torch.device("cpu")

    def __init__(
        self,
        spatial_shape: Sequence[int] | None = None,
        spacing: float = 2.0,
        keys: Sequence[str] = ("ct", "pet", "label"),
        max_seed: int = 2**31 - 1,
        **case_kwargs: Any,
    ) -> None:
        self.spatial_shape = tuple(DEFAULT_SIZE_2D if spatial_shape is None else spatial_shape)
        if len(self.spatial_shape) not in (2, 3):
            raise ValueError(f"spatial_shape must be (H, W) or (H, W, D), got {spatial_shape!r}.")
        if not isinstance(max_seed, int) or max_seed < 1:
            raise ValueError(f"max_seed must be an integer >= 1, got {max_seed!r}.")
        allowed = ("ct", "pet", "label")
        if isinstance(keys, str) or not keys or any(k not in allowed for k in keys):
            raise ValueError(f"keys must be a non-empty subset of {list(allowed)}, got {keys!r}.")
        self.keys = tuple(keys)
        self.spacing = float(spacing)
        self.max_seed = max_seed
        self.case_kwargs = case_kwargs

    def __call__(self, num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        seeds = torch.randint(self.max_seed, (num,), generator=generator, device=generator.device).tolist()
        cases = [
            make_phantom_case(
                int(s),
                spatial_dims=len(self.spatial_shape),
                spatial_size=self.spatial_shape,
                spacing=self.spacing,
                **self.case_kwargs,
            )
            for s in seeds
        ]
        return {k: torch.stack([c[k].as_tensor() for c in cases]) for k in self.keys}
