"""The default feature network of the quality filter: a small MONAI ``UNet`` segmenter trained on real data.

The filter needs a network that has seen the user's real PET/CT and knows where tumours are. This module builds
a MONAI :class:`~monai.networks.nets.UNet` taking the image modalities (CT and PET) as input channels and
predicting the tumour mask (two output classes), with dropout in every block so that Monte-Carlo dropout has
something to sample; trains it for a few epochs with MONAI's ``DiceCELoss``; names its encoder layers (the
features the centroid distance is measured on); and saves / loads it with the configuration that built it.
Nothing is downloaded: a pretrained network is only ever loaded from a local path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, UNet
from torch import nn

from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS, ModalitySpec, resolve_specs
from monai_pairsynth.utils import atomic_save_torch

from .triplet_batches import IntensityUnits, iter_triplet_batches, prepare_triplet_batch

__all__ = [
    "build_feature_segmenter",
    "load_feature_segmenter",
    "save_feature_segmenter",
    "train_feature_segmenter",
    "unet_encoder_layers",
]

_CONFIG_ATTR = "feature_segmenter_config"


def build_feature_segmenter(
    spatial_dims: int = 2,
    in_channels: int = 2,
    out_channels: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] | None = None,
    num_res_units: int = 1,
    dropout: float = 0.2,
    norm: str = "instance",
) -> UNet:
    """A MONAI ``UNet`` with dropout in every block; its build arguments are kept for :func:`save_feature_segmenter`.

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of image modalities (2 for CT + PET).
        out_channels: classes of the prediction (2: background and tumour, softmax).
        channels: feature widths per level, e.g. ``(16, 32, 64, 128)``; tiny ``(4, 8, 16)`` for tests.
        strides: down-sampling per level (default all 2, ``len(channels) - 1`` entries).
        num_res_units: residual units per block.
        dropout: dropout probability of every block (> 0 for Monte-Carlo dropout).
        norm: MONAI norm name (``"instance"`` or ``"batch"``).

    Example:
        >>> net = build_feature_segmenter(2, channels=(4, 8), dropout=0.1)
        >>> unet_encoder_layers(net)
        ['model.0', 'model.1.submodule']
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    channels = tuple(int(c) for c in channels)
    if len(channels) < 2:
        raise ValueError(f"channels needs at least two levels, got {channels}.")
    strides = tuple(int(s) for s in (strides if strides is not None else (2,) * (len(channels) - 1)))
    if len(strides) != len(channels) - 1:
        raise ValueError(f"strides needs len(channels) - 1 = {len(channels) - 1} entries, got {strides}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    if out_channels < 1 or in_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}.")
    net = UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=strides,
        num_res_units=num_res_units,
        dropout=float(dropout),
        norm=norm,
    )
    setattr(
        net,
        _CONFIG_ATTR,
        {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "channels": list(channels),
            "strides": list(strides),
            "num_res_units": num_res_units,
            "dropout": float(dropout),
            "norm": norm,
        },
    )
    return net


def unet_encoder_layers(network: nn.Module) -> list[str]:
    """Names of the encoder (down-path and bottom) layers of a MONAI ``UNet`` or ``BasicUNet``.

    For ``UNet`` these are the down blocks of the nested ``Sequential(down, SkipConnection(...), up)`` layout
    (``model.0``, ``model.1.submodule.0``, ...) and the bottom block; for ``BasicUNet`` ``conv_0`` and
    ``down_1`` ... ``down_4``.

    Raises:
        ValueError: for any other network; pass ``layers=[...]`` to the filter explicitly then.
    """
    if isinstance(network, BasicUNet):
        return ["conv_0", "down_1", "down_2", "down_3", "down_4"]
    if isinstance(network, UNet):
        names: list[str] = []
        prefix = "model"
        module: nn.Module = network.model
        while True:
            if (
                isinstance(module, nn.Sequential)
                and len(module) == 3
                and isinstance(module[1], SkipConnection)
            ):
                names.append(f"{prefix}.0")
                prefix = f"{prefix}.1.submodule"
                module = module[1].submodule
            else:
                names.append(prefix)  # the bottom block
                return names
    raise ValueError(
        f"cannot name encoder layers of a {type(network).__name__} automatically (only MONAI UNet and BasicUNet); "
        "pass layers=[...] with names from network.named_modules()."
    )


def train_feature_segmenter(
    data: Any,
    spatial_dims: int = 2,
    image_keys: Sequence[str] = ("ct", "pet"),
    label_key: str = "label",
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] | None = None,
    num_res_units: int = 1,
    dropout: float = 0.2,
    epochs: int = 10,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    device: str | torch.device | None = None,
    seed: int = 0,
    units: IntensityUnits | str = IntensityUnits.NORMALIZED,
    specs: Mapping[str, ModalitySpec] | None = None,
    network: nn.Module | None = None,
    verbose: bool = False,
) -> nn.Module:
    """Train a tumour segmenter on real triplets; it is the filter's feature network and certainty oracle.

    A plain seeded torch loop: Adam, MONAI ``DiceCELoss`` (softmax, one-hot target), the image modalities
    stacked as channels and mapped to [-1, 1], the binary mask as target. Deterministic for a given ``seed``
    on CPU.

    Args:
        data: real triplets: a dataset or list of sample dicts ``{key: (1, *spatial)}`` (shuffled each epoch),
            a ``DataLoader`` of batched dicts, or one batched dict.
        spatial_dims: 2 or 3.
        image_keys: input modalities, in channel order (the filter must use the same order).
        label_key: the tumour mask key.
        channels, strides, num_res_units, dropout: the ``UNet`` (see :func:`build_feature_segmenter`).
        epochs: passes over ``data``.
        batch_size: for datasets and lists.
        learning_rate: Adam learning rate.
        device: where to train (default: CUDA if available, else CPU). The network stays there.
        seed: seeds the initial weights and the shuffling.
        units: ``normalized`` ([-1, 1], e.g. after ``NormalizeModalitiesd``; the default, as in the filter) or
            ``physical`` (HU/SUV/{0,1}, e.g. raw ``PhantomDataset`` output).
        specs: modality specs for ``physical`` units (default ``DEFAULT_MODALITY_SPECS``).
        network: train this network instead of building one (must map ``len(image_keys)`` channels to
            2-class logits of the input's spatial size).
        verbose: print the loss per epoch.

    Returns:
        The trained network, in ``eval`` mode, on ``device``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    image_keys = list(image_keys)
    if not image_keys:
        raise ValueError("image_keys must name at least one modality.")
    resolved_specs = resolve_specs(specs) if specs is not None else dict(DEFAULT_MODALITY_SPECS)
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if network is None:
            network = build_feature_segmenter(
                spatial_dims=spatial_dims,
                in_channels=len(image_keys),
                out_channels=2,
                channels=channels,
                strides=strides,
                num_res_units=num_res_units,
                dropout=dropout,
            )
    network = network.to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    shuffle_generator = torch.Generator().manual_seed(seed)
    keys = [*image_keys, label_key]
    network.train()
    # dropout during training draws from the global RNG; fork it so training is seeded and leaves no trace
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            start, total, count = time.perf_counter(), 0.0, 0
            for batch in iter_triplet_batches(
                data, keys, batch_size, shuffle=True, generator=shuffle_generator
            ):
                batch = {k: v.to(device) for k, v in batch.items()}
                inputs, mask, _ = prepare_triplet_batch(
                    batch, image_keys, label_key, units, resolved_specs, check_range=True
                )
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(network(inputs), mask)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * inputs.shape[0]
                count += inputs.shape[0]
            if verbose:
                print(
                    f"feature segmenter epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.4f} "
                    f"({time.perf_counter() - start:.2f} s)"
                )
    network.eval()
    return network


def save_feature_segmenter(network: nn.Module, path: str | os.PathLike) -> Path:
    """Atomically write the weights and build configuration of a network from :func:`build_feature_segmenter`.

    Raises:
        ValueError: when the network was not built by :func:`build_feature_segmenter` (save its
            ``state_dict`` yourself then and rebuild it before loading).
    """
    config = getattr(network, _CONFIG_ATTR, None)
    if config is None:
        raise ValueError(
            f"this {type(network).__name__} was not built by build_feature_segmenter, so its configuration is "
            "unknown; save network.state_dict() yourself."
        )
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    return atomic_save_torch({"config": dict(config), "state_dict": state}, path)


def load_feature_segmenter(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> UNet:
    """Rebuild a segmenter written by :func:`save_feature_segmenter` from a local file (in ``eval`` mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature segmenter file {str(path)!r} does not exist.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupted / foreign file
        raise ValueError(f"cannot read feature segmenter file {str(path)!r}: {err}") from err
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise ValueError(
            f"file {str(path)!r} is not a feature segmenter checkpoint (needs 'config' and 'state_dict')."
        )
    network = build_feature_segmenter(**payload["config"])
    network.load_state_dict(payload["state_dict"])
    return network.to(map_location).eval()
