"""Conditional encoder: one other modality's (filtered) noisy image -> features at every UNet level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

__all__ = ["ConditionalEncoder"]

_CONV = {2: F.conv2d, 3: F.conv3d}


def _joined(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The per-encoder parameters one after the other along dim 0: the weights of a grouped operation."""
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors), dim=0)


def _grouped_conv(h: torch.Tensor, convs: Sequence[nn.Module], spatial_dims: int) -> torch.Tensor:
    """``convs[k]`` applied to channel group ``k`` of ``h``, as one grouped convolution."""
    first = convs[0]
    bias = None if first.bias is None else _joined([c.bias for c in convs])
    return _CONV[spatial_dims](
        h,
        _joined([c.weight for c in convs]),
        bias,
        stride=first.stride,
        padding=first.padding,
        dilation=first.dilation,
        groups=len(convs) * first.groups,
    )


def _grouped_norm_act(h: torch.Tensor, norms: Sequence[nn.GroupNorm]) -> torch.Tensor:
    """``SiLU(norms[k](group k of h))`` for every ``k``, as one group norm (the groups stay per encoder)."""
    first = norms[0]
    normed = F.group_norm(
        h,
        first.num_groups * len(norms),
        _joined([n.weight for n in norms]),
        _joined([n.bias for n in norms]),
        first.eps,
    )
    # the normalised tensor is a fresh temporary: overwrite it unless autograd needs it for SiLU's backward
    return F.silu(normed, inplace=not torch.is_grad_enabled())


def _time_shift(
    encoders: Sequence[ConditionalEncoder], level: int, act: torch.Tensor, ndim: int
) -> torch.Tensor:
    """``(B, K * channels[level], 1, ...)``: encoder ``k``'s projection of its own activated timestep embedding
    ``act[k]`` (``act`` is ``(K, B, E)``), stacked along the channels like the features."""
    shifts = [e.time_projections[level](act[k]) for k, e in enumerate(encoders)]  # type: ignore[index]
    shift = shifts[0] if len(shifts) == 1 else torch.cat(shifts, dim=1)
    return shift.reshape(*shift.shape, *(1,) * (ndim - 2))


def _encode_stacked(
    encoders: Sequence[ConditionalEncoder], x: torch.Tensor, temb: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Run ``K`` encoders of one architecture on channel-stacked inputs.

    Args:
        encoders: ``K`` encoders with the same architecture (checked by the caller).
        x: ``(B, K * in_channels, *spatial)``, encoder ``k``'s input in channels
            ``[k * in_channels, (k + 1) * in_channels)``.
        temb: the timestep embeddings of the encoders with ``temb_dim`` (ignored by the others): ``(B, E)``
            shared by all encoders, or ``(K, B, E)``, encoder ``k``'s own in ``temb[k]``.

    Returns:
        one tensor per level, ``(B, K * channels[l], *spatial_l)``, encoder ``k``'s features in channel
        block ``k`` (the layout of ``torch.cat(features_of_every_encoder, dim=1)``).
    """
    first = encoders[0]
    dims = first.spatial_dims
    act = None
    if first.temb_dim is not None:
        if temb is None:
            raise ValueError(
                "these conditional encoders take a timestep embedding (temb_dim is set); got none."
            )
        temb = temb.unsqueeze(0).expand(len(encoders), *temb.shape) if temb.ndim == 2 else temb
        if temb.ndim != 3 or temb.shape[0] != len(encoders) or temb.shape[2] != first.temb_dim:
            raise ValueError(
                f"temb must have shape (B, {first.temb_dim}) or ({len(encoders)}, B, {first.temb_dim}), "
                f"got {tuple(temb.shape)}."
            )
        act = F.silu(temb.to(x.dtype))
    h = _grouped_conv(x, [e.conv_in.conv for e in encoders], dims)
    features = []
    for level in range(len(first.levels)):
        for index in range(len(first.levels[level])):
            units: list[ResidualUnit] = [e.levels[level][index] for e in encoders]
            # MONAI ResidualUnit: conv -> group norm -> SWISH (= SiLU) per subunit, plus the residual branch
            y = h
            for name, _ in units[0].conv.named_children():
                subunits = [getattr(u.conv, name) for u in units]
                y = _grouped_conv(y, [s.conv for s in subunits], dims)
                y = _grouped_norm_act(y, [s.adn.N for s in subunits])
            residual = (
                h
                if isinstance(units[0].residual, nn.Identity)
                else _grouped_conv(h, [u.residual for u in units], dims)
            )
            # y is a fresh temporary that nothing saved for backward (SiLU keeps its input): add in place
            h = y.add_(residual)
        if act is not None:  # the condition's own noise level, added to the level's features (zero at init)
            h = h.add_(_time_shift(encoders, level, act, h.ndim))
        features.append(h)
    return features


class ConditionalEncoder(nn.Module):
    """Multi-resolution convolutional encoder for one conditional modality.

    Level ``i`` has ``channels[i]`` channels at ``1 / 2**i`` of the input resolution, the same resolution
    as level ``i`` of a MONAI ``DiffusionModelUNet`` with as many levels, so the features can be added
    (after a projection) to the UNet's down-block residuals. Level 0 is a 3x3 input convolution followed by
    ``num_res_blocks`` MONAI ``ResidualUnit`` s; every further level starts with a stride-2 ``ResidualUnit``
    (the same output size as the UNet's stride-2, padding-1 downsampling convolution) followed by
    ``num_res_blocks - 1`` more. Normalisation is group norm, activation SiLU (MONAI ``SWISH``).

    With ``temb_dim`` the encoder also takes the timestep embedding of *its own* input (the condition's
    noise level, which differs from the denoiser's when modalities have their own timesteps): a
    zero-initialised ``Linear`` per level (``time_projections``, after a SiLU, as in MONAI's diffusion
    res blocks) adds a per-channel shift to the level's features, so at initialisation the output equals
    that of an encoder without it.

    The parameters live in the MONAI blocks (``conv_in``, ``levels``); ``forward`` evaluates them with
    functional calls (one fused SiLU instead of ``Swish``'s three operations), and
    :meth:`encode_jointly` runs several encoders of one architecture at once as grouped convolutions.
    Both give the module-by-module result to float rounding.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the conditional image.
        channels: output channels of every level (its length is the number of levels).
        num_res_blocks: residual units per level (>= 1).
        norm_num_groups: groups of the group normalisation; must divide every entry of ``channels``.
        temb_dim: size of the timestep embedding ``forward`` takes; ``None`` (default): no timestep input.

    Example:
        >>> import torch
        >>> enc = ConditionalEncoder(spatial_dims=2, in_channels=1, channels=(8, 16), norm_num_groups=4)
        >>> [tuple(f.shape) for f in enc(torch.randn(2, 1, 16, 16))]
        [(2, 8, 16, 16), (2, 16, 8, 8)]
        >>> timed = ConditionalEncoder(2, 1, (8, 16), norm_num_groups=4, temb_dim=12)
        >>> [tuple(f.shape) for f in timed(torch.randn(2, 1, 16, 16), temb=torch.randn(2, 12))]
        [(2, 8, 16, 16), (2, 16, 8, 8)]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        num_res_blocks: int = 1,
        norm_num_groups: int = 8,
        temb_dim: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if temb_dim is not None and (isinstance(temb_dim, bool) or int(temb_dim) < 1):
            raise ValueError(f"temb_dim must be an int >= 1 or None, got {temb_dim!r}.")
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
        self.in_channels = int(in_channels)
        self.channels = channels
        self.num_res_blocks = int(num_res_blocks)
        self.norm_num_groups = int(norm_num_groups)
        self.temb_dim = None if temb_dim is None else int(temb_dim)

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
        if self.temb_dim is not None:
            # registered after the blocks: the state-dict keys of the blocks keep their order
            self.time_projections = nn.ModuleList(nn.Linear(self.temb_dim, c) for c in channels)
            for proj in self.time_projections:
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)

    @property
    def architecture(self) -> tuple:
        """What must be equal for encoders to run jointly: ``(spatial_dims, in_channels, channels,
        num_res_blocks, norm_num_groups, temb_dim)``."""
        return (
            self.spatial_dims,
            self.in_channels,
            self.channels,
            self.num_res_blocks,
            self.norm_num_groups,
            self.temb_dim,
        )

    def _check_input(self, x: torch.Tensor, what: str) -> None:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            layout = "H, W" if self.spatial_dims == 2 else "H, W, D"
            raise ValueError(
                f"{what} must have shape (B, {self.in_channels}, {layout}), got {tuple(x.shape)}."
            )

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encode ``x``.

        Args:
            x: conditional image ``(B, in_channels, H, W[, D])``; every spatial size divisible by
                ``2 ** (len(channels) - 1)``.
            temb: ``(B, temb_dim)`` timestep embedding of ``x``'s noise level; required with ``temb_dim``,
                ignored without.

        Returns:
            one feature map per level, level ``i`` of shape ``(B, channels[i], H / 2**i, W / 2**i[, D / 2**i])``.
        """
        self._check_input(x, "the input")
        return _encode_stacked([self], x, temb)

    @staticmethod
    def encode_jointly(
        encoders: Sequence[ConditionalEncoder],
        inputs: Sequence[torch.Tensor],
        tembs: Sequence[torch.Tensor] | None = None,
    ) -> list[list[torch.Tensor]]:
        """Run several encoders of one architecture, each on its own input, in one pass.

        Every convolution and group norm of the ``K`` encoders runs as one grouped operation (encoder ``k``
        is group ``k``, with its own weights), which costs far fewer operator calls than ``K`` separate
        passes. The result equals ``[enc(x) for enc, x in zip(encoders, inputs)]`` to float rounding, and
        gradients flow to every encoder's own parameters.

        Args:
            encoders: one or more encoders with equal :attr:`architecture`.
            inputs: one image ``(B, in_channels, H, W[, D])`` per encoder, all of one shape.
            tembs: with ``temb_dim``: one ``(B, temb_dim)`` timestep embedding per encoder.

        Returns:
            per encoder, its list of per-level feature maps (as ``forward`` returns them).

        Example:
            >>> import torch
            >>> encs = [ConditionalEncoder(2, 1, (4, 8), norm_num_groups=4) for _ in range(3)]
            >>> xs = [torch.randn(2, 1, 8, 8) for _ in range(3)]
            >>> joint = ConditionalEncoder.encode_jointly(encs, xs)
            >>> all(torch.allclose(j, s, atol=1e-5) for e, x, js in zip(encs, xs, joint) for j, s in zip(js, e(x)))
            True
        """
        encoders, inputs = list(encoders), list(inputs)
        if not encoders or len(encoders) != len(inputs):
            raise ValueError(
                f"need one input per encoder and at least one encoder, got {len(encoders)} encoders and "
                f"{len(inputs)} inputs."
            )
        architectures = {e.architecture for e in encoders}
        if len(architectures) != 1:
            raise ValueError(
                "encode_jointly needs encoders of one architecture (spatial_dims, in_channels, channels, "
                f"num_res_blocks, norm_num_groups, temb_dim), got {sorted(architectures, key=str)}."
            )
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) != 1:
            raise ValueError(f"all inputs must have one shape, got {sorted(shapes)}.")
        encoders[0]._check_input(inputs[0], "every input")
        stacked = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)
        if tembs is not None and len(tembs) != len(encoders):
            raise ValueError(
                f"need one timestep embedding per encoder, got {len(tembs)} for {len(encoders)}."
            )
        temb = None if tembs is None else torch.stack(list(tembs))
        per_level = _encode_stacked(encoders, stacked, temb)
        chunks = [level.chunk(len(encoders), dim=1) for level in per_level]
        return [[chunk[k] for chunk in chunks] for k in range(len(encoders))]
