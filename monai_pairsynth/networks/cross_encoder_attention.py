"""Attention between the conditional encoders of one linked denoiser."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import SABlock
from torch import nn

__all__ = ["CrossEncoderAttention"]


class CrossEncoderAttention(nn.Module):
    """Joint multi-head attention over the tokens of several conditional encoders.

    The feature maps of the ``K`` encoders (same shape ``(B, C, *spatial)``) are flattened to tokens,
    tagged with a learned per-encoder embedding, concatenated to one sequence of ``K * N`` tokens and passed
    through a pre-norm MONAI ``SABlock`` with a residual connection. Every token therefore attends to the
    tokens of every encoder, the others' included, which is how information about one conditional modality
    reaches the features of another (with ``K = 1`` this reduces to ordinary self-attention). It is meant
    for the lowest resolution level, where ``N`` is small.

    Args:
        channels: feature channels ``C`` (the token size).
        num_encoders: number ``K`` of encoders whose features are attended jointly.
        num_head_channels: channels per attention head; must divide ``channels``.

    Example:
        >>> import torch
        >>> attn = CrossEncoderAttention(channels=16, num_encoders=2, num_head_channels=8)
        >>> out = attn([torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)])
        >>> [tuple(o.shape) for o in out]
        [(2, 16, 4, 4), (2, 16, 4, 4)]
    """

    def __init__(self, channels: int, num_encoders: int, num_head_channels: int = 8) -> None:
        super().__init__()
        if channels < 1 or num_encoders < 1 or num_head_channels < 1:
            raise ValueError(
                f"channels, num_encoders and num_head_channels must be >= 1, got {channels}, {num_encoders}, "
                f"{num_head_channels}."
            )
        if channels % num_head_channels:
            raise ValueError(f"num_head_channels={num_head_channels} must divide channels={channels}.")
        self.channels = channels
        self.num_encoders = num_encoders
        self.encoder_embedding = nn.Parameter(torch.zeros(num_encoders, channels))
        nn.init.normal_(self.encoder_embedding, std=0.02)
        self.norm = nn.LayerNorm(channels)
        self.attn = SABlock(
            hidden_size=channels,
            num_heads=channels // num_head_channels,
            qkv_bias=True,
            use_flash_attention=True,
        )

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
        shape = features[0].shape
        if shape[1] != self.channels:
            raise ValueError(f"features must have {self.channels} channels, got shape {tuple(shape)}.")
        # (K, B, C, *spatial) -> (B, K * N, C): tokens of encoder k occupy [k * N, (k + 1) * N)
        stacked = torch.stack(list(features), dim=1).flatten(3)  # (B, K, C, N)
        tokens = stacked.transpose(2, 3)  # (B, K, N, C)
        tagged = tokens + self.encoder_embedding.to(tokens.dtype)[None, :, None, :]
        # the encoder embedding only tells the attention which encoder a token came from
        tokens = tokens.flatten(1, 2) + self.attn(self.norm(tagged.flatten(1, 2)))  # (B, K * N, C)
        batch, channels, *spatial = shape
        tokens = tokens.reshape(batch, self.num_encoders, -1, channels).transpose(2, 3)
        out = tokens.reshape(batch, self.num_encoders, channels, *spatial)
        return list(out.unbind(dim=1))
