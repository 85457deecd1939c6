"""HECKTOR 2022 / MONAI datalist loading, patient-level splits, and phantom cases written in HECKTOR layout.

The HECKTOR 2022 training layout is::

    root/imagesTr/<case>__CT.nii.gz   CT in HU
    root/imagesTr/<case>__PT.nii.gz   PET in SUV (its own, coarser grid)
    root/labelsTr/<case>.nii.gz       tumour mask on the CT grid

A case id is ``<centre>-<number>`` (``CHUM-001``); the patient id is that prefix, so several scans of one
patient (``CHUM-001_2``) always land in the same split. Every problem with the files (a missing PET or
label, a PET with no CT, an empty folder, a file that cannot be read) raises :class:`DatasetError`
naming the file or case, before anything is returned.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Orientation

from ..utils import atomic_write, atomic_write_json
from .phantom import make_phantom_case
from .validation import DatasetError, check_case_geometry

__all__ = [
    "HECKTOR_CENTRES",
    "DatasetError",
    "hecktor_datalist",
    "load_datalist_json",
    "patient_id_from_case",
    "split_by_patient",
    "write_phantom_hecktor",
]

#: HECKTOR 2022 centre codes, used to name written phantom cases
HECKTOR_CENTRES = ("CHUM", "CHUP", "CHUS", "CHUV", "HGJ", "HMR", "MDA", "USZ")
_IMAGE_RE = re.compile(r"^(?P<case>.+)__(?P<mod>CT|PT)\.nii(\.gz)?$")
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$")
_PATIENT_RE = re.compile(r"^([A-Za-z]+-\d+)")
_MAX_LISTED = 10


def _raise_all(problems: list[str], header: str) -> None:
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DatasetError(header + "\n  " + "\n  ".join(problems[:_MAX_LISTED]) + more)


def patient_id_from_case(case_id: str) -> str:
    """``"CHUM-001"`` and ``"CHUM-001_2"`` -> ``"CHUM-001"``; ids without a ``centre-number`` prefix are kept.

    Example:
        >>> patient_id_from_case("CHUM-001_2"), patient_id_from_case("PHANTOM-0007"), patient_id_from_case("case7")
        ('CHUM-001', 'PHANTOM-0007', 'case7')
    """
    m = _PATIENT_RE.match(case_id)
    return m.group(1) if m else case_id


def _check_readable(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Read a NIfTI header; returns its spatial shape and affine."""
    try:
        img = nib.load(str(path))
        shape = img.shape
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types (ImageFileError, OSError, EOFError, gzip errors)
        raise DatasetError(f"cannot read {what} file {path}: {type(err).__name__}: {err}") from err
    if len(shape) not in (2, 3) and not (len(shape) == 4 and shape[3] == 1):
        raise DatasetError(f"{what} file {path} has shape {shape}; expected a 2D or 3D image.")
    return tuple(int(s) for s in shape[:3]), affine


def hecktor_datalist(
    root: str | os.PathLike, require_labels: bool = True, check_readable: bool = True
) -> list[dict[str, Any]]:
    """Build a MONAI datalist from a HECKTOR 2022 folder (``imagesTr/`` and ``labelsTr/``).

    Args:
        root: dataset folder.
        require_labels: every case must have ``labelsTr/<case>.nii.gz`` (set False for unlabelled data;
            the ``"label"`` key is then omitted where missing).
        check_readable: read every NIfTI header, so an unreadable file fails here, naming it, and check the
            geometry of each case from the headers (:func:`~monai_pairsynth.data.validation.check_case_geometry`:
            all files 2D or all 3D, the label on the CT grid, the PET overlapping the CT).

    Returns:
        ``[{"ct": path, "pet": path, "label": path, "case_id": "CHUM-001", "patient_id": "CHUM-001"}, ...]``
        sorted by case id (paths are ``str``).

    Raises:
        DatasetError: missing/empty folder, a case with CT but no PET (or PET but no CT), a missing label,
            a label with no images, an unrecognised NIfTI name, an unreadable file or inconsistent geometry; the
            message names every offending file or case.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"HECKTOR dataset folder {root} does not exist or is not a folder.")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DatasetError(
            f"no imagesTr folder in {root}; expected the HECKTOR layout imagesTr/<case>__CT.nii.gz."
        )
    cases: dict[str, dict[str, Path]] = {}
    problems: list[str] = []
    for f in sorted(images_dir.iterdir()):
        if f.name.startswith(".") or not _NIFTI_RE.search(f.name):
            continue  # hidden/temporary or non-NIfTI files
        m = _IMAGE_RE.match(f.name)
        if m is None:
            problems.append(f"{f}: unrecognised image name (expected <case>__CT.nii.gz or <case>__PT.nii.gz)")
            continue
        cases.setdefault(m.group("case"), {})["ct" if m.group("mod") == "CT" else "pet"] = f
    _raise_all(problems, f"HECKTOR folder {root} has files that do not follow the naming scheme:")
    if not cases:
        raise DatasetError(
            f"no HECKTOR image files (<case>__CT.nii.gz, <case>__PT.nii.gz) found in {images_dir}."
        )
    labels: dict[str, Path] = {}
    if labels_dir.is_dir():
        for f in sorted(labels_dir.iterdir()):
            if not f.name.startswith(".") and _NIFTI_RE.search(f.name):
                labels[_NIFTI_RE.sub("", f.name)] = f
    elif require_labels:
        raise DatasetError(f"no labelsTr folder in {root} (pass require_labels=False for unlabelled data).")

    datalist = []
    for case_id, files in sorted(cases.items()):
        if "ct" not in files:
            problems.append(
                f"case {case_id}: PET file {files['pet']} has no matching CT ({images_dir / (case_id + '__CT.nii.gz')})"
            )
        if "pet" not in files:
            problems.append(
                f"case {case_id}: CT file {files['ct']} has no matching PET ({images_dir / (case_id + '__PT.nii.gz')})"
            )
        if case_id not in labels and require_labels:
            problems.append(f"case {case_id}: missing label file {labels_dir / (case_id + '.nii.gz')}")
        item: dict[str, Any] = {k: str(v) for k, v in sorted(files.items())}
        if case_id in labels:
            item["label"] = str(labels[case_id])
        item.update(case_id=case_id, patient_id=patient_id_from_case(case_id))
        datalist.append(item)
    for case_id, f in labels.items():
        if case_id not in cases:
            problems.append(f"case {case_id}: label file {f} has no CT/PET images in {images_dir}")
    _raise_all(problems, f"HECKTOR folder {root} is inconsistent:")
    if check_readable:
        for item in datalist:
            headers = {
                key: _check_readable(Path(item[key]), f"{key} (case {item['case_id']})")
                for key in ("ct", "pet", "label")
                if key in item
            }
            names = {key: f"{key} file {item[key]} (case {item['case_id']})" for key in headers}
            check_case_geometry(headers, "ct", mask_keys=["label"], names=names)
    return datalist


def load_datalist_json(
    path: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    keys: Sequence[str] = ("ct", "pet", "label"),
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Load a MONAI-style datalist JSON (``{"training": [{"ct": ..., "pet": ..., "label": ...}, ...]}``).

    Relative paths under ``keys`` are resolved against ``base_dir`` (default: the JSON file's folder).
    Entries get a ``case_id`` (from the first key's file name when absent) and a ``patient_id`` (from the
    case id, see :func:`patient_id_from_case`, when absent).

    Args:
        path: the JSON file.
        key: which list to read (``"training"``, ``"validation"``, ``"test"``, ...).
        base_dir: folder that relative paths are resolved against.
        keys: the file keys every entry must have.
        check_files: require every file to exist.

    Raises:
        DatasetError: unreadable JSON, a missing list, an entry that is not a dict or lacks a key, a file that
            does not exist (all named).
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"cannot read datalist JSON {path}: {type(err).__name__}: {err}") from err
    if not isinstance(content, Mapping) or key not in content:
        found = sorted(content) if isinstance(content, Mapping) else type(content).__name__
        raise DatasetError(f"datalist JSON {path} has no list {key!r} (found {found}).")
    entries = content[key]
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"datalist JSON {path}: {key!r} must be a non-empty list of dicts.")
    base = Path(base_dir) if base_dir is not None else path.parent
    datalist, problems = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            problems.append(f"entry {i}: expected a dict of file paths, got {type(entry).__name__}")
            continue
        item = dict(entry)
        missing = [k for k in keys if k not in item]
        if missing:
            problems.append(f"entry {i} ({item.get('case_id', '?')}): missing keys {missing}")
            continue
        for k in keys:
            p = Path(str(item[k])).expanduser()
            p = p if p.is_absolute() else base / p
            item[k] = str(p)
            if check_files and not p.is_file():
                problems.append(f"entry {i} ({item.get('case_id', p.name)}): {k} file {p} does not exist")
        if "case_id" not in item:
            name = _NIFTI_RE.sub("", Path(item[keys[0]]).name)
            item["case_id"] = re.sub(r"__(CT|PT)$", "", name)
        item.setdefault("patient_id", patient_id_from_case(str(item["case_id"])))
        datalist.append(item)
    _raise_all(problems, f"datalist JSON {path} ({key!r}) has problems:")
    return datalist


def split_by_patient(
    datalist: Sequence[Mapping[str, Any]],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    patient_key: str = "patient_id",
) -> dict[str, list[dict[str, Any]]]:
    """Seeded patient-level split into ``"train"``, ``"val"`` and ``"test"`` (no patient in two splits).

    Patients (``patient_key``, falling back to ``case_id``) are sorted, shuffled with ``seed`` and cut by
    ``fractions`` (largest-remainder rounding; every split with a positive fraction gets at least one
    patient when there are enough). The result does not depend on the order of ``datalist``.

    Example:
        >>> dl = [{"case_id": f"CHUM-{i:03d}"} for i in range(10)]
        >>> {k: len(v) for k, v in split_by_patient(dl, seed=1).items()}
        {'train': 8, 'val': 1, 'test': 1}
    """
    fractions = tuple(float(f) for f in fractions)
    if (
        len(fractions) != 3
        or any(not math.isfinite(f) or f < 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
    ):
        raise ValueError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1, got {fractions}."
        )
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(datalist):
        pid = item.get(patient_key, item.get("case_id"))
        if pid is None:
            raise DatasetError(f"datalist entry {i} has neither {patient_key!r} nor 'case_id': {dict(item)}")
        groups.setdefault(str(pid), []).append(i)
    patients = sorted(groups)
    n = len(patients)
    if n == 0:
        raise DatasetError("cannot split an empty datalist.")
    order = [patients[j] for j in np.random.default_rng(seed).permutation(n)]
    exact = [f * n for f in fractions]
    counts = [math.floor(e) for e in exact]
    for j in sorted(range(3), key=lambda j: (counts[j] - exact[j], j))[: n - sum(counts)]:
        counts[j] += 1
    for j in range(3):  # a split asked for gets at least one patient, taken from the largest split
        if fractions[j] > 0 and counts[j] == 0:
            donor = max(range(3), key=lambda d: counts[d])
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[j] += 1
    out: dict[str, list[dict[str, Any]]] = {}
    start = 0
    for name, c in zip(("train", "val", "test"), counts):
        chosen = order[start : start + c]
        start += c
        out[name] = [dict(datalist[i]) for i in sorted(i for p in chosen for i in groups[p])]
    return out


def _nifti_bytes(t: torch.Tensor, affine: torch.Tensor, dtype: type) -> bytes:
    arr = np.asarray(t.detach().cpu().numpy()[0], dtype=dtype)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def write_phantom_hecktor(
    root: str | os.PathLike,
    num_cases: int,
    base_seed: int = 0,
    spatial_dims: int = 3,
    spatial_size: Sequence[int] | None = None,
    spacing: float = 2.0,
    pet_spacing: float | None = 4.0,
    pet_offset: Sequence[float] = (3.0, -5.0, 2.0),
    axcodes: str = "RAS",
    centres: Sequence[str] = HECKTOR_CENTRES,
    write_json: bool = True,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Write ``num_cases`` phantom cases to ``root`` in the HECKTOR 2022 layout (atomic, file by file).

    Case ``i`` uses seed ``base_seed + i`` and is named ``<centre>-<number>`` with ``centres`` taken in turn
    (``CHUM-001``, ``CHUP-001``, ...). CT and label share the CT grid; with ``pet_spacing`` the PET is
    generated on its own coarser grid (covering at least the CT field of view, centre shifted by
    ``pet_offset`` mm), like real HECKTOR data; ``pet_spacing=None`` writes PET on the CT grid.

    Args:
        root: output folder (``imagesTr/`` and ``labelsTr/`` are created).
        num_cases, base_seed, spatial_dims, spatial_size, spacing: as in :class:`PhantomDataset`.
        pet_spacing: PET voxel size in mm, or None for the CT grid.
        pet_offset: shift (mm) of the PET field-of-view centre relative to the CT's.
        axcodes: orientation the files are stored in (e.g. ``"LPS"`` as DICOM-derived NIfTIs usually are).
        centres: centre codes used for the case names.
        write_json: also write ``root/dataset.json`` (MONAI datalist, ``"training"`` list, relative paths).
        overwrite: replace existing files; otherwise an existing target is an error raised before anything
            is written.

    Returns:
        The datalist, as :func:`hecktor_datalist` would return it.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     dl = write_phantom_hecktor(d, 2, spatial_size=(16, 16, 8), spacing=8.0, pet_spacing=16.0)
        ...     [c["case_id"] for c in hecktor_datalist(d)]
        ['CHUM-001', 'CHUP-001']
    """
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise ValueError(f"num_cases must be a positive int, got {num_cases!r}.")
    if not centres or any(not re.fullmatch(r"[A-Za-z]+", c) for c in centres):
        raise ValueError(
            f"centres must be non-empty letter codes like {HECKTOR_CENTRES[:2]}, got {centres!r}."
        )
    if pet_spacing is not None and not (isinstance(pet_spacing, (int, float)) and pet_spacing > 0):
        raise ValueError(f"pet_spacing must be a positive number of mm or None, got {pet_spacing!r}.")
    if len(pet_offset) not in (2, 3):
        raise ValueError(f"pet_offset must have 2 or 3 values (mm), got {pet_offset!r}.")
    orient = Orientation(axcodes=axcodes, labels=None)  # validates axcodes
    root = Path(root)
    names = [f"{centres[i % len(centres)]}-{i // len(centres) + 1:03d}" for i in range(num_cases)]
    targets = [root / "imagesTr" / f"{n}__{m}.nii.gz" for n in names for m in ("CT", "PT")]
    targets += [root / "labelsTr" / f"{n}.nii.gz" for n in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"refusing to overwrite {len(existing)} existing file(s) (pass overwrite=True): {existing[:3]}"
        )

    datalist = []
    for i, name in enumerate(names):
        seed = base_seed + i
        case = make_phantom_case(seed, spatial_dims=spatial_dims, spatial_size=spatial_size, spacing=spacing)
        pet = case["pet"]
        if pet_spacing is not None:
            fov = [n * spacing for n in case["ct"].shape[1:]]
            pet_size = [math.ceil(f / pet_spacing) + 2 for f in fov]
            offset = list(pet_offset)[:spatial_dims]
            pet = make_phantom_case(
                seed,
                spatial_dims=spatial_dims,
                spatial_size=pet_size,
                spacing=float(pet_spacing),
                grid_offset=offset,
            )["pet"]
        files = {
            "ct": (root / "imagesTr" / f"{name}__CT.nii.gz", case["ct"], np.float32),
            "pet": (root / "imagesTr" / f"{name}__PT.nii.gz", pet, np.float32),
            "label": (root / "labelsTr" / f"{name}.nii.gz", case["label"], np.uint8),
        }
        for path, img, dtype in files.values():
            img = orient(img) if spatial_dims == 3 else img
            data = _nifti_bytes(img, img.affine, dtype)
            atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data))
        datalist.append(
            {k: str(v[0]) for k, v in files.items()}
            | {"case_id": name, "patient_id": patient_id_from_case(name)}
        )
    if write_json:
        rel = [
            {k: (os.path.relpath(v, root) if k in ("ct", "pet", "label") else v) for k, v in d.items()}
            for d in datalist
        ]
        atomic_write_json(
            root / "dataset.json", {"name": "monai_pairsynth phantom (HECKTOR 2022 layout)", "training": rel}
        )
    return datalist
