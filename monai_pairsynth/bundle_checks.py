"""Settings checks of the bundle and its one-line errors (the bundle configs' ``initialize`` sections call these).

A bad ``dataset_dir``, ratio, ``synthesis``, ``label_first_conditioning``, generator checkpoint or pool file stops
the bundle with one clear line before anything is trained or written (:func:`install_one_line_errors`,
:func:`check_dataset_dir`, :func:`check_synthetic_ratio`, :func:`check_synthesis`, :func:`check_conditioning`,
:func:`check_generator_checkpoint`, :func:`check_pool_file`, :func:`check_files_exist`,
:func:`check_mixing_settings`); :func:`check_mask_placement` builds the ``mask_placement`` component there too, so
that a bad argument of it stops the run before anything is trained.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_pairsynth.data.hecktor import DatasetError
from monai_pairsynth.data.sources import BundleSettingError, _is_unset, real_datalist
from monai_pairsynth.data.validation import check_allocation
from monai_pairsynth.inferers.label_first_source import MaskPlacement
from monai_pairsynth.mixing.pool_checks import (
    _size_text,
    check_conditioning,
    check_generator_checkpoint,
    check_mask_placement,
    check_pool_file,
    check_synthesis,
    check_synthetic_ratio,
)

__all__ = [
    "BundleSettingError",
    "check_conditioning",
    "check_dataset_dir",
    "check_files_exist",
    "check_generator_checkpoint",
    "check_mask_placement",
    "check_mixing_settings",
    "check_pool_file",
    "check_synthesis",
    "check_synthetic_ratio",
    "check_training_budget",
    "describe",
    "install_one_line_errors",
]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _raised_by_mask_placement(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``ValueError`` raised by :class:`MaskPlacement`'s argument checks (a bad
    ``mask_placement#...`` value of a bundle config)."""
    if type(exc) is not ValueError or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code is MaskPlacement.__init__.__code__


def _user_error(exc: BaseException | None) -> BaseException | None:
    """The first :class:`BundleSettingError` / ``DatasetError`` / bad :class:`MaskPlacement` argument in an
    exception's cause chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (BundleSettingError, DatasetError)) or _raised_by_mask_placement(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def install_one_line_errors() -> None:
    """Print a bad-setting error as one line instead of MONAI's long traceback, when nothing catches it.

    ``python -m monai.bundle run`` re-raises any failure of a config expression as
    ``RuntimeError("Failed to evaluate ConfigExpression ...")`` under a traceback of some 50 lines that hides the
    reason. Called first in a config's ``initialize`` section, this installs a ``sys.excepthook`` that, for an
    uncaught exception caused by a :class:`BundleSettingError`, a
    :class:`~monai_pairsynth.data.hecktor.DatasetError` or a bad argument of the ``mask_placement`` component
    (:class:`~monai_pairsynth.inferers.MaskPlacement`'s ``ValueError``, printed as
    ``"ValueError: mask_placement#<argument> ..."``), prints only ``"<ErrorType>: <message>"`` to stderr (the
    process still exits with status 1). Every other exception keeps the usual traceback, and callers in Python
    (``monai.bundle.run(...)``) still receive the exception. Installing twice is a no-op.
    """
    if getattr(sys.excepthook, "_monai_pairsynth_one_line", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        err = _user_error(exc)
        if err is None:
            previous(exc_type, exc, tb)
            return
        # MaskPlacement's messages start with the argument's name: name it as the config path that sets it
        prefix = "mask_placement#" if _raised_by_mask_placement(err) else ""
        print(f"{type(err).__name__}: {prefix}{_one_line(str(err))}", file=sys.stderr, flush=True)

    hook._monai_pairsynth_one_line = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def check_dataset_dir(
    dataset_dir: str | os.PathLike | None,
    splits: Sequence[str] = ("train",),
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    keys: Sequence[str] = ("ct", "pet", "label"),
) -> dict[str, int]:
    """Check that ``dataset_dir`` is unset (phantom) or gives a non-empty patient-level split for each of ``splits``.

    Returns:
        ``{split: number of cases}`` (empty for the phantom).

    Raises:
        BundleSettingError: as :func:`real_datalist`.

    Example:
        >>> check_dataset_dir(None)
        {}
    """
    counts: dict[str, int] = {}
    for split in splits:
        items = real_datalist(dataset_dir, split, fractions=fractions, seed=seed, keys=keys)
        if items is None:
            return {}
        counts[split] = len(items)
    return counts


def check_files_exist(paths: Mapping[str, str | os.PathLike | None], hint: str = "") -> dict[str, str]:
    """Check that every set path of ``{setting name: path}`` is an existing file (unset ones are skipped).

    Returns:
        ``{setting name: path}`` of the set ones.

    Raises:
        BundleSettingError: naming the first missing file's setting, the path and ``hint``.

    Example:
        >>> check_files_exist({"baseline_checkpoint": None})
        {}
    """
    found = {}
    for name, path in paths.items():
        if _is_unset(path):
            continue
        p = Path(str(path)).expanduser()
        if not p.is_file():
            raise BundleSettingError(f"{name} {str(p)!r} does not exist" + (f"; {hint}." if hint else "."))
        found[name] = str(p)
    return found


def check_training_budget(max_minutes: Any = None, epochs: Any = None) -> None:
    """Check ``train_diffusion.json``'s budget: ``max_minutes`` unset or a positive number of minutes, ``epochs``
    unset or an integer >= 1 (the trainer's own checks, raised where the bundle starts, naming the setting).

    Raises:
        BundleSettingError: naming the setting and its value.

    Example:
        >>> check_training_budget(max_minutes=None, epochs=50)
        >>> check_training_budget(max_minutes=0)
        Traceback (most recent call last):
        ...
        monai_pairsynth.data.sources.BundleSettingError: max_minutes must be a positive number of minutes or null, got 0.
    """
    if not _is_unset(max_minutes):
        ok = isinstance(max_minutes, (int, float)) and not isinstance(max_minutes, bool)
        if not ok or not math.isfinite(float(max_minutes)) or float(max_minutes) <= 0:
            raise BundleSettingError(
                f"max_minutes must be a positive number of minutes or null, got {max_minutes!r}."
            )
    if not _is_unset(epochs):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise BundleSettingError(f"epochs must be an integer >= 1, got {epochs!r}.")


def check_mixing_settings(
    synthetic_ratio: Any,
    pool_file: str | os.PathLike | None = None,
    diffusion_checkpoint: str | os.PathLike | None = None,
    spatial_size: Sequence[int] | None = None,
    spacing: float | None = None,
    keys: Sequence[str] | None = None,
    pool_size: int | None = None,
    synthesis: str | None = None,
    conditioning: str | None = None,
) -> float:
    """Check the synthetic-mixing settings of a segmentation run before anything is trained.

    ``synthetic_ratio`` must be a number in ``[0, 100]`` (:data:`~monai_pairsynth.data.validation.MAX_SYNTHETIC_RATIO`);
    when it is above 0, ``pool_file`` (if set) must be a pool of the configured grid and keys, else
    ``diffusion_checkpoint`` must be a generator of the configured grid, spacing and modalities, and a set
    ``pool_size`` must fit in the memory available, a set ``synthesis`` must be ``"joint"`` or
    ``"label_first"`` (:func:`check_synthesis`) and a set ``conditioning`` (the ``label_first_conditioning``
    setting) ``"auto"``, ``"clean"`` or ``"clamp"`` (:func:`check_conditioning`), these two checked whatever the
    ratio. Nothing is checked about the generator when the ratio is 0 (real only).

    Returns:
        the ratio as a float.

    Raises:
        BundleSettingError: naming the setting and the value.

    Example:
        >>> check_mixing_settings(0, diffusion_checkpoint="/no/such/file.pt")
        0.0
    """
    ratio = check_synthetic_ratio(synthetic_ratio)
    if synthesis is not None:
        check_synthesis(synthesis)
    if conditioning is not None:
        check_conditioning(conditioning)
    if ratio > 0 and not _is_unset(pool_size) and spatial_size is not None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise BundleSettingError(
                f"pool_size must be an integer >= 1 (or null: r x N_real), got {pool_size!r}."
            )
        n_keys = len(keys) if keys is not None else 3
        try:  # the pool is allocated in full before generation starts: refuse one that cannot fit, now
            check_allocation(
                int(pool_size) * n_keys * math.prod(int(s) for s in spatial_size) * 4,
                "pool_size",
                pool_size,
                f"{n_keys} modalities x {_size_text(spatial_size)} float32 voxels per triplet",
                shared=True,
            )
        except ValueError as err:
            raise BundleSettingError(str(err)) from None
    if ratio > 0:
        if not _is_unset(pool_file):
            check_pool_file(pool_file, spatial_size=spatial_size, keys=keys)
        else:
            check_generator_checkpoint(
                diffusion_checkpoint, spatial_size=spatial_size, spacing=spacing, modalities=keys
            )
    return ratio


def describe(settings: Mapping[str, Any]) -> str:
    """One line summarising the run's main settings, for the log."""
    return ", ".join(f"{k}={v}" for k, v in settings.items())
