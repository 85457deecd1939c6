"""Timestep-aware convolutional block attention module (CBAM).

CBAM (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018) applies channel attention then
spatial attention. Paired Diffusion makes the channel attention timestep-aware: the pooled channel
descriptors are shifted by a projection of the timestep embedding before the shared MLP, so the network
can weight conditional channels differently at different noise levels. When the fused features come
from conditions at different noise levels (per-modality timesteps), ``forward`` takes one embedding per
condition and averages their shifts (with equal timesteps this is the single-embedding shift).

Symbols (paper -> code):
    F_avg, F_max (channel descriptors)  -> ``avg_desc``, ``max_desc``  ``(B, C)``
    timestep shift                      -> ``self.temb_proj(temb)``    ``(B, C)``
    M_c = sigmoid(MLP(F_avg + e_t) + MLP(F_max + e_t))
    M_s = sigmoid(conv([mean_c F', max_c F']))
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["TimestepCBAM"]


class TimestepCBAM(nn.Module):
    """Channel attention with a timestep-shifted descriptor, followed by spatial attention; 2D or 3D.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        channels: number of feature channels ``C``.
        temb_dim: size ``E`` of the timestep embedding.
        reduction: channel reduction ratio of the shared MLP (hidden width ``max(C // reduction, 1)``).
        spatial_kernel_size: odd kernel size of the spatial attention convolution.

    Example:
        >>> import torch
        >>> cbam = TimestepCBAM(spatial_dims=2, channels=8, temb_dim=16)
        >>> cbam(torch.randn(2, 8, 16, 16), torch.randn(2, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        temb_dim: int,
        reduction: int = 4,
        spatial_kernel_size: int = 7,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if channels < 1 or temb_dim < 1 or reduction < 1:
            raise ValueError(
                f"channels, temb_dim and reduction must be >= 1, got {channels}, {temb_dim}, {reduction}."
            )
        if spatial_kernel_size < 1 or spatial_kernel_size % 2 == 0:
            raise ValueError(
                f"spatial_kernel_size must be a positive odd integer, got {spatial_kernel_size}."
            )
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.temb_dim = temb_dim
        hidden = max(channels // reduction, 1)
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, channels))
        self.channel_mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels))
        self.spatial_conv = Convolution(
            spatial_dims=spatial_dims,
            in_channels=2,
            out_channels=1,
            kernel_size=spatial_kernel_size,
            padding=spatial_kernel_size // 2,
            conv_only=True,
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Apply channel then spatial attention.

        Args:
            x: features ``(B, C, H, W[, D])``.
            temb: timestep embedding ``(B, E)``, or ``(B, K, E)``: one per condition fused into ``x`` (the
                conditions' own timesteps), whose channel shifts are averaged.

        Returns:
            the attended features, same shape as ``x``.
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"x must have shape (B, {self.channels}, <{self.spatial_dims} spatial dims>), got {tuple(x.shape)}."
            )
        spatial = tuple(range(2, x.ndim))
        shift = self.temb_proj(temb)
        if shift.ndim == 3:  # one embedding per fused condition: the mean of their shifts
            shift = shift.mean(dim=1)
        shift = shift.to(x.dtype).expand(x.shape[0], -1)
        # F_avg + e_t and F_max + e_t through the shared MLP in one call: rows [0, B) and [B, 2B)
        desc = torch.cat([x.mean(dim=spatial), x.amax(dim=spatial)], dim=0) + shift.repeat(2, 1)
        avg_out, max_out = self.channel_mlp(desc).chunk(2, dim=0)
        channel_att = torch.sigmoid(avg_out + max_out)
        x = x * channel_att.view(*channel_att.shape, *(1,) * self.spatial_dims)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        spatial_att = torch.sigmoid(self.spatial_conv(pooled))
        # x is this call's own temporary here: without autograd, scale it in place (one allocation less)
        return x * spatial_att if torch.is_grad_enabled() else x.mul_(spatial_att)
