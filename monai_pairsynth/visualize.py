"""PNG grids of multi-modality samples (CT window, PET colormap, mask contours) for people to look at.

Used for the phantom preview, generated triplets and evaluation reports. Works with any modality names:
an image modality becomes a column (HU in a soft-tissue window, SUV in a ``hot`` colormap, anything
else over its spec range in grey), and every mask modality is drawn as a contour on each image column.
Matplotlib runs with the Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .modalities import ModalitySpec, resolve_specs
from .utils import atomic_write

__all__ = ["default_display", "save_triplet_grid", "select_axial_slice"]

_CONTOUR_COLOURS = ("lime", "cyan", "magenta", "yellow", "deepskyblue")


def default_display(spec: ModalitySpec) -> tuple[tuple[float, float], str]:
    """Display window and colormap for a modality: HU -> soft tissue (W400/L40, grey), SUV -> [0, 8] ``hot``,
    anything else -> its spec range in grey.

    Example:
        >>> from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS
        >>> default_display(DEFAULT_MODALITY_SPECS["ct"]), default_display(DEFAULT_MODALITY_SPECS["pet"])
        (((-160.0, 240.0), 'gray'), ((0.0, 8.0), 'hot'))
    """
    unit = spec.unit.upper()
    if unit == "HU":
        return (-160.0, 240.0), "gray"
    if unit == "SUV":
        return (float(spec.low), float(min(spec.high, 8.0))), "hot"
    return (float(spec.low), float(spec.high)), "gray"


def _to_numpy(x: Any, key: str, index: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim not in (3, 4):
        raise ValueError(
            f"sample {index} key {key!r}: expected channel-first (C, H, W) or (C, H, W, D), got shape {arr.shape}."
        )
    return arr[0]


def select_axial_slice(masks: Sequence[np.ndarray], depth: int) -> int:
    """Index of the axial slice (last axis) with the most mask voxels; the middle slice without any.

    Example:
        >>> m = np.zeros((4, 4, 5)); m[1, 1, 3] = 1
        >>> select_axial_slice([m], 5), select_axial_slice([], 5)
        (3, 2)
    """
    counts = np.zeros(depth)
    for m in masks:
        counts += (m > 0.5).sum(axis=(0, 1))
    return int(np.argmax(counts)) if counts.max() > 0 else depth // 2


def _spacing(x: Any) -> tuple[float, float]:
    pixdim = getattr(x, "pixdim", None)
    if pixdim is None:
        return 1.0, 1.0
    p = [float(v) for v in (pixdim.tolist() if hasattr(pixdim, "tolist") else pixdim)]
    return (p[0], p[1]) if len(p) >= 2 else (1.0, 1.0)


def save_triplet_grid(
    samples: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    keys: Sequence[str] = ("ct", "pet", "label"),
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    normalized: bool = False,
    titles: Sequence[str] | None = None,
    samples_per_row: int = 1,
    windows: Mapping[str, tuple[float, float]] | None = None,
    cmaps: Mapping[str, str] | None = None,
    panel_inches: float = 2.2,
    dpi: int = 100,
) -> Path:
    """Write a PNG grid: one block of panels per sample, one panel per image modality, masks as contours.

    Axial slices are shown in radiological convention (anterior up, patient right on the viewer's left,
    for RAS data). For 3D samples the axial slice (last axis) with the most mask voxels is shown.

    Args:
        samples: dicts of channel-first arrays/tensors ``(C, H, W)`` or ``(C, H, W, D)`` (channel 0 shown).
        path: output PNG (written atomically; folders created).
        keys: modalities to show, in column order (masks are overlaid, not given a column, unless every key
            is a mask).
        specs: modality specs (default ``DEFAULT_MODALITY_SPECS`` for known names); a mask spec draws a
            contour.
        normalized: the samples are in [-1, 1] and are decoded with the specs first.
        titles: one title per sample (default: its ``case_id`` or ``"sample i"``).
        samples_per_row: how many samples share a row of panels.
        windows: ``{key: (low, high)}`` display windows overriding :func:`default_display`.
        cmaps: ``{key: colormap name}`` overriding :func:`default_display`.
        panel_inches, dpi: panel size and resolution.

    Returns:
        The path written.

    Example:
        >>> import tempfile, torch
        >>> s = {"ct": torch.zeros(1, 8, 8), "pet": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_triplet_grid([s, s], f"{d}/grid.png", samples_per_row=2)
        ...     p.read_bytes()[:4]
        b'\\x89PNG'
    """
    if not samples:
        raise ValueError("save_triplet_grid needs at least one sample.")
    keys = [str(k) for k in keys]
    if not keys:
        raise ValueError("keys must name at least one modality.")
    if int(samples_per_row) < 1:
        raise ValueError(f"samples_per_row must be >= 1, got {samples_per_row!r}.")
    if titles is not None and len(titles) != len(samples):
        raise ValueError(f"titles has {len(titles)} entries for {len(samples)} samples.")
    spec_map = resolve_specs({k: (specs or {}).get(k) for k in keys})
    windows, cmaps = dict(windows or {}), dict(cmaps or {})
    image_keys = [k for k in keys if not spec_map[k].is_mask] or keys
    mask_keys = [k for k in keys if spec_map[k].is_mask and k not in image_keys]

    panels = []  # per sample: ({key: 2D array}, spacing)
    for i, sample in enumerate(samples):
        missing = [k for k in keys if k not in sample]
        if missing:
            raise KeyError(f"sample {i} has no key(s) {missing} (it has {list(sample)}).")
        arrays = {}
        for k in keys:
            value = sample[k]
            if normalized:
                value = spec_map[k].denormalize(
                    torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
                )
            arrays[k] = _to_numpy(value, k, i)
        shapes = {k: a.shape for k, a in arrays.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"sample {i}: modalities have different spatial shapes {shapes}.")
        first = next(iter(arrays.values()))
        if first.ndim == 3:
            z = select_axial_slice([arrays[k] for k in mask_keys], first.shape[2])
            arrays = {k: a[..., z] for k, a in arrays.items()}
        panels.append((arrays, _spacing(sample[keys[0]])))

    per_row = min(int(samples_per_row), len(samples))
    n_rows = -(-len(samples) // per_row)
    n_cols = per_row * len(image_keys)
    header, title_h = 0.35, 0.22  # inches: legend line on top, one title line above each row
    fig_w, fig_h = panel_inches * n_cols, header + n_rows * (panel_inches + title_h)
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        n_rows,
        n_cols,
        squeeze=False,
        gridspec_kw={
            "left": 0.01,
            "right": 0.99,
            "bottom": 0.01,
            "top": 1.0 - (header + title_h) / fig_h,
            "wspace": 0.03,
            "hspace": title_h / panel_inches,
        },
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    legend = []
    for k in image_keys:
        (lo, hi), cmap = default_display(spec_map[k])
        lo, hi = (0.0, 1.0) if spec_map[k].is_mask else windows.get(k, (lo, hi))
        unit = f" {spec_map[k].unit}" if spec_map[k].unit else ""
        legend.append((k, lo, hi, cmaps.get(k, cmap), f"{k}: [{lo:g}, {hi:g}]{unit} {cmaps.get(k, cmap)}"))
    for c, mk in enumerate(mask_keys):
        legend.append((mk, 0, 0, "", f"{mk}: {_CONTOUR_COLOURS[c % len(_CONTOUR_COLOURS)]} contour"))
    fig.suptitle("   |   ".join(entry[-1] for entry in legend), fontsize=8, y=1.0 - 0.08 / fig_h, va="top")
    for i, (arrays, (sx, sy)) in enumerate(panels):
        row, block = divmod(i, per_row)
        title = titles[i] if titles is not None else str(samples[i].get("case_id", f"sample {i}"))
        for j, (k, lo, hi, cmap, _) in enumerate(legend[: len(image_keys)]):
            ax = axes[row, block * len(image_keys) + j]
            ax.imshow(
                arrays[k].T,
                cmap=cmap,
                vmin=lo,
                vmax=hi,
                origin="lower",
                aspect=sy / sx,
                interpolation="nearest",
            )
            for c, mk in enumerate(mask_keys):
                m = arrays[mk].T > 0.5
                if m.any() and not m.all():
                    ax.contour(
                        m.astype(np.float32),
                        levels=[0.5],
                        colors=_CONTOUR_COLOURS[c % len(_CONTOUR_COLOURS)],
                        linewidths=0.9,
                    )
            ax.invert_xaxis()  # radiological convention: patient right (+x in RAS) on the viewer's left
            if j == 0:  # the sample's title spans its block of panels
                ax.set_title(title, fontsize=7, loc="left")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
