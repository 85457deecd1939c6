"""Reading real or generated triplets into batches for the quality filter and its feature segmenter.

Accepted containers: a batched dict ``{key: (B, 1, *spatial)}``, a map-style dataset or a list of sample dicts
``{key: (1, *spatial)}`` (e.g. ``PhantomDataset``), or a ``DataLoader`` yielding batched dicts. Only the named
keys are read; other entries (metadata, file names) are ignored. MONAI ``MetaTensor`` values are turned into
plain tensors.

Intensities come in one of two units (:class:`IntensityUnits`): ``normalized`` (each modality already mapped
to [-1, 1], as the diffusion sampler produces it, masks in {-1, 1} or {0, 1}) or ``physical`` (HU, SUV, a
{0, 1} mask), which is mapped to [-1, 1] with the modality specs. The networks always see [-1, 1].
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from enum import Enum
from typing import Any

import torch
from torch.utils.data import DataLoader

from monai_pairsynth.modalities import ModalitySpec

__all__ = ["IntensityUnits", "iter_triplet_batches", "prepare_triplet_batch"]


class IntensityUnits(str, Enum):
    """Units of the intensities handed to the filter: ``normalized`` ([-1, 1]) or ``physical`` (HU, SUV, {0, 1})."""

    NORMALIZED = "normalized"
    PHYSICAL = "physical"


def _resolve_units(units: IntensityUnits | str) -> IntensityUnits:
    try:
        return IntensityUnits(units)
    except ValueError:
        raise ValueError(
            f"units must be one of {[u.value for u in IntensityUnits]}, got {units!r}."
        ) from None


def _plain(value: Any, key: str) -> torch.Tensor:
    if hasattr(value, "as_tensor"):  # MONAI MetaTensor -> torch.Tensor without metadata
        value = value.as_tensor()
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"key {key!r} holds a {type(value).__name__}, not an array or tensor.") from None
    return value


class _StackKeys:
    """Collate function: stack the named keys of sample dicts into a batched dict of plain tensors."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, samples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        out = {}
        for key in self.keys:
            values = []
            for i, sample in enumerate(samples):
                if not isinstance(sample, Mapping):
                    raise ValueError(
                        f"expected each sample to be a dict of tensors, sample {i} is a {type(sample).__name__}."
                    )
                if key not in sample:
                    raise KeyError(
                        f"key {key!r} is missing from a sample (it has keys {sorted(map(str, sample))})."
                    )
                values.append(_plain(sample[key], key))
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                raise ValueError(
                    f"key {key!r} has samples of different shapes {sorted(shapes)}; they cannot be batched."
                )
            out[key] = torch.stack(values)
        return out


def iter_triplet_batches(
    data: Any,
    keys: Sequence[str],
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    name: str = "data",
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batched dicts ``{key: (B, C, *spatial)}`` of plain tensors holding only ``keys``.

    Args:
        data: a batched dict, a ``DataLoader`` of batched dicts, or a map-style dataset / list of sample dicts.
        keys: keys to read; a missing one raises ``KeyError`` naming it.
        batch_size: samples per batch for datasets and lists (a ``DataLoader`` keeps its own batching; a
            batched dict is split into chunks of this size).
        shuffle: shuffle a dataset or list (not a ``DataLoader`` or a dict).
        generator: generator for the shuffle.
        name: what the data is, for error messages (e.g. ``"real set"``).

    Raises:
        ValueError: when the container is empty or of an unsupported type.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if isinstance(data, Mapping):
        batch = {}
        for key in keys:
            if key not in data:
                raise KeyError(
                    f"key {key!r} is missing from the batch (it has keys {sorted(map(str, data))})."
                )
            batch[key] = _plain(data[key], key)
        sizes = {int(v.shape[0]) if v.ndim > 0 else -1 for v in batch.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise ValueError(
                "every key of a batched dict must be a (B, C, *spatial) tensor with the same B; got shapes "
                + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in batch.items())
            )
        total = sizes.pop()
        if total == 0:
            raise ValueError(f"the {name} is empty (a batch with B = 0).")
        for start in range(0, total, batch_size):
            yield {k: v[start : start + batch_size] for k, v in batch.items()}
        return
    if isinstance(data, DataLoader):
        loader = data
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise ValueError(f"the {name} is empty (0 samples).")
        loader = DataLoader(
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=_StackKeys(keys),
            num_workers=0,
        )
    else:
        raise ValueError(
            f"the {name} must be a dataset, a list of sample dicts, a DataLoader or a batched dict, "
            f"got {type(data).__name__}."
        )
    count = 0
    for batch in loader:
        if not isinstance(batch, Mapping):
            raise ValueError(
                f"the DataLoader must yield dicts of batched tensors, it yielded a {type(batch).__name__}."
            )
        selected = {}
        for key in keys:
            if key not in batch:
                raise KeyError(
                    f"key {key!r} is missing from the batch (it has keys {sorted(map(str, batch))})."
                )
            selected[key] = _plain(batch[key], key)
        count += 1
        yield selected
    if count == 0:
        raise ValueError(f"the {name} is empty (its DataLoader yielded no batches).")


def prepare_triplet_batch(
    batch: Mapping[str, torch.Tensor],
    image_keys: Sequence[str],
    label_key: str | None,
    units: IntensityUnits | str,
    specs: Mapping[str, ModalitySpec],
    spatial_shape: Sequence[int] | None = None,
    check_range: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Turn a batched dict into the network input, the binary mask and a per-sample finiteness flag.

    Args:
        batch: ``{key: (B, 1, *spatial)}``.
        image_keys: modalities stacked as input channels, in this order.
        label_key: the mask key, or ``None`` to skip it.
        units: ``normalized`` or ``physical`` (see the module docstring).
        specs: modality specs used for ``physical`` inputs.
        spatial_shape: the expected spatial shape; a mismatch raises ``ValueError`` naming the key.
        check_range: with ``normalized`` units, raise when an image lies clearly outside [-1, 1] (a hint
            that physical units were passed). Used on real data; generated data is clamped instead.

    Returns:
        ``(inputs (B, len(image_keys), *spatial) float32 in [-1, 1], mask (B, 1, *spatial) float32 in {0, 1}
        or None, finite (B,) bool)``. Non-finite values are replaced by 0 and flagged in ``finite``.
    """
    units = _resolve_units(units)
    keys = list(image_keys) + ([label_key] if label_key is not None else [])
    reference: tuple[int, ...] | None = None
    for key in keys:
        if key not in batch:
            raise KeyError(f"key {key!r} is missing from the batch (it has keys {sorted(map(str, batch))}).")
        value = batch[key]
        if value.ndim < 3 or value.shape[1] != 1:
            raise ValueError(
                f"key {key!r} must be (B, 1, *spatial) with one channel, got shape {tuple(value.shape)}."
            )
        if reference is None:
            reference = tuple(value.shape)
        elif tuple(value.shape) != reference:
            raise ValueError(
                f"key {key!r} has shape {tuple(value.shape)} but key {keys[0]!r} has {reference}; "
                "all modalities of a triplet must share batch and spatial shape."
            )
    assert reference is not None
    if spatial_shape is not None and tuple(reference[2:]) != tuple(spatial_shape):
        raise ValueError(
            f"spatial size {tuple(reference[2:])} of keys {keys} differs from the size the filter was fitted on, "
            f"{tuple(spatial_shape)}; resample or crop the triplets to {tuple(spatial_shape)}."
        )
    finite = torch.ones(reference[0], dtype=torch.bool, device=batch[keys[0]].device)
    channels = []
    for key in image_keys:
        x = batch[key].float()
        finite &= torch.isfinite(x).flatten(1).all(1)
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if units == IntensityUnits.PHYSICAL:
            if key not in specs:
                raise ValueError(
                    f"no modality spec for key {key!r} to convert physical units; pass specs={{...}}."
                )
            x = specs[key].normalize(x)
        else:
            if check_range:
                lo, hi = float(x.min()), float(x.max())
                if lo < -1.5 or hi > 1.5:
                    raise ValueError(
                        f"key {key!r} has values in [{lo:.4g}, {hi:.4g}], far outside [-1, 1], but units='normalized'; "
                        "pass units='physical' (HU/SUV) or normalise the data first."
                    )
            x = x.clamp(-1.0, 1.0)
        channels.append(x)
    inputs = torch.cat(channels, dim=1)
    mask = None
    if label_key is not None:
        m = batch[label_key].float()
        finite &= torch.isfinite(m).flatten(1).all(1)
        m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
        # physical masks are {0, 1} (threshold 0.5); normalised masks are {-1, 1} (threshold 0)
        mask = (m > (0.5 if units == IntensityUnits.PHYSICAL else 0.0)).float()
    return inputs, mask, finite
