"""A synthesis pool's files: its own tensor file (:meth:`save` / :meth:`load`) and NIfTI triplet folders
(:meth:`export_nifti` / :meth:`from_nifti`), as a base class of :class:`~monai_pairsynth.mixing.SynthesisPool`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import torch

from monai_pairsynth.data.nifti_io import NiftiTripletWriter, case_ids
from monai_pairsynth.data.validation import check_finite, check_pool_state
from monai_pairsynth.modalities import resolve_specs
from monai_pairsynth.utils import atomic_save_torch, remove_stale_tmp_files

from .pool_types import PoolStorage, PoolUpdate, RefillOrder

__all__ = ["PoolFiles"]

#: the pool class a classmethod builds (SynthesisPool)
_Pool = TypeVar("_Pool", bound="PoolFiles")

_FORMAT = "monai_pairsynth.SynthesisPool"
_FORMAT_VERSION = 1


class PoolFiles:
    """Saving, loading, NIfTI export and import of a :class:`~monai_pairsynth.mixing.SynthesisPool`."""

    def state_dict(self) -> dict[str, Any]:
        """The pool's content and metadata as plain tensors/containers (loadable with ``weights_only=True``)."""
        with self._lock:
            n = len(self)
            stats = self.stats
            return {
                "format": _FORMAT,
                "version": _FORMAT_VERSION,
                "keys": list(self.keys),
                "spatial_shape": list(self.spatial_shape),
                "capacity": self.capacity,
                "storage": self.storage.value,
                "specs": {k: s.to_dict() for k, s in self.specs.items()},
                "spacing": list(self.spacing),
                "seed": self.seed,
                "size": n,
                "data": {k: self._data[k][:n].clone() for k in self.keys},
                "stamps": self._stamps[:n].clone(),
                "stats": {
                    "generated": stats["generated"],
                    "accepted": stats["accepted"],
                    "surplus": stats["surplus"],
                    "rejected": stats["rejected"],
                    "failures": stats["failures"],
                    "generation_seconds": stats["generation_seconds"],
                },
            }

    def save(self, path: str | os.PathLike) -> None:
        """Write the pool to a tensor file (``torch.save``), atomically."""
        atomic_save_torch(self.state_dict(), path)

    @classmethod
    def load(
        cls: type[_Pool],
        path: str | os.PathLike,
        source: Callable[[int, torch.Generator], Mapping[str, torch.Tensor]] | None = None,
        quality_filter: Any | None = None,
        capacity: int | None = None,
        **kwargs: Any,
    ) -> _Pool:
        """Read a pool written by :meth:`save`, checked first (:func:`~monai_pairsynth.data.validation.check_pool_state`).

        Every stored field must be present, every triplet finite and every mask binary: a damaged file is an
        error naming it, never served to training. Temporary files an interrupted :meth:`save` of the same path
        left behind are removed.

        Args:
            path: the file.
            source: a source for later refills (not saved with the pool).
            quality_filter: a filter for later refills.
            capacity: new capacity (>= the number of stored triplets); default the saved one.
            kwargs: other constructor arguments (``request_size``, ``max_attempts``...).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no SynthesisPool file at {os.fspath(path)!r}.")
        remove_stale_tmp_files(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{os.fspath(path)!r} is not a readable SynthesisPool file: {err}") from err
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a SynthesisPool file (no format {_FORMAT!r}).")
        if state.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(path)!r} has SynthesisPool format version {state.get('version')!r}; "
                f"this code reads version {_FORMAT_VERSION}."
            )
        try:
            stored_specs = resolve_specs(state["specs"]) if isinstance(state.get("specs"), Mapping) else {}
        except (ValueError, TypeError) as err:
            raise ValueError(f"{os.fspath(path)!r}: unreadable modality specs: {err}") from err
        binary = {0.0, 1.0} if state.get("storage") == PoolStorage.PHYSICAL.value else {-1.0, 1.0}
        check_pool_state(state, path, {k: binary for k, spec in stored_specs.items() if spec.is_mask})
        n = int(state["size"])
        capacity = int(state["capacity"]) if capacity is None else capacity
        if capacity < n:
            raise ValueError(
                f"capacity {capacity} is smaller than the {n} triplets stored in {os.fspath(path)!r}."
            )
        pool = cls(
            capacity,
            keys=tuple(state["keys"]),
            spatial_shape=tuple(state["spatial_shape"]),
            source=source,
            quality_filter=quality_filter,
            specs=state["specs"],
            spacing=tuple(state["spacing"]),
            storage=state["storage"],
            seed=kwargs.pop("seed", int(state["seed"])),
            **kwargs,
        )
        for k in pool.keys:
            rows = state["data"][k]
            if tuple(rows.shape) != (n, 1, *pool.spatial_shape):
                raise ValueError(
                    f"{os.fspath(path)!r}: data[{k!r}] has shape {tuple(rows.shape)}, expected {(n, 1, *pool.spatial_shape)}."
                )
            pool._data[k][:n] = rows
        pool._stamps[:n] = state["stamps"]
        pool._next_stamp = int(state["stamps"].max()) + 1 if n else 0
        pool._size.fill_(n)
        for name in ("generated", "accepted", "surplus", "generation_seconds"):
            pool._stats[name] = state["stats"][name]
        pool._stats["rejected"].update(state["stats"]["rejected"])
        pool._stats["failures"].update(state["stats"]["failures"])
        return pool

    # ------------------------------------------------------------------ NIfTI (the generate module's layout)
    def export_nifti(
        self, output_dir: str | os.PathLike, prefix: str = "POOL", overwrite: bool = False
    ) -> Path:
        """Write every triplet as NIfTI in the layout of :mod:`monai_pairsynth.data.nifti_io`, in physical units.

        One folder per triplet (``<prefix>-0000/<prefix>-0000__CT.nii.gz``, ``..__PT.nii.gz``, the mask
        ``<prefix>-0000.nii.gz`` as uint8) and a ``datalist.json`` (paths relative to the folder, the modality
        specs and the spacing) that MONAI's ``load_decathlon_datalist`` and :meth:`from_nifti` read. Written by
        :class:`~monai_pairsynth.data.nifti_io.NiftiTripletWriter`: a temporary folder renamed into place at the
        end. An existing, non-empty ``output_dir`` is an error unless ``overwrite`` (then it is replaced once
        the new folder is complete).

        Returns:
            ``output_dir`` as a ``Path``.
        """
        with NiftiTripletWriter(output_dir, self.specs, overwrite=overwrite) as writer:
            for i, case_id in enumerate(case_ids(prefix, len(self))):
                triplet = self.get(i, units=PoolStorage.PHYSICAL)
                writer.add(case_id, {k: triplet[k].as_tensor() for k in self.keys}, self.affine)
            generation = {
                "source": "SynthesisPool",
                "spatial_size": list(self.spatial_shape),
                "spacing": list(self.spacing),
            }
            writer.commit(
                {
                    "description": "synthetic triplets exported from a monai_pairsynth SynthesisPool",
                    "generation": generation,
                }
            )
        return writer.output_dir

    @classmethod
    def from_nifti(
        cls: type[_Pool],
        path: str | os.PathLike,
        capacity: int | None = None,
        source: Callable[[int, torch.Generator], Mapping[str, torch.Tensor]] | None = None,
        quality_filter: Any | None = None,
        **kwargs: Any,
    ) -> _Pool:
        """A pool holding the triplets of a folder written by :mod:`monai_pairsynth.generate` or :meth:`export_nifti`.

        Args:
            path: the folder, or its ``datalist.json``.
            capacity: pool capacity (>= the number of triplets); default the number of triplets.
            source, quality_filter, kwargs: as in the constructor, for later refills.
        """

        path = Path(path)
        datalist_path = path / "datalist.json" if path.is_dir() else path
        if not datalist_path.is_file():
            raise FileNotFoundError(f"no datalist.json at {os.fspath(datalist_path)!r}.")
        try:
            datalist = json.loads(datalist_path.read_text(encoding="utf-8"))
            entries = list(datalist["training"])
            specs = datalist["modalities"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{os.fspath(datalist_path)!r} is not a generated-triplet datalist (needs 'training' and 'modalities'): {err}"
            ) from err
        if not entries:
            raise ValueError(f"{os.fspath(datalist_path)!r} lists no triplets.")
        keys = tuple(specs)
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        affine = None
        for entry in entries:
            for k in keys:
                file = datalist_path.parent / entry[k]
                if not file.is_file():
                    raise FileNotFoundError(
                        f"{os.fspath(datalist_path)!r} lists {os.fspath(file)!r}, which does not exist."
                    )
                img = nib.load(str(file))
                row = torch.as_tensor(img.get_fdata(dtype="float32"))[None]
                check_finite(row, f"{k} file {os.fspath(file)} (listed in {os.fspath(datalist_path)})")
                rows[k].append(row)
                affine = img.affine if affine is None else affine
        shapes = {tuple(r.shape) for v in rows.values() for r in v}
        if len(shapes) != 1:
            raise ValueError(
                f"the triplets of {os.fspath(datalist_path)!r} have different shapes {sorted(shapes)}."
            )
        spatial_shape = tuple(next(iter(shapes))[1:])
        spacing = (datalist.get("generation") or {}).get("spacing")
        if spacing is None:
            spacing = [float(abs(affine[:, i][:3]).max()) for i in range(len(spatial_shape))]
        n = len(entries)
        pool = cls(
            n if capacity is None else capacity,
            keys=keys,
            spatial_shape=spatial_shape,
            source=source,
            quality_filter=quality_filter,
            specs=specs,
            spacing=tuple(float(s) for s in spacing),
            **kwargs,
        )
        if pool.capacity < n:
            raise ValueError(
                f"capacity {pool.capacity} is smaller than the {n} triplets in {os.fspath(datalist_path)!r}."
            )
        data = {k: torch.stack(v) for k, v in rows.items()}
        data = {k: (v > 0.5).float() if pool.specs[k].is_mask else v for k, v in data.items()}
        if pool.storage == PoolStorage.NORMALIZED:
            data = {k: pool.specs[k].normalize(v) for k, v in data.items()}
        pool._commit(data, PoolUpdate(requested=n, accepted=n), RefillOrder.OLDEST)
        return pool
