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

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch

from monai_pairsynth.utils import atomic_write_json

__all__ = [
    "DEFAULT_MODALITY_SPECS",
    "FOV_KEY",
    "FOV_SPEC",
    "PET_INTENSITY_SPECS",
    "PET_LOG_SPEC",
    "SPECS_RECORD_NAME",
    "IntensityMapping",
    "ModalityKind",
    "ModalitySpec",
    "modality_specs_for",
    "read_specs_record",
    "resolve_specs",
    "with_field_of_view",
    "write_specs_record",
]

logger = logging.getLogger(__name__)


class IntensityMapping(str, Enum):
    """How an image's physical interval ``[low, high]`` is mapped onto [-1, 1].

    ``linear``: ``2 (x - low) / (high - low) - 1`` (the default, and the map of every checkpoint written before
    the mapping was recorded). ``log``: ``2 log1p((x - low) / s) / log1p((high - low) / s) - 1`` with
    ``s = log_scale``: linear-like below ``s`` (fine steps for background uptake), logarithmic above (a high
    ``high`` keeps tumour peaks without spending the range on them).
    """

    LINEAR = "linear"
    LOG = "log"


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
        mapping: ``"linear"`` (default) or ``"log"`` (:class:`IntensityMapping`; images only).
        log_scale: for ``"log"``: the physical distance above ``low`` where the map bends from linear to
            logarithmic (e.g. 5 SUV); must be > 0.

    Example:
        >>> import torch
        >>> pet = ModalitySpec("image", 0.0, 60.0, "SUV", mapping="log", log_scale=5.0)
        >>> [round(v, 3) for v in pet.normalize(torch.tensor([0.0, 5.0, 60.0])).tolist()]
        [-1.0, -0.46, 1.0]
        >>> round(float(pet.denormalize(pet.normalize(torch.tensor([53.0])))), 3)
        53.0
    """

    kind: ModalityKind | str = ModalityKind.IMAGE
    low: float = -1.0
    high: float = 1.0
    unit: str = ""
    mapping: IntensityMapping | str = IntensityMapping.LINEAR
    log_scale: float = 1.0

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
        try:
            mapping = IntensityMapping(self.mapping)
        except ValueError:
            raise ValueError(
                f"ModalitySpec mapping must be one of {[m.value for m in IntensityMapping]}, got {self.mapping!r}."
            ) from None
        object.__setattr__(self, "mapping", mapping)
        if not float(self.log_scale) > 0:
            raise ValueError(f"ModalitySpec log_scale must be > 0, got {self.log_scale!r}.")

    @property
    def is_mask(self) -> bool:
        return self.kind == ModalityKind.MASK

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical units -> [-1, 1] (values outside ``[low, high]`` are clipped; masks are thresholded at 0.5)."""
        if self.is_mask:
            return (x > 0.5).to(x.dtype if x.is_floating_point() else torch.float32) * 2.0 - 1.0
        x = x if x.is_floating_point() else x.float()
        if self.mapping == IntensityMapping.LOG:
            span = math.log1p((self.high - self.low) / self.log_scale)
            rel = (x.clamp(self.low, self.high) - self.low) / self.log_scale
            return (torch.log1p(rel) / span * 2.0 - 1.0).clamp(-1.0, 1.0)
        scaled = (x - self.low) / (self.high - self.low) * 2.0 - 1.0
        return scaled.clamp(-1.0, 1.0)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> physical units; a mask is returned binary ({0, 1}, thresholded at 0)."""
        if self.is_mask:
            return (x > 0).to(x.dtype if x.is_floating_point() else torch.float32)
        x = x if x.is_floating_point() else x.float()
        if self.mapping == IntensityMapping.LOG:
            span = math.log1p((self.high - self.low) / self.log_scale)
            return torch.expm1((x.clamp(-1.0, 1.0) + 1.0) / 2.0 * span) * self.log_scale + self.low
        return (x.clamp(-1.0, 1.0) + 1.0) / 2.0 * (self.high - self.low) + self.low

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = ModalityKind(self.kind).value
        if self.mapping == IntensityMapping.LINEAR:  # the implicit map of older checkpoints: not written
            del d["mapping"], d["log_scale"]
        else:
            d["mapping"] = IntensityMapping(self.mapping).value
        return d


DEFAULT_MODALITY_SPECS: dict[str, ModalitySpec] = {
    "ct": ModalitySpec(ModalityKind.IMAGE, -1000.0, 1000.0, "HU"),
    "pet": ModalitySpec(ModalityKind.IMAGE, 0.0, 15.0, "SUV"),
    "label": ModalitySpec(ModalityKind.MASK, 0.0, 1.0, ""),
}

#: Opt-in PET spec for real scans (docs/data.md): SUV 0-60 on a log map bending at 3 SUV, so tumour peaks (SUVmax
#: up to 53 in the sarcoma patients) are kept instead of clipped at 15, while background uptake (SUV ~2) keeps the
#: resolution of the default linear 0-15 map. Not the default: the phantom and the demo checkpoint use the linear map.
PET_LOG_SPEC = ModalitySpec(ModalityKind.IMAGE, 0.0, 60.0, "SUV", mapping=IntensityMapping.LOG, log_scale=3.0)


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


#: the sample key of the field-of-view mask (``preprocessing_transforms(fov_key=FOV_KEY)``): {0, 1}, 1 where every
#: image was scanned. It travels beside the modalities but is not one of them (never noised, generated or decoded).
FOV_KEY = "fov"
#: how the field-of-view mask is resampled (nearest, like a mask) by the augmentation and the device loader; the
#: mask itself stays {0, 1} (it is never normalised to [-1, 1]).
FOV_SPEC = ModalitySpec(ModalityKind.MASK, 0.0, 1.0, "")

#: the PET maps a bundle can choose (``pet_intensity``): the default linear 0-15 SUV, or :data:`PET_LOG_SPEC`.
PET_INTENSITY_SPECS: dict[str, ModalitySpec] = {"linear": DEFAULT_MODALITY_SPECS["pet"], "log": PET_LOG_SPEC}


def with_field_of_view(
    modalities: Sequence[str] | Mapping[str, ModalitySpec | Mapping[str, Any]], fov_key: str = FOV_KEY
) -> dict[str, ModalitySpec]:
    """The resolved specs of ``modalities`` plus ``fov_key`` with :data:`FOV_SPEC`, for code that moves every key
    of a sample together (augmentation, :class:`~monai_pairsynth.engines.DeviceTripletLoader`).

    Example:
        >>> sorted(with_field_of_view(["ct", "label"]))
        ['ct', 'fov', 'label']
    """
    specs = resolve_specs(modalities)
    if fov_key in specs:
        raise ValueError(
            f"the field-of-view key {fov_key!r} must not be a modality; modalities {sorted(specs)}."
        )
    specs[fov_key] = FOV_SPEC
    return specs


def _recorded_specs(checkpoint: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``modality_specs`` a training checkpoint (a path or its dict) records."""
    if isinstance(checkpoint, (str, os.PathLike)):
        try:
            checkpoint = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint file not found: {os.fspath(checkpoint)!r}.") from None
        except Exception as err:
            raise ValueError(f"could not read checkpoint {os.fspath(checkpoint)!r}: {err}") from err
    recorded = checkpoint.get("modality_specs") if isinstance(checkpoint, Mapping) else None
    if not isinstance(recorded, Mapping):
        raise ValueError(
            "the checkpoint records no modality_specs; is it a monai_pairsynth diffusion checkpoint?"
        )
    return recorded


def _pet_choice(pet_intensity: str | None) -> str | None:
    """``"linear"`` / ``"log"``, or ``None`` for an unset setting (``None``, ``""``, ``"None"``, ``"null"``)."""
    if pet_intensity is None or str(pet_intensity).strip().lower() in ("", "none", "null"):
        return None
    choice = str(pet_intensity).strip().lower()
    if choice not in PET_INTENSITY_SPECS:
        raise ValueError(
            f"pet_intensity must be one of {sorted(PET_INTENSITY_SPECS)}, got {pet_intensity!r} (or None: the "
            "checkpoint's map, else linear)."
        )
    return choice


def modality_specs_for(
    modalities: Sequence[str] | Mapping[str, ModalitySpec | Mapping[str, Any]] = ("ct", "pet", "label"),
    pet_intensity: str | None = None,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    pet_key: str = "pet",
) -> dict[str, ModalitySpec]:
    """The specs of a run: ``modalities`` resolved, with the PET map chosen by ``pet_intensity``, or the specs a
    diffusion ``checkpoint`` records (they win over the setting: a generator decodes with what it was trained on).

    Args:
        modalities: names (or name -> spec) of the run's modalities.
        pet_intensity: ``"linear"`` (the default 0-15 SUV map) or ``"log"`` (:data:`PET_LOG_SPEC`, 0-60 SUV), see
            :data:`PET_INTENSITY_SPECS`; applied to ``pet_key`` when it is one of ``modalities``. ``None`` (the
            default; also ``""``, ``"None"``, ``"null"`` from a command line): not set, so the checkpoint's map,
            else the spec ``modalities`` gives (the linear default for a bare ``"pet"``).
        checkpoint: a training/sampling checkpoint (path or dict) whose ``modality_specs`` are used for the
            modalities it records (older checkpoints without a ``mapping`` read as linear; a name it records needs
            no default spec). A ``pet_intensity`` that was set and disagrees with the checkpoint is logged and
            ignored. ``None``, ``""`` or ``"None"``: use the setting.
        pet_key: the PET modality's name.

    Example:
        >>> specs = modality_specs_for(["ct", "pet", "label"], "log")
        >>> specs["pet"].mapping.value, specs["pet"].high
        ('log', 60.0)
        >>> modality_specs_for(["ct", "pet"], checkpoint={"modality_specs": {"pet": PET_LOG_SPEC.to_dict()}})[
        ...     "pet"
        ... ] == PET_LOG_SPEC
        True
    """
    choice = _pet_choice(pet_intensity)
    if isinstance(modalities, str):
        resolve_specs(modalities)  # its error: a string is not a list of names
    given = dict(modalities) if isinstance(modalities, Mapping) else dict.fromkeys(modalities)
    if choice not in (None, "linear") and pet_key not in given:
        raise ValueError(
            f"pet_intensity {choice!r} needs a {pet_key!r} modality; modalities {sorted(map(str, given))}."
        )
    no_checkpoint = checkpoint is None or str(checkpoint).strip() in ("", "None", "null")
    recorded = {} if no_checkpoint else _recorded_specs(checkpoint)
    # a name the checkpoint records takes the recorded spec (it needs no default); the others the given one
    specs = resolve_specs({name: recorded.get(name, spec) for name, spec in given.items()})
    if choice is None or pet_key not in specs:
        return specs
    setting = PET_INTENSITY_SPECS[choice]
    if pet_key not in recorded:
        specs[pet_key] = setting
    elif specs[pet_key] != setting:
        logger.warning(
            "pet_intensity %r ignored: the checkpoint records the PET map %s; using the checkpoint's.",
            choice,
            specs[pet_key].to_dict(),
        )
    return specs


#: The file next to a segmentation checkpoint that records how its inputs were mapped to [-1, 1].
SPECS_RECORD_NAME = "modality_specs.json"


def write_specs_record(
    folder: str | os.PathLike, specs: Mapping[str, ModalitySpec | Mapping[str, Any]], enabled: bool = True
) -> str | None:
    """Write ``folder/modality_specs.json``: the modality specs a segmentation run maps its inputs with (e.g. which
    PET map), so that evaluating its checkpoints with another map is an error instead of a silent Dice drop
    (:func:`read_specs_record`). Atomic; ``enabled=False`` (a non-main rank) writes nothing. Returns the path.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> path = write_specs_record(folder, modality_specs_for(["ct", "pet"], "log"))
        >>> read_specs_record(os.path.join(folder, "model.pt"))["pet"].mapping.value
        'log'
    """
    if not enabled:
        return None
    os.makedirs(folder, exist_ok=True)
    record = {"modality_specs": {k: v.to_dict() for k, v in resolve_specs(specs).items()}}
    return str(atomic_write_json(os.path.join(os.fspath(folder), SPECS_RECORD_NAME), record))


def read_specs_record(checkpoint: str | os.PathLike) -> dict[str, ModalitySpec] | None:
    """The specs recorded next to ``checkpoint`` by :func:`write_specs_record`, or ``None`` where there is no record
    (a checkpoint written before records existed, or copied without its folder).

    Raises:
        ValueError: the record exists but cannot be read, naming the file.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(checkpoint))), SPECS_RECORD_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return resolve_specs(json.load(f)["modality_specs"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read the modality specs record {path!r}: {err}") from None
