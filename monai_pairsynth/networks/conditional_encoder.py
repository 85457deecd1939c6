"""Conditional encoder: one other modality's (filtered) noisy image -> features at every UNet level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

__all__ = ["ConditionalEncoder"]


class ConditionalEncoder(nn.Module):
    """Multi-resolution convolutional encoder for one conditional modality.

    Level ``i`` has ``channels[i]`` channels at ``1 / 2**i`` of the input resolution, the same resolution
    as level ``i`` of a MONAI ``DiffusionModelUNet`` with as many levels, so the features can be added
    (after a projection) to the UNet's down-block residuals. Level 0 is a 3x3 input convolution followed by
    ``num_res_blocks`` MONAI ``ResidualUnit`` s; every further level starts with a stride-2 ``ResidualUnit``
    (the same output size as the UNet's stride-2, padding-1 downsampling convolution) followed by
    ``num_res_blocks - 1`` more. Normalisation is group norm, activation SiLU.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the conditional image.
        channels: output channels of every level (its length is the number of levels).
        num_res_blocks: residual units per level (>= 1).
        norm_num_groups: groups of the group normalisation; must divide every entry of ``channels``.

    Example:
        >>> import torch
        >>> enc = ConditionalEncoder(spatial_dims=2, in_channels=1, channels=(8, 16), norm_num_groups=4)
        >>> [tuple(f.shape) for f in enc(torch.randn(2, 1, 16, 16))]
        [(2, 8, 16, 16), (2, 16, 8, 8)]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        num_res_blocks: int = 1,
        norm_num_groups: int = 8,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or in_channels < 1 or num_res_blocks < 1:
            raise ValueError(
                f"need at least one level, in_channels >= 1 and num_res_blocks >= 1, got channels={channels}, "
                f"in_channels={in_channels}, num_res_blocks={num_res_blocks}."
            )
        if any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"every entry of channels {channels} must be divisible by norm_num_groups={norm_num_groups}."
            )
        self.spatial_dims = spatial_dims
        self.channels = channels

        def unit(c_in: int, c_out: int, strides: int) -> ResidualUnit:
            return ResidualUnit(
                spatial_dims=spatial_dims,
                in_channels=c_in,
                out_channels=c_out,
                strides=strides,
                kernel_size=3,
                subunits=2,
                adn_ordering="NA",
                act="SWISH",
                norm=("group", {"num_groups": norm_num_groups}),
            )

        self.conv_in = Convolution(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=channels[0],
            kernel_size=3,
            padding=1,
            conv_only=True,
        )
        self.levels = nn.ModuleList()
        for i, c_out in enumerate(channels):
            c_in = channels[max(i - 1, 0)]
            blocks = [unit(c_in, c_out, 1 if i == 0 else 2)]
            blocks += [unit(c_out, c_out, 1) for _ in range(num_res_blocks - 1)]
            self.levels.append(nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``x``.

        Args:
            x: conditional image ``(B, in_channels, H, W[, D])``; every spatial size divisible by
                ``2 ** (len(channels) - 1)``.

        Returns:
            one feature map per level, level ``i`` of shape ``(B, channels[i], H / 2**i, W / 2**i[, D / 2**i])``.
        """
        features = []
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
            features.append(h)
        return features
