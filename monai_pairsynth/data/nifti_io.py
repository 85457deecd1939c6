"""NIfTI files of triplets: HECKTOR-style file names and the one atomic writer of a triplet folder.

Every place that writes triplets to disk (:func:`monai_pairsynth.inferers.generate`,
:meth:`monai_pairsynth.mixing.SynthesisPool.export_nifti`, the bundle's ``export_pool_nifti``) writes through
:class:`NiftiTripletWriter`, so the layout, the affine handling and the atomicity are the same everywhere::

    <output_dir>/
      datalist.json                     # MONAI datalist: {"modalities", "generation", "training": [...]}
      SYNTH-0000/SYNTH-0000__CT.nii.gz  # physical units (HU), float32
      SYNTH-0000/SYNTH-0000__PT.nii.gz  # SUV, float32
      SYNTH-0000/SYNTH-0000.nii.gz      # the mask, uint8
      ...

The folder is written into a hidden temporary sibling and renamed onto ``output_dir`` only when complete; an
interrupted write leaves neither a partial folder nor the temporary one, and a replaced folder is removed only
after the new one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import nibabel as nib
import numpy as np
import torch

from monai_pairsynth.modalities import ModalitySpec

__all__ = [
    "NiftiTripletWriter",
    "affine_from_spacing",
    "case_ids",
    "check_output_dir",
    "modality_file_names",
    "move_into_place",
    "write_nifti",
]

_SUFFIXES = {"ct": "CT", "pet": "PT"}


def modality_file_names(case_id: str, specs: Mapping[str, ModalitySpec]) -> dict[str, str]:
    """HECKTOR-style file names of one case: ``<case>__CT.nii.gz``, ``<case>__PT.nii.gz``, ``<case>.nii.gz``.

    A single mask modality gets the bare case name (HECKTOR's label name); other modalities are
    ``<case>__<KEY>.nii.gz``.

    Example:
        >>> from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS as S
        >>> modality_file_names("SYNTH-0003", S)
        {'ct': 'SYNTH-0003__CT.nii.gz', 'pet': 'SYNTH-0003__PT.nii.gz', 'label': 'SYNTH-0003.nii.gz'}
    """
    masks = [k for k, s in specs.items() if s.is_mask]
    names = {}
    for key, spec in specs.items():
        if spec.is_mask and len(masks) == 1:
            names[key] = f"{case_id}.nii.gz"
        else:
            names[key] = f"{case_id}__{_SUFFIXES.get(key, key.upper())}.nii.gz"
    if len(set(names.values())) != len(names):
        raise ValueError(f"modality keys {list(specs)} give clashing file names {list(names.values())}.")
    return names


def case_ids(prefix: str, num: int) -> list[str]:
    """``num`` case ids ``<prefix>-0000``, ``<prefix>-0001``, ... (at least four digits).

    Example:
        >>> case_ids("SYNTH", 2)
        ['SYNTH-0000', 'SYNTH-0001']
    """
    width = max(4, len(str(num - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(num)]


def affine_from_spacing(spacing: Sequence[float], spatial_dims: int) -> torch.Tensor:
    """A 4x4 (MONAI convention, also for 2D) diagonal affine with ``spacing`` on the first ``spatial_dims`` axes.

    Example:
        >>> affine_from_spacing((2.0, 3.0), 2).diagonal().tolist()
        [2.0, 3.0, 1.0, 1.0]
    """
    affine = torch.eye(4, dtype=torch.float64)
    for i in range(spatial_dims):
        affine[i, i] = float(spacing[i])
    return affine


def write_nifti(x: torch.Tensor, affine: Any, path: str | os.PathLike, is_mask: bool) -> None:
    """Write channel 0 of ``x`` (``(C, H, W[, D])``) as one NIfTI file: uint8 for a mask, else float32; mm units."""
    arr = torch.as_tensor(x).detach().cpu().numpy()[0]
    arr = arr.astype(np.uint8) if is_mask else arr.astype(np.float32)
    affine = np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, os.fspath(path))


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """``output_dir`` as a ``Path``; raises ``FileExistsError`` for a file, or a non-empty folder unless ``overwrite``."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"output_dir {os.fspath(output_dir)!r} exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output_dir {os.fspath(output_dir)!r} already exists and is not empty; pass overwrite=True "
            "(--overwrite) to replace it."
        )
    return output_dir


def move_into_place(tmp: Path, output_dir: Path) -> None:
    """Rename the finished temporary folder onto ``output_dir``; an existing folder is removed only afterwards."""
    old = None
    if output_dir.exists():
        old = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(output_dir, old)
    try:
        os.replace(tmp, output_dir)
    except BaseException:
        if old is not None:
            os.replace(old, output_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class NiftiTripletWriter:
    """Writes a folder of NIfTI triplets and its ``datalist.json`` atomically (see the module docstring).

    Use it as a context manager: :meth:`add` each case, then :meth:`commit` the datalist; leaving the block
    without a commit (an exception, an interrupt) removes the temporary folder and leaves ``output_dir`` as it was.

    Args:
        output_dir: the folder to write.
        specs: the modality specs (file names, mask dtype, the datalist's ``"modalities"``).
        overwrite: replace an existing, non-empty ``output_dir`` (only once the new folder is complete);
            when False such a folder is a ``FileExistsError`` raised before anything is written.

    Example:
        >>> import tempfile, torch
        >>> from monai_pairsynth.modalities import DEFAULT_MODALITY_SPECS as S
        >>> out = Path(tempfile.mkdtemp()) / "triplets"
        >>> with NiftiTripletWriter(out, S) as writer:
        ...     entry = writer.add("SYNTH-0000", {k: torch.zeros(1, 4, 4) for k in S}, affine_from_spacing((2, 2), 2))
        ...     path = writer.commit({"description": "zeros"})
        >>> sorted(p.name for p in (out / "SYNTH-0000").iterdir())
        ['SYNTH-0000.nii.gz', 'SYNTH-0000__CT.nii.gz', 'SYNTH-0000__PT.nii.gz']
    """

    def __init__(
        self, output_dir: str | os.PathLike, specs: Mapping[str, ModalitySpec], overwrite: bool = False
    ) -> None:
        self.output_dir = check_output_dir(output_dir, overwrite)
        self.specs = dict(specs)
        self.entries: list[dict[str, Any]] = []
        self.tmp: Path | None = None

    def __enter__(self) -> NiftiTripletWriter:
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.output_dir.parent / f".{self.output_dir.name}.partial-{uuid.uuid4().hex[:12]}"
        self.tmp.mkdir()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.tmp is not None:  # not committed
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def add(
        self, case_id: str, triplet: Mapping[str, torch.Tensor], affine: Any, **extra: Any
    ) -> dict[str, Any]:
        """Write one case (``{key: (1, *spatial)}`` in physical units); returns its datalist entry.

        ``extra`` fields (e.g. ``sample_seed``) are added to the entry after ``case_id``; ``synthetic`` is True
        unless given.
        """
        if self.tmp is None:
            raise RuntimeError("NiftiTripletWriter.add needs an open writer: use it in a `with` block.")
        names = modality_file_names(case_id, self.specs)
        (self.tmp / case_id).mkdir()
        entry: dict[str, Any] = {}
        for key, spec in self.specs.items():
            write_nifti(triplet[key], affine, self.tmp / case_id / names[key], spec.is_mask)
            entry[key] = f"{case_id}/{names[key]}"
        entry.update(case_id=case_id, **extra)
        entry.setdefault("synthetic", True)
        self.entries.append(entry)
        return entry

    def commit(self, header: Mapping[str, Any], files: Mapping[str, Any] | None = None) -> Path:
        """Write ``datalist.json`` (``header`` + the modalities + the entries) and move the folder into place.

        Args:
            header: datalist fields before the entries (``"description"``, ``"generation"``, ...).
            files: further files to write first, ``{name: callable(path)}`` (e.g. a preview PNG).

        Returns:
            the path of ``datalist.json`` in ``output_dir``.
        """
        if self.tmp is None:
            raise RuntimeError("NiftiTripletWriter.commit needs an open writer: use it in a `with` block.")
        datalist = {
            "description": "synthetic triplets generated by monai_pairsynth",
            "modalities": {k: s.to_dict() for k, s in self.specs.items()},
            **header,
            "numTraining": len(self.entries),
            "training": self.entries,
        }
        (self.tmp / "datalist.json").write_text(json.dumps(datalist, indent=2) + "\n", encoding="utf-8")
        for name, write in (files or {}).items():
            write(self.tmp / name)
        move_into_place(self.tmp, self.output_dir)
        self.tmp = None
        return self.output_dir / "datalist.json"
