"""Test Dice per case of a trained segmentation checkpoint (the bundle's ``evaluate.json``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointLoader, MeanDice, from_engine
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd, AsDiscreted, Compose

from monai_pairsynth.data.sources import BundleSettingError
from monai_pairsynth.modalities import FOV_KEY

__all__ = ["segmentation_test_dice"]


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

    Returns:
        one Dice per test sample, in data-loader order.

    Raises:
        BundleSettingError: the checkpoint does not exist.
    """
    path = Path(str(checkpoint)).expanduser()
    if not path.is_file():
        raise BundleSettingError(
            f"segmentation checkpoint {str(path)!r} does not exist; train one with configs/train_segmentation.json."
        )
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
