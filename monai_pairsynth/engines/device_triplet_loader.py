"""Training batches drawn from tensors materialised once on the training device, augmented in batch there."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, ModalitySpec, resolve_specs

__all__ = ["DeviceTripletLoader"]


def _as_tensor(x: Any) -> torch.Tensor:
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)


class DeviceTripletLoader:
    """An epoch-sized iterable of ``{modality: (B, C, H, W)}`` batches, drawn from tensors kept on ``device``.

    The per-sample path (a ``DataLoader`` over MONAI ``RandAffined`` / ``RandFlipd`` on MetaTensors, then a
    copy to the device) costs milliseconds of host time per sample; here the training slices are validated
    and stacked once (:meth:`from_samples`), moved to the training device, and every batch is a gather plus
    one batched ``affine_grid`` / ``grid_sample`` and a flip, all on the device. The augmentation matches
    :func:`monai_pairsynth.data.augmentation_transforms`: with probability ``prob`` a rotation up to
    ``±rotate_degrees`` and a shift up to ``±translate_voxels`` (border padding; bilinear for images, nearest
    for masks so they stay binary), then with probability ``flip_prob`` a flip of the first spatial axis, the
    same transform for every modality of a sample.

    The order of epoch ``e`` and its augmentation draws are functions of ``(seed, e)`` only
    (:meth:`set_epoch`, which the trainer of :func:`~monai_pairsynth.engines.create_paired_trainer` calls at
    every epoch start), so a resumed run sees the same batches as an uninterrupted one. Under
    ``torch.distributed`` every rank takes its own share of each epoch's order (``order[rank::world_size]``,
    as ``DistributedSampler`` does). 2D slices only.

    Args:
        data: ``{modality: (N, C, H, W)}`` tensors in [-1, 1] (all modalities of one shape).
        batch_size: samples per batch.
        modality_specs: names or ``{name: ModalitySpec}`` of the modalities (default: the keys of ``data``, with
            the default specs); masks (``is_mask``) are resampled nearest. A name without a default spec needs
            its spec here. Every named modality is moved with the same per-sample transform, so a mask that
            travels beside the modalities (e.g. the field-of-view mask,
            :func:`monai_pairsynth.modalities.with_field_of_view`) can be named here too.
        device: where the data and the batches live (default: the data's device).
        seed: base seed of the order and the augmentation.
        augment: apply the random affine and flip.
        prob, rotate_degrees, translate_voxels, flip_prob: augmentation settings (see above).
        drop_last: drop the last incomplete batch (default ``True``: fixed batch shapes).

    Example:
        >>> import torch
        >>> data = {"ct": torch.rand(10, 1, 8, 8) * 2 - 1, "label": -torch.ones(10, 1, 8, 8)}
        >>> loader = DeviceTripletLoader(data, batch_size=4, modality_specs=["ct", "label"], seed=0)
        >>> len(loader), [tuple(b["ct"].shape) for b in loader]
        (2, [(4, 1, 8, 8), (4, 1, 8, 8)])
    """

    def __init__(
        self,
        data: Mapping[str, torch.Tensor],
        batch_size: int,
        *,
        modality_specs: Sequence[str] | Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
        augment: bool = True,
        prob: float = 0.5,
        rotate_degrees: float = 10.0,
        translate_voxels: float = 8.0,
        flip_prob: float = 0.5,
        drop_last: bool = True,
    ) -> None:
        if not isinstance(data, Mapping) or not data:
            raise ValueError(
                f"data must be a non-empty dict {{modality: (N, C, H, W) tensor}}, got {type(data).__name__}."
            )
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        for name, p in (("prob", prob), ("flip_prob", flip_prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p!r}.")
        if not (float(rotate_degrees) >= 0 and float(translate_voxels) >= 0):
            raise ValueError(
                f"rotate_degrees and translate_voxels must be >= 0, got {rotate_degrees!r}, {translate_voxels!r}."
            )
        # the given specs are kept as they are (a custom name or mask needs its own spec); without them the
        # data's keys take the default specs
        specs = resolve_specs(list(data) if modality_specs is None else modality_specs)
        names = list(specs)
        missing = [m for m in names if m not in data]
        if missing:
            raise KeyError(f"data lacks modalities {missing}; it has {sorted(data)}.")
        tensors = {m: _as_tensor(data[m]).float() for m in names}
        shapes = {m: tuple(x.shape) for m, x in tensors.items()}
        if any(len(s) != 4 for s in shapes.values()) or len(set(shapes.values())) != 1:
            listing = ", ".join(f"{m} {s}" for m, s in shapes.items())
            raise ValueError(
                f"data must hold (N, C, H, W) tensors of one shape per modality (2D slices), got {listing}."
            )
        n = next(iter(shapes.values()))[0]
        if n < 1:
            raise ValueError("data holds no sample (N = 0).")
        if drop_last and n < batch_size:
            raise ValueError(f"{n} samples are fewer than one batch of {batch_size} with drop_last=True.")
        for m, x in tensors.items():
            bad = ~torch.isfinite(x.flatten(1)).all(1)
            if bool(bad.any()):
                raise ValueError(
                    f"modality {m!r} holds NaN/Inf in sample(s) {bad.nonzero().flatten()[:10].tolist()} of {n}."
                )
        self.device = torch.device(device) if device is not None else next(iter(tensors.values())).device
        self.data = {m: x.to(self.device).contiguous() for m, x in tensors.items()}
        self.modalities = tuple(names)
        self.is_mask = {m: bool(specs[m].is_mask) for m in names}
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.prob, self.flip_prob = float(prob), float(flip_prob)
        self.rotate = math.radians(float(rotate_degrees))
        self.translate = float(translate_voxels)
        self.drop_last = bool(drop_last)
        self.num_samples = n
        self.epoch = 0

    @classmethod
    def from_samples(cls, samples: Any, batch_size: int, **kwargs: Any) -> DeviceTripletLoader:
        """Stack a sequence (or map-style dataset) of ``{modality: (C, H, W)}`` samples in [-1, 1].

        Raises a ``ValueError`` naming the sample index (and its ``case_id`` when present) for a missing key,
        a shape that differs from the first sample's, or NaN/Inf.
        """
        specs = kwargs.get("modality_specs")
        n = len(samples)
        if n == 0:
            raise ValueError("samples is empty.")
        first = samples[0]
        names = list(resolve_specs(specs)) if specs is not None else cls.default_names(first)
        stacked: dict[str, list[torch.Tensor]] = {m: [] for m in names}
        shape0: dict[str, tuple[int, ...]] = {}
        for i in range(n):
            item = samples[i] if i else first
            case = f"sample {i}" + (
                f" (case {item['case_id']})" if isinstance(item, Mapping) and "case_id" in item else ""
            )
            if not isinstance(item, Mapping):
                raise ValueError(f"{case} is a {type(item).__name__}, not a dict of modalities.")
            for m in names:
                if m not in item:
                    raise KeyError(f"{case} lacks modality {m!r}; it has {sorted(map(str, item))}.")
                x = _as_tensor(item[m]).float()
                shape0.setdefault(m, tuple(x.shape))
                if tuple(x.shape) != shape0[m]:
                    raise ValueError(
                        f"{case}: modality {m!r} has shape {tuple(x.shape)}, sample 0 has {shape0[m]}."
                    )
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"{case}: modality {m!r} holds NaN/Inf values.")
                stacked[m].append(x)
        return cls({m: torch.stack(v) for m, v in stacked.items()}, batch_size, **kwargs)

    @staticmethod
    def default_names(sample: Mapping[str, Any]) -> list[str]:
        """The modalities :meth:`from_samples` stacks without ``modality_specs``: the keys of ``sample`` that have a
        default spec (``ct``, ``pet``, ``label``), in the sample's order."""
        return [k for k in sample if k in DEFAULT_MODALITY_SPECS]

    def set_epoch(self, epoch: int) -> None:
        """Order and augmentation of the next iteration pass are those of ``epoch``."""
        self.epoch = int(epoch)

    @staticmethod
    def _shard() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        rank, world = self._shard()
        n, b = len(range(rank, self.num_samples, world)), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 7 + salt)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rank, world = self._shard()
        order = torch.randperm(self.num_samples, generator=self._generator(0))[rank::world]
        g = self._generator(1 + rank)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            # draws on the CPU generator (a few numbers per sample), so results do not depend on the device
            b = int(idx.numel())
            draws = torch.rand(b, 5, generator=g)
            idx = idx.to(self.device)
            batch = {m: x.index_select(0, idx) for m, x in self.data.items()}
            yield self._augment(batch, draws.to(self.device)) if self.augment else batch

    def _augment(self, batch: dict[str, torch.Tensor], draws: torch.Tensor) -> dict[str, torch.Tensor]:
        ref = next(iter(batch.values()))
        b, _, h, w = ref.shape
        apply = (draws[:, 0] < self.prob).float()
        angle = (draws[:, 1] * 2 - 1) * self.rotate * apply
        # shift in voxels along H and W, in affine_grid's normalised units (x indexes W, y indexes H)
        shift_h = (draws[:, 2] * 2 - 1) * self.translate * apply * 2.0 / h
        shift_w = (draws[:, 3] * 2 - 1) * self.translate * apply * 2.0 / w
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [torch.stack([cos, -sin * h / w, shift_w], 1), torch.stack([sin * w / h, cos, shift_h], 1)], 1
        )
        flip = draws[:, 4] < self.flip_prob
        if self.flip_prob > 0:  # flip of the first spatial axis (H): negate the y output row
            theta = torch.where(
                flip[:, None, None], theta * torch.tensor([[1.0], [-1.0]], device=theta.device), theta
            )
        grid = F.affine_grid(theta.to(ref.dtype), [b, 1, h, w], align_corners=False)
        out = {}
        for m, x in batch.items():
            mode = "nearest" if self.is_mask[m] else "bilinear"
            out[m] = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
        return out
