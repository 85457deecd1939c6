"""Test Dice per case of a trained segmentation checkpoint (the bundle's ``evaluate.json``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointLoader, MeanDice, from_engine
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd, AsDiscreted, Compose

from monai_pairsynth.data.sources import BundleSettingError
from monai_pairsynth.modalities import FOV_KEY, ModalitySpec, read_specs_record, resolve_specs

__all__ = ["check_specs_record", "segmentation_test_dice"]

logger = logging.getLogger(__name__)


def check_specs_record(
    checkpoint: str | os.PathLike, specs: Mapping[str, ModalitySpec | Mapping[str, Any]]
) -> bool:
    """Check that ``specs`` (how this evaluation maps its inputs) are the ones recorded next to a segmentation
    checkpoint by ``train_segmentation.json`` (``modality_specs.json``, :func:`~monai_pairsynth.modalities.
    write_specs_record`), for every modality both name. A checkpoint without a record (written before records
    existed, or copied without its folder) is logged and accepted. Returns whether a record was found.

    Raises:
        BundleSettingError: a modality is mapped differently, naming the checkpoint, the modality, both maps and
            the setting to change.
    """
    recorded = read_specs_record(checkpoint)
    if recorded is None:
        logger.warning(
            "segmentation checkpoint %s has no %s beside it: its input map (e.g. pet_intensity) cannot be checked; "
            "evaluate it with the settings it was trained with.",
            os.fspath(checkpoint),
            "modality_specs.json",
        )
        return False
    given = resolve_specs(specs)
    for key in sorted(set(recorded) & set(given)):
        if recorded[key] != given[key]:
            hint = " (set pet_intensity to the training run's value)" if key == "pet" else ""
            raise BundleSettingError(
                f"segmentation checkpoint {os.fspath(checkpoint)!r} was trained with {key} mapped as "
                f"{recorded[key].to_dict()}, this evaluation maps it as {given[key].to_dict()}{hint}."
            )
    return True


def _carries(data_loader: Any, key: str) -> bool:
    """Whether the loader's samples hold ``key`` (its dataset's first item; ``False`` when it cannot tell)."""
    dataset = getattr(data_loader, "dataset", None)
    try:
        first = dataset[0] if dataset is not None and len(dataset) > 0 else None
    except (TypeError, IndexError, KeyError):
        return False
    return isinstance(first, dict) and key in first


class _FieldOfViewBatch:
    """Prepare-batch that appends the batch's field-of-view mask to ``image`` as a last channel."""

    def __init__(self, fov_key: str) -> None:
        self.fov_key = fov_key

    def __call__(self, batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
        image, fov = torch.as_tensor(batchdata["image"]), torch.as_tensor(batchdata[self.fov_key])
        image = torch.cat([image, fov.to(image)], dim=1)
        return (
            image.to(device=device, non_blocking=non_blocking),
            torch.as_tensor(batchdata["label"]).to(device=device, non_blocking=non_blocking),
        )


class _FieldOfViewInferer(SimpleInferer):
    """Runs the network on the image channels and makes every pixel outside the mask (the last channel)
    background, so a prediction in the padding neither counts as a false positive nor as anything else."""

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = network(inputs[:, :-1], *args, **kwargs)
        outside = inputs[:, -1:] <= 0.5
        background = torch.full_like(logits, -1e4)
        background[:, 0] = 1e4
        return torch.where(outside, background, logits)


def segmentation_test_dice(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike,
    data_loader: Any,
    device: str | torch.device = "cpu",
    postprocessing: Callable | None = None,
    fov_key: str | None = FOV_KEY,
    modality_specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
) -> list[float]:
    """Tumour Dice of every test sample for a segmentation checkpoint, with MONAI's ``SupervisedEvaluator``.

    The checkpoint (written by ``train_segmentation.json``'s ``CheckpointSaver``) is loaded into ``network`` by
    MONAI's ``CheckpointLoader``; ``MeanDice`` (background excluded, an empty prediction of an empty mask counts
    as 1) keeps its per-sample values.

    Args:
        network: the segmentation network of the training config.
        checkpoint: its weights.
        data_loader: test batches with ``image`` ``(B, 2, H, W)`` and ``label`` ``(B, 1, H, W)``.
        device: evaluation device.
        postprocessing: default: softmax, argmax and one-hot of ``pred`` and one-hot of ``label``.
        fov_key: where the samples carry this field-of-view mask ({0, 1}, 1 where scanned; ``real_samples(...,
            fov_key="fov")``), every pixel outside it is predicted background: what the crop padded is never
            scored. Samples without it are scored exactly as before.
        modality_specs: how the test inputs were mapped; checked against the checkpoint's record
            (:func:`check_specs_record`). ``None``: not checked.

    Returns:
        one Dice per test sample, in data-loader order.

    Raises:
        BundleSettingError: the checkpoint does not exist, or was trained with other ``modality_specs``.
    """
    path = Path(str(checkpoint)).expanduser()
    if not path.is_file():
        raise BundleSettingError(
            f"segmentation checkpoint {str(path)!r} does not exist; train one with configs/train_segmentation.json."
        )
    if modality_specs is not None:
        check_specs_record(path, modality_specs)
    if postprocessing is None:
        postprocessing = Compose(
            [
                Activationsd(keys="pred", softmax=True),
                AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=2),
            ]
        )
    device = torch.device(device)
    fov_kwargs: dict[str, Any] = {}
    if fov_key is not None and _carries(data_loader, fov_key):
        fov_kwargs = {"prepare_batch": _FieldOfViewBatch(fov_key), "inferer": _FieldOfViewInferer()}
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=data_loader,
        network=network.to(device),
        **fov_kwargs,
        postprocessing=postprocessing,
        key_val_metric={
            "test_dice": MeanDice(
                include_background=False,
                save_details=True,
                output_transform=from_engine(["pred", "label"]),
            )
        },
        val_handlers=[
            CheckpointLoader(load_path=str(path), load_dict={"model": network}, map_location=device)
        ],
    )
    evaluator.run()
    details = evaluator.state.metric_details["test_dice"]
    return [float(v) for v in torch.as_tensor(details).reshape(len(details), -1).mean(dim=1)]
