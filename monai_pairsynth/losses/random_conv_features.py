"""A fixed, seeded, frozen multi-scale convolutional feature network for perceptual losses.

No weights are downloaded: by default the convolution kernels are drawn from a seeded generator and never
trained. Random (untrained) convolutional features are a known working representation for perceptual and
texture comparisons (He, Wang & Hopcroft, "A Powerful Generative Model Using Random Weights for the Deep
Image Representation", NeurIPS 2016; the LPIPS study, Zhang et al., CVPR 2018, evaluates random-initialised
networks as a baseline). A pretrained network of the same architecture (for instance one this package
trains on the user's own real data) is loaded from a local state-dict file with ``weights_path``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from monai_pairsynth.utils import state_dict_mismatch

__all__ = ["RandomConvFeatures", "load_feature_weights"]


def load_feature_weights(network: nn.Module, weights_path: str | os.PathLike) -> nn.Module:
    """Load a local state dict into ``network`` (in place), with clear errors.

    The file may hold a plain state dict or a dict with a ``"state_dict"`` entry. It is read with
    ``torch.load(weights_only=True)``.

    Args:
        network: the feature network to fill.
        weights_path: path of a ``.pt``/``.pth`` file written by ``torch.save(network.state_dict(), path)``.

    Returns:
        ``network``.

    Raises:
        FileNotFoundError: if ``weights_path`` does not exist (the path is named).
        ValueError: if the file is not a state dict, or its keys or tensor shapes do not match ``network``
            (missing keys, unexpected keys and shape mismatches are listed).
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network weights file not found: {str(path)!r}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable / not a torch file
        raise ValueError(f"could not read feature network weights from {str(path)!r}: {e}") from e
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{str(path)!r} does not hold a state dict (a mapping of parameter names to tensors)."
        )
    problem = state_dict_mismatch(network.state_dict(), state, "file", "network")
    if problem:
        raise ValueError(
            f"feature network weights in {str(path)!r} do not match {type(network).__name__}: {problem}."
        )
    network.load_state_dict(state)
    return network


class RandomConvFeatures(nn.Module):
    """Frozen multi-scale convolutional features: ``(B, C_in, *spatial)`` -> list of feature maps.

    ``len(channels)`` stages; stage ``i`` is ``conv(stride 1 for i = 0, else 2) -> LeakyReLU -> conv -> LeakyReLU``,
    so stage ``i`` works at ``1 / 2**i`` of the input resolution. Weights are drawn once from
    ``torch.Generator().manual_seed(seed)`` (Kaiming-normal, zero bias) and every parameter is frozen
    (``requires_grad=False``), so gradients flow *through* the network to its input but never *into* it.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input images.
        channels: output channels of each stage.
        kernel_size: odd convolution kernel size.
        seed: seed of the random weights (same seed -> same network).
        weights_path: optional local state-dict file of a pretrained network with this architecture; loaded
            with :func:`load_feature_weights` (clear error if missing or mismatched).

    Example:
        >>> import torch
        >>> net = RandomConvFeatures(spatial_dims=2, channels=(4, 8), seed=0)
        >>> feats = net(torch.zeros(2, 1, 16, 16))
        >>> [tuple(f.shape) for f in feats]
        [(2, 4, 16, 16), (2, 8, 8, 8)]
        >>> any(p.requires_grad for p in net.parameters())
        False
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        seed: int = 0,
        weights_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be one of [2, 3], got {spatial_dims!r}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels!r}.")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = channels
        conv_type = Conv[Conv.CONV, spatial_dims]
        pad = kernel_size // 2
        stages = []
        c_in = in_channels
        for i, c in enumerate(channels):
            stages.append(
                nn.Sequential(
                    conv_type(c_in, c, kernel_size, stride=1 if i == 0 else 2, padding=pad),
                    nn.LeakyReLU(0.2),
                    conv_type(c, c, kernel_size, stride=1, padding=pad),
                    nn.LeakyReLU(0.2),
                )
            )
            c_in = c
        self.stages = nn.ModuleList(stages)
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, conv_type):
                    fan_in = m.weight[0].numel()
                    # Kaiming-normal for LeakyReLU(0.2): std = gain / sqrt(fan_in)
                    std = (2.0 / (1.0 + 0.2**2)) ** 0.5 / fan_in**0.5
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                    m.bias.zero_()
        if weights_path is not None:
            load_feature_weights(self, weights_path)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x ``(B, in_channels, *spatial)``. Returns one feature map per stage."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.in_channels}, *spatial) with {self.spatial_dims} spatial "
                f"dims, got shape {tuple(x.shape)}."
            )
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
