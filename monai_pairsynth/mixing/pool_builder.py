"""Building the bundle's synthesis pool: the quality filter trained on the real training split, a
:class:`~monai_pairsynth.mixing.synthesis_pool.SynthesisPool` filled through a
:class:`~monai_pairsynth.inferers.DiffusionPoolSource` (``synthesis="joint"``) or a
:class:`~monai_pairsynth.inferers.LabelFirstPoolSource` (``synthesis="label_first"``) and the filter, sharded across
``torch.distributed`` ranks (:func:`build_synthesis_pool`), the mixing pool of a segmentation run
(:func:`mixing_pool`) and the files ``generate.json`` writes (:func:`save_generation_outputs`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from monai_pairsynth.data.sources import BundleSettingError, _is_unset
from monai_pairsynth.distributed import is_main_process, world
from monai_pairsynth.engines.paired_checkpoint import read_paired_checkpoint
from monai_pairsynth.inferers.label_first_source import LabelFirstPoolSource, MaskPlacement
from monai_pairsynth.inferers.pool_source import DiffusionPoolSource
from monai_pairsynth.modalities import ModalitySpec, resolve_specs
from monai_pairsynth.quality import (
    FeatureCentroidFilter,
    load_feature_segmenter,
    save_feature_segmenter,
    train_feature_segmenter,
)
from monai_pairsynth.schedulers import DEFAULT_SAMPLER, DEFAULT_SAMPLER_STEPS
from monai_pairsynth.utils import atomic_save_torch, atomic_write_json
from monai_pairsynth.visualize import save_triplet_grid

from .pool_checks import (
    Synthesis,
    check_generator_checkpoint,
    check_pool_file,
    check_synthesis,
    check_synthetic_ratio,
)
from .synthesis_pool import SynthesisPool

__all__ = [
    "FilterMode",
    "Synthesis",
    "build_synthesis_pool",
    "export_pool_nifti",
    "merge_pool_states",
    "mixing_pool",
    "pool_generation_record",
    "save_generation_outputs",
    "train_quality_filter",
]

logger = logging.getLogger(__name__)


class FilterMode(str, Enum):
    """How the quality filter admits generated triplets into a pool.

    - ``pool``: the method's selection, each source call draws ``4k`` candidates and keeps the best ``k``
      (certainty cut to ``2k``, then the ``k`` closest to the real feature centroid), so the cost is a fixed
      4 candidates per kept triplet;
    - ``streaming``: each candidate is judged alone against thresholds calibrated on the real data (the
      cost depends on the acceptance rate);
    - ``none``: no filter.
    """

    POOL = "pool"
    STREAMING = "streaming"
    NONE = "none"


def _filter_mode(mode: FilterMode | str) -> FilterMode:
    try:
        return FilterMode(mode)
    except ValueError:
        raise BundleSettingError(
            f"filter_mode must be one of {[m.value for m in FilterMode]}, got {mode!r}."
        ) from None


def _no_specs(specs: Any) -> bool:
    """``None`` or, from a bundle's command line, ``"None"`` / ``"null"`` / ``""``."""
    return specs is None or (isinstance(specs, str) and _is_unset(specs))


def train_quality_filter(
    real_data: Sequence[Mapping[str, Any]],
    *,
    image_keys: Sequence[str] = ("ct", "pet"),
    label_key: str = "label",
    segmenter_path: str | os.PathLike | None = None,
    channels: Sequence[int] = (8, 16, 32, 64),
    epochs: int = 30,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    dropout: float = 0.2,
    mc_passes: int = 4,
    num_strata: int = 1,
    distance_quantile: float = 0.95,
    certainty_quantile: float = 0.05,
    device: str | torch.device | None = None,
    seed: int = 0,
    verbose: bool = False,
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
) -> Any:
    """A :class:`~monai_pairsynth.quality.FeatureCentroidFilter` fitted on the real training samples.

    Its feature network is a small tumour segmenter trained here on ``real_data``
    (:func:`~monai_pairsynth.quality.train_feature_segmenter`, seeded), or loaded from ``segmenter_path``.

    Args:
        real_data: the real training samples in physical units (:func:`real_samples`).
        image_keys, label_key: network input modalities and the tumour mask.
        segmenter_path: a segmenter saved with :func:`~monai_pairsynth.quality.save_feature_segmenter` to use
            instead of training one.
        channels, epochs, batch_size, learning_rate, dropout: the segmenter and its training.
        mc_passes, num_strata, distance_quantile, certainty_quantile: the filter (see its docs).
        device: where the segmenter trains and scores.
        seed: seeds the segmenter and the filter's dropout masks.
        verbose: print the segmenter's loss per epoch.
        specs: the modality specs that map physical units to the network's [-1, 1] input, for the segmenter's
            training and for the filter (``{name: ModalitySpec}`` or spec dicts, as a checkpoint records them).
            Give the generator's specs (its checkpoint's ``modality_specs``): the filter then maps real and
            generated PET as the generator does (e.g. up to 60 SUV with the log map). Default ``None``:
            ``DEFAULT_MODALITY_SPECS`` (linear, PET clipped at 15 SUV). A segmenter from ``segmenter_path`` should
            have been trained with the same specs.

    Returns:
        the fitted filter (``units="physical"``); ``filter.feature_network`` is the segmenter.
    """
    real_data = list(real_data)
    if len(real_data) < 2:
        raise BundleSettingError(
            f"the quality filter needs at least 2 real training samples, got {len(real_data)}."
        )
    device = torch.device(device) if device is not None else None
    spec_map = None if _no_specs(specs) else resolve_specs(specs)
    if not _is_unset(segmenter_path):
        if not Path(str(segmenter_path)).is_file():
            raise BundleSettingError(f"segmenter_path {str(segmenter_path)!r} does not exist.")
        network = load_feature_segmenter(str(segmenter_path), map_location=device or "cpu")
    else:
        network = train_feature_segmenter(
            real_data,
            spatial_dims=len(real_data[0][label_key].shape) - 1,
            image_keys=list(image_keys),
            label_key=label_key,
            channels=tuple(int(c) for c in channels),
            dropout=float(dropout),
            epochs=int(epochs),
            batch_size=int(batch_size),
            learning_rate=float(learning_rate),
            device=device,
            seed=int(seed),
            units="physical",
            specs=spec_map,
            verbose=verbose,
        )
    quality_filter = FeatureCentroidFilter(
        network,
        image_keys=list(image_keys),
        label_key=label_key,
        mc_passes=int(mc_passes),
        num_strata=int(num_strata),
        distance_quantile=float(distance_quantile),
        certainty_quantile=float(certainty_quantile),
        units="physical",
        specs=spec_map,
        seed=int(seed),
    )
    return quality_filter.fit(real_data)


class _ProgressSource:
    """Calls a pool source in chunks of its ``batch_size`` and shows a tqdm bar over generated triplets."""

    def __init__(self, source: Any, total: int, desc: str, enabled: bool) -> None:
        self.source = source
        self.chunk = int(getattr(source, "batch_size", 16))
        # what the pool reads from its source
        for name in ("spatial_shape", "spacing", "specs", "device"):
            setattr(self, name, getattr(source, name, None))
        self.bar = tqdm(total=total, desc=desc, unit="triplet", disable=not enabled, dynamic_ncols=True)

    def __call__(self, num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        parts: list[Mapping[str, torch.Tensor]] = []
        for start in range(0, num, self.chunk):
            n = min(self.chunk, num - start)
            parts.append(self.source(n, generator))
            if self.bar.total is not None and self.bar.n + n > self.bar.total:
                self.bar.total = self.bar.n + n
            self.bar.update(n)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        self.bar.close()


def _share(total: int, rank: int, world: int) -> int:
    return total // world + (1 if rank < total % world else 0)


def merge_pool_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Concatenate :meth:`SynthesisPool.state_dict` s of the same grid into one (the shards of several ranks).

    Triplets keep their order (state 0 first), ages are renumbered in that order, running counts are summed.
    The result loads with :meth:`SynthesisPool.load` once saved.

    Raises:
        ValueError: no states, or states of different keys, spatial shapes, spacings, specs or storage units.
    """
    states = [s for s in states]
    if not states:
        raise ValueError("merge_pool_states needs at least one pool state.")
    first = states[0]
    for i, s in enumerate(states[1:], start=1):
        for field in ("format", "version", "keys", "spatial_shape", "spacing", "specs", "storage"):
            if s.get(field) != first.get(field):
                raise ValueError(
                    f"pool state {i} has {field}={s.get(field)!r}, state 0 has {first.get(field)!r}; cannot merge."
                )
    size = sum(int(s["size"]) for s in states)
    data = {k: torch.cat([s["data"][k] for s in states]) for k in first["keys"]}
    stats: dict[str, Any] = {"generated": 0, "accepted": 0, "surplus": 0, "generation_seconds": 0.0}
    rejected: dict[str, int] = {}
    failures: dict[str, int] = {}
    for s in states:
        for name in stats:
            stats[name] += s["stats"][name]
        for target, name in ((rejected, "rejected"), (failures, "failures")):
            for reason, count in dict(s["stats"][name]).items():
                target[reason] = target.get(reason, 0) + int(count)
    stats["rejected"], stats["failures"] = rejected, failures
    return {
        **{k: v for k, v in first.items() if k not in ("size", "data", "stamps", "stats", "capacity")},
        "capacity": max(size, 1),
        "size": size,
        "data": data,
        "stamps": torch.arange(size, dtype=torch.int64),
        "stats": stats,
    }


def _pool_from_state(state: Mapping[str, Any]) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.pt"
        torch.save(dict(state), path)
        return SynthesisPool.load(path)


def build_synthesis_pool(
    diffusion_checkpoint: str | os.PathLike,
    quality_filter: Any | None,
    pool_size: int,
    *,
    filter_mode: FilterMode | str = FilterMode.POOL,
    scheduler: str = DEFAULT_SAMPLER,
    num_inference_steps: int = DEFAULT_SAMPLER_STEPS,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    seed: int = 0,
    keep_per_call: int = 64,
    progress: bool = True,
    synthesis: Synthesis | str = Synthesis.JOINT,
    real_data: Sequence[Mapping[str, Any]] | None = None,
    conditioning: str = "auto",
    placement: MaskPlacement | None = None,
) -> Any:
    """Fill a :class:`~monai_pairsynth.mixing.synthesis_pool.SynthesisPool` of ``pool_size`` filtered triplets.

    Triplets come from a :class:`~monai_pairsynth.inferers.DiffusionPoolSource` on the checkpoint
    (``synthesis="joint"``, the default) or a :class:`~monai_pairsynth.inferers.LabelFirstPoolSource` on the
    checkpoint and ``real_data`` (``synthesis="label_first"``: CT + PET generated for the real training masks,
    moved inside their case's body), and pass ``quality_filter`` in ``filter_mode`` (:class:`FilterMode`). Under
    ``torch.distributed`` each rank generates its share (``pool_size / world_size``, with a rank-dependent seed),
    and the shards are gathered so that every rank returns the same full pool (rank order).

    Args:
        diffusion_checkpoint: the generator.
        quality_filter: a fitted filter (:func:`train_quality_filter`), or ``None`` with ``filter_mode="none"``.
        pool_size: triplets to keep (>= 1).
        filter_mode: ``"pool"`` (4 candidates per kept triplet), ``"streaming"`` or ``"none"``.
        scheduler, num_inference_steps: the sampler (default: the package default,
            ``monai_pairsynth.schedulers.DEFAULT_SAMPLER`` / ``DEFAULT_SAMPLER_STEPS``, which the bundle's configs
            take too; ``"ddpm"`` with 100 steps is the robust choice for a young checkpoint, see docs/sampling.md).
        batch_size: triplets per network call.
        device: sampling device (default CUDA when available).
        seed: generation seed (rank ``r`` uses ``seed + 7919 r``).
        keep_per_call: pool mode keeps at most this many triplets per source call (of 4x as many candidates).
        progress: show a progress bar over generated triplets (rank 0 only).
        synthesis: ``"joint"`` or ``"label_first"`` (:class:`Synthesis`).
        real_data: ``synthesis="label_first"``: the real training cases the masks are drawn from (physical
            units, ``ct`` and the label on the checkpoint's grid; the cases the filter is fitted on).
        conditioning: ``synthesis="label_first"``: ``"auto"`` (clean at t = 0 for a checkpoint trained with
            per-modality timesteps, else clamped), ``"clean"`` or ``"clamp"``.
        placement: ``synthesis="label_first"``: the mask augmentation (default ``MaskPlacement()``).

    Returns:
        the filled pool (physical units); ``pool.stats`` counts generated, accepted and rejected triplets (summed
        over ranks) and the generation time; ``pool.generation`` records how it was made: ``{"synthesis"}``, and
        for label-first also ``"conditioning"`` (what the sampler used) and ``"placement"`` (masks drawn, placed,
        fallbacks to the original position and tries, summed over ranks). :func:`save_generation_outputs` writes
        it into ``pool.pt`` and ``counts.json``.
    """
    mode = _filter_mode(filter_mode)
    kind = check_synthesis(synthesis)
    if isinstance(pool_size, bool) or int(pool_size) < 1:
        raise BundleSettingError(f"pool_size must be an integer >= 1, got {pool_size!r}.")
    if mode != FilterMode.NONE and quality_filter is None:
        raise BundleSettingError(
            f"filter_mode {mode.value!r} needs a quality filter (or use filter_mode 'none')."
        )
    rank, world_size = world()
    share = _share(int(pool_size), rank, world_size)
    device = torch.device(device) if device is not None else None
    if kind == Synthesis.LABEL_FIRST.value:
        if not real_data:
            raise BundleSettingError(
                "synthesis 'label_first' needs the real training cases to draw masks from (real_data)."
            )
        try:
            source = LabelFirstPoolSource(
                str(diffusion_checkpoint),
                cases=real_data,
                placement=placement,
                conditioning=conditioning,
                num_inference_steps=int(num_inference_steps),
                scheduler=str(scheduler),
                batch_size=int(batch_size),
                device=device,
            )
        except ValueError as err:  # no tumour in the training cases, cases of another grid, a bad mode
            raise BundleSettingError(f"synthesis 'label_first': {err}") from None
    else:
        source = DiffusionPoolSource(
            str(diffusion_checkpoint),
            num_inference_steps=int(num_inference_steps),
            scheduler=str(scheduler),
            batch_size=int(batch_size),
            device=device,
        )
    filter_kwargs: dict[str, Any] | None = None
    request_size = None
    if mode == FilterMode.POOL:
        calls = max(1, math.ceil(share / max(1, int(keep_per_call))))
        keep = max(1, math.ceil(share / calls))
        # select(mode="pool") keeps r·N of 4·r·N candidates; with r = 1 and N = keep it keeps `keep` of 4·keep
        filter_kwargs = {"mode": "pool", "ratio": 1.0, "num_real": keep}
        request_size = 4 * keep
        expected = 4 * share
    elif mode == FilterMode.STREAMING:
        filter_kwargs = {"mode": "streaming"}
        expected = share
    else:
        expected = share
    wrapped = _ProgressSource(
        source,
        total=expected,
        desc=f"generating (rank {rank})" if world_size > 1 else "generating",
        enabled=bool(progress) and rank == 0,
    )
    pool = SynthesisPool(
        max(share, 1),
        keys=source.keys,
        source=wrapped,
        quality_filter=None if mode == FilterMode.NONE else quality_filter,
        filter_kwargs=filter_kwargs,
        seed=int(seed) + 7919 * rank,
        request_size=request_size,
        max_attempts=50,
    )
    try:
        if share > 0:
            pool.fill()
    finally:
        wrapped.close()
    record = _generation_record(kind, source)
    if world_size == 1:
        pool.generation = record
        return pool
    logger.info(
        "rank %d/%d generated its share: %d of %d triplets",
        rank,
        world_size,
        len(pool) if share else 0,
        pool_size,
    )
    state = pool.state_dict()
    if share == 0:
        state = {
            **state,
            "size": 0,
            "data": {k: v[:0] for k, v in state["data"].items()},
            "stamps": state["stamps"][:0],
        }
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, (state, record))
    merged = _pool_from_state(merge_pool_states([s for s, _ in gathered]))
    merged.generation = _merge_generation_records([r for _, r in gathered])
    return merged


def _generation_record(kind: str, source: Any) -> dict[str, Any]:
    """What made a pool: the synthesis and, for label-first, the conditioning used and the placement counts."""
    record: dict[str, Any] = {"synthesis": kind}
    if isinstance(source, LabelFirstPoolSource):
        record["conditioning"] = source.last_conditioning
        record["placement"] = source.placement_counts()
        counts = record["placement"]
        logger.info(
            "label-first pool: %d masks drawn, %d placed inside the body, %d kept their original position "
            "(fallback after %d tries), conditioning %s",
            counts["drawn"],
            counts["placed"],
            counts["fallbacks"],
            source.placement.max_tries if isinstance(source.placement, MaskPlacement) else -1,
            record["conditioning"],
        )
    return record


def _merge_generation_records(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One record of several ranks' records: the placement counts summed, the conditioning of any rank that
    sampled (ranks with no share sampled nothing)."""
    merged: dict[str, Any] = dict(records[0])
    if "placement" in merged:
        merged["placement"] = {
            k: sum(int(r["placement"][k]) for r in records) for k in records[0]["placement"]
        }
        used = [r.get("conditioning") for r in records if r.get("conditioning") is not None]
        merged["conditioning"] = used[0] if used else None
    return merged


def pool_generation_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``"generation"`` record a pool file of :func:`save_generation_outputs` holds (``{"synthesis", ...}``),
    ``None`` for a pool file written otherwise (e.g. :meth:`SynthesisPool.save`, or before the record existed)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    record = state.get("generation") if isinstance(state, Mapping) else None
    return dict(record) if isinstance(record, Mapping) else None


def mixing_pool(
    synthetic_ratio: float,
    *,
    real_data: Sequence[Mapping[str, Any]] | None = None,
    pool_file: str | os.PathLike | None = None,
    diffusion_checkpoint: str | os.PathLike | None = None,
    pool_size: int | None = None,
    filter_mode: FilterMode | str = FilterMode.POOL,
    scheduler: str = DEFAULT_SAMPLER,
    num_inference_steps: int = DEFAULT_SAMPLER_STEPS,
    batch_size: int = 16,
    segmenter_epochs: int = 30,
    mc_passes: int = 4,
    spatial_size: Sequence[int] | None = None,
    spacing: float | None = None,
    keys: Sequence[str] = ("ct", "pet", "label"),
    image_keys: Sequence[str] = ("ct", "pet"),
    label_key: str = "label",
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    synthesis: Synthesis | str = Synthesis.JOINT,
    conditioning: str = "auto",
    placement: MaskPlacement | None = None,
) -> Any | None:
    """The synthesis pool a segmentation run mixes from: ``None`` for ``synthetic_ratio == 0`` (real only).

    With ``pool_file`` the pool written by ``generate.json`` is loaded (on every rank). Otherwise one is built
    from ``diffusion_checkpoint``: a quality filter is trained on ``real_data``
    (:func:`train_quality_filter`) and ``pool_size`` triplets are generated (:func:`build_synthesis_pool`;
    default ``round(synthetic_ratio * len(real_data))``, the method's ``r·N``). The filter maps physical units
    with ``specs``, by default the specs the checkpoint records (the map its triplets are decoded with; the
    default linear map for a checkpoint trained with it). ``real_data`` is in physical units: read it with a PET
    map that reaches as high as the generator's (``pet_intensity`` as in ``train_diffusion.json``), or the
    filter's real reference is clipped where the generated PET is not. ``synthesis`` (:class:`Synthesis`) picks
    joint sampling or label-first pools (the masks drawn from ``real_data`` and moved by ``placement``, a
    :class:`~monai_pairsynth.inferers.MaskPlacement`, default ``MaskPlacement()``; CT + PET generated for them
    with ``conditioning``); a loaded ``pool_file`` keeps how it was made (logged, in ``pool.generation``), and
    ``conditioning`` and ``placement`` are not used for it.

    Raises:
        BundleSettingError: a bad ratio, pool file or checkpoint, or no real data to fit the filter on.
    """
    ratio = check_synthetic_ratio(synthetic_ratio)
    if ratio == 0:
        return None
    kind = check_synthesis(synthesis)
    if not _is_unset(pool_file):
        check_pool_file(pool_file, spatial_size=spatial_size, keys=keys)
        pool = SynthesisPool.load(str(pool_file))
        pool.generation = pool_generation_record(str(pool_file))
        made = (pool.generation or {}).get("synthesis")
        logger.info(
            "pool_file %s: %d triplets made with synthesis %s",
            pool_file,
            len(pool),
            repr(made) if made else "unrecorded",
        )
        return pool
    check_generator_checkpoint(
        diffusion_checkpoint, spatial_size=spatial_size, spacing=spacing, modalities=keys
    )
    if not real_data:
        raise BundleSettingError("building a synthesis pool needs the real training samples (real_data).")
    size = int(pool_size) if not _is_unset(pool_size) else max(1, round(ratio * len(real_data)))
    mode = _filter_mode(filter_mode)
    quality_filter = None
    if mode != FilterMode.NONE:
        if _no_specs(specs):  # the generator's map: its triplets are decoded with it
            recorded = read_paired_checkpoint(str(diffusion_checkpoint)).get("modality_specs") or {}
            specs = {k: recorded.get(k) for k in [*image_keys, label_key]}  # not recorded: the default
        quality_filter = train_quality_filter(
            real_data,
            image_keys=image_keys,
            label_key=label_key,
            epochs=segmenter_epochs,
            mc_passes=mc_passes,
            device=device,
            seed=seed,
            specs=specs,
        )
    return build_synthesis_pool(
        str(diffusion_checkpoint),
        quality_filter,
        size,
        filter_mode=mode,
        scheduler=scheduler,
        num_inference_steps=num_inference_steps,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=progress,
        synthesis=kind,
        real_data=real_data,
        conditioning=conditioning,
        placement=placement,
    )


def export_pool_nifti(pool: Any, output_dir: str | os.PathLike, case_prefix: str = "SYNTH") -> Path:
    """Write every triplet of a pool as NIfTI files in :mod:`monai_pairsynth.generate`'s layout.

    ``<output_dir>/<case>/<case>__CT.nii.gz``, ``__PT.nii.gz``, ``<case>.nii.gz`` (mask, uint8) and
    ``datalist.json`` (relative paths, a ``"generation"`` record), readable by MONAI's ``load_decathlon_datalist``
    and by :func:`monai_pairsynth.metrics.evaluation.evaluate`.

    Returns:
        the datalist path.
    """
    return pool.export_nifti(output_dir, prefix=case_prefix, overwrite=True) / "datalist.json"


def save_generation_outputs(
    pool: Any,
    quality_filter: Any | None,
    output_dir: str | os.PathLike,
    *,
    settings: Mapping[str, Any] | None = None,
    preview_cases: int = 8,
    export_nifti: bool = False,
) -> dict[str, Any]:
    """Write what ``generate.json`` produces (rank 0 only; other ranks return the counts and write nothing).

    Files in ``output_dir``: ``pool.pt`` (:meth:`SynthesisPool.save`, plus a ``"generation"`` record of how the
    pool was made, ``pool.generation`` from :func:`build_synthesis_pool`: read it with
    :func:`pool_generation_record`), ``quality_filter.pt`` and
    ``feature_segmenter.pt`` (the filter and its network; load with ``FeatureCentroidFilter.load(path,
    load_feature_segmenter(...))``), ``preview.png`` (the first ``preview_cases`` triplets), ``counts.json``
    (accepted/generated/rejected by reason; generation time, summed over ranks under ``torch.distributed``;
    ``"generation"``, the same record; settings) and, with ``export_nifti``, ``nifti/``
    (:func:`export_pool_nifti`).

    Returns:
        the content of ``counts.json``.
    """
    stats = pool.stats
    out = Path(output_dir)
    generation = getattr(pool, "generation", None)
    counts = {
        "pool_size": len(pool),
        "generated": int(stats["generated"]),
        "accepted": int(stats["accepted"]),
        "rejected": {str(k): int(v) for k, v in stats["rejected"].items()},
        "rejected_total": int(sum(stats["rejected"].values())),
        "surplus": int(stats["surplus"]),
        "failures": {str(k): int(v) for k, v in stats["failures"].items()},
        "generation_seconds": float(stats["generation_seconds"]),
        "ranks": world()[1],
        "spatial_size": list(pool.spatial_shape),
        "spacing": list(pool.spacing),
        "generation": None if generation is None else dict(generation),
        "settings": dict(settings or {}),
        "files": {
            "pool": str(out / "pool.pt"),
            "quality_filter": None if quality_filter is None else str(out / "quality_filter.pt"),
            "feature_segmenter": None if quality_filter is None else str(out / "feature_segmenter.pt"),
            "preview": str(out / "preview.png") if preview_cases > 0 and len(pool) else None,
            "nifti": str(out / "nifti" / "datalist.json") if export_nifti else None,
        },
    }
    if not is_main_process():
        return counts
    out.mkdir(parents=True, exist_ok=True)
    if generation is None:
        pool.save(out / "pool.pt")
    else:  # the pool file records which synthesis made it (SynthesisPool.load ignores the extra field)
        atomic_save_torch({**pool.state_dict(), "generation": dict(generation)}, out / "pool.pt")
    if quality_filter is not None:
        quality_filter.save(out / "quality_filter.pt")
        save_feature_segmenter(quality_filter.feature_network, out / "feature_segmenter.pt")
    if counts["files"]["preview"]:
        shown = [pool.get(i, units="physical") for i in range(min(int(preview_cases), len(pool)))]
        save_triplet_grid(
            shown,
            out / "preview.png",
            keys=pool.keys,
            specs=pool.specs,
            titles=[f"pool {i}" for i in range(len(shown))],
            samples_per_row=min(4, len(shown)),
        )
    if export_nifti:
        export_pool_nifti(pool, out / "nifti")
    atomic_write_json(out / "counts.json", counts)
    logger.info(
        "pool of %d triplets (generated %d, rejected %s) in %.1f s written to %s",
        len(pool),
        counts["generated"],
        counts["rejected"],
        counts["generation_seconds"],
        out,
    )
    return counts
