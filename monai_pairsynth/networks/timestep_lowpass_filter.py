"""Timestep-controlled two-parameter low-pass filter for conditional inputs.

Paired Diffusion filters each conditional input (another modality's noisy image) before its conditional
encoder: at high noise levels the high frequencies of the other modality are mostly noise, so the encoder
should see a smoothed version. The filter has exactly two learnable parameters, a cut-off and a strength,
both in [0, 1], and a small MLP on the timestep embedding that shifts them per sample.

Symbols (paper -> code):
    cut-off ``f_c``   -> ``cutoff`` = sigmoid(``cutoff_logit`` + delta_c(t))
    strength ``s``    -> ``strength`` = sigmoid(``strength_logit`` + delta_s(t))
    radial frequency  -> ``radius``: Euclidean norm of the frequency in units of the Nyquist frequency
                         (1 on an axis at Nyquist, sqrt(N) in the corner of an N-d spectrum)
    mask ``M(r)``     -> 1 - s * (1 - exp(-r^2 / (2 f_c^2)))

The mask equals 1 at the zero frequency, so a constant image passes unchanged for every parameter value,
and lies in [1 - s, 1], so the filter never amplifies and never flips a frequency's sign.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["TimestepLowPassFilter"]


def _logit(value: float) -> float:
    return math.log(value / (1.0 - value))


class TimestepLowPassFilter(nn.Module):
    """Smooth radial low-pass filter in Fourier space with two learnable parameters and timestep control.

    The input is transformed with ``torch.fft.rfftn`` over its spatial dimensions, multiplied by a
    Gaussian-shaped radial mask ``M(r) = 1 - strength * (1 - exp(-r^2 / (2 cutoff^2)))`` and transformed
    back. ``cutoff`` and ``strength`` are the sigmoids of the two learnable scalars ``cutoff_logit`` and
    ``strength_logit``, each shifted per sample by a small MLP on the timestep embedding. The MLP's last
    layer is zero-initialised, so at initialisation every sample uses ``init_cutoff`` and
    ``init_strength`` and the module is already a low-pass filter (with the defaults the amplitude at the
    on-axis Nyquist frequency is multiplied by about 0.31).

    The filter works for any spatial size and for 1, 2 or 3 spatial dimensions; the computation runs in
    float32 and the result is cast back to the input dtype.

    Args:
        temb_dim: size ``E`` of the timestep embedding given to ``forward``.
        hidden_dim: width of the modulation MLP's hidden layer.
        init_cutoff: initial cut-off in (0, 1), in units of the Nyquist frequency (Gaussian sigma of the
            mask).
        init_strength: initial strength in (0, 1): the fraction of a frequency's amplitude removed far above
            the cut-off.

    Example:
        >>> import torch
        >>> filt = TimestepLowPassFilter(temb_dim=8)
        >>> x = torch.randn(2, 1, 16, 12)
        >>> filt(x, torch.zeros(2, 8)).shape
        torch.Size([2, 1, 16, 12])
        >>> sum(p.numel() for n, p in filt.named_parameters() if not n.startswith("modulation"))
        2
        >>> const = torch.full((1, 1, 8, 8, 8), 0.7)
        >>> bool(torch.allclose(filt(const, torch.zeros(1, 8)), const, atol=1e-6))
        True
    """

    def __init__(
        self, temb_dim: int, hidden_dim: int = 32, init_cutoff: float = 0.4, init_strength: float = 0.8
    ) -> None:
        super().__init__()
        if temb_dim < 1 or hidden_dim < 1:
            raise ValueError(
                f"temb_dim and hidden_dim must be >= 1, got temb_dim={temb_dim}, hidden_dim={hidden_dim}."
            )
        for name, value in (("init_cutoff", init_cutoff), ("init_strength", init_strength)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}.")
        self.temb_dim = temb_dim
        # the two learnable parameters of the filter, stored as logits so that sigmoid keeps them in [0, 1]
        self.cutoff_logit = nn.Parameter(torch.tensor(_logit(init_cutoff)))
        self.strength_logit = nn.Parameter(torch.tensor(_logit(init_strength)))
        # per-sample shift of the two logits from the timestep embedding; zero last layer: neutral at init
        self.modulation = nn.Sequential(nn.Linear(temb_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 2))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def filter_parameters(self, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample cut-off and strength.

        Args:
            temb: timestep embedding ``(B, E)``.

        Returns:
            ``(cutoff, strength)``, each ``(B,)`` in [0, 1].
        """
        shift = self.modulation(temb.float())
        cutoff = torch.sigmoid(self.cutoff_logit + shift[:, 0])
        strength = torch.sigmoid(self.strength_logit + shift[:, 1])
        return cutoff, strength

    @staticmethod
    def radial_frequency(spatial_shape: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
        """Radial frequency of every ``rfftn`` bin in units of the Nyquist frequency.

        Args:
            spatial_shape: the spatial size ``(H, W[, D])`` of the signal.
            device: device of the result.

        Returns:
            tensor of shape ``(H, ..., D // 2 + 1)`` (the ``rfftn`` layout), 0 at the zero frequency and 1 at
            the Nyquist frequency of any single axis.
        """
        freqs = [torch.fft.fftfreq(n, device=device) for n in spatial_shape[:-1]]
        freqs.append(torch.fft.rfftfreq(spatial_shape[-1], device=device))
        grids = torch.meshgrid(*freqs, indexing="ij")
        # fftfreq is in cycles per sample: Nyquist is 0.5
        return torch.sqrt(sum((2.0 * g) ** 2 for g in grids))

    def mask(self, spatial_shape: tuple[int, ...], temb: torch.Tensor) -> torch.Tensor:
        """The Fourier mask ``(B, 1, *rfftn_shape)`` for the given spatial size and timestep embedding."""
        cutoff, strength = self.filter_parameters(temb)
        radius = self.radial_frequency(spatial_shape, device=temb.device)
        return _gaussian_mask(radius, cutoff[:, None], strength[:, None])

    def _check_inputs(self, x: torch.Tensor, temb: torch.Tensor) -> None:
        if x.ndim < 3:
            raise ValueError(f"x must have shape (B, C, *spatial), got shape {tuple(x.shape)}.")
        if temb.ndim != 2 or temb.shape[1] != self.temb_dim or temb.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"temb must have shape ({x.shape[0]}, {self.temb_dim}) for x of shape {tuple(x.shape)}, "
                f"got {tuple(temb.shape)}."
            )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Low-pass filter ``x``.

        Args:
            x: image ``(B, C, H, W[, D])`` (any number >= 1 of spatial dimensions, any size).
            temb: timestep embedding ``(B, E)``.

        Returns:
            the filtered image, same shape and dtype as ``x``.
        """
        self._check_inputs(x, temb)
        return _filter_stacked([self], x, temb)

    @staticmethod
    def filter_jointly(
        filters: Sequence[TimestepLowPassFilter], inputs: Sequence[torch.Tensor], temb: torch.Tensor
    ) -> list[torch.Tensor]:
        """Apply several filters, each to its own input, with one forward and one inverse FFT.

        The result equals ``[f(x, temb) for f, x in zip(filters, inputs)]`` to float rounding; each filter
        keeps its own parameters (and gradients).

        Args:
            filters: one or more filters with the same ``temb_dim``.
            inputs: one image ``(B, C, *spatial)`` per filter, all of one shape.
            temb: timestep embedding ``(B, E)`` (or ``(1, E)``) shared by all filters.

        Returns:
            the filtered images, in the order of ``filters``.

        Example:
            >>> import torch
            >>> filters = [TimestepLowPassFilter(temb_dim=8, init_cutoff=c) for c in (0.2, 0.6)]
            >>> xs = [torch.randn(2, 1, 16, 16) for _ in filters]
            >>> temb = torch.randn(2, 8)
            >>> joint = TimestepLowPassFilter.filter_jointly(filters, xs, temb)
            >>> all(torch.allclose(j, f(x, temb), atol=1e-6) for j, f, x in zip(joint, filters, xs))
            True
        """
        filters, inputs = list(filters), list(inputs)
        if not filters or len(filters) != len(inputs):
            raise ValueError(
                f"need one input per filter and at least one filter, got {len(filters)} filters and "
                f"{len(inputs)} inputs."
            )
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) != 1:
            raise ValueError(f"all inputs must have one shape, got {sorted(shapes)}.")
        if len({f.temb_dim for f in filters}) != 1:
            raise ValueError(f"all filters must have one temb_dim, got {[f.temb_dim for f in filters]}.")
        x = inputs[0]
        filters[0]._check_inputs(x, temb)
        stacked = x if len(inputs) == 1 else torch.cat(inputs, dim=1)
        return list(_filter_stacked(filters, stacked, temb).chunk(len(filters), dim=1))


def _gaussian_mask(radius: torch.Tensor, cutoff: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """``M(r) = 1 - s (1 - exp(-r^2 / (2 f_c^2)))`` for per-sample, per-filter ``cutoff`` / ``strength``.

    Args:
        radius: ``rfftn``-layout radial frequency ``(*rfftn_shape)``.
        cutoff: ``(B, K)``.
        strength: ``(B, K)``.

    Returns:
        ``(B, K, *rfftn_shape)``.
    """
    view = (*cutoff.shape, *(1,) * radius.ndim)
    cutoff, strength = cutoff.reshape(view), strength.reshape(view)
    gaussian = torch.exp(-0.5 * (radius / cutoff.clamp_min(1e-4)) ** 2)
    return 1.0 - strength * (1.0 - gaussian)


def _filter_stacked(
    filters: Sequence[TimestepLowPassFilter], x: torch.Tensor, temb: torch.Tensor
) -> torch.Tensor:
    """Filter ``k`` applied to channel block ``k`` of ``x`` ``(B, K * C, *spatial)``; one rfftn / irfftn.

    ``temb`` is ``(B, E)`` (or ``(1, E)``) shared by all filters, or ``(K, B, E)``: filter ``k`` modulated by
    ``temb[k]``, the timestep embedding of its own input (per-modality timesteps).
    """
    num = len(filters)
    batch, channels, *spatial = x.shape
    spatial_shape = tuple(spatial)
    # (B, K, C, *spatial): the FFT runs over the trailing spatial axes of all K blocks at once
    blocks = x.float().reshape(batch, num, channels // num, *spatial_shape)
    dims = tuple(range(3, blocks.ndim))
    spectrum = torch.fft.rfftn(blocks, dim=dims)
    if temb.ndim == 3 and temb.shape[0] != num:
        raise ValueError(
            f"a stacked temb must have one embedding per filter ({num}), got shape {tuple(temb.shape)}."
        )
    parameters = [f.filter_parameters(temb[k] if temb.ndim == 3 else temb) for k, f in enumerate(filters)]
    cutoff = torch.stack([c for c, _ in parameters], dim=1)  # (B or 1, K)
    strength = torch.stack([s for _, s in parameters], dim=1)
    radius = TimestepLowPassFilter.radial_frequency(spatial_shape, device=x.device)
    mask = _gaussian_mask(radius, cutoff, strength).unsqueeze(2)  # (B, K, 1, *rfftn_shape)
    filtered = torch.fft.irfftn(spectrum * mask, s=spatial_shape, dim=dims)
    return filtered.reshape(x.shape).to(x.dtype)
