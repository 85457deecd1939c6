"""Data: the phantom benchmark, HECKTOR / datalist loading, preprocessing, the synthesis pool and mixing."""

from __future__ import annotations

from .hecktor import (
    HECKTOR_CENTRES,
    DatasetError,
    hecktor_datalist,
    load_datalist_json,
    patient_id_from_case,
    split_by_patient,
    write_phantom_hecktor,
)
from .mixed_dataset import MixedDataset
from .phantom import PhantomDataset, PhantomTissue, make_phantom_case, phantom_affine
from .preprocessing import (
    CentreOfMassCrop,
    CentreOfMassCropd,
    CheckBinaryLabeld,
    DatasetErrorCompose,
    DenormalizeModalitiesd,
    ExtractTumourSlicesd,
    LoadCaseImaged,
    NormalizeModalitiesd,
    augmentation_transforms,
    preprocess_datalist,
    preprocessing_transforms,
)
from .synthesis_pool import (
    DiffusionPoolSource,
    EmptyPoolError,
    PhantomPoolSource,
    PoolGenerationError,
    PoolStorage,
    PoolUpdate,
    RefillOrder,
    SynthesisPool,
)
from .validation import MAX_SYNTHETIC_RATIO, ValidateCased

__all__ = [
    "HECKTOR_CENTRES",
    "MAX_SYNTHETIC_RATIO",
    "CentreOfMassCrop",
    "CentreOfMassCropd",
    "CheckBinaryLabeld",
    "DatasetError",
    "DatasetErrorCompose",
    "DenormalizeModalitiesd",
    "DiffusionPoolSource",
    "EmptyPoolError",
    "ExtractTumourSlicesd",
    "LoadCaseImaged",
    "MixedDataset",
    "NormalizeModalitiesd",
    "PhantomDataset",
    "PhantomPoolSource",
    "PhantomTissue",
    "PoolGenerationError",
    "PoolStorage",
    "PoolUpdate",
    "RefillOrder",
    "SynthesisPool",
    "ValidateCased",
    "augmentation_transforms",
    "hecktor_datalist",
    "load_datalist_json",
    "make_phantom_case",
    "patient_id_from_case",
    "phantom_affine",
    "preprocess_datalist",
    "preprocessing_transforms",
    "split_by_patient",
    "write_phantom_hecktor",
]
