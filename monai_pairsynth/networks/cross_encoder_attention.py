"""Attention between the conditional encoders of one linked denoiser."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import SABlock
from torch import nn

__all__ = ["CrossEncoderAttention"]


class CrossEncoderAttention(nn.Module):
    """Joint multi-head attention over the tokens of several conditional encoders.

    The feature maps of the ``K`` encoders (same shape ``(B, C, *spatial)``) are flattened to tokens,
    tagged with a learned per-encoder embedding, concatenated to one sequence and passed through a
    pre-norm MONAI ``SABlock`` (PyTorch scaled-dot-product attention); the result is added back to every
    encoder's features (residual). Every token attends to the tokens of every encoder, the others'
    included, which is how information about one conditional modality reaches the features of another
    (with ``K = 1`` this reduces to ordinary self-attention).

    To bound the cost at any input size, a feature map with more than ``max_tokens`` positions is first
    average-pooled (by the smallest power of two per axis that brings it to at most ``max_tokens``
    positions); the attention update is computed on the pooled tokens and upsampled back (nearest) before
    the residual addition. With the defaults a 64x64 input (16x16 at the lowest of three levels) attends
    over 8x8 tokens per encoder.

    Args:
        channels: feature channels ``C`` (the token size).
        num_encoders: number ``K`` of encoders whose features are attended jointly.
        num_head_channels: channels per attention head; must divide ``channels``.
        max_tokens: most positions per encoder that attention runs on (``None``: never pool).

    Example:
        >>> import torch
        >>> attn = CrossEncoderAttention(channels=16, num_encoders=2, num_head_channels=8)
        >>> out = attn([torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)])
        >>> [tuple(o.shape) for o in out]
        [(2, 16, 4, 4), (2, 16, 4, 4)]
    """

    def __init__(
        self, channels: int, num_encoders: int, num_head_channels: int = 8, max_tokens: int | None = 64
    ) -> None:
        super().__init__()
        if channels < 1 or num_encoders < 1 or num_head_channels < 1:
            raise ValueError(
                f"channels, num_encoders and num_head_channels must be >= 1, got {channels}, {num_encoders}, "
                f"{num_head_channels}."
            )
        if channels % num_head_channels:
            raise ValueError(f"num_head_channels={num_head_channels} must divide channels={channels}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}.")
        self.channels = channels
        self.num_encoders = num_encoders
        self.max_tokens = max_tokens
        self.encoder_embedding = nn.Parameter(torch.zeros(num_encoders, channels))
        nn.init.normal_(self.encoder_embedding, std=0.02)
        self.norm = nn.LayerNorm(channels)
        self.attn = SABlock(
            hidden_size=channels,
            num_heads=channels // num_head_channels,
            qkv_bias=True,
            use_flash_attention=True,
        )

    def pooled_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial size the attention runs at for features of spatial size ``spatial``.

        Example:
            >>> CrossEncoderAttention(16, 2, max_tokens=64).pooled_size((16, 16))
            (8, 8)
            >>> CrossEncoderAttention(16, 2, max_tokens=64).pooled_size((4, 4, 4))
            (4, 4, 4)
        """
        size = tuple(int(s) for s in spatial)
        factor = 1
        while self.max_tokens is not None and math.prod(size) > self.max_tokens and max(size) > 1:
            factor *= 2
            size = tuple(max(-(-s // factor), 1) for s in spatial)
        return size

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Attend jointly over the encoders' tokens.

        Args:
            features: ``K`` feature maps, each ``(B, C, H, W[, D])``, all of one shape.

        Returns:
            ``K`` updated feature maps of the same shapes.
        """
        if len(features) != self.num_encoders:
            raise ValueError(f"expected features from {self.num_encoders} encoders, got {len(features)}.")
        shapes = {tuple(f.shape) for f in features}
        if len(shapes) != 1:
            raise ValueError(f"all encoder features must have one shape, got {sorted(shapes)}.")
        if features[0].shape[1] != self.channels:
            raise ValueError(
                f"features must have {self.channels} channels, got shape {tuple(features[0].shape)}."
            )
        stacked = features[0] if self.num_encoders == 1 else torch.cat(list(features), dim=1)
        return list(self.attend_stacked(stacked).chunk(self.num_encoders, dim=1))

    def attend_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on the encoders' features stacked along the channels (no split, no concatenation).

        Args:
            stacked: ``(B, K * C, H, W[, D])``, encoder ``k``'s features in channels ``[k * C, (k + 1) * C)``
                (the layout of ``torch.cat(features, dim=1)``).

        Returns:
            the updated features in the same layout.
        """
        if stacked.ndim < 3 or stacked.shape[1] != self.num_encoders * self.channels:
            raise ValueError(
                f"stacked features must have shape (B, {self.num_encoders} * {self.channels}, *spatial), got "
                f"{tuple(stacked.shape)}."
            )
        batch, _, *spatial = stacked.shape
        channels = self.channels
        pooled_size = self.pooled_size(spatial)
        pooled = stacked
        if pooled_size != tuple(spatial):
            pool = (F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[len(spatial) - 2]
            pooled = pool(stacked, pooled_size)
        # (B, K * C, *pooled) -> (B, K, N, C): tokens of encoder k occupy [k * N, (k + 1) * N)
        tokens = pooled.reshape(batch, self.num_encoders, channels, -1).transpose(2, 3)
        # the encoder embedding only tells the attention which encoder a token came from
        tagged = tokens + self.encoder_embedding.to(tokens.dtype)[None, :, None, :]
        update = self.attn(self.norm(tagged.flatten(1, 2)))  # (B, K * N, C)
        update = update.reshape(batch, self.num_encoders, -1, channels).transpose(2, 3)  # (B, K, C, N)
        update = update.reshape(batch, self.num_encoders * channels, *pooled_size)
        if pooled_size != tuple(spatial):
            update = F.interpolate(update, size=tuple(spatial), mode="nearest")
        return stacked + update
