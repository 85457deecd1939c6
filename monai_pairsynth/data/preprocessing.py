"""Preprocessing and augmentation transforms for PET/CT/mask samples (MONAI dictionary transforms).

The file pipeline built by :func:`preprocessing_transforms` is, in MONAI terms::

    LoadCaseImaged -> EnsureChannelFirstd -> ValidateCased -> CheckBinaryLabeld -> Orientationd("RAS")
      -> GaussianAntiAliasd(images, where the target spacing is coarser than the file's)
      -> Spacingd(CT and masks -> 2 mm; bilinear images, nearest masks)
      -> [FieldOfViewd("fov": where every image was scanned)] -> ResampleToMatchd(PET -> the 2 mm CT grid)
      -> NormalizeModalitiesd([-1, 1] per ModalitySpec) -> ExtractTumourSlicesd (2D axial tumour slices)
      -> CentreOfMassCropd(128 x 128 around the body's centre of mass; padded with -1: air, zero uptake)

Our own transforms cover only what MONAI lacks: reading errors and label checks that name the file
(:class:`~monai_pairsynth.data.hecktor.DatasetError`), a Gaussian pre-filter whose width follows each file's
spacing, the field-of-view mask, spec-driven normalisation, tumour-slice extraction (a multi-sample transform)
and a crop centred on the body rather than the image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandAffined,
    RandFlipd,
    ResampleToMatchd,
    Spacingd,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from ..modalities import ModalitySpec, resolve_specs
from .cropping import CentreOfMassCrop, CentreOfMassCropd, ExtractTumourSlicesd
from .resampling import (
    EnsureFieldOfViewd,
    FieldOfViewd,
    GaussianAntiAliasd,
    anti_aliasing_sigma,
    gaussian_blur,
)
from .validation import (
    DatasetError,
    ValidateCased,
    check_label_map,
    check_label_values,
    describe_key,
)

__all__ = [
    "CentreOfMassCrop",
    "CentreOfMassCropd",
    "CheckBinaryLabeld",
    "DatasetErrorCompose",
    "DenormalizeModalitiesd",
    "EnsureFieldOfViewd",
    "ExtractTumourSlicesd",
    "FieldOfViewd",
    "GaussianAntiAliasd",
    "LoadCaseImaged",
    "NormalizeModalitiesd",
    "anti_aliasing_sigma",
    "augmentation_transforms",
    "gaussian_blur",
    "preprocess_datalist",
    "preprocessing_transforms",
]

logger = logging.getLogger(__name__)


def _specs_for(
    keys: Sequence[Hashable], specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None
) -> dict[str, ModalitySpec]:
    if specs is None:
        return resolve_specs([str(k) for k in keys])
    resolved = resolve_specs(specs)
    missing = [k for k in keys if str(k) not in resolved]
    if missing:
        # keys without an explicit spec fall back to the defaults (an unknown name is an error there)
        resolved.update(resolve_specs([str(k) for k in missing]))
    return resolved


class DatasetErrorCompose(Compose):
    """A :class:`monai.transforms.Compose` that re-raises a :class:`DatasetError` from inside the chain as itself.

    MONAI wraps every exception raised by a transform in ``RuntimeError("applying transform ...")``; this
    keeps the file-naming :class:`DatasetError` at the top for callers of the pipeline.
    """

    def __call__(self, input_, *args: Any, **kwargs: Any):
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as err:
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, DatasetError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause.with_traceback(cause.__traceback__) from err


class LoadCaseImaged(LoadImaged):
    """:class:`monai.transforms.LoadImaged` whose reading errors are :class:`DatasetError` naming the key, file and case.

    Only ``image_only=True`` (the MONAI default) is supported: the metadata lives on the ``MetaTensor``.
    """

    def __init__(self, keys: KeysCollection, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("image_only", True) is not True:
            raise ValueError(
                "LoadCaseImaged supports only image_only=True (metadata stays on the MetaTensor)."
            )
        super().__init__(keys, *args, **kwargs)

    def __call__(self, data, reader=None):
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self._loader(d[key], reader)
            except Exception as err:
                case = f" (case {d['case_id']})" if "case_id" in d else ""
                raise DatasetError(
                    f"cannot read {key} file {d[key]}{case}: {type(err).__name__}: {err}"
                ) from err
        return d


class CheckBinaryLabeld(MapTransform):
    """Check that a mask holds only {0, 1}; optionally map the values of ``foreground_values`` to 1 first.

    HECKTOR 2022 labels hold 1 (primary tumour, GTVp) and 2 (nodes, GTVn): pass ``foreground_values=(1, 2)``
    to merge them into one tumour mask, or ``(1,)`` to keep the primary tumour only (2 becomes 0).

    Args:
        keys: mask keys.
        foreground_values: label values that become 1. Every other label value of a label map (a non-negative
            integer: 0, 2, 3, ...) becomes 0; non-integer or negative values (an interpolated or corrupt
            mask) are an error. None means the mask must already be binary {0, 1}.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        DatasetError: with ``foreground_values=None``, values outside {0, 1}; otherwise values that are not
            non-negative integers; naming the file or case and the values found.

    Example:
        >>> import torch
        >>> CheckBinaryLabeld("label", foreground_values=(1, 2))({"label": torch.tensor([[0.0, 2.0, 1.0]])})["label"]
        tensor([[0., 1., 1.]])
        >>> CheckBinaryLabeld("label", foreground_values=(1,))({"label": torch.tensor([[0.0, 2.0, 1.0]])})["label"]
        tensor([[0., 0., 1.]])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection,
        foreground_values: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.foreground_values = (
            None if foreground_values is None else tuple(float(v) for v in foreground_values)
        )
        if self.foreground_values is not None and (
            not self.foreground_values or 0.0 in self.foreground_values
        ):
            raise ValueError(f"foreground_values must be non-empty and exclude 0, got {foreground_values!r}.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            t = convert_to_tensor(img, track_meta=False)
            if self.foreground_values is None:
                check_label_values(t, {0.0, 1.0}, describe_key(d, key))
            else:
                check_label_map(t, describe_key(d, key))
                fg = torch.zeros_like(t, dtype=torch.bool)
                for v in self.foreground_values:
                    fg |= t == v
                d[key] = convert_to_dst_type(fg.to(t.dtype if t.is_floating_point() else torch.float32), img)[
                    0
                ]
        return d


class NormalizeModalitiesd(MapTransform):
    """Map each key from physical units to [-1, 1] with its :class:`~monai_pairsynth.modalities.ModalitySpec`.

    Images are clipped to ``[low, high]`` and scaled linearly; masks become {-1, 1}. Shape, dtype (float) and
    ``MetaTensor`` metadata are kept. :class:`DenormalizeModalitiesd` is the inverse.

    Args:
        keys: keys to normalise.
        specs: ``{key: ModalitySpec or dict}``; keys without a spec use ``DEFAULT_MODALITY_SPECS``.
        allow_missing_keys: don't raise if a key is missing.

    Example:
        >>> import torch
        >>> d = NormalizeModalitiesd(["ct", "pet"])({"ct": torch.tensor([[-1000.0, 0.0]]), "pet": torch.tensor([[7.5]])})
        >>> d["ct"].tolist(), d["pet"].tolist()
        ([[-1.0, 0.0]], [[0.0]])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection,
        specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.specs = _specs_for(self.keys, specs)

    def _apply(self, spec: ModalitySpec, img: Any) -> Any:
        return spec.normalize(img)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            out = self._apply(
                self.specs[str(key)], convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
            )
            d[key] = convert_to_dst_type(out, img, dtype=out.dtype)[0]
        return d


class DenormalizeModalitiesd(NormalizeModalitiesd):
    """Map each key from [-1, 1] back to physical units (HU, SUV, binary {0, 1} mask): the inverse of
    :class:`NormalizeModalitiesd`.

    Example:
        >>> import torch
        >>> DenormalizeModalitiesd(["pet", "label"])({"pet": torch.tensor([0.0]), "label": torch.tensor([-1.0, 1.0])})
        {'pet': tensor([7.5000]), 'label': tensor([0., 1.])}
    """

    def _apply(self, spec: ModalitySpec, img: Any) -> Any:
        return spec.denormalize(img)


def preprocessing_transforms(
    keys: Sequence[str] = ("ct", "pet", "label"),
    label_key: str = "label",
    spacing: float | Sequence[float] = 2.0,
    spatial_size: Sequence[int] = (128, 128),
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    reference_key: str | None = None,
    foreground_values: Sequence[float] | None = None,
    extract_slices: bool = True,
    min_tumour_voxels: int = 1,
    body_threshold: float = -500.0,
    load: bool = True,
    anti_aliasing: bool = True,
    fov_key: str | None = None,
) -> Compose:
    """The file-to-training-sample pipeline (see the module docstring) as a :class:`DatasetErrorCompose`.

    Args:
        keys: modality keys (images and masks, as in ``specs``); files are loaded from these keys.
        label_key: the tumour mask (binarity checked, used for slice extraction).
        spacing: target voxel size in mm (2 mm in the paper).
        spatial_size: output in-plane size after the centre-of-mass crop (``(128, 128)``); with
            ``extract_slices=False`` a volume keeps its ``D`` unless a third entry is given.
        specs: modality specs (default ``DEFAULT_MODALITY_SPECS``).
        reference_key: the grid all others are resampled onto and whose body defines the crop centre
            (default: the first image key, the CT).
        foreground_values: label values merged into the tumour (HECKTOR 2022: ``(1, 2)`` for GTVp + GTVn);
            None requires a binary label.
        extract_slices: return a list of 2D axial tumour slices per case (else the cropped volume).
        min_tumour_voxels: minimum tumour voxels of a kept slice.
        body_threshold: the reference image's body threshold in physical units (-500 HU for CT).
        load: start with :class:`LoadCaseImaged` + ``EnsureChannelFirstd`` (False for in-memory
            ``MetaTensor`` inputs, e.g. 3D phantom cases).
        anti_aliasing: Gaussian pre-filter (:class:`GaussianAntiAliasd`) of every image along the axes where
            ``spacing`` is coarser than its file's (no effect where the file is as fine or finer).
        fov_key: if set (e.g. ``"fov"``), each sample carries a ``{0, 1}`` field-of-view mask under this key
            (:class:`FieldOfViewd`): 0 where an image was never scanned (outside the PET's or the CT's extent,
            or padding added by the crop). Off by default. The diffusion loss leaves out what it marks 0 when a
            batch carries it, and the test Dice and pairedness do where a real sample does
            (``build_training_dataset(use_fov_mask=True)`` turns it on for training, docs/data.md section 3.1);
            an augmentation must move it with the images: list it in :func:`augmentation_transforms` keys with
            :data:`~monai_pairsynth.modalities.FOV_SPEC` (a mask: nearest).

    Returns:
        A Compose; called on a datalist item it returns a list of slice dicts (or one dict), values in
        [-1, 1], each image ``(1, *spatial_size)``. The crop pads every key with -1 (air for CT, zero uptake
        for PET, background for masks) and the field-of-view mask with 0.

    Raises:
        DatasetError: unreadable file, non-finite values, a non-real dtype, inconsistent geometry of the case's
            files (2D beside 3D, a mask off the reference grid, an image outside the reference) or a non-binary
            label, naming the file and case (:class:`~monai_pairsynth.data.validation.ValidateCased`).
    """
    keys = list(keys)
    if label_key not in keys:
        raise ValueError(f"label_key {label_key!r} must be one of keys {keys}.")
    spec_map = _specs_for(keys, specs)
    image_keys = [k for k in keys if not spec_map[k].is_mask]
    if not image_keys:
        raise ValueError(f"at least one key must be an image modality, got only masks: {keys}.")
    ref = reference_key if reference_key is not None else image_keys[0]
    if ref not in keys:
        raise ValueError(f"reference_key {ref!r} must be one of keys {keys}.")
    mask_keys = [k for k in keys if spec_map[k].is_mask]
    if fov_key is not None and fov_key in keys:
        raise ValueError(f"fov_key {fov_key!r} must not be one of keys {keys}.")
    # masks are on the reference grid (ValidateCased): they go to the target spacing with it; every other image
    # is resampled once, straight onto the reference's target grid (not up to the CT's fine grid first)
    on_ref_grid = [ref, *mask_keys]
    others = [k for k in image_keys if k != ref]
    threshold = float(spec_map[ref].normalize(torch.tensor(float(body_threshold))))
    transforms: list[Callable] = []
    if load:
        transforms += [LoadCaseImaged(keys, image_only=True), EnsureChannelFirstd(keys)]
    transforms += [
        ValidateCased(keys, reference_key=ref, mask_keys=mask_keys),
        CheckBinaryLabeld(mask_keys, foreground_values=foreground_values),
        Orientationd(keys, axcodes="RAS", labels=None),
    ]
    if anti_aliasing:
        transforms.append(GaussianAntiAliasd(image_keys, spacing))
    transforms.append(
        Spacingd(
            on_ref_grid,
            pixdim=spacing,
            mode=["nearest" if spec_map[k].is_mask else "bilinear" for k in on_ref_grid],
            padding_mode="border",
            dtype=np.float32,
        )
    )
    if fov_key is not None:
        transforms.append(FieldOfViewd(others, reference_key=ref, fov_key=fov_key))
    if others:
        transforms.append(
            ResampleToMatchd(others, key_dst=ref, mode="bilinear", padding_mode="zeros", dtype=np.float32)
        )
    transforms.append(NormalizeModalitiesd(keys, spec_map))
    carried = keys + ([fov_key] if fov_key is not None else [])
    if extract_slices:
        transforms.append(
            ExtractTumourSlicesd(carried, label_key=label_key, min_tumour_voxels=min_tumour_voxels)
        )
    pad_values: dict[str, float | str] = {k: -1.0 for k in keys}  # -1: air, zero uptake, background
    if fov_key is not None:
        pad_values[fov_key] = 0.0  # what the crop adds was never scanned
    transforms.append(
        CentreOfMassCropd(
            carried, source_key=ref, spatial_size=spatial_size, threshold=threshold, pad_value=pad_values
        )
    )
    return DatasetErrorCompose(transforms)


def augmentation_transforms(
    keys: Sequence[str] = ("ct", "pet", "label"),
    prob: float = 0.5,
    rotate_degrees: float = 10.0,
    translate_voxels: float = 8.0,
    flip_prob: float = 0.5,
    spatial_dims: int = 2,
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
) -> Compose:
    """Training augmentation, drawn once per sample and applied identically to every key.

    ``RandAffined`` (probability ``prob``: rotation up to ``±rotate_degrees`` in the axial plane,
    translation up to ``±translate_voxels`` in-plane; bilinear for images, nearest for masks so they stay
    binary; border padding) then ``RandFlipd`` (left-right, probability ``flip_prob``). Works on
    physical or normalised samples. Seed it with ``.set_random_state(seed)``.

    Example:
        >>> import torch
        >>> aug = augmentation_transforms(["ct", "label"], prob=1.0, flip_prob=0.0).set_random_state(0)
        >>> label = torch.zeros(1, 16, 16); label[0, 5:10, 5:10] = 1
        >>> out = aug({"ct": torch.zeros(1, 16, 16), "label": label})
        >>> sorted(out["label"].unique().tolist()), tuple(out["ct"].shape)
        ([0.0, 1.0], (1, 16, 16))
    """
    for name, p in (("prob", prob), ("flip_prob", flip_prob)):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p!r}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    if rotate_degrees < 0 or translate_voxels < 0:
        raise ValueError(
            f"rotate_degrees and translate_voxels must be >= 0, got {rotate_degrees}, {translate_voxels}."
        )
    keys = list(keys)
    spec_map = _specs_for(keys, specs)
    theta = math.radians(float(rotate_degrees))
    rotate_range = (theta,) if spatial_dims == 2 else (0.0, 0.0, theta)
    translate_range = (translate_voxels,) * 2 + ((0.0,) if spatial_dims == 3 else ())
    return Compose(
        [
            RandAffined(
                keys,
                prob=prob,
                rotate_range=rotate_range,
                translate_range=translate_range,
                mode=["nearest" if spec_map[k].is_mask else "bilinear" for k in keys],
                padding_mode="border",
            ),
            RandFlipd(keys, prob=flip_prob, spatial_axis=0),
        ]
    )


def _root_cause(err: BaseException) -> BaseException:
    """The innermost cause of MONAI's ``RuntimeError("applying transform ...")`` wrapping."""
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    return err


def preprocess_datalist(
    datalist: Iterable[Mapping[str, Any]],
    transform: Callable,
    summary: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Apply ``transform`` (e.g. :func:`preprocessing_transforms`) to every item, flattening slice lists.

    Errors are raised as :class:`DatasetError` naming the case and the root cause (not MONAI's "applying
    transform" wrapper); nothing is returned half-way. A case that gives no sample (an empty mask) is logged
    by name and counted; one summary line is logged at the end.

    Args:
        datalist: items (file paths or in-memory cases).
        transform: the per-case pipeline.
        summary: optional dict that receives ``cases``, ``samples`` and ``empty_cases`` (the ids of cases that
            gave no sample), for a run's summary.

    Example:
        >>> from monai_pairsynth.data import make_phantom_case
        >>> cases = [make_phantom_case(s, spatial_dims=3, spatial_size=(16, 16, 8), spacing=16.0) for s in (0, 1)]
        >>> t = preprocessing_transforms(spacing=16.0, spatial_size=(16, 16), load=False)
        >>> slices = preprocess_datalist(cases, t)
        >>> len(slices) >= 2, all(float(s["label"].max()) == 1.0 for s in slices)
        (True, True)
    """
    out: list[dict[str, Any]] = []
    empty: list[str] = []
    count = 0
    for i, item in enumerate(datalist):
        name = item.get("case_id", f"entry {i}") if isinstance(item, Mapping) else f"entry {i}"
        try:
            result = transform(item)
        except DatasetError:
            raise
        except Exception as err:
            cause = _root_cause(err)
            raise DatasetError(
                f"preprocessing failed for case {name}: {type(cause).__name__}: {cause}"
            ) from err
        count += 1
        samples = result if isinstance(result, list) else [result]
        if not samples:
            empty.append(str(name))
        out.extend(samples)
    if empty:
        logger.warning(
            "preprocessing: %d of %d case(s) gave no sample (empty mask), skipped: %s",
            len(empty),
            count,
            ", ".join(empty[:20]) + (" ..." if len(empty) > 20 else ""),
        )
    logger.info(
        "preprocessing: %d case(s) -> %d sample(s); %d case(s) without a sample.", count, len(out), len(empty)
    )
    if summary is not None:
        summary.update(cases=count, samples=len(out), empty_cases=empty)
    return out
