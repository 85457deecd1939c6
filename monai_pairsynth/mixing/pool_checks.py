"""Settings checks of the synthetic side of a run: the mixing ratio, how the pool is synthesised (joint or
label-first, and how a label-first pool feeds its masks), a generator checkpoint and a pool file against the run's grid and modalities (re-exported by
:mod:`monai_pairsynth.bundle_checks`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from monai.utils import look_up_option

from monai_pairsynth.data.sources import BundleSettingError, _is_unset
from monai_pairsynth.data.validation import check_ratio
from monai_pairsynth.engines import read_paired_checkpoint
from monai_pairsynth.inferers.label_first_source import CONDITIONING_MODES, MaskPlacement

from .synthesis_pool import SynthesisPool

__all__ = [
    "Synthesis",
    "check_conditioning",
    "check_generator_checkpoint",
    "check_mask_placement",
    "check_pool_file",
    "check_synthesis",
    "check_synthetic_ratio",
]


class Synthesis(str, Enum):
    """How a pool's triplets are synthesised (the bundle's ``synthesis`` setting).

    - ``joint``: mask, CT and PET sampled together (:class:`~monai_pairsynth.inferers.DiffusionPoolSource`);
    - ``label_first``: real training masks rotated, scaled, deformed and placed inside the body of their case,
      CT + PET generated for them (:class:`~monai_pairsynth.inferers.LabelFirstPoolSource`): the label is
      correct by construction.
    """

    JOINT = "joint"
    LABEL_FIRST = "label_first"


def check_synthesis(synthesis: Any) -> str:
    """Validate the ``synthesis`` setting (:class:`Synthesis`); returns its value.

    Raises:
        BundleSettingError: naming the value and the options.

    Example:
        >>> check_synthesis("label_first")
        'label_first'
    """
    try:
        return look_up_option(synthesis, Synthesis).value
    except (ValueError, TypeError):
        raise BundleSettingError(
            f"synthesis must be one of {[m.value for m in Synthesis]}, got {synthesis!r}."
        ) from None


def check_conditioning(conditioning: Any, setting: str = "label_first_conditioning") -> str:
    """Validate how a label-first pool feeds its masks to the sampler (the bundle's ``label_first_conditioning``):
    ``"auto"`` (clean at t = 0 for a checkpoint trained with per-modality timesteps, else clamped), ``"clean"`` or
    ``"clamp"`` (:data:`~monai_pairsynth.inferers.label_first_source.CONDITIONING_MODES`); returns its value.

    Args:
        conditioning: the value.
        setting: the setting's name in the message.

    Raises:
        BundleSettingError: naming the setting, the value and the options.

    Example:
        >>> check_conditioning("clean")
        'clean'
        >>> check_conditioning("clear")
        Traceback (most recent call last):
        ...
        monai_pairsynth.data.sources.BundleSettingError: label_first_conditioning must be one of ['auto', 'clean', 'clamp'], got 'clear'.
    """
    try:
        return look_up_option(conditioning, CONDITIONING_MODES)
    except (ValueError, TypeError):
        raise BundleSettingError(
            f"{setting} must be one of {list(CONDITIONING_MODES)}, got {conditioning!r}."
        ) from None


def check_mask_placement(placement: Any, setting: str = "mask_placement") -> MaskPlacement | None:
    """Check the bundle's ``mask_placement`` component: a :class:`~monai_pairsynth.inferers.MaskPlacement` (or
    another callable with its call signature) or ``None`` (the default placement); returns it.

    Called in a config's ``initialize`` section with ``"@mask_placement"``, it builds the component before anything
    is trained, so a bad argument (e.g. ``--mask_placement#rotate_degrees -5``) stops the run at once with
    ``MaskPlacement``'s ``ValueError`` naming the argument.

    Raises:
        BundleSettingError: ``placement`` is neither ``None`` nor callable.

    Example:
        >>> check_mask_placement(MaskPlacement(rotate_degrees=30)).rotate_degrees
        30.0
    """
    if placement is None or (isinstance(placement, str) and _is_unset(placement)):
        return None
    if not callable(placement):
        raise BundleSettingError(
            f"{setting} must be a MaskPlacement (or null for the default one), got {placement!r}."
        )
    return placement


def check_synthetic_ratio(ratio: Any) -> float:
    """Validate the synthetic mixing ratio r = N_synthetic / N_real (0 = real only, at most
    :data:`~monai_pairsynth.data.validation.MAX_SYNTHETIC_RATIO`, 100).

    Example:
        >>> check_synthetic_ratio(0.5)
        0.5
    """
    try:
        return check_ratio(ratio, "synthetic_ratio")
    except ValueError as err:
        raise BundleSettingError(str(err)) from None


def _size_text(size: Sequence[int] | None) -> str:
    return "unknown size" if size is None else "x".join(str(int(s)) for s in size)


def _isotropic_or_none(spacing: Any) -> float | None:
    """The one spacing of an isotropic grid, ``None`` for no spacing or an anisotropic one (never raises)."""
    if spacing is None:
        return None
    values = [float(spacing)] if isinstance(spacing, (int, float)) else [float(v) for v in spacing]
    return values[0] if values and all(abs(v - values[0]) < 1e-6 for v in values) else None


def check_generator_checkpoint(
    path: str | os.PathLike | None,
    spatial_size: Sequence[int] | None = None,
    spacing: float | None = None,
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check that a diffusion checkpoint exists, is readable and matches the configured grid and modalities.

    Reading a sampling checkpoint takes a fraction of a second (the weights are not put into a network).

    Args:
        path: checkpoint written by ``train_diffusion.json`` (full or slim).
        spatial_size: the configured ``(H, W)``; ``None`` skips the check.
        spacing: the configured spacing in mm; ``None`` skips the check.
        modalities: the configured modality keys; ``None`` skips the check.

    Returns:
        ``{"path", "spatial_size", "spacing", "modalities", "spatial_dims", "model_config"}`` of the checkpoint.

    Raises:
        BundleSettingError: a missing or unreadable file, or a checkpoint of another configuration (the message
            names what differs and the overrides that would match it).
    """
    if _is_unset(path):
        raise BundleSettingError(
            "diffusion_checkpoint is not set; make one with configs/train_diffusion.json or pass --pool_file."
        )
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise BundleSettingError(
            f"diffusion_checkpoint {str(p)!r} does not exist; train one with: python -m monai.bundle run "
            "--config_file configs/train_diffusion.json --export_path <file> (see docs/README.md)."
        )
    try:
        ckpt = read_paired_checkpoint(p)
    except (ValueError, OSError) as err:
        raise BundleSettingError(f"diffusion_checkpoint {str(p)!r} is unusable: {err}") from None
    config = dict(ckpt.get("model_config") or {})
    info = {
        "path": str(p),
        "spatial_size": None if ckpt.get("spatial_size") is None else [int(s) for s in ckpt["spatial_size"]],
        "spacing": _isotropic_or_none(ckpt.get("spacing")),
        "modalities": list(config.get("modalities") or []),
        "spatial_dims": int(config.get("spatial_dims", 2)),
        "model_config": config,
    }
    problems = []
    if info["spatial_dims"] != 2:
        problems.append(f"it is a {info['spatial_dims']}D model but the bundle works on 2D slices")
    if spatial_size is not None and info["spatial_size"] != [int(s) for s in spatial_size]:
        problems.append(
            f"it was trained at {_size_text(info['spatial_size'])}, this run uses {_size_text(spatial_size)}"
        )
    if spacing is not None and (info["spacing"] is None or abs(info["spacing"] - float(spacing)) > 1e-6):
        problems.append(f"it was trained at {info['spacing']} mm, this run uses {float(spacing)} mm")
    if modalities is not None and sorted(info["modalities"]) != sorted(modalities):
        problems.append(f"it generates {info['modalities']}, this run uses {list(modalities)}")
    if problems:
        hint = ""
        if info["spatial_size"] is not None and info["spacing"] is not None:
            hint = (
                f' (to use it: --spatial_size "{info["spatial_size"]}" --spacing {info["spacing"]}'
                f"{' --modalities ' + repr(info['modalities']) if modalities is not None and sorted(info['modalities']) != sorted(modalities) else ''})"
            )
        raise BundleSettingError(
            f"diffusion_checkpoint {str(p)!r} is of another configuration: "
            + "; ".join(problems)
            + hint
            + "."
        )
    return info


def check_pool_file(
    path: str | os.PathLike | None,
    spatial_size: Sequence[int] | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check that a pool file written by ``generate.json`` exists, is non-empty and fits the configured grid.

    Returns:
        ``{"path", "size", "spatial_shape", "keys", "spacing"}``.

    Raises:
        BundleSettingError: missing/unreadable file, an empty pool, another spatial size or other keys.
    """
    if _is_unset(path):
        raise BundleSettingError("pool_file is not set.")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise BundleSettingError(
            f"pool_file {str(p)!r} does not exist; make one with configs/generate.json (it writes <output_dir>/pool.pt)."
        )
    try:
        pool = SynthesisPool.load(p)
    except (ValueError, OSError, KeyError) as err:
        raise BundleSettingError(f"pool_file {str(p)!r} is unusable: {err}") from None
    info = {
        "path": str(p),
        "size": len(pool),
        "spatial_shape": list(pool.spatial_shape),
        "keys": list(pool.keys),
        "spacing": list(pool.spacing),
    }
    if len(pool) == 0:
        raise BundleSettingError(f"pool_file {str(p)!r} holds no triplets.")
    if spatial_size is not None and list(pool.spatial_shape) != [int(s) for s in spatial_size]:
        raise BundleSettingError(
            f"pool_file {str(p)!r} holds {_size_text(pool.spatial_shape)} triplets, this run uses "
            f"{_size_text(spatial_size)}."
        )
    if keys is not None and sorted(pool.keys) != sorted(keys):
        raise BundleSettingError(
            f"pool_file {str(p)!r} holds keys {list(pool.keys)}, this run uses {list(keys)}."
        )
    return info
