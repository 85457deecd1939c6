"""Convergence benchmark: sample quality along training runs, checkpoint by checkpoint (issue 12, item 1).

For every named run (a recipe's output folder written by the bundle with ``--keep_epoch_checkpoints True``)
and every selected ``checkpoint_epochNNNN.pt`` in it, the EMA weights generate ``--num-samples`` triplets
with each sampler (the bundle's strided DDPM-100 and DPM-Solver++-20). Sample ``i`` starts from seed ``i``
whatever the checkpoint, sampler, batch or worker (``sample_seeds``), so differences between rows are the
checkpoints', not the noise's. Each set is scored against real phantom triplets on the checkpoint's grid:

- **feature FID** (:func:`monai_pairsynth.metrics.feature_fid`) against ``N`` held-out real triplets (phantom
  seeds from 100000), in the feature space of this package's feature network
  (:func:`monai_pairsynth.quality.train_feature_segmenter`, trained once per grid and invocation, seeded, on
  phantom seeds from 200000, as in ``sampler_quality.py``). The **floor** is the FID of ``N`` other held-out
  real triplets (seeds from 300000) against the same real set: ``FID / floor`` near 1 is as close to the data
  as ``N`` samples can tell. Compare FIDs only within one JSON file (same ``N``, same feature network).
- **pairedness** (:func:`monai_pairsynth.metrics.pairedness`): lesion Dice (mask vs PET >= 40 % SUVmax) and body
  Dice (CT vs PET outline), means, and their ratios to the real value.
- **empty-mask rate**: fraction of samples whose mask has no foreground pixel (``label > 0.5`` in {0, 1}, i.e.
  ``> 0`` in [-1, 1]); such samples have no lesion Dice.
- **bone presence rate**: fraction of samples where bone (CT > 300 HU) covers at least 1 % of the body
  (CT > -500 HU); also the mean bone fraction of the body, and its ratio to the real value.
- **tumour PET contrast**: mean PET SUV inside the mask over mean PET SUV in the body outside the mask dilated
  by 10 mm (per sample, then the mean over samples with a mask and a body background), as a ratio to real.
- **mask inside body**: mean fraction of the mask's pixels inside the body (samples with a mask).
- **memorised copies** (:func:`monai_pairsynth.metrics.memorisation_report`): samples whose nearest training
  case (phantom seeds ``seed .. seed + num_phantom_cases - 1`` at the run's grid: the bundle's training set,
  read from the bundle config and the overrides in the run's log) is nearer in feature space than the 1st
  percentile of the training cases' distances to each other; also the median nearest-training distance over
  the median training-to-training distance (about 1 without copying, near 0 for copies). The held-out real
  set gives the reference values.

Each row also holds the recipe, epoch, optimiser steps (the checkpoint's ``trainer.iteration``), training wall
seconds at the checkpoint (sum of the ``Epoch[k] Complete. Time taken: ...`` lines of the run's log up to the
epoch), the sampler and its cost (process CPU seconds per triplet of the sampling call, and its wall time).

Results go to a JSON file, appended row by row and written atomically (temp file + ``os.replace``); a rerun
skips the (run, epoch, sampler) rows already there, so the stage can be repeated while training goes on, or
after an interruption. Checkpoints are evaluated in parallel worker processes (``--workers``, one torch thread
each; ``--workers 0`` samples in this process); the metrics are computed in the main process.

Usage::

    # evaluate (every checkpoint; resumable) then render
    python benchmarks/convergence.py evaluate --json docs/convergence.json \\
        --run v_cosine=/work/runs/A_v_cosine --run v_cosine_minsnr5_fg4=/work/runs/B_v_cosine_minsnr5_fg4
    python benchmarks/convergence.py render --from-json docs/convergence.json --output docs/convergence.md \\
        --plot-steps docs/convergence_steps.png --plot-time docs/convergence_time.png

    # a rehearsal: 4 samples, DDPM-10 and DPM-Solver++-4, a small feature network, one checkpoint per run
    python benchmarks/convergence.py evaluate --quick --max-checkpoints 1 --json /tmp/conv.json --run A=/work/runs/A_v_cosine

``--run NAME=FOLDER[:LOGFILE]``: the log defaults to ``FOLDER.log`` beside the folder, else ``FOLDER/train.log``
(without a log the wall seconds are left empty). ``--every K`` keeps every K-th checkpoint (K-th, 2K-th, ...)
plus the newest; ``--max-checkpoints M`` keeps M of those per run, evenly spaced, first and newest included.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # benchmarks/ holds scripts, not a package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sampler_quality import FEATURE_TRAINING_SEED, REAL_REFERENCE_SEED, _set_metrics, sampler_label  # noqa: E402
from scipy import ndimage  # noqa: E402

BUNDLE_CONFIG = ROOT / "bundles" / "pet_ct_pairsynth" / "configs" / "train_diffusion.json"

#: (scheduler, steps) of the full evaluation: the bundle's strided DDPM-100 and DPM-Solver++-20
SAMPLERS: tuple[tuple[str, int], ...] = (("ddpm", 100), ("dpmpp", 20))
#: the rehearsal of ``--quick``
QUICK_SAMPLERS: tuple[tuple[str, int], ...] = (("ddpm", 10), ("dpmpp", 4))
#: held-out real sets: the FID reference (seeds from REAL_SEED) and the floor set (seeds from FLOOR_SEED)
REAL_SEED = REAL_REFERENCE_SEED
FLOOR_SEED = 300_000

BODY_HU = -500.0
BONE_HU = 300.0
BONE_MIN_FRACTION = 0.01
CONTRAST_MARGIN_MM = 10.0
MASK_THRESHOLD = 0.5  # decoded masks are {0, 1}; > 0.5 is > 0 in [-1, 1]
MEMORISATION_PERCENTILE = 1.0
JSON_FORMAT = "monai_pairsynth.convergence_benchmark"

EPOCH_LINE = re.compile(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):(\d+(?:\.\d*)?)")
SUMMARY_LINE = re.compile(r" - INFO - > (\w+): (.*)$")
CHECKPOINT_NAME = re.compile(r"^checkpoint_epoch(\d+)\.pt$")


# ----------------------------------------------------------------------------------------------------------------
# metric helpers (batched tensors in physical units: HU, SUV, {0, 1}; shape (B, 1, *spatial))
# ----------------------------------------------------------------------------------------------------------------
def _per_sample(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 3:
        raise ValueError(f"expected a batch (B, C, *spatial), got shape {tuple(x.shape)}.")
    return x.reshape(x.shape[0], -1)


def mask_pixels(label: torch.Tensor, threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """``(B,)`` number of foreground pixels (``label > threshold``) of each sample."""
    return (_per_sample(label) > threshold).sum(dim=1)


def empty_mask_rate(label: torch.Tensor, threshold: float = MASK_THRESHOLD) -> float:
    """Fraction of samples whose mask has no foreground pixel (``label > threshold``; 0.5 for {0, 1})."""
    return float((mask_pixels(label, threshold) < 1).double().mean())


def bone_fractions(ct: torch.Tensor, body_hu: float = BODY_HU, bone_hu: float = BONE_HU) -> torch.Tensor:
    """``(B,)`` fraction of the body (``CT > body_hu``) covered by bone (``CT > bone_hu``); 0 without a body."""
    x = _per_sample(ct)
    body = (x > body_hu).sum(dim=1).double()
    bone = ((x > bone_hu) & (x > body_hu)).sum(dim=1).double()
    return torch.where(body > 0, bone / body.clamp(min=1), torch.zeros_like(body))


def bone_presence_rate(ct: torch.Tensor, min_fraction: float = BONE_MIN_FRACTION, **kwargs: float) -> float:
    """Fraction of samples whose bone covers at least ``min_fraction`` of the body (see :func:`bone_fractions`)."""
    return float((bone_fractions(ct, **kwargs) >= min_fraction).double().mean())


def _dilate_mm(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    if radius_mm <= 0:
        return mask
    half = [math.floor(radius_mm / s) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    ball = sum(g**2 for g in grids) <= radius_mm**2 + 1e-9
    return ndimage.binary_dilation(mask, structure=ball)


def _spacing_list(spacing: float | Sequence[float], dims: int) -> list[float]:
    if isinstance(spacing, (int, float)):
        return [float(spacing)] * dims
    values = [float(s) for s in spacing]
    return values[:dims] if len(values) >= dims else [values[0]] * dims


def tumour_contrast(
    pet: torch.Tensor,
    label: torch.Tensor,
    ct: torch.Tensor,
    spacing: float | Sequence[float],
    margin_mm: float = CONTRAST_MARGIN_MM,
    body_hu: float = BODY_HU,
    threshold: float = MASK_THRESHOLD,
    min_background_suv: float = 1e-3,
) -> torch.Tensor:
    """``(B,)`` float64 tumour PET contrast: mean SUV inside the mask / mean SUV in the background.

    The background is the body (``CT > body_hu``) outside the mask dilated by ``margin_mm``. NaN for a sample
    with an empty mask, an empty background or a background mean below ``min_background_suv``.
    """
    pet_np = torch.as_tensor(pet).detach().cpu().double().numpy()
    mask_np = torch.as_tensor(label).detach().cpu().numpy() > threshold
    body_np = torch.as_tensor(ct).detach().cpu().numpy() > body_hu
    if not pet_np.shape == mask_np.shape == body_np.shape:
        raise ValueError(
            f"pet, label and ct shapes differ: {pet_np.shape}, {mask_np.shape}, {body_np.shape}."
        )
    dims = pet_np.ndim - 2
    sp = _spacing_list(spacing, dims)
    out = torch.full((pet_np.shape[0],), float("nan"), dtype=torch.float64)
    for b in range(pet_np.shape[0]):
        m = mask_np[b, 0]
        if not m.any():
            continue
        background = body_np[b, 0] & ~_dilate_mm(m, margin_mm, sp)
        if not background.any():
            continue
        bg = float(pet_np[b, 0][background].mean())
        if bg < min_background_suv:
            continue
        out[b] = float(pet_np[b, 0][m].mean()) / bg
    return out


def mask_in_body(
    label: torch.Tensor, ct: torch.Tensor, body_hu: float = BODY_HU, threshold: float = MASK_THRESHOLD
) -> torch.Tensor:
    """``(B,)`` fraction of each mask's pixels inside the body (``CT > body_hu``); NaN for an empty mask."""
    m = _per_sample(label) > threshold
    body = _per_sample(ct) > body_hu
    n = m.sum(dim=1).double()
    inside = (m & body).sum(dim=1).double()
    return torch.where(n > 0, inside / n.clamp(min=1), torch.full_like(n, float("nan")))


def _nanmean(x: torch.Tensor) -> float | None:
    x = torch.as_tensor(x, dtype=torch.float64)
    ok = x[~torch.isnan(x)]
    return float(ok.mean()) if ok.numel() else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


def _clean(value: Any) -> Any:
    """JSON-safe: NaN / inf become ``None``; tensors and numpy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def set_metrics(batch: Mapping[str, torch.Tensor], spacing: float | Sequence[float]) -> dict[str, Any]:
    """All feature-free metrics of one set ``{"ct", "pet", "label"}`` (physical units), JSON-safe."""
    base = _set_metrics(batch, spacing)
    fractions = bone_fractions(batch["ct"])
    contrast = tumour_contrast(batch["pet"], batch["label"], batch["ct"], spacing)
    inside = mask_in_body(batch["label"], batch["ct"])
    n = int(batch["ct"].shape[0])
    return _clean(
        {
            "lesion_dice": base["lesion_dice"],
            "lesion_dice_sd": base["lesion_dice_sd"],
            "body_dice": base["body_dice"],
            "body_dice_sd": base["body_dice_sd"],
            "empty_masks": base["empty_masks"],
            "empty_mask_rate": empty_mask_rate(batch["label"]),
            "bone_rate": float((fractions >= BONE_MIN_FRACTION).double().mean()),
            "bone_fraction": float(fractions.mean()),
            "pet_contrast": _nanmean(contrast),
            "pet_contrast_n": int((~torch.isnan(contrast)).sum()),
            "mask_in_body": _nanmean(inside),
            "ct_gradient": base["ct_gradient"],
            "ct_std": base["ct_std"],
            "n": n,
        }
    )


def relative_to_real(row: Mapping[str, Any], real: Mapping[str, Any]) -> dict[str, Any]:
    """Ratios of a sampled set's metrics to the real reference's (``None`` where undefined)."""
    return {
        "fid_over_floor": _ratio(row.get("fid_vs_real"), real.get("fid_floor")),
        "lesion_ratio": _ratio(row.get("lesion_dice"), real.get("lesion_dice")),
        "body_ratio": _ratio(row.get("body_dice"), real.get("body_dice")),
        "bone_fraction_ratio": _ratio(row.get("bone_fraction"), real.get("bone_fraction")),
        "pet_contrast_ratio": _ratio(row.get("pet_contrast"), real.get("pet_contrast")),
    }


# ----------------------------------------------------------------------------------------------------------------
# runs: checkpoints, logs
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    name: str
    folder: Path
    log: Path | None = None
    overrides: dict[str, str] = field(default_factory=dict)


def parse_run(text: str) -> RunSpec:
    """``NAME=FOLDER[:LOGFILE]`` -> :class:`RunSpec` (log default: ``FOLDER.log``, else ``FOLDER/train.log``)."""
    if "=" not in text:
        raise ValueError(f"--run takes NAME=FOLDER[:LOGFILE], got {text!r}.")
    name, rest = text.split("=", 1)
    name = name.strip()
    if not name or not rest:
        raise ValueError(f"--run takes NAME=FOLDER[:LOGFILE], got {text!r}.")
    folder_text, _, log_text = rest.partition(":")
    folder = Path(folder_text)
    if not folder.is_dir():
        raise FileNotFoundError(f"run {name!r}: no folder {str(folder)!r}.")
    if log_text:
        log: Path | None = Path(log_text)
        if not log.is_file():
            raise FileNotFoundError(f"run {name!r}: no log file {log_text!r}.")
    else:
        candidates = [Path(str(folder).rstrip("/") + ".log"), folder / "train.log"]
        log = next((c for c in candidates if c.is_file()), None)
    return RunSpec(name, folder, log, read_log_overrides(log) if log is not None else {})


def epoch_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(epoch, path)]`` of the ``checkpoint_epochNNNN.pt`` files in ``folder``, by epoch."""
    found = []
    for p in Path(folder).iterdir():
        m = CHECKPOINT_NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def select_checkpoints(
    checkpoints: Sequence[tuple[int, Path]], every: int = 1, max_checkpoints: int | None = None
) -> list[tuple[int, Path]]:
    """Every ``every``-th checkpoint (the ``every``-th, ``2 every``-th, ...) plus the newest; then at most
    ``max_checkpoints`` of those, evenly spaced with the first and the newest (one: the first)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}.")
    if max_checkpoints is not None and max_checkpoints < 1:
        raise ValueError(f"max_checkpoints must be >= 1, got {max_checkpoints}.")
    chosen = [c for i, c in enumerate(checkpoints) if (i + 1) % every == 0]
    if checkpoints and (not chosen or chosen[-1] != checkpoints[-1]):
        chosen.append(checkpoints[-1])
    if max_checkpoints is not None and len(chosen) > max_checkpoints:
        idx = sorted({round(float(i)) for i in np.linspace(0, len(chosen) - 1, max_checkpoints)})
        chosen = [chosen[i] for i in idx]
    return chosen


def epoch_seconds(log: str | os.PathLike | None) -> dict[int, float]:
    """``{epoch: wall seconds}`` from the ``Epoch[k] Complete. Time taken: HH:MM:SS.fff`` lines (last one wins)."""
    times: dict[int, float] = {}
    if log is None or not Path(log).is_file():
        return times
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = EPOCH_LINE.search(line)
            if m:
                h, mi, s = int(m.group(2)), int(m.group(3)), float(m.group(4))
                times[int(m.group(1))] = 3600 * h + 60 * mi + s
    return times


def wall_seconds_at(times: Mapping[int, float], epoch: int) -> float | None:
    """Training wall seconds up to the end of ``epoch`` (``None`` when an epoch line is missing)."""
    if epoch < 1 or any(e not in times for e in range(1, epoch + 1)):
        return None
    return float(sum(times[e] for e in range(1, epoch + 1)))


def read_log_overrides(log: str | os.PathLike | None) -> dict[str, str]:
    """The ``> key: value`` lines of the bundle's input summary at the top of a run's log."""
    found: dict[str, str] = {}
    if log is None or not Path(log).is_file():
        return found
    with open(log, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i > 200:
                break
            m = SUMMARY_LINE.search(line.rstrip("\n"))
            if m:
                found[m.group(1)] = m.group(2).strip().strip("'\"")
    return found


def training_phantom_set(overrides: Mapping[str, str], num_cases: int | None = None, seed: int | None = None):
    """``(num_phantom_cases, seed)`` of a bundle run: arguments, else the log's overrides, else the config.

    ``None`` when the run trained on a dataset folder (not the phantom).
    """
    if overrides.get("dataset_dir") not in (None, "", "None", "null", "$None"):
        return None
    config = json.loads(BUNDLE_CONFIG.read_text()) if BUNDLE_CONFIG.is_file() else {}
    if num_cases is None:
        num_cases = int(float(overrides.get("num_phantom_cases", config.get("num_phantom_cases", 320))))
    if seed is None:
        seed = int(float(overrides.get("seed", config.get("seed", 0))))
    return int(num_cases), int(seed)


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """Epoch, iteration, grid and schedule of a training checkpoint (no model is built)."""
    from monai_pairsynth.engines import read_paired_checkpoint

    ckpt = read_paired_checkpoint(path)
    trainer = ckpt.get("trainer") or {}
    spacing = ckpt.get("spacing")
    return {
        "epoch": trainer.get("epoch"),
        "iteration": trainer.get("iteration"),
        "spatial_size": [int(s) for s in ckpt["spatial_size"]],
        "spacing": spacing if isinstance(spacing, (int, float)) else list(spacing),
        "ema": ckpt.get("ema_model") is not None,
        "noise_scheduler": ckpt.get("noise_scheduler"),
    }


def grid_key(spatial_size: Sequence[int], spacing: Any) -> str:
    """``"64x64@4mm"``."""
    sp = (
        f"{float(spacing):g}"
        if isinstance(spacing, (int, float))
        else "x".join(f"{float(s):g}" for s in spacing)
    )
    return "x".join(str(int(s)) for s in spatial_size) + f"@{sp}mm"


# ----------------------------------------------------------------------------------------------------------------
# sampling (main process or worker)
# ----------------------------------------------------------------------------------------------------------------
_LOADED: dict[str, Any] = {}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def sample_checkpoint(
    checkpoint: str, scheduler: str, steps: int, seeds: Sequence[int], batch_size: int, threads: int = 1
) -> dict[str, Any]:
    """Samples (physical units) of one checkpoint's EMA weights with one sampler; sample ``i`` from ``seeds[i]``.

    The process keeps the last loaded checkpoint only.
    """
    from monai_pairsynth.inferers import PairedDiffusionInferer

    torch.set_num_threads(threads)
    if _LOADED.get("path") != checkpoint:
        _LOADED.clear()
        _LOADED["pair"] = PairedDiffusionInferer.from_checkpoint(checkpoint, use_ema=True)
        _LOADED["path"] = checkpoint
    inferer, model = _LOADED["pair"]
    cpu, wall = time.process_time(), time.perf_counter()
    with torch.no_grad():
        out = inferer.sample(
            model,
            scheduler=scheduler,
            num_inference_steps=steps,
            sample_seeds=list(seeds),
            batch_size=batch_size,
        )
    return {
        "samples": {k: v.as_tensor().clone() for k, v in out.items()},
        "cpu_seconds": time.process_time() - cpu,
        "wall_seconds": time.perf_counter() - wall,
    }


# ----------------------------------------------------------------------------------------------------------------
# real references (one per grid)
# ----------------------------------------------------------------------------------------------------------------
def _stack(cases: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(c[k]).float() for c in cases]) for k in ("ct", "pet", "label")}


class Reference:
    """Feature network, held-out real sets and training-set features of one grid (built on first use)."""

    def __init__(
        self,
        spatial_size: Sequence[int],
        spacing: Any,
        num_samples: int,
        feature_cases: int,
        feature_epochs: int,
        seed: int,
    ) -> None:
        from monai_pairsynth.data import make_phantom_case
        from monai_pairsynth.metrics import extract_global_features, feature_fid
        from monai_pairsynth.quality import train_feature_segmenter

        t0 = time.perf_counter()
        self.grid = {"spatial_size": tuple(int(s) for s in spatial_size), "spacing": spacing}
        self._extract = extract_global_features
        train = [make_phantom_case(FEATURE_TRAINING_SEED + s, **self.grid) for s in range(feature_cases)]
        self.network = train_feature_segmenter(
            train, channels=(8, 16, 32, 64), epochs=feature_epochs, batch_size=8, seed=seed, units="physical"
        )
        real = _stack([make_phantom_case(REAL_SEED + s, **self.grid) for s in range(num_samples)])
        other = _stack([make_phantom_case(FLOOR_SEED + s, **self.grid) for s in range(num_samples)])
        self.features_real = self.features(real, "real phantoms")
        features_other = self.features(other, "other real phantoms")
        both = {k: torch.cat([real[k], other[k]]) for k in real}
        self.row: dict[str, Any] = {
            "fid_floor": feature_fid(self.features_real, features_other),
            **set_metrics(both, spacing),
            "sets": f"FID reference: phantom seeds {REAL_SEED}..{REAL_SEED + num_samples - 1}; floor set and "
            f"FID-free metrics over it too: seeds {FLOOR_SEED}..{FLOOR_SEED + num_samples - 1}",
        }
        self._features_other = features_other
        self._training: dict[tuple[int, int], torch.Tensor] = {}
        self.seconds = time.perf_counter() - t0

    def features(self, batch: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        return self._extract(self.network, dict(batch), units="physical", name=name)

    def training_features(self, num_cases: int, seed: int) -> torch.Tensor:
        from monai_pairsynth.data import make_phantom_case

        key = (int(num_cases), int(seed))
        if key not in self._training:
            cases = [make_phantom_case(seed + s, **self.grid) for s in range(num_cases)]
            self._training[key] = self.features(_stack(cases), "training phantoms")
        return self._training[key]

    def memorisation(self, features: torch.Tensor, training: tuple[int, int] | None) -> dict[str, Any]:
        if training is None or training[0] < 2:
            return {"memorised": None, "memorised_rate": None, "nn_median_ratio": None}
        from monai_pairsynth.metrics import memorisation_report

        rep = memorisation_report(
            features,
            self.training_features(*training),
            percentiles=(MEMORISATION_PERCENTILE,),
            flag_percentile=MEMORISATION_PERCENTILE,
        )
        return {
            "memorised": rep["num_flagged"],
            "memorised_rate": rep["num_flagged"] / int(features.shape[0]),
            "nn_median_ratio": rep["median_ratio"],
        }

    def real_memorisation(self, training: tuple[int, int] | None) -> dict[str, Any]:
        return self.memorisation(self._features_other, training)


# ----------------------------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------------------------
def load_results(path: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(path)
    if not p.is_file():
        return None
    data = json.loads(p.read_text())
    if data.get("format") != JSON_FORMAT:
        raise ValueError(f"{str(p)!r} is not a convergence benchmark result file (format {JSON_FORMAT!r}).")
    return data


def _save(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    from monai_pairsynth.utils import atomic_write_json

    data = _clean(data)
    data["rows"] = sorted(data["rows"], key=lambda r: (r["recipe"], r["sampler"], r["epoch"]))
    atomic_write_json(path, data)


def row_key(row: Mapping[str, Any]) -> tuple[str, int, str]:
    return (str(row["recipe"]), int(row["epoch"]), str(row["sampler"]))


def evaluate(
    runs: Sequence[RunSpec],
    json_path: str | os.PathLike,
    num_samples: int = 32,
    batch_size: int = 16,
    samplers: Sequence[tuple[str, int]] = SAMPLERS,
    workers: int = 2,
    every: int = 1,
    max_checkpoints: int | None = None,
    feature_cases: int = 64,
    feature_epochs: int = 10,
    seed: int = 0,
    train_cases: int | None = None,
    train_seed: int | None = None,
    quick: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate the selected checkpoints of ``runs`` with every sampler; rows go to ``json_path`` (resumable).

    Returns the whole result file's content (old and new rows).
    """
    if num_samples < 2 or batch_size < 1 or workers < 0:
        raise ValueError(
            f"need num_samples >= 2, batch_size >= 1, workers >= 0; got {num_samples}, {batch_size}, {workers}."
        )
    if not runs:
        raise ValueError("give at least one --run NAME=FOLDER.")
    if len({r.name for r in runs}) != len(runs):
        raise ValueError(f"run names must differ, got {[r.name for r in runs]}.")
    labels = {sampler_label(s, n): (s, n) for s, n in samplers}
    settings = {
        "num_samples": num_samples,
        "sample_seeds": f"0..{num_samples - 1} (sample i from seed i)",
        "samplers": list(labels),
        "feature_network": f"train_feature_segmenter, channels (8, 16, 32, 64), {feature_epochs} epochs, "
        f"{feature_cases} phantom cases (seeds from {FEATURE_TRAINING_SEED}), seed {seed}",
        "real_seed": REAL_SEED,
        "floor_seed": FLOOR_SEED,
        "quick": bool(quick),
    }
    data = load_results(json_path)
    if data is None:
        data = {"format": JSON_FORMAT, "settings": settings, "references": {}, "runs": {}, "rows": []}
    else:
        old = data.get("settings", {})
        differ = [
            k
            for k in ("num_samples", "feature_network", "real_seed", "floor_seed")
            if old.get(k) != settings[k]
        ]
        if differ:
            raise ValueError(
                f"{str(json_path)!r} holds results of other settings ({', '.join(f'{k}: {old.get(k)!r}' for k in differ)}); "
                "write to another --json file."
            )
        data["settings"]["samplers"] = sorted(set(old.get("samplers", [])) | set(labels))
    done = {row_key(r) for r in data["rows"]}

    # ---- tasks
    tasks: list[dict[str, Any]] = []
    failures: list[str] = []
    for run in runs:
        selected = select_checkpoints(epoch_checkpoints(run.folder), every, max_checkpoints)
        training = training_phantom_set(run.overrides, train_cases, train_seed)
        data["runs"][run.name] = {
            "folder": str(run.folder),
            "log": None if run.log is None else str(run.log),
            "overrides": run.overrides,
            "training_phantoms": None
            if training is None
            else {"num_cases": training[0], "seed": training[1]},
        }
        if verbose:
            print(
                f"{run.name}: {len(selected)} checkpoints selected (epochs {[e for e, _ in selected]})",
                flush=True,
            )
        for epoch, path in selected:
            todo = [lab for lab in labels if (run.name, epoch, lab) not in done]
            if not todo:
                continue
            try:
                info = checkpoint_info(path)
            except (OSError, ValueError, KeyError, TypeError) as e:
                failures.append(f"{run.name} epoch {epoch} ({path}): {type(e).__name__}: {e}")
                print(f"error: {failures[-1]}", flush=True)
                continue
            for lab in todo:
                tasks.append(
                    {
                        "run": run,
                        "epoch": epoch,
                        "path": str(path),
                        "info": info,
                        "label": lab,
                        "training": training,
                    }
                )
    tasks.sort(key=lambda t: (t["epoch"], t["run"].name, t["label"]))
    if verbose:
        print(
            f"{len(tasks)} (checkpoint, sampler) evaluations to run, {len(done)} rows already in {json_path}",
            flush=True,
        )

    # refresh missing wall seconds of earlier rows (a checkpoint may have been written before its log line)
    times_cache: dict[str, dict[int, float]] = {}

    def wall(run_name: str, epoch: int) -> float | None:
        log = data["runs"].get(run_name, {}).get("log")
        if log is None:
            return None
        if log not in times_cache or epoch not in times_cache[log]:
            times_cache[log] = epoch_seconds(log)
        return wall_seconds_at(times_cache[log], epoch)

    for r in data["rows"]:
        if r.get("wall_seconds") is None and r["recipe"] in data["runs"]:
            r["wall_seconds"] = wall(r["recipe"], r["epoch"])
    if not tasks and not failures:
        _save(json_path, data)
        return load_results(json_path) or data

    seeds = list(range(num_samples))
    references: dict[str, Reference] = {}

    def reference(info: Mapping[str, Any], training: tuple[int, int] | None) -> Reference:
        key = grid_key(info["spatial_size"], info["spacing"])
        if key not in references:
            t0 = time.perf_counter()
            references[key] = Reference(
                info["spatial_size"], info["spacing"], num_samples, feature_cases, feature_epochs, seed
            )
            ref_row = dict(references[key].row)
            stored = data["references"].get(key)
            if stored is not None and stored.get("fid_floor") is not None:
                if not math.isclose(stored["fid_floor"], ref_row["fid_floor"], rel_tol=1e-4, abs_tol=1e-9):
                    print(
                        f"warning: the floor FID of grid {key} is {ref_row['fid_floor']:.6g} now, {stored['fid_floor']:.6g} "
                        "in the file: the feature network differs from the earlier invocation's; FIDs of the two "
                        "invocations are not comparable.",
                        flush=True,
                    )
            data["references"][key] = {
                **(stored or {}),
                **ref_row,
                "feature_seconds": time.perf_counter() - t0,
            }
            if verbose:
                print(
                    f"reference {key}: feature network and real sets in {time.perf_counter() - t0:.1f} s",
                    flush=True,
                )
        ref = references[key]
        if training is not None:
            name = f"memorisation_{training[0]}_from_{training[1]}"
            if name not in data["references"][key]:
                data["references"][key][name] = ref.real_memorisation(training)
        return ref

    def finish(task: Mapping[str, Any], part: Mapping[str, Any]) -> None:
        t0 = time.perf_counter()
        info, run = task["info"], task["run"]
        samples = part["samples"]
        for k, v in samples.items():
            if not torch.isfinite(v).all():
                raise RuntimeError(
                    f"{run.name} epoch {task['epoch']} {task['label']}: non-finite {k} samples."
                )
        ref = reference(info, task["training"])
        from monai_pairsynth.metrics import feature_fid

        feats = ref.features(samples, task["label"])
        scheduler, steps = labels[task["label"]]
        row: dict[str, Any] = {
            "recipe": run.name,
            "epoch": int(task["epoch"]),
            "iteration": info["iteration"],
            "wall_seconds": wall(run.name, int(task["epoch"])),
            "sampler": task["label"],
            "scheduler": scheduler,
            "steps": steps,
            "checkpoint": task["path"],
            "grid": grid_key(info["spatial_size"], info["spacing"]),
            "ema": info["ema"],
            "num_samples": num_samples,
            "sample_cpu_seconds_per_triplet": part["cpu_seconds"] / num_samples,
            "sample_wall_seconds": part["wall_seconds"],
            "fid_vs_real": feature_fid(ref.features_real, feats),
            "fid_floor": ref.row["fid_floor"],
            **set_metrics(samples, info["spacing"]),
            **ref.memorisation(feats, task["training"]),
        }
        row.update(relative_to_real(row, ref.row))
        row["metric_seconds"] = time.perf_counter() - t0
        data["rows"] = [r for r in data["rows"] if row_key(r) != row_key(row)] + [_clean(row)]
        _save(json_path, data)
        if verbose:
            print(
                f"{run.name} epoch {row['epoch']} (step {row['iteration']}) {row['sampler']}: sampling "
                f"{row['sample_wall_seconds']:.1f} s wall ({row['sample_cpu_seconds_per_triplet']:.2f} CPU s/triplet), "
                f"metrics {row['metric_seconds']:.1f} s; FID/floor {_f(row['fid_over_floor'], 2)}, empty masks "
                f"{_f(row['empty_mask_rate'], 2)}, bone {_f(row['bone_rate'], 2)}, lesion x{_f(row['lesion_ratio'], 2)}, "
                f"contrast x{_f(row['pet_contrast_ratio'], 2)}",
                flush=True,
            )

    def submit_args(task: Mapping[str, Any]) -> tuple:
        scheduler, steps = labels[task["label"]]
        return (task["path"], scheduler, steps, seeds, batch_size, 1)

    def settle(task: Mapping[str, Any], produce: Any) -> None:
        # one broken checkpoint (or sampler) must not cost the rows of the others: note it, carry on
        try:
            finish(task, produce())
        except Exception as e:
            what = f"{task['run'].name} epoch {task['epoch']} {task['label']} ({task['path']})"
            failures.append(f"{what}: {type(e).__name__}: {e}")
            print(f"error: {failures[-1]}", flush=True)

    if workers == 0:
        for task in tasks:
            settle(task, lambda t=task: sample_checkpoint(*submit_args(t)[:-1], torch.get_num_threads()))
    else:
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(1,),
        )
        try:
            pending: dict[Future, dict[str, Any]] = {
                pool.submit(sample_checkpoint, *submit_args(t)): t for t in tasks
            }
            # build the first grid's reference while the workers sample
            if tasks:
                reference(tasks[0]["info"], tasks[0]["training"])
            while pending:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    settle(pending.pop(fut), fut.result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    _save(json_path, data)
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(tasks)} evaluations failed (the other rows are in {json_path}):\n"
            + "\n".join(failures)
        )
    return load_results(json_path) or data


# ----------------------------------------------------------------------------------------------------------------
# render
# ----------------------------------------------------------------------------------------------------------------
def _f(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _minutes(seconds: Any) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def render_table(data: Mapping[str, Any]) -> str:
    """Markdown: settings, one row per recipe / epoch / sampler, then the real reference of each grid."""
    s = data.get("settings", {})
    lines = [
        f"Convergence benchmark: {s.get('num_samples')} samples per checkpoint and sampler ({s.get('sample_seeds')}), "
        f"EMA weights; feature network: {s.get('feature_network')}."
        + (" **Quick rehearsal settings: not for decisions.**" if s.get("quick") else ""),
        "",
        "FID / floor: feature FID against held-out real triplets over the real-vs-real FID at the same N. "
        "Ratios (×) are to the held-out real triplets. Bone present: bone (> 300 HU) >= 1 % of the body (> -500 HU). "
        "PET contrast: mean SUV in the mask / in the body outside the mask dilated by 10 mm. Memorised: nearer to a "
        "training case than the 1st percentile of training-to-training distances.",
        "",
        "| recipe | epoch | optimiser steps | wall min | sampler | FID / floor | lesion Dice (×) | body Dice (×) | "
        "empty masks | bone present | bone fraction × | PET contrast × | mask in body | memorised | NN median ratio "
        "| sampling CPU s / triplet |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(data.get("rows", []), key=lambda r: (r["recipe"], r["epoch"], r["sampler"]))
    for r in rows:
        mem = "n/a" if r.get("memorised") is None else f"{r['memorised']} / {r['num_samples']}"
        lines.append(
            f"| {r['recipe']} | {r['epoch']} | {r.get('iteration')} | {_minutes(r.get('wall_seconds'))} | {r['sampler']} | "
            f"{_f(r.get('fid_over_floor'), 2)} ({_f(r.get('fid_vs_real'), 4)}) | {_f(r.get('lesion_dice'), 3)} "
            f"(×{_f(r.get('lesion_ratio'), 2)}) | {_f(r.get('body_dice'), 3)} (×{_f(r.get('body_ratio'), 2)}) | "
            f"{_f(r.get('empty_mask_rate'), 2)} | {_f(r.get('bone_rate'), 2)} | {_f(r.get('bone_fraction_ratio'), 2)} | "
            f"{_f(r.get('pet_contrast_ratio'), 2)} | {_f(r.get('mask_in_body'), 3)} | {mem} | "
            f"{_f(r.get('nn_median_ratio'), 2)} | {_f(r.get('sample_cpu_seconds_per_triplet'), 2)} |"
        )
    for key, ref in sorted(data.get("references", {}).items()):
        mems = [v for k, v in ref.items() if k.startswith("memorisation_") and isinstance(v, Mapping)]
        mem = mems[0] if mems else {}
        mem_text = "n/a" if mem.get("memorised") is None else f"{mem['memorised']} / {s.get('num_samples')}"
        lines.append(
            f"| *real, {key}* | — | — | — | — | 1 ({_f(ref.get('fid_floor'), 4)}) | {_f(ref.get('lesion_dice'), 3)} | "
            f"{_f(ref.get('body_dice'), 3)} | {_f(ref.get('empty_mask_rate'), 2)} | {_f(ref.get('bone_rate'), 2)} | "
            f"1 ({_f(ref.get('bone_fraction'), 3)}) | 1 ({_f(ref.get('pet_contrast'), 2)}) | "
            f"{_f(ref.get('mask_in_body'), 3)} | {mem_text} | {_f(mem.get('nn_median_ratio'), 2)} | — |"
        )
    return "\n".join(lines) + "\n"


#: (row key, axis title, reference line)
PLOT_METRICS: tuple[tuple[str, str, float | None], ...] = (
    ("fid_over_floor", "feature FID / real floor", 1.0),
    ("empty_mask_rate", "empty-mask rate", 0.0),
    ("bone_rate", "bone presence rate", 1.0),
    ("lesion_ratio", "lesion pairedness / real", 1.0),
    ("pet_contrast_ratio", "tumour PET contrast / real", 1.0),
)


def render_plot(data: Mapping[str, Any], path: str | os.PathLike, x: str = "iteration") -> Path:
    """One panel per key metric against ``x`` (``"iteration"`` or ``"wall_minutes"``); one line per recipe and
    sampler (colour: recipe, line style: sampler). Written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from monai_pairsynth.utils import atomic_write

    if x not in ("iteration", "wall_minutes"):
        raise ValueError(f"x must be 'iteration' or 'wall_minutes', got {x!r}.")
    rows = list(data.get("rows", []))
    recipes = sorted({r["recipe"] for r in rows})
    samplers = sorted({r["sampler"] for r in rows})
    colours = [f"C{i % 10}" for i in range(len(recipes))]
    styles = ["-", "--", ":", "-."]
    fig = Figure(figsize=(13.5, 7.5))
    FigureCanvasAgg(fig)
    grid = fig.subplots(2, 3)
    axes = list(grid.ravel())
    for ax, (key, title, ref_line) in zip(axes, PLOT_METRICS):
        for ri, recipe in enumerate(recipes):
            for si, sampler in enumerate(samplers):
                pts = []
                for r in rows:
                    if r["recipe"] != recipe or r["sampler"] != sampler or r.get(key) is None:
                        continue
                    xv = (
                        r.get("iteration")
                        if x == "iteration"
                        else (None if r.get("wall_seconds") is None else r["wall_seconds"] / 60.0)
                    )
                    if xv is not None:
                        pts.append((xv, r[key]))
                if not pts:
                    continue
                pts.sort()
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    color=colours[ri],
                    linestyle=styles[si % len(styles)],
                    marker="o",
                    markersize=3,
                    label=f"{recipe}, {sampler}",
                )
        if ref_line is not None:
            ax.axhline(ref_line, color="0.6", linewidth=0.8, linestyle=":")
        if key.endswith("_rate"):
            ax.set_ylim(-0.05, 1.05)
        elif key == "fid_over_floor" and ax.lines and all(v > 0 for ln in ax.lines for v in ln.get_ydata()):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimiser steps" if x == "iteration" else "training wall minutes")
        ax.grid(alpha=0.3)
    legend_ax = axes[len(PLOT_METRICS)]
    legend_ax.axis("off")
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        legend_ax.legend(handles, names, loc="center", fontsize=9, frameon=False, title="recipe, sampler")
    fig.subplots_adjust(left=0.06, right=0.98, top=0.9, bottom=0.08, wspace=0.25, hspace=0.35)
    quick = " (quick rehearsal settings)" if data.get("settings", {}).get("quick") else ""
    fig.suptitle(
        f"Convergence, {data.get('settings', {}).get('num_samples')} samples per point{quick}", fontsize=11
    )

    def _w(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    return atomic_write(path, _w)


def render(
    json_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    plot_steps: str | os.PathLike | None = None,
    plot_time: str | os.PathLike | None = None,
) -> str:
    """Table (to ``output`` or returned) and the two plots of a result file."""
    data = load_results(json_path)
    if data is None:
        raise FileNotFoundError(f"no result file {str(json_path)!r}.")
    table = render_table(data)
    if output is not None:
        from monai_pairsynth.utils import atomic_write_text

        atomic_write_text(output, "# Convergence benchmark\n\n" + table)
    if plot_steps is not None:
        render_plot(data, plot_steps, "iteration")
    if plot_time is not None:
        render_plot(data, plot_time, "wall_minutes")
    return table


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    ev = sub.add_parser("evaluate", help="sample and score checkpoints; append rows to --json")
    ev.add_argument(
        "--run", action="append", required=True, metavar="NAME=FOLDER[:LOGFILE]", help="a run (repeat)"
    )
    ev.add_argument("--json", required=True, help="result file (created, or resumed)")
    ev.add_argument(
        "--num-samples", type=int, default=32, help="samples per checkpoint and sampler (default 32)"
    )
    ev.add_argument("--batch-size", type=int, default=16, help="samples per network call (default 16)")
    ev.add_argument(
        "--workers", type=int, default=2, help="sampling processes, one thread each; 0: in this process"
    )
    ev.add_argument("--every", type=int, default=1, help="keep every K-th epoch checkpoint (plus the newest)")
    ev.add_argument("--max-checkpoints", type=int, default=None, help="at most this many checkpoints per run")
    ev.add_argument("--feature-cases", type=int, default=64, help="phantom cases of the feature network")
    ev.add_argument("--feature-epochs", type=int, default=10, help="epochs of the feature network")
    ev.add_argument(
        "--train-cases", type=int, default=None, help="training phantom cases (default: bundle/log)"
    )
    ev.add_argument(
        "--train-seed", type=int, default=None, help="training phantom base seed (default: bundle/log)"
    )
    ev.add_argument("--quick", action="store_true", help="rehearsal: 4 samples, DDPM-10 and DPM-Solver++-4")
    ev.add_argument("--output", default=None, help="also write the markdown table here")
    ev.add_argument("--quiet", action="store_true")
    rd = sub.add_parser("render", help="markdown table and plots from a result file")
    rd.add_argument("--from-json", required=True, help="result file of the evaluate stage")
    rd.add_argument("--output", default=None, help="markdown file (default: print the table)")
    rd.add_argument("--plot-steps", default=str(ROOT / "docs" / "convergence_steps.png"), help="PNG vs steps")
    rd.add_argument(
        "--plot-time", default=str(ROOT / "docs" / "convergence_time.png"), help="PNG vs wall minutes"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.stage == "render":
        table = render(args.from_json, args.output, args.plot_steps or None, args.plot_time or None)
        if args.output is None:
            print(table)
        return table
    kwargs: dict[str, Any] = {
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "feature_cases": args.feature_cases,
        "feature_epochs": args.feature_epochs,
    }
    if args.quick:
        kwargs = {
            "num_samples": 4,
            "batch_size": 4,
            "samplers": QUICK_SAMPLERS,
            "feature_cases": 16,
            "feature_epochs": 2,
        }
    result = evaluate(
        [parse_run(r) for r in args.run],
        args.json,
        workers=args.workers,
        every=args.every,
        max_checkpoints=args.max_checkpoints,
        train_cases=args.train_cases,
        train_seed=args.train_seed,
        quick=args.quick,
        verbose=not args.quiet,
        **kwargs,
    )
    table = render_table(result)
    print(table)
    if args.output:
        from monai_pairsynth.utils import atomic_write_text

        atomic_write_text(args.output, "# Convergence benchmark\n\n" + table)
    return result


if __name__ == "__main__":
    main()
