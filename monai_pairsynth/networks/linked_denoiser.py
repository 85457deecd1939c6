"""One modality's denoiser in Paired Diffusion: a diffusion UNet conditioned on the other modalities."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_pairsynth.networks.conditional_encoder import ConditionalEncoder, _encode_stacked
from monai_pairsynth.networks.cross_encoder_attention import CrossEncoderAttention
from monai_pairsynth.networks.timestep_cbam import TimestepCBAM
from monai_pairsynth.networks.timestep_lowpass_filter import TimestepLowPassFilter, _filter_stacked

__all__ = ["LinkedDenoiser", "default_cond_channels", "unet_residual_levels"]


def default_cond_channels(
    channels: Sequence[int], norm_num_groups: int, last_multiple: int = 1
) -> tuple[int, ...]:
    """Default conditional-encoder widths: half the UNet's, rounded up to a multiple of ``norm_num_groups``.

    Half width keeps the conditional pathway cheap (each denoiser runs one encoder per other modality):
    about a quarter of the convolution cost of full-width encoders.

    Args:
        channels: the UNet's channels per level.
        norm_num_groups: group-norm groups; every width is a multiple of it.
        last_multiple: the last level's width is also a multiple of this (the attention head size).

    Example:
        >>> default_cond_channels((32, 64, 64), 8, 8)
        (16, 32, 32)
        >>> default_cond_channels((8, 16), 4, 8)
        (4, 8)
    """
    last = math.lcm(norm_num_groups, last_multiple)
    widths = [-(-(c // 2) // norm_num_groups) * norm_num_groups for c in channels]
    widths[-1] = -(-max(channels[-1] // 2, 1) // last) * last
    return tuple(widths)


def unet_residual_levels(num_res_blocks: Sequence[int]) -> list[int]:
    """Resolution level of every down-block residual of a MONAI ``DiffusionModelUNet``.

    ``DiffusionModelUNet.forward`` collects, in order: the output of ``conv_in`` (level 0), then for every
    level ``i`` the output of each of its ``num_res_blocks[i]`` res blocks (level ``i``, ``channels[i]``
    channels) followed, except at the last level, by the output of its downsampler (level ``i + 1``, still
    ``channels[i]`` channels). ``down_block_additional_residuals`` must match this list one to one.

    Args:
        num_res_blocks: res blocks per level.

    Returns:
        the level of each residual; residual ``j`` has spatial size ``input_size / 2**levels[j]``.

    Example:
        >>> unet_residual_levels([1, 1, 1])
        [0, 0, 1, 1, 2, 2]
    """
    levels = [0]
    for i, n in enumerate(num_res_blocks):
        levels += [i] * n
        if i < len(num_res_blocks) - 1:
            levels.append(i + 1)
    return levels


def _unet_residual_channels(channels: Sequence[int], num_res_blocks: Sequence[int]) -> list[int]:
    out = [channels[0]]
    for i, n in enumerate(num_res_blocks):
        out += [channels[i]] * n
        if i < len(channels) - 1:
            out.append(channels[i])
    return out


class LinkedDenoiser(nn.Module):
    """A MONAI ``DiffusionModelUNet`` plus a conditional pathway fed by the other modalities' noisy images.

    Data flow for one denoiser (``K`` conditions, ``L`` levels)::

        x_m (noisy own modality) ---------------------------------------------> unet ---> prediction
                                                                                 ^  ^
        x_k (noisy other modality k = 1..K)                                      |  | zero-init 1x1 convs
          -> cond_filters[k]   (TimestepLowPassFilter, 2 parameters + MLP(t))    |  | (one per down-block
          -> cond_encoders[k]  (ConditionalEncoder: features at levels 0..L-1)   |  |  residual + mid)
          -> cond_attention    (CrossEncoderAttention across the K encoders,     |  |
                                lowest level only)                               |  |
          -> per level: concat over k -> cond_fusion_convs[l] (1x1)              |  |
                        -> cond_fusion_cbams[l] (TimestepCBAM) -> fused_l -------+--+

    The fused feature of level ``l`` feeds every UNet down-block residual at that resolution (see
    :func:`unet_residual_levels`) through its own zero-initialised 1x1 convolution
    (``cond_residual_projections``) and the lowest level also feeds the mid-block residual
    (``cond_mid_projection``). With all projections zero at initialisation the denoiser computes exactly
    what its ``unet`` alone computes, whatever the conditions; training moves the projections off zero and
    opens the pathway (the ControlNet pattern, Zhang et al. 2023). The filters and CBAMs take a timestep
    embedding from ``cond_time_embed`` (MONAI's sinusoidal ``get_timestep_embedding`` + a small MLP owned by
    this module).

    Per-modality timesteps (UniDiffuser, Bao et al. 2023): ``forward(..., condition_timesteps={k: t_k})``
    gives every condition its own timestep (``t_k = 0`` with the clean image: a given modality). Then
    filter ``k`` and (with ``condition_timesteps=True`` at construction) encoder ``k`` take the embedding of
    ``t_k``, each CBAM the mean of the conditions' shifts, and only the UNet takes the denoiser's own
    ``timesteps``. Without ``condition_timesteps`` in ``forward`` every part takes ``timesteps``, exactly
    as before. The constructor flag adds zero-initialised ``time_projections`` to the encoders (so a new
    model with equal timesteps computes what a model without them computes); models built without it
    (every checkpoint written before the option) have the same parameters as always.

    All submodules of the conditional pathway are named ``cond_*``; ``unet`` is the plain MONAI network.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of this modality's image (also the output channels).
        condition_names: names of the other modalities, in the order their encoders are fused.
        channels: UNet channels per level (MONAI ``DiffusionModelUNet`` ``channels``).
        attention_levels: UNet self-attention per level.
        num_res_blocks: UNet res blocks per level (int or one per level).
        norm_num_groups: group-norm groups everywhere (must divide every entry of ``channels`` and
            ``cond_channels``).
        num_head_channels: channels per attention head of the UNet (int or one per level); the last level's
            value is also used by the cross-encoder attention.
        cond_channels: conditional-encoder channels per level; ``None``: :func:`default_cond_channels`
            (half of ``channels``).
        cond_in_channels: channels of the conditional images; ``None`` uses ``in_channels``.
        encoder_attention: whether to apply :class:`CrossEncoderAttention` at the lowest level.
        filter_init_cutoff: initial cut-off of every low-pass filter (fraction of Nyquist).
        filter_init_strength: initial strength of every low-pass filter.
        use_flash_attention: passed to the UNet: its attention runs through PyTorch's
            ``scaled_dot_product_attention`` (same parameters and results as MONAI's default einsum path,
            about 1.3x faster per CPU training step at 64x64).
        condition_timesteps: the conditional encoders also take their condition's timestep embedding
            (zero-initialised ``time_projections``); meant for training with per-modality timesteps.

    Example:
        >>> import torch
        >>> net = LinkedDenoiser(2, 1, ["pet", "label"], channels=(8, 16), attention_levels=(False, False),
        ...                      norm_num_groups=4)
        >>> x = torch.randn(2, 1, 16, 16)
        >>> cond = {"pet": torch.randn(2, 1, 16, 16), "label": torch.randn(2, 1, 16, 16)}
        >>> net(x, torch.tensor([10, 500]), cond).shape
        torch.Size([2, 1, 16, 16])
        >>> clean_label = {"pet": torch.tensor([10, 500]), "label": torch.tensor([0, 0])}  # label given clean
        >>> net(x, torch.tensor([10, 500]), cond, condition_timesteps=clean_label).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        condition_names: Sequence[str],
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int | Sequence[int] = 1,
        norm_num_groups: int = 8,
        num_head_channels: int | Sequence[int] = 8,
        cond_channels: Sequence[int] | None = None,
        cond_in_channels: int | None = None,
        encoder_attention: bool = True,
        filter_init_cutoff: float = 0.4,
        filter_init_strength: float = 0.8,
        use_flash_attention: bool = True,
        condition_timesteps: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        condition_names = tuple(condition_names)
        if len(condition_names) < 1 or len(set(condition_names)) != len(condition_names):
            raise ValueError(f"condition_names must be one or more distinct names, got {condition_names}.")
        channels = tuple(int(c) for c in channels)
        num_levels = len(channels)
        num_res_blocks = ensure_tuple_rep(num_res_blocks, num_levels)
        if len(num_res_blocks) != num_levels or any(n < 1 for n in num_res_blocks):
            raise ValueError(
                f"num_res_blocks must be an int >= 1 or one int >= 1 per level ({num_levels}), got {num_res_blocks}."
            )
        head_channels = ensure_tuple_rep(num_head_channels, num_levels)
        if cond_channels is None:
            cond_channels = default_cond_channels(
                channels, norm_num_groups, head_channels[-1] if encoder_attention else 1
            )
        cond_channels = tuple(int(c) for c in cond_channels)
        if len(cond_channels) != num_levels:
            raise ValueError(
                f"cond_channels must have one entry per level of channels {channels}, got {cond_channels}."
            )
        if any(c % norm_num_groups for c in cond_channels):
            raise ValueError(
                f"every entry of cond_channels {cond_channels} must be divisible by norm_num_groups={norm_num_groups}."
            )
        if encoder_attention and cond_channels[-1] % head_channels[-1]:
            raise ValueError(
                f"the cross-encoder attention needs num_head_channels={head_channels[-1]} (last level) to divide "
                f"cond_channels[-1]={cond_channels[-1]}."
            )
        cond_in_channels = in_channels if cond_in_channels is None else cond_in_channels

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.cond_in_channels = cond_in_channels
        self.condition_names = condition_names
        self.channels = channels
        self.num_res_blocks = tuple(num_res_blocks)
        self.cond_channels = cond_channels
        self.condition_timesteps = bool(condition_timesteps)

        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=in_channels,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=attention_levels,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            use_flash_attention=use_flash_attention,
        )

        # timestep embedding of the conditional pathway (filters and CBAMs)
        self.cond_temb_dim = 4 * cond_channels[0]
        self.cond_time_embed = nn.Sequential(
            nn.Linear(cond_channels[0], self.cond_temb_dim),
            nn.SiLU(),
            nn.Linear(self.cond_temb_dim, self.cond_temb_dim),
        )
        self.cond_filters = nn.ModuleDict(
            {
                name: TimestepLowPassFilter(
                    self.cond_temb_dim, init_cutoff=filter_init_cutoff, init_strength=filter_init_strength
                )
                for name in condition_names
            }
        )
        self.cond_encoders = nn.ModuleDict(
            {
                name: ConditionalEncoder(
                    spatial_dims,
                    cond_in_channels,
                    cond_channels,
                    norm_num_groups=norm_num_groups,
                    temb_dim=self.cond_temb_dim if self.condition_timesteps else None,
                )
                for name in condition_names
            }
        )
        num_cond = len(condition_names)
        self.cond_attention = (
            CrossEncoderAttention(cond_channels[-1], num_cond, num_head_channels=head_channels[-1])
            if encoder_attention
            else None
        )
        self.cond_fusion_convs = nn.ModuleList(
            Convolution(spatial_dims, num_cond * c, c, kernel_size=1, conv_only=True) for c in cond_channels
        )
        self.cond_fusion_cbams = nn.ModuleList(
            TimestepCBAM(spatial_dims, c, self.cond_temb_dim) for c in cond_channels
        )

        # zero-initialised injections into the UNet's additional residual inputs
        self.residual_levels = unet_residual_levels(self.num_res_blocks)
        residual_channels = _unet_residual_channels(channels, self.num_res_blocks)
        self.cond_residual_projections = nn.ModuleList(
            self._zero_conv(cond_channels[level], c)
            for level, c in zip(self.residual_levels, residual_channels)
        )
        self.cond_mid_projection = self._zero_conv(cond_channels[-1], channels[-1])

    def _zero_conv(self, c_in: int, c_out: int) -> nn.Module:
        conv = Convolution(self.spatial_dims, c_in, c_out, kernel_size=1, conv_only=True)
        for p in conv.parameters():
            nn.init.zeros_(p)
        return conv

    def _condition_embeddings(
        self, condition_timesteps: Mapping[str, torch.Tensor], batch: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """``(K, B, E)``: the conditional pathway's embedding of every condition's own timesteps, one MLP call."""
        missing = [n for n in self.condition_names if n not in condition_timesteps]
        extra = [n for n in condition_timesteps if n not in self.condition_names]
        if missing or extra:
            raise ValueError(
                f"condition_timesteps must have exactly the keys {list(self.condition_names)}; missing {missing}, "
                f"unexpected {extra}."
            )
        rows = []
        for n in self.condition_names:
            t = torch.as_tensor(condition_timesteps[n]).reshape(-1)
            if t.shape[0] not in (1, batch):
                raise ValueError(
                    f"condition_timesteps['{n}'] must have shape ({batch},), (1,) or (), got {tuple(t.shape)}."
                )
            rows.append(t.expand(batch))
        stacked = torch.stack(rows)  # (K, B)
        t_emb = get_timestep_embedding(stacked.reshape(-1), self.cond_channels[0]).to(dtype)
        return self.cond_time_embed(t_emb).reshape(len(rows), batch, -1)

    def conditional_residuals(
        self,
        timesteps: torch.Tensor,
        conditions: Mapping[str, torch.Tensor],
        condition_timesteps: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The conditional pathway alone: residuals to add inside the UNet.

        Args:
            timesteps: ``(B,)`` timesteps (or ``(1,)``, shared by the batch).
            conditions: ``{name: (B, cond_in_channels, H, W[, D])}`` for every name in ``condition_names``.
            condition_timesteps: ``{name: (B,)}`` (or ``(1,)`` / scalar) every condition's own timestep
                (0 for a clean, given condition); ``None``: every condition is at ``timesteps``.

        Returns:
            ``(down_block_additional_residuals, mid_block_additional_residual)`` with the shapes
            ``DiffusionModelUNet.forward`` expects.
        """
        missing = [n for n in self.condition_names if n not in conditions]
        extra = [n for n in conditions if n not in self.condition_names]
        if missing or extra:
            raise ValueError(
                f"conditions must have exactly the keys {list(self.condition_names)}; missing {missing}, "
                f"unexpected {extra}."
            )
        shapes = {n: tuple(conditions[n].shape) for n in self.condition_names}
        first_shape = shapes[self.condition_names[0]]
        if (
            len(set(shapes.values())) != 1
            or len(first_shape) != self.spatial_dims + 2
            or first_shape[1] != self.cond_in_channels
        ):
            layout = "H, W" if self.spatial_dims == 2 else "H, W, D"
            raise ValueError(
                f"every condition must have one shape (B, {self.cond_in_channels}, {layout}), got {shapes}."
            )
        first = conditions[self.condition_names[0]]
        if condition_timesteps is None:  # every condition at the denoiser's timestep (joint, as always)
            t_emb = get_timestep_embedding(timesteps, self.cond_channels[0]).to(first.dtype)
            temb = self.cond_time_embed(t_emb)
            if temb.shape[0] != first.shape[0]:
                temb = temb.expand(first.shape[0], -1)
            cbam_temb = temb
        else:  # (K, B, E): condition k's filter and encoder take its own noise level, the CBAMs all of them
            temb = self._condition_embeddings(condition_timesteps, first.shape[0], first.dtype)
            cbam_temb = temb.transpose(0, 1)
        # The K conditions travel stacked along the channels, (B, K * C, ...), condition k in block k: the
        # filters share one FFT pair, the encoders run as grouped convolutions (each with its own weights),
        # and the per-level stacks are already the concatenation the fusion convolutions take.
        stacked = torch.cat([conditions[n] for n in self.condition_names], dim=1)
        filtered = _filter_stacked([self.cond_filters[n] for n in self.condition_names], stacked, temb)
        encoded = _encode_stacked([self.cond_encoders[n] for n in self.condition_names], filtered, temb)
        if self.cond_attention is not None:
            encoded[-1] = self.cond_attention.attend_stacked(encoded[-1])
        fused = [
            cbam(conv(features), cbam_temb)
            for features, conv, cbam in zip(encoded, self.cond_fusion_convs, self.cond_fusion_cbams)
        ]
        return self._project(fused)

    def _project(self, fused: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The zero-initialised 1x1 projections, those reading one level run as one convolution."""
        last = len(fused) - 1
        down: list[torch.Tensor | None] = [None] * len(self.residual_levels)
        for level, feature in enumerate(fused):
            indices = [j for j, lv in enumerate(self.residual_levels) if lv == level]
            convs = [self.cond_residual_projections[j].conv for j in indices]
            if level == last:
                convs.append(self.cond_mid_projection.conv)
            if not convs:
                continue
            weight = torch.cat([c.weight for c in convs], dim=0)
            bias = torch.cat([c.bias for c in convs], dim=0)
            conv = F.conv2d if self.spatial_dims == 2 else F.conv3d
            outputs = conv(feature, weight, bias).split([c.out_channels for c in convs], dim=1)
            for j, out in zip(indices, outputs):
                down[j] = out
            if level == last:
                mid = outputs[-1]
        return down, mid  # type: ignore[return-value]

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        conditions: Mapping[str, torch.Tensor],
        condition_timesteps: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predict this modality's noise (or whatever the UNet is trained to output).

        Args:
            x: this modality's noisy image ``(B, in_channels, H, W[, D])``; every spatial size divisible by
                ``2 ** (len(channels) - 1)``.
            timesteps: ``(B,)`` timesteps (or ``(1,)``, shared by the batch).
            conditions: the other modalities' noisy images, ``{name: (B, cond_in_channels, H, W[, D])}`` for
                every name in ``condition_names``, at ``timesteps`` unless ``condition_timesteps`` says otherwise.
            condition_timesteps: ``{name: (B,)}`` each condition's own timestep (0: clean, given); ``None``
                (default): all at ``timesteps``.

        Returns:
            the prediction ``(B, in_channels, H, W[, D])``.
        """
        for name, cond in conditions.items():
            if cond.shape[0] != x.shape[0] or cond.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"condition '{name}' has shape {tuple(cond.shape)}, incompatible with x of shape "
                    f"{tuple(x.shape)} (batch and spatial sizes must match)."
                )
        down, mid = self.conditional_residuals(timesteps, conditions, condition_timesteps)
        return self.unet(
            x, timesteps, down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid
        )
