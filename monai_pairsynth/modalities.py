"""Modality specifications: what each key of a sample holds and how it maps to the diffusion range [-1, 1].

A sample is a dict ``{"ct": T, "pet": T, "label": T, ...}`` of channel-first tensors. Each modality has a
:class:`ModalitySpec`: its kind (an ``image`` with a physical range, or a binary ``mask``) and the physical
interval that is mapped linearly onto [-1, 1] for diffusion. Nothing in the package assumes exactly three
modalities or these names; the defaults below only describe the HECKTOR-style PET/CT/tumour setting.

Example:
    >>> import torch
    >>> spec = DEFAULT_MODALITY_SPECS["ct"]
    >>> spec.normalize(torch.tensor([-1000.0, 0.0, 1000.0]))
    tensor([-1.,  0.,  1.])
    >>> spec.denormalize(torch.tensor([0.5]))
    tensor([500.])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch

__all__ = ["DEFAULT_MODALITY_SPECS", "ModalityKind", "ModalitySpec", "resolve_specs"]


class ModalityKind(str, Enum):
    """What a modality holds: a continuous ``image`` or a binary ``mask``."""

    IMAGE = "image"
    MASK = "mask"


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality is represented.

    Args:
        kind: ``"image"`` (continuous, clipped to ``[low, high]``) or ``"mask"`` (binary {0, 1}).
        low: physical value mapped to -1 (e.g. -1000 HU for CT, 0 SUV for PET, 0 for a mask).
        high: physical value mapped to +1 (e.g. 1000 HU, 15 SUV, 1).
        unit: unit name for documentation and metadata (``"HU"``, ``"SUV"``, ``""``).
    """

    kind: ModalityKind | str = ModalityKind.IMAGE
    low: float = -1.0
    high: float = 1.0
    unit: str = ""

    def __post_init__(self) -> None:
        try:
            kind = ModalityKind(self.kind)
        except ValueError:
            raise ValueError(
                f"ModalitySpec kind must be one of {[k.value for k in ModalityKind]}, got {self.kind!r}."
            ) from None
        object.__setattr__(self, "kind", kind)
        if not float(self.high) > float(self.low):
            raise ValueError(f"ModalitySpec needs high > low, got low={self.low}, high={self.high}.")

    @property
    def is_mask(self) -> bool:
        return self.kind == ModalityKind.MASK

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical units -> [-1, 1] (values outside ``[low, high]`` are clipped; masks are thresholded at 0.5)."""
        if self.is_mask:
            return (x > 0.5).to(x.dtype if x.is_floating_point() else torch.float32) * 2.0 - 1.0
        x = x if x.is_floating_point() else x.float()
        scaled = (x - self.low) / (self.high - self.low) * 2.0 - 1.0
        return scaled.clamp(-1.0, 1.0)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> physical units; a mask is returned binary ({0, 1}, thresholded at 0)."""
        if self.is_mask:
            return (x > 0).to(x.dtype if x.is_floating_point() else torch.float32)
        x = x if x.is_floating_point() else x.float()
        return (x.clamp(-1.0, 1.0) + 1.0) / 2.0 * (self.high - self.low) + self.low

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = ModalityKind(self.kind).value
        return d


DEFAULT_MODALITY_SPECS: dict[str, ModalitySpec] = {
    "ct": ModalitySpec(ModalityKind.IMAGE, -1000.0, 1000.0, "HU"),
    "pet": ModalitySpec(ModalityKind.IMAGE, 0.0, 15.0, "SUV"),
    "label": ModalitySpec(ModalityKind.MASK, 0.0, 1.0, ""),
}


def resolve_specs(
    modalities: Sequence[str] | Mapping[str, ModalitySpec | Mapping[str, Any]],
) -> dict[str, ModalitySpec]:
    """Turn a list of names or a mapping of name -> spec (or spec dict) into ``{name: ModalitySpec}``.

    Names without an explicit spec fall back to :data:`DEFAULT_MODALITY_SPECS`; an unknown name without a
    spec is an error, since its physical range cannot be guessed.
    """
    if isinstance(modalities, str):
        raise ValueError(
            f"modalities must be a sequence of names or a mapping, got the string {modalities!r}."
        )
    out: dict[str, ModalitySpec] = {}
    items = modalities.items() if isinstance(modalities, Mapping) else ((m, None) for m in modalities)
    for name, spec in items:
        if spec is None:
            if name not in DEFAULT_MODALITY_SPECS:
                raise ValueError(
                    f"modality {name!r} has no default spec (defaults exist for {sorted(DEFAULT_MODALITY_SPECS)}); "
                    "pass a mapping {name: ModalitySpec(kind, low, high)}."
                )
            spec = DEFAULT_MODALITY_SPECS[name]
        elif isinstance(spec, Mapping):
            spec = ModalitySpec(**spec)
        elif not isinstance(spec, ModalitySpec):
            raise ValueError(
                f"spec for modality {name!r} must be a ModalitySpec or a dict, got {type(spec).__name__}."
            )
        out[str(name)] = spec
    if len(out) < 1:
        raise ValueError("at least one modality is required.")
    return out
