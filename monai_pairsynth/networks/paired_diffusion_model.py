"""Paired Diffusion: linked denoisers, one per modality, each conditioned on the others."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from torch import nn

from monai_pairsynth.networks.linked_denoiser import LinkedDenoiser

__all__ = ["PairedDiffusionModel"]


class PairedDiffusionModel(nn.Module):
    """A ``ModuleDict`` of :class:`LinkedDenoiser` s keyed by modality, stepped together.

    The denoiser of modality ``m`` sees its own noisy image and, through its conditional pathway, the noisy
    images of all other modalities at the same timestep::

        noisy = {"ct": x_ct, "pet": x_pet, "label": x_label}, timesteps t
          denoisers["ct"](x_ct, t, {"pet": x_pet, "label": x_label})    -> prediction["ct"]
          denoisers["pet"](x_pet, t, {"ct": x_ct, "label": x_label})    -> prediction["pet"]
          denoisers["label"](x_label, t, {"ct": x_ct, "pet": x_pet})    -> prediction["label"]

    Each denoiser has its own parameters (``model.denoiser("pet").parameters()`` feeds one optimiser).
    Network arguments are MONAI ``DiffusionModelUNet`` names and are shared by all denoisers.

    **Per-modality timesteps** (UniDiffuser, Bao et al. 2023): ``timesteps`` may also be a dict
    ``{modality: (B,)}``. Then denoiser ``m``'s UNet runs at ``t_m`` and its conditional pathway takes every
    other modality ``k`` at ``t_k`` (see :class:`LinkedDenoiser`); a modality given clean has ``t = 0`` and
    its clean image as input. ``predict=`` limits the call to the modalities whose prediction is needed
    (conditional sampling does not run the given modalities' denoisers). A plain tensor is the joint case,
    computed exactly as always.

    Args:
        modalities: two or more distinct modality names (valid ``nn.Module`` attribute names, no ``.``).
        spatial_dims: 2 or 3.
        in_channels: channels of every modality's image (and of every prediction).
        channels: UNet channels per level.
        attention_levels: UNet self-attention per level.
        num_res_blocks: UNet res blocks per level (int or one per level).
        norm_num_groups: group-norm groups.
        num_head_channels: channels per attention head (int or one per level).
        cond_channels: conditional-encoder channels per level; ``None``: half of ``channels`` rounded up to a
            multiple of ``norm_num_groups`` (see ``default_cond_channels``).
        encoder_attention: attention between each denoiser's conditional encoders at the lowest level.
        filter_init_cutoff: initial cut-off of the low-pass filters (fraction of Nyquist, in (0, 1)).
        filter_init_strength: initial strength of the low-pass filters (in (0, 1)).
        use_flash_attention: run the UNets' attention through PyTorch's ``scaled_dot_product_attention``
            (MONAI ``DiffusionModelUNet`` argument; same parameters and results, faster).
        condition_timesteps: the conditional encoders also take their condition's timestep (extra
            zero-initialised parameters, see :class:`LinkedDenoiser`): for training with per-modality
            timesteps. ``get_config()`` lists it only when ``True``, so the configuration of a model without
            it (and of every checkpoint written before the option) is unchanged.

    Example:
        >>> import torch
        >>> model = PairedDiffusionModel(("ct", "pet"), channels=(8, 16), attention_levels=(False, False),
        ...                              norm_num_groups=4)
        >>> noisy = {"ct": torch.randn(2, 1, 16, 16), "pet": torch.randn(2, 1, 16, 16)}
        >>> out = model(noisy, torch.tensor([3, 700]))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'ct': (2, 1, 16, 16), 'pet': (2, 1, 16, 16)}
        >>> rebuilt = PairedDiffusionModel(**model.get_config())
        >>> per_modality = {"ct": torch.tensor([3, 700]), "pet": torch.tensor([0, 0])}  # PET given clean
        >>> {k: tuple(v.shape) for k, v in model(noisy, per_modality, predict=["ct"]).items()}
        {'ct': (2, 1, 16, 16)}
    """

    def __init__(
        self,
        modalities: Sequence[str] = ("ct", "pet", "label"),
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int | Sequence[int] = 1,
        norm_num_groups: int = 8,
        num_head_channels: int | Sequence[int] = 8,
        cond_channels: Sequence[int] | None = None,
        encoder_attention: bool = True,
        filter_init_cutoff: float = 0.4,
        filter_init_strength: float = 0.8,
        use_flash_attention: bool = True,
        condition_timesteps: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(modalities, str):
            raise ValueError(f"modalities must be a sequence of names, got the string '{modalities}'.")
        modalities = tuple(modalities)
        if len(modalities) < 2:
            raise ValueError(f"PairedDiffusionModel needs at least two modalities, got {list(modalities)}.")
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct, got {list(modalities)}.")
        reserved = set(dir(nn.ModuleDict()))
        for name in modalities:
            if not isinstance(name, str) or not name or "." in name or name in reserved:
                raise ValueError(
                    f"modality name {name!r} is not allowed: names must be non-empty strings without '.' that "
                    f"are not attributes of nn.ModuleDict."
                )
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        channels = [int(c) for c in channels]
        if len(channels) < 1:
            raise ValueError("channels must have at least one level.")
        bad = [a for a in attention_levels if not isinstance(a, (bool, int)) or isinstance(a, str)]
        if bad:
            # a bundle override written "[false, true]" arrives as strings, and bool("false") is True
            raise ValueError(
                f"attention_levels must be booleans, got {list(attention_levels)} (write [False, True], not strings)."
            )
        if len(attention_levels) != len(channels):
            raise ValueError(
                f"attention_levels {list(attention_levels)} must have one entry per level of channels {channels}."
            )
        if any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"every entry of channels {channels} must be divisible by norm_num_groups={norm_num_groups}."
            )

        self._config: dict[str, Any] = {
            "modalities": list(modalities),
            "spatial_dims": int(spatial_dims),
            "in_channels": int(in_channels),
            "channels": channels,
            "attention_levels": [bool(a) for a in attention_levels],
            "num_res_blocks": int(num_res_blocks)
            if isinstance(num_res_blocks, int)
            else [int(n) for n in num_res_blocks],
            "norm_num_groups": int(norm_num_groups),
            "num_head_channels": int(num_head_channels)
            if isinstance(num_head_channels, int)
            else [int(n) for n in num_head_channels],
            "cond_channels": None if cond_channels is None else [int(c) for c in cond_channels],
            "encoder_attention": bool(encoder_attention),
            "filter_init_cutoff": float(filter_init_cutoff),
            "filter_init_strength": float(filter_init_strength),
            "use_flash_attention": bool(use_flash_attention),
        }
        if condition_timesteps:  # absent when off: configurations written before the option stay equal
            self._config["condition_timesteps"] = True
        self._modalities = modalities
        self._spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.downsample_factor = 2 ** (len(channels) - 1)
        self.denoisers = nn.ModuleDict(
            {
                name: LinkedDenoiser(
                    spatial_dims=spatial_dims,
                    in_channels=in_channels,
                    condition_names=[other for other in modalities if other != name],
                    channels=channels,
                    attention_levels=attention_levels,
                    num_res_blocks=num_res_blocks,
                    norm_num_groups=norm_num_groups,
                    num_head_channels=num_head_channels,
                    cond_channels=cond_channels,
                    encoder_attention=encoder_attention,
                    filter_init_cutoff=filter_init_cutoff,
                    filter_init_strength=filter_init_strength,
                    use_flash_attention=use_flash_attention,
                    condition_timesteps=bool(condition_timesteps),
                )
                for name in modalities
            }
        )

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality names, in constructor order."""
        return self._modalities

    @property
    def condition_timesteps(self) -> bool:
        """Whether the conditional encoders take their condition's own timestep (the constructor flag)."""
        return bool(self._config.get("condition_timesteps", False))

    @property
    def spatial_dims(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self._spatial_dims

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``PairedDiffusionModel(**model.get_config())`` rebuilds it."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._config.items()}

    def denoiser(self, name: str) -> LinkedDenoiser:
        """The denoiser of modality ``name``."""
        if name not in self.denoisers:
            raise KeyError(f"unknown modality '{name}'; the model has {list(self._modalities)}.")
        return self.denoisers[name]  # type: ignore[return-value]

    def validate_inputs(
        self,
        noisy: Mapping[str, torch.Tensor],
        timesteps: torch.Tensor | Mapping[str, torch.Tensor],
        check_finite: bool = True,
    ) -> None:
        """Raise a ``ValueError`` naming the modality, shape or value if ``forward`` cannot take the inputs.

        Checks: every modality present and no unknown one; each a tensor ``(B, in_channels, *spatial)`` with
        ``spatial_dims`` spatial dimensions; all modalities of one shape; every spatial size divisible by
        ``2 ** (len(channels) - 1)``; no NaN or Inf (unless ``check_finite=False``); ``timesteps`` a 0-d
        tensor or a 1-d tensor of length 1 or ``B`` (or a dict of such tensors with exactly the modalities).

        Args:
            noisy: ``{modality: (B, C, H, W[, D])}``.
            timesteps: ``(B,)``, ``(1,)`` or scalar tensor, or ``{modality: one of these}``.
            check_finite: look for NaN/Inf (one host synchronisation on a GPU); the training engine turns it
                off because it validates its data where it enters (on the CPU, or once when materialised).
        """
        if not isinstance(noisy, Mapping):
            raise ValueError(f"noisy must be a dict {{modality: tensor}}, got {type(noisy).__name__}.")
        expected = list(self._modalities)
        missing = [m for m in expected if m not in noisy]
        if missing:
            raise ValueError(f"missing modality {missing} in the input; expected exactly {expected}.")
        extra = [m for m in noisy if m not in self._modalities]
        if extra:
            raise ValueError(f"unknown modality {extra} in the input; expected exactly {expected}.")
        for m in expected:
            x = noisy[m]
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"modality '{m}' must be a torch.Tensor, got {type(x).__name__}.")
            if x.ndim != self._spatial_dims + 2:
                layout = "(B, C, H, W)" if self._spatial_dims == 2 else "(B, C, H, W, D)"
                raise ValueError(
                    f"modality '{m}' has shape {tuple(x.shape)} ({x.ndim} dims); this {self._spatial_dims}D model "
                    f"expects {layout}."
                )
            if x.shape[1] != self.in_channels:
                raise ValueError(
                    f"modality '{m}' has {x.shape[1]} channels (shape {tuple(x.shape)}); expected {self.in_channels}."
                )
        shapes = {m: tuple(noisy[m].shape) for m in expected}
        if len(set(shapes.values())) != 1:
            listing = ", ".join(f"'{m}': {s}" for m, s in shapes.items())
            raise ValueError(f"all modalities must have one shape, got {listing}.")
        shape = shapes[expected[0]]
        bad = [s for s in shape[2:] if s % self.downsample_factor]
        if bad:
            raise ValueError(
                f"spatial size {shape[2:]} (input shape {shape}) cannot be downsampled by this UNet: "
                f"every spatial size must be divisible by {self.downsample_factor} = 2**(len(channels) - 1); "
                f"size(s) {bad} are not."
            )
        # one device synchronisation for all modalities; look for the culprit only when something is wrong
        finite = torch.stack([torch.isfinite(noisy[m]).all() for m in expected]) if check_finite else None
        if finite is not None and not bool(finite.all()):
            bad_modalities = [m for m, ok in zip(expected, finite.tolist()) if not ok]
            raise ValueError(f"modality {bad_modalities} contains NaN or Inf values (shape {shape}).")
        batch = shape[0]
        if isinstance(timesteps, Mapping):
            if sorted(timesteps) != sorted(expected):
                raise ValueError(
                    f"per-modality timesteps must have exactly the modalities {expected}, got {list(timesteps)}."
                )
            per_modality = {f"timesteps['{m}']": timesteps[m] for m in expected}
        else:
            per_modality = {"timesteps": timesteps}
        for name, t in per_modality.items():
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
            if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
                raise ValueError(
                    f"{name} must have shape ({batch},) (one per sample), (1,) or () for a batch of {batch}, "
                    f"got shape {tuple(t.shape)}."
                )

    def forward(
        self,
        noisy: Mapping[str, torch.Tensor],
        timesteps: torch.Tensor | Mapping[str, torch.Tensor],
        check_finite: bool = True,
        predict: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run every denoiser on its own noisy image, conditioned on all the others.

        Args:
            noisy: ``{modality: (B, in_channels, H, W[, D])}`` for every modality, all at timestep ``timesteps``
                (a modality given clean: its clean image, with timestep 0).
            timesteps: ``(B,)`` (or ``(1,)`` / scalar, shared by the batch), shared by all modalities; or
                ``{modality: (B,)}``, each modality at its own timesteps.
            check_finite: reject NaN/Inf inputs (see :meth:`validate_inputs`).
            predict: the modalities to predict (their denoisers alone run); ``None``: all.

        Returns:
            ``{modality: prediction}``, each of the input's shape, for every modality of ``predict``.
        """
        self.validate_inputs(noisy, timesteps, check_finite=check_finite)
        if predict is None:
            targets = self._modalities
        else:
            unknown = [m for m in predict if m not in self._modalities]
            if isinstance(predict, str) or unknown or not predict:
                raise ValueError(
                    f"predict must be a non-empty list of the modalities {list(self._modalities)}, got {predict!r}."
                )
            targets = tuple(m for m in self._modalities if m in predict)
        inputs = {
            m: noisy[m].as_tensor() if isinstance(noisy[m], MetaTensor) else noisy[m]
            for m in self._modalities
        }
        batch = inputs[self._modalities[0]].shape[0]

        def _flat(t: torch.Tensor) -> torch.Tensor:
            return (t.as_tensor() if isinstance(t, MetaTensor) else t).reshape(-1).expand(batch)

        if not isinstance(timesteps, Mapping):
            shared = _flat(timesteps)
            return {
                m: self.denoisers[m](inputs[m], shared, {o: inputs[o] for o in self._modalities if o != m})
                for m in targets
            }
        own = {m: _flat(timesteps[m]) for m in self._modalities}
        return {
            m: self.denoisers[m](
                inputs[m],
                own[m],
                {o: inputs[o] for o in self._modalities if o != m},
                condition_timesteps={o: own[o] for o in self._modalities if o != m},
            )
            for m in targets
        }
