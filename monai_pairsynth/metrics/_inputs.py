"""Shared input handling of the metrics: gathering sets of samples, checking feature matrices, spacing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from monai_pairsynth.quality import iter_triplet_batches

__all__ = ["check_feature_matrix", "check_feature_pair", "gather_keys", "spacing_of"]


def gather_keys(
    data: Any, keys: Sequence[str], name: str = "data", batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Read ``keys`` of every sample of ``data`` into one batched dict ``{key: (N, C, *spatial)}`` on the CPU.

    Args:
        data: a batched dict, a ``DataLoader`` of batched dicts, or a map-style dataset / list of sample dicts
            (anything :func:`monai_pairsynth.quality.iter_triplet_batches` reads).
        keys: the keys to read; a missing one raises ``KeyError`` naming it.
        name: what the data is, for error messages (``"real set"``).
        batch_size: samples read at a time.

    Raises:
        ValueError: an empty set, an unsupported container, or samples of different shapes.
        KeyError: a sample without one of ``keys``.
    """
    keys = [str(k) for k in keys]
    if not keys:
        raise ValueError(f"no keys to read from the {name}.")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for batch in iter_triplet_batches(data, keys, batch_size, name=name):
        for k in keys:
            parts[k].append(batch[k].detach().cpu())
    out = {}
    for k, chunks in parts.items():
        shapes = {tuple(c.shape[1:]) for c in chunks}
        if len(shapes) != 1:
            raise ValueError(f"key {k!r} of the {name} has samples of different shapes {sorted(shapes)}.")
        out[k] = torch.cat(chunks)
    return out


def _pixdim(value: Any) -> tuple[float, ...] | None:
    pixdim = getattr(value, "pixdim", None)
    if pixdim is None:
        return None
    if isinstance(pixdim, (list, tuple)) and pixdim and hasattr(pixdim[0], "tolist"):
        pixdim = pixdim[0]  # a batched MetaTensor gives one pixdim per sample
    values = pixdim.tolist() if hasattr(pixdim, "tolist") else list(pixdim)
    if values and isinstance(values[0], list):
        values = values[0]
    return tuple(float(v) for v in values)


def spacing_of(data: Any, key: str) -> tuple[float, ...] | None:
    """The voxel spacing (mm) of ``key`` in the first sample of ``data`` when it is a MONAI ``MetaTensor``.

    Returns ``None`` when the spacing is not recorded (plain tensors, a ``DataLoader``).
    """
    try:
        if isinstance(data, Mapping):
            return _pixdim(data.get(key))
        if isinstance(data, DataLoader):
            return None
        if hasattr(data, "__getitem__") and hasattr(data, "__len__") and len(data) > 0:
            first = data[0]
            if isinstance(first, Mapping):
                return _pixdim(first.get(key))
    except (TypeError, IndexError, KeyError, AttributeError):
        return None
    return None


def check_feature_matrix(features: Any, name: str, min_samples: int = 1) -> torch.Tensor:
    """Return ``features`` as a finite float64 ``(N, F)`` tensor on the CPU, or raise ``ValueError`` naming it."""
    if hasattr(features, "as_tensor"):
        features = features.as_tensor()
    try:
        x = torch.as_tensor(features)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"{name} must be an (N, F) array or tensor, got {type(features).__name__}."
        ) from None
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (N, F) matrix of feature vectors, got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 feature vectors).")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has 0 features per sample (shape {tuple(x.shape)}).")
    if x.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} feature vectors, got {x.shape[0]}.")
    x = x.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} has non-finite values in rows {bad[:10]}{' ...' if len(bad) > 10 else ''}.")
    return x


def check_feature_pair(
    real: Any,
    synthetic: Any,
    min_samples: int = 1,
    names: tuple[str, str] = ("real_features", "synthetic_features"),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check both feature matrices and that they have the same number of features."""
    x = check_feature_matrix(real, names[0], min_samples)
    y = check_feature_matrix(synthetic, names[1], min_samples)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{names[0]} has {x.shape[1]} features per sample but {names[1]} has {y.shape[1]}; both must come "
            "from the same feature network and layers."
        )
    return x, y
