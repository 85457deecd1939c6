"""Test Dice per case of a trained segmentation checkpoint (the bundle's ``evaluate.json``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointLoader, MeanDice, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose

from monai_pairsynth.data.sources import BundleSettingError

__all__ = ["segmentation_test_dice"]


def segmentation_test_dice(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike,
    data_loader: Any,
    device: str | torch.device = "cpu",
    postprocessing: Callable | None = None,
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
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=data_loader,
        network=network.to(device),
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
