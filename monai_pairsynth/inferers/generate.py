"""Generate synthetic triplets from a trained checkpoint and write them as NIfTI files.

Python::

    from monai_pairsynth.inferers.generate import generate
    out = generate("runs/diffusion/checkpoint.pt", "synthetic/", num_samples=100)

Command line::

    python -m monai_pairsynth.inferers.generate --checkpoint runs/diffusion/checkpoint.pt --output-dir synthetic/ \\
        --num-samples 100 [--scheduler dpmpp] [--num-inference-steps 20] [--seed 0] [--batch-size 8] \\
        [--device cpu] [--strength 0.8 --seed-datalist data/datalist.json]

Output (one folder per case, HECKTOR-style names; the mask is ``<case>.nii.gz`` as in HECKTOR's labelsTr)::

    synthetic/
      SYNTH-0000/SYNTH-0000__CT.nii.gz     CT in HU (float32)
      SYNTH-0000/SYNTH-0000__PT.nii.gz     PET in SUV (float32)
      SYNTH-0000/SYNTH-0000.nii.gz         tumour mask {0, 1} (uint8)
      ...
      datalist.json                         {"training": [{"ct": ..., "pet": ..., "label": ..., "case_id": ...}],
                                             "generation": {checkpoint, scheduler, steps, seed, ...}}
      preview.png                           the first cases, CT/PET with the mask contour

``datalist.json`` holds paths relative to the folder: ``monai_pairsynth.data.load_datalist_json`` and
MONAI's ``load_decathlon_datalist`` both read it. Modalities other than ``ct``/``pet`` are named
``<case>__<KEY>.nii.gz``. Everything is written into a hidden temporary folder next to ``output_dir`` that
is renamed into place at the end, so an interrupted or failed run leaves no partial output.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import ensure_tuple_rep
from tqdm import tqdm

from monai_pairsynth.data import (
    preprocess_datalist,
    preprocessing_transforms,
)
from monai_pairsynth.data.nifti_io import NiftiTripletWriter, case_ids, check_output_dir, modality_file_names
from monai_pairsynth.data.sources import resolve_datalist
from monai_pairsynth.modalities import ModalitySpec, resolve_specs
from monai_pairsynth.schedulers import DEFAULT_SAMPLER, DEFAULT_SAMPLER_STEPS
from monai_pairsynth.visualize import save_triplet_grid

from .paired_diffusion_inferer import PairedDiffusionInferer

__all__ = ["generate", "main", "modality_file_names"]


def _seed_samples(
    seed_datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    inferer: PairedDiffusionInferer,
    modalities: Sequence[str],
    spatial_dims: int,
    specs: Mapping[str, ModalitySpec],
) -> dict[str, torch.Tensor]:
    """Real samples to seed from, preprocessed like the training data: ``{modality: (N, 1, *spatial)}`` in [-1, 1]."""
    try:
        items = resolve_datalist(seed_datalist, modalities, "seed_datalist")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"seed_datalist {os.fspath(seed_datalist)!r} is neither a datalist JSON nor a HECKTOR folder."
        ) from err
    if not items:
        raise ValueError("seed_datalist is empty.")
    missing = [(i, [m for m in modalities if m not in item]) for i, item in enumerate(items)]
    missing = [(i, ms) for i, ms in missing if ms]
    if missing:
        i, ms = missing[0]
        raise ValueError(f"seed_datalist entry {i} has no {ms}; every entry needs {list(modalities)}.")
    masks = [m for m in modalities if specs[m].is_mask]
    if not masks:
        raise ValueError(
            f"seeding from data needs a mask modality to find the tumour; the model has {list(modalities)}."
        )
    if inferer.spatial_shape is None or inferer.spacing is None:
        raise ValueError(
            "the checkpoint records no training spatial_size / spacing, which seeding from data needs to "
            "preprocess the seed cases like the training data."
        )
    load = isinstance(items[0][modalities[0]], (str, os.PathLike))
    transform = preprocessing_transforms(
        keys=list(modalities),
        label_key=masks[0],
        spacing=inferer.spacing,
        spatial_size=inferer.spatial_shape,
        specs=dict(specs),
        extract_slices=spatial_dims == 2,
        load=load,
    )
    samples = preprocess_datalist(items, transform)
    if not samples:
        raise ValueError("seed_datalist gave no sample after preprocessing (no tumour slice?).")
    return {
        m: torch.stack(
            [torch.as_tensor(s[m].as_tensor() if isinstance(s[m], MetaTensor) else s[m]) for s in samples]
        )
        for m in modalities
    }


def generate(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_samples: int,
    scheduler: str = DEFAULT_SAMPLER,
    num_inference_steps: int = DEFAULT_SAMPLER_STEPS,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    strength: float = 1.0,
    seed_datalist: str | os.PathLike | Sequence[Mapping[str, Any]] | None = None,
    progress: bool = True,
    amp_dtype: str | None = None,
    use_ema: bool = True,
    overwrite: bool = False,
    case_prefix: str = "SYNTH",
    preview_cases: int = 8,
) -> Path:
    """Sample ``num_samples`` triplets from a checkpoint and write them (NIfTI + datalist JSON + PNG preview).

    Args:
        checkpoint: a checkpoint written by the training engine (``save_paired_checkpoint``).
        output_dir: the folder to create (see the module docstring for its layout).
        num_samples: number of cases.
        scheduler: ``"dpmpp"`` (DPM-Solver++ 2M), ``"ddim"`` or ``"ddpm"``.
        num_inference_steps: denoising steps per case.
        seed: case ``i`` gets its own seed, drawn from ``seed``; the output does not depend on
            ``batch_size`` (up to float round-off of batched convolutions).
        batch_size: triplets sampled (and held in memory) at a time.
        device: sampling device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        strength: in (0, 1]; below 1 every case starts from a real case of ``seed_datalist`` noised to this
            fraction of the schedule (the paper uses 0.8-0.9).
        seed_datalist: real cases to seed from (needed when ``strength < 1``): a datalist JSON, a HECKTOR
            folder, or a list of dicts of file paths (or of in-memory ``MetaTensor`` s in physical units).
            They are preprocessed like the training data (spacing, crop to the training size; for a 2D model,
            the tumour slices). Case ``i`` uses seed slice ``perm[i % n]`` for a permutation drawn from ``seed``.
        progress: show a progress bar over cases.
        amp_dtype: ``"bf16"`` / ``"fp16"`` mixed precision on CUDA.
        use_ema: sample with the checkpoint's EMA weights when it has them.
        overwrite: replace an existing, non-empty ``output_dir`` (only once the new output is complete).
        case_prefix: case ids are ``<case_prefix>-0000``, ``<case_prefix>-0001``, ...
        preview_cases: number of cases drawn in ``preview.png`` (0: no preview).

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        FileNotFoundError: no checkpoint (or seed datalist) at the path.
        FileExistsError: ``output_dir`` exists and is not empty, and ``overwrite`` is False.
        ValueError: a bad argument (named), before anything is written.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}.")
    if float(strength) < 1.0 and seed_datalist is None:
        raise ValueError(f"strength={strength} < 1 needs seed_datalist (the real cases to start from).")
    if float(strength) == 1.0 and seed_datalist is not None:
        raise ValueError("seed_datalist is only used with strength < 1 (strength=1 starts from pure noise).")
    if not case_prefix or any(c in case_prefix for c in "/\\_") or case_prefix.startswith("."):
        raise ValueError(
            f"case_prefix must be a plain name without '/', '\\\\', '_' or a leading '.', got {case_prefix!r}."
        )
    output_dir = check_output_dir(output_dir, overwrite)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(checkpoint)!r}.")

    device = torch.device(device)
    inferer, model = PairedDiffusionInferer.from_checkpoint(checkpoint, map_location=device, use_ema=use_ema)
    modalities = tuple(model.modalities)
    known_specs = inferer.specs if inferer.specs is not None else resolve_specs(modalities)
    specs = {m: known_specs[m] for m in modalities}
    if inferer.spatial_shape is None:
        raise ValueError(f"checkpoint {str(checkpoint)!r} records no training spatial_size to generate at.")
    seeds_pool = None
    seed_order: list[int] = []
    if seed_datalist is not None:
        seeds_pool = _seed_samples(seed_datalist, inferer, modalities, model.spatial_dims, specs)
        n_seed = next(iter(seeds_pool.values())).shape[0]
        seed_order = torch.randperm(n_seed, generator=torch.Generator().manual_seed(int(seed) + 1)).tolist()

    case_seeds = torch.randint(
        0, 2**62, (num_samples,), generator=torch.Generator().manual_seed(int(seed))
    ).tolist()
    ids = case_ids(case_prefix, num_samples)

    writer = NiftiTripletWriter(output_dir, specs, overwrite=overwrite)
    preview: list[dict[str, Any]] = []
    with writer, tqdm(total=num_samples, disable=not progress, desc="generate", unit="case") as bar:
        for start in range(0, num_samples, batch_size):
            idx = list(range(start, min(start + batch_size, num_samples)))
            seed_sample = None
            if seeds_pool is not None:
                rows = torch.tensor([seed_order[i % len(seed_order)] for i in idx])
                seed_sample = {m: v[rows] for m, v in seeds_pool.items()}
            out = inferer.sample(
                model,
                num_samples=len(idx),
                scheduler=scheduler,
                num_inference_steps=num_inference_steps,
                sample_seeds=[case_seeds[i] for i in idx],
                batch_size=batch_size,
                amp_dtype=amp_dtype,
                seed_sample=seed_sample,
                strength=strength,
                inputs_normalized=True,
                decode=True,
                device=device,
            )
            for j, i in enumerate(idx):
                triplet = {m: out[m][j].as_tensor().cpu() for m in modalities}
                affine = out[modalities[0]].affine[j].cpu()
                writer.add(ids[i], triplet, affine, sample_seed=int(case_seeds[i]))
                if len(preview) < preview_cases:
                    preview.append(
                        {m: MetaTensor(x, affine=out[m].affine[j].cpu()) for m, x in triplet.items()}
                    )
            bar.update(len(idx))
        generation = {
            "checkpoint": str(checkpoint.resolve()),
            "scheduler": scheduler if isinstance(scheduler, str) else type(scheduler).__name__,
            "num_inference_steps": int(num_inference_steps),
            "seed": int(seed),
            "strength": float(strength),
            "seeded_from": None
            if seed_datalist is None or not isinstance(seed_datalist, (str, os.PathLike))
            else str(Path(seed_datalist).resolve()),
            "use_ema": bool(use_ema),
            "spatial_size": list(inferer.spatial_shape),
            "spacing": None
            if inferer.spacing is None
            else [float(v) for v in ensure_tuple_rep(inferer.spacing, model.spatial_dims)],
        }
        files = {}
        if preview:
            files["preview.png"] = lambda path: save_triplet_grid(
                preview,
                path,
                keys=modalities,
                specs=specs,
                titles=ids[: len(preview)],
                samples_per_row=min(4, len(preview)),
            )
        writer.commit({"generation": generation}, files=files)
    return writer.output_dir


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: ``python -m monai_pairsynth.generate --checkpoint ... --output-dir ... --num-samples ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_pairsynth.generate",
        description="Sample synthetic PET/CT/mask triplets from a trained checkpoint and write them as NIfTI "
        "(one folder per case, HECKTOR-style names), a datalist JSON and a PNG preview.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by the training engine")
    parser.add_argument("--output-dir", required=True, help="folder to create")
    parser.add_argument("--num-samples", type=int, required=True, help="number of cases")
    parser.add_argument(
        "--scheduler",
        default=DEFAULT_SAMPLER,
        choices=["dpmpp", "ddim", "ddpm"],
        help=f"sampler ({DEFAULT_SAMPLER})",
    )
    parser.add_argument(
        "--num-inference-steps",
        type=int,
        default=DEFAULT_SAMPLER_STEPS,
        help=f"denoising steps ({DEFAULT_SAMPLER_STEPS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--batch-size", type=int, default=8, help="triplets per batch (8)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (cpu)")
    parser.add_argument(
        "--strength", type=float, default=1.0, help="noise seeding strength in (0, 1] (1: from noise)"
    )
    parser.add_argument("--seed-datalist", default=None, help="datalist JSON or HECKTOR folder to seed from")
    parser.add_argument("--amp-dtype", default=None, choices=["bf16", "fp16"], help="mixed precision on CUDA")
    parser.add_argument(
        "--no-ema", action="store_true", help="use the online weights instead of the EMA weights"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--preview-cases", type=int, default=8, help="cases drawn in preview.png (8; 0: none)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = generate(
        args.checkpoint,
        args.output_dir,
        args.num_samples,
        scheduler=args.scheduler,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        strength=args.strength,
        seed_datalist=args.seed_datalist,
        progress=not args.no_progress,
        amp_dtype=args.amp_dtype,
        use_ema=not args.no_ema,
        overwrite=args.overwrite,
        preview_cases=args.preview_cases,
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
