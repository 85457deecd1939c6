"""Data: the phantom benchmark, HECKTOR / datalist loading, preprocessing, NIfTI triplet files."""

from __future__ import annotations

from monai_pairsynth._moved import moved_names

from .hecktor import (
    HECKTOR_CENTRES,
    DatasetError,
    hecktor_datalist,
    load_datalist_json,
    patient_id_from_case,
    split_by_patient,
    write_phantom_hecktor,
)
from .nifti_io import NiftiTripletWriter, modality_file_names
from .phantom import PhantomDataset, PhantomTissue, make_phantom_case, phantom_affine
from .preprocessing import (
    CentreOfMassCrop,
    CentreOfMassCropd,
    CheckBinaryLabeld,
    DatasetErrorCompose,
    DenormalizeModalitiesd,
    EnsureFieldOfViewd,
    ExtractTumourSlicesd,
    FieldOfViewd,
    LoadCaseImaged,
    NormalizeModalitiesd,
    augmentation_transforms,
    preprocess_datalist,
    preprocessing_transforms,
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
    "EnsureFieldOfViewd",
    "ExtractTumourSlicesd",
    "FieldOfViewd",
    "LoadCaseImaged",
    "NiftiTripletWriter",
    "NormalizeModalitiesd",
    "PhantomDataset",
    "PhantomTissue",
    "ValidateCased",
    "augmentation_transforms",
    "hecktor_datalist",
    "load_datalist_json",
    "make_phantom_case",
    "modality_file_names",
    "patient_id_from_case",
    "phantom_affine",
    "preprocess_datalist",
    "preprocessing_transforms",
    "split_by_patient",
    "write_phantom_hecktor",
]

# The pool and the mixing moved to monai_pairsynth.mixing (above the sampler), DiffusionPoolSource to
# monai_pairsynth.inferers: data/ imports neither.
__getattr__ = moved_names(
    __name__,
    {
        "DiffusionPoolSource": "monai_pairsynth.inferers.pool_source",
        **{
            name: "monai_pairsynth.mixing"
            for name in (
                "EmptyPoolError",
                "MixedDataset",
                "PhantomPoolSource",
                "PoolGenerationError",
                "PoolStorage",
                "PoolUpdate",
                "RefillOrder",
                "SynthesisPool",
            )
        },
    },
)
