"""Replace a sample's aligned modalities by a synthetic triplet, inside an ordinary MONAI ``Compose``.

Two layers, as in MONAI (``RandGaussianNoise`` / ``RandGaussianNoised``):

* :class:`SynthesizePaired` returns one synthetic triplet: drawn from a :class:`SynthesisPool`
  (``mode="pool"``) or generated from this very sample (``mode="seeded"``: the real triplet noised to
  ``strength`` of the diffusion schedule and denoised again, main process only);
* :class:`SynthesizePairedd` owns one and, with probability ``prob``, replaces every modality key of the
  sample dict by the triplet, keeping every other key and adding ``synthetic: True/False``.

Where to place it: the pool stores **physical units** (HU, SUV, a {0, 1} mask) by default, so put the transform
**first**, right after loading (and any resampling to the pool's spacing / cropping to its size), *before* your
intensity normalisation and augmentation, which then treat real and synthetic triplets alike. If it must come
after a normalisation to the package's diffusion range (``NormalizeModalitiesd``), pass
``units="normalized"``.

Mixing ratio: with ``prob = p`` a share ``p`` of the samples seen is synthetic and the epoch length does not
change (real samples are *replaced*). The augmentation ratio of the literature, ``r = N_synthetic / N_real``,
corresponds to ``p = r / (1 + r)`` (``r = 0.5`` -> ``p = 1/3``); to *add* ``rN`` synthetic samples instead, use
:class:`monai_pairsynth.mixing.mixed_dataset.MixedDataset`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Mapping
from enum import Enum
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms.transform import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, look_up_option

from monai_pairsynth.data.validation import check_matching_shapes
from monai_pairsynth.modalities import ModalitySpec

from .pool_types import _is_out_of_memory
from .synthesis_pool import (
    EmptyPoolError,
    PoolGenerationError,
    PoolStorage,
    SynthesisPool,
)

__all__ = [
    "SynthesisFallback",
    "SynthesisMode",
    "SynthesizePaired",
    "SynthesizePairedD",
    "SynthesizePairedDict",
    "SynthesizePairedd",
]

logger = logging.getLogger(__name__)

# MONAI meta keys that describe the array layout (kept from the replaced sample); everything else that described
# the real case (file name, patient id...) is dropped, and the geometry is the synthetic sample's
_LAYOUT_META_KEYS = ("original_channel_dim", "space")


class SynthesisMode(str, Enum):
    """Where a synthetic triplet comes from: a filled ``pool``, or generated ``seeded`` from the sample."""

    POOL = "pool"
    SEEDED = "seeded"


class SynthesisFallback(str, Enum):
    """What to do when no synthetic triplet can be had (empty pool, failed generation): keep the ``real``
    sample (counted and logged) or raise an ``error``."""

    REAL = "real"
    ERROR = "error"


def _like(synthetic: MetaTensor, original: Any, key: Hashable) -> Any:
    """``synthetic`` with the container type, dtype and device of ``original``; geometry from ``synthetic``."""
    if isinstance(original, np.ndarray):
        return synthetic.detach().cpu().numpy().astype(original.dtype, copy=False)
    if isinstance(original, torch.Tensor):
        plain = synthetic.as_tensor().to(device=original.device, dtype=original.dtype)
        if not isinstance(original, MetaTensor):
            return plain
        meta = {k: original.meta[k] for k in _LAYOUT_META_KEYS if k in original.meta}
        meta.update({k: v for k, v in synthetic.meta.items() if k != "affine"})
        affine = synthetic.affine.to(dtype=original.affine.dtype)
        if "original_affine" in original.meta:
            meta["original_affine"] = affine.clone()
        if "spatial_shape" in original.meta:
            meta["spatial_shape"] = np.asarray(plain.shape[1:])
        return MetaTensor(plain, affine=affine, meta=meta)
    raise ValueError(
        f"key {key!r} holds a {type(original).__name__}; SynthesizePairedd replaces numpy arrays or torch tensors."
    )


class SynthesizePaired(RandomizableTransform):
    """Return one synthetic triplet ``{key: MetaTensor (1, H, W[, D])}`` from a pool or seeded from a sample.

    Args:
        pool: the :class:`SynthesisPool` to draw from (``mode="pool"``); its source is the default ``source``.
        mode: ``"pool"`` (a uniformly drawn pool entry; safe in DataLoader workers) or ``"seeded"`` (generate
            one from the reference sample with ``source.generate_seeded``, main process only).
        strength: ``mode="seeded"``: fraction of the diffusion schedule the reference is noised to, in (0, 1]
            (0.8-0.9 in the paper: layout kept, appearance re-synthesised).
        source: ``mode="seeded"``: an object with ``generate_seeded(reference, strength, generator)`` and a
            ``device`` (e.g. :class:`monai_pairsynth.inferers.DiffusionPoolSource`); default
            ``pool.source``.
        units: units of the returned triplet and of the reference: ``"physical"`` (HU, SUV, {0, 1}; default) or
            ``"normalized"`` (the modality specs' [-1, 1]).
        specs: modality specs for ``units="normalized"`` in seeded mode without a pool (default: the source's).

    ``randomize`` draws the pool index (pool mode) or the generation seed (seeded mode) from ``self.R``; the
    call then returns the same triplet for the same draw. Pickling (spawned DataLoader workers) in pool mode
    carries only the pool's shared-memory view: the source stays in the main process. Raises :class:`EmptyPoolError` when the pool is
    empty and :class:`PoolGenerationError` when seeded generation fails (exception, out of memory, NaN).

    Example:
        >>> import torch
        >>> from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
        >>> def source(num, generator):
        ...     pet = torch.rand(num, 1, 8, 8, generator=generator) * 15
        ...     return {"ct": pet * 10 - 50, "pet": pet, "label": (pet > 10).float()}
        >>> pool = SynthesisPool(4, spatial_shape=(8, 8), source=source)
        >>> _ = pool.fill()
        >>> synth = SynthesizePaired(pool).set_random_state(seed=0)
        >>> triplet = synth()
        >>> sorted(triplet), tuple(triplet["pet"].shape)
        (['ct', 'label', 'pet'], (1, 8, 8))
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        pool: SynthesisPool | None = None,
        mode: SynthesisMode | str = SynthesisMode.POOL,
        strength: float = 0.8,
        source: Any | None = None,
        units: PoolStorage | str = PoolStorage.PHYSICAL,
        specs: Mapping[str, ModalitySpec] | None = None,
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        self.mode = look_up_option(mode, SynthesisMode)
        self.units = look_up_option(units, PoolStorage)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}.")
        self.strength = float(strength)
        if pool is not None and not isinstance(pool, SynthesisPool):
            raise ValueError(f"pool must be a SynthesisPool, got {type(pool).__name__}.")
        self.pool = pool
        self.source = source if source is not None else getattr(pool, "source", None)
        if self.mode == SynthesisMode.POOL and pool is None:
            raise ValueError('mode="pool" needs pool=SynthesisPool(...).')
        if self.mode == SynthesisMode.SEEDED and not callable(getattr(self.source, "generate_seeded", None)):
            raise ValueError(
                'mode="seeded" needs a source with generate_seeded(reference, strength, generator), e.g. '
                f"DiffusionPoolSource; got {type(self.source).__name__}."
            )
        self.specs = dict(specs or getattr(pool, "specs", None) or getattr(self.source, "specs", None) or {})
        self._index: int | None = None
        self._seed: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # a DataLoader worker (spawn pickles the transform) needs only the shared pool view in pool mode, not the
        # source: a diffusion model of megabytes, or an object that cannot be pickled at all (a lock, CUDA)
        state = dict(self.__dict__)
        if self.mode == SynthesisMode.POOL:
            state["source"] = None
        return state

    @property
    def keys(self) -> tuple[str, ...]:
        """The modality keys a synthetic triplet holds."""
        if self.pool is not None and self.mode == SynthesisMode.POOL:
            return self.pool.keys
        return tuple(getattr(self.source, "keys", ()) or (self.pool.keys if self.pool is not None else ()))

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self.mode == SynthesisMode.POOL:
            size = len(self.pool)
            self._index = int(self.R.randint(size)) if size > 0 else None
        else:
            self._seed = int(self.R.randint(2**31 - 1))

    def _seeded(self, reference: Mapping[Hashable, Any]) -> dict[str, MetaTensor]:
        device = torch.device(getattr(self.source, "device", "cpu"))
        if device.type == "cuda" and torch.utils.data.get_worker_info() is not None:
            raise RuntimeError(
                'SynthesizePaired(d) mode="seeded" cannot generate on CUDA inside a DataLoader worker process '
                '(CUDA does not survive fork). Use mode="pool" with a SynthesisPool filled in the main process '
                "(refreshed by PoolRefreshHandler), or load the data with monai.data.ThreadDataLoader / "
                "num_workers=0 so the transform runs in the main process."
            )
        if not reference:
            raise ValueError('mode="seeded" needs the sample to seed from: call it with the real triplet.')
        batch = {}
        for key, value in reference.items():
            t = torch.as_tensor(value.as_tensor() if isinstance(value, MetaTensor) else value).float()
            if self.units == PoolStorage.NORMALIZED:
                t = self._spec(key).denormalize(t)
            batch[str(key)] = t[None]
        generator = torch.Generator(device=device).manual_seed(self._seed)
        try:
            out = self.source.generate_seeded(batch, self.strength, generator)
        except Exception as err:
            reason = "out_of_memory" if _is_out_of_memory(err) else "exception"
            raise PoolGenerationError(
                f"seeded generation failed ({reason}: {type(err).__name__}: {err}).", reason
            ) from err
        triplet = {}
        for key, value in reference.items():
            if key not in out:
                raise ValueError(f"the source generated {sorted(out)} but not the sample's key {key!r}.")
            t = out[key].as_tensor() if isinstance(out[key], MetaTensor) else torch.as_tensor(out[key])
            t = t[0].detach().to("cpu", torch.float32)
            if not bool(torch.isfinite(t).all()):
                raise PoolGenerationError(
                    f"seeded generation returned non-finite values for {key!r}.", "non_finite"
                )
            if self.units == PoolStorage.NORMALIZED:
                t = self._spec(key).normalize(t)
            # the seeded triplet lives on the grid of the sample it was generated from: same affine
            affine = value.affine.clone() if isinstance(value, MetaTensor) else None
            triplet[str(key)] = MetaTensor(
                t, affine=affine, meta={"filename_or_obj": "seeded", "synthetic": True}
            )
        return triplet

    def _spec(self, key: Hashable) -> ModalitySpec:
        if key not in self.specs:
            raise ValueError(
                f'units="normalized" needs a modality spec for {key!r}; specs exist for {sorted(self.specs)}.'
            )
        return self.specs[key]

    def __call__(
        self, reference: Mapping[Hashable, NdarrayOrTensor] | None = None, randomize: bool = True
    ) -> dict[str, MetaTensor]:
        """One synthetic triplet.

        Args:
            reference: the real sample's modalities ``{key: (1, H, W[, D])}``: its shapes are checked against the
                triplet's (error naming both), and in seeded mode it is the seed.
            randomize: draw a new pool index / seed first (``False`` reuses the last draw).

        Raises:
            EmptyPoolError: pool mode and the pool holds nothing.
            PoolGenerationError: seeded generation failed.
            ValueError: the triplet's shape differs from the reference's.
        """
        if randomize:
            self.randomize(reference)
        if self.mode == SynthesisMode.POOL:
            if self._index is None or len(self.pool) == 0:
                raise EmptyPoolError("the synthesis pool is empty; fill it first (pool.fill()).")
            if self._index >= len(self.pool):
                raise RuntimeError("the pool changed size since randomize(); call with randomize=True.")
            triplet = self.pool.get(self._index, units=self.units)
            triplet = {k: v for k, v in triplet.items() if reference is None or k in reference}
            for v in triplet.values():
                v.meta["pool_index"] = self._index
        else:
            if self._seed is None:
                raise RuntimeError("call randomize() (or __call__ with randomize=True) first.")
            triplet = self._seeded(reference or {})
        check_matching_shapes(triplet, reference, getattr(self.pool, "spatial_shape", None))
        return triplet


class SynthesizePairedd(RandomizableTransform, MapTransform):
    """Dictionary-based :class:`SynthesizePaired`: with probability ``prob`` the sample becomes synthetic.

    One draw per call: either every modality key is replaced by the same synthetic triplet (one pool entry, or
    one seeded generation), or none is. Every other key is kept as it is; each replaced value keeps its
    container type (numpy / tensor / ``MetaTensor``), dtype, device and shape, and takes the synthetic
    sample's geometry (affine, from the pool's spacing; in seeded mode the sample's own grid). The layout meta
    keys (``original_channel_dim``, ``space``) are kept, meta describing the real case (file name...) is not.
    ``synthetic_key`` is set to ``True`` or ``False``.

    Args:
        keys: modality keys to replace (e.g. ``["ct", "pet", "label"]``); the pool must hold all of them.
        pool: the :class:`SynthesisPool` (``mode="pool"``).
        prob: probability that a sample is replaced, in [0, 1]; the synthetic share of the samples seen.
            An augmentation ratio ``r = N_synthetic / N_real`` corresponds to ``prob = r / (1 + r)``.
        mode: ``"pool"`` or ``"seeded"`` (main process only: DataLoader ``num_workers=0`` or
            ``ThreadDataLoader``; in a worker process with a CUDA source it raises, saying so).
        strength: seeded mode: noise level the sample is taken to before re-generation, in (0, 1].
        allow_missing_keys: don't raise ``KeyError`` when a key is missing (it is then neither replaced nor added).
        synthetic_key: key of the flag added to every sample.
        fallback: when no synthetic triplet can be had (empty pool, a failed or non-finite seeded generation):
            ``"real"`` keeps the real sample (``synthetic: False``), counts it in :attr:`counts` and logs a
            warning (the first time, then every 100th); ``"error"`` raises.
        source: seeded mode: the generator source (default ``pool.source``).
        units: ``"physical"`` (default; place the transform before intensity normalisation) or ``"normalized"``.

    :attr:`counts` (``synthetic``, ``real``, ``fallback_empty_pool``, ``fallback_generation_failed``) are
    per process: with DataLoader workers each worker counts its own samples; count the ``synthetic`` flags of
    the batches instead (:class:`monai_pairsynth.mixing.PoolRefreshHandler` does).

    Example:
        >>> import torch
        >>> from monai_pairsynth.mixing.synthesis_pool import SynthesisPool
        >>> def source(num, generator):
        ...     pet = torch.rand(num, 1, 8, 8, generator=generator) * 15
        ...     return {"ct": pet * 10 - 50, "pet": pet, "label": (pet > 10).float()}
        >>> pool = SynthesisPool(4, spatial_shape=(8, 8), source=source)
        >>> _ = pool.fill()
        >>> t = SynthesizePairedd(["ct", "pet", "label"], pool, prob=1.0).set_random_state(seed=0)
        >>> sample = {"ct": torch.zeros(1, 8, 8), "pet": torch.zeros(1, 8, 8), "label": torch.zeros(1, 8, 8),
        ...           "case_id": "P1"}
        >>> out = t(sample)
        >>> out["synthetic"], out["case_id"], bool(out["pet"].max() > 0), "synthetic" in sample
        (True, 'P1', True, False)
    """

    backend = SynthesizePaired.backend

    def __init__(
        self,
        keys: KeysCollection,
        pool: SynthesisPool | None = None,
        prob: float = 0.5,
        mode: SynthesisMode | str = SynthesisMode.POOL,
        strength: float = 0.8,
        allow_missing_keys: bool = False,
        synthetic_key: str = "synthetic",
        fallback: SynthesisFallback | str = SynthesisFallback.REAL,
        source: Any | None = None,
        units: PoolStorage | str = PoolStorage.PHYSICAL,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if (
            isinstance(prob, bool)
            or not isinstance(prob, (int, float))
            or not math.isfinite(prob)
            or not 0 <= prob <= 1
        ):
            raise ValueError(f"prob must be a number in [0, 1], got {prob!r}.")
        RandomizableTransform.__init__(self, prob)
        self.fallback = look_up_option(fallback, SynthesisFallback)
        if not isinstance(synthetic_key, str) or not synthetic_key:
            raise ValueError(f"synthetic_key must be a non-empty string, got {synthetic_key!r}.")
        if synthetic_key in self.keys:
            raise ValueError(
                f"synthetic_key {synthetic_key!r} is also one of the modality keys {list(self.keys)}."
            )
        self.synthetic_key = synthetic_key
        self.synthesize = SynthesizePaired(
            pool=pool, mode=mode, strength=strength, source=source, units=units
        )
        held = self.synthesize.keys
        missing = [k for k in self.keys if k not in held]
        if held and missing:
            raise ValueError(
                f"keys {missing} are not held by the synthesis "
                f"{'pool' if self.synthesize.mode == SynthesisMode.POOL else 'source'} (it holds {list(held)})."
            )
        self.counts: Counter = Counter()

    @property
    def pool(self) -> SynthesisPool | None:
        return self.synthesize.pool

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> SynthesizePairedd:
        super().set_random_state(seed, state)
        self.synthesize.set_random_state(seed, state)
        return self

    def _fall_back(self, d: dict, reason: str, err: Exception) -> dict:
        if self.fallback == SynthesisFallback.ERROR:
            raise err
        self.counts[f"fallback_{reason}"] += 1
        self.counts["real"] += 1
        n = self.counts[f"fallback_{reason}"]
        if n == 1 or n % 100 == 0:
            logger.warning(
                "SynthesizePairedd: no synthetic triplet (%s: %s); keeping the real sample (%d such fallbacks so far).",
                reason,
                err,
                n,
            )
        d[self.synthetic_key] = False
        return d

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        present = list(self.key_iterator(d))  # KeyError for a missing key unless allow_missing_keys
        if not self._do_transform or not present:
            self.counts["real"] += 1
            d[self.synthetic_key] = False
            return d
        reference = {k: d[k] for k in present}
        try:
            triplet = self.synthesize(reference, randomize=True)
        except EmptyPoolError as err:
            return self._fall_back(d, "empty_pool", err)
        except PoolGenerationError as err:
            return self._fall_back(d, "generation_failed", err)
        for key in present:
            d[key] = _like(triplet[key], d[key], key)
        d[self.synthetic_key] = True
        self.counts["synthetic"] += 1
        return d


SynthesizePairedD = SynthesizePairedDict = SynthesizePairedd
