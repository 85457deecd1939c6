"""Saved states of the quality filter: the format, its versions, and the check that a state fits a filter.

A state is ``{"version", "config", "fitted"}``: the filter's constructor arguments as plain values (the network
is not part of it) and what ``fit`` learned (centroids, strata, real embeddings and scores, the real
plausibility measurements). Version 2 added the plausibility rules (their config keys and
``fitted["plausibility"]``); version-1 states still load, with the rules' defaults.

:class:`FilterStateMixin` is the part of :class:`~monai_pairsynth.quality.FeatureCentroidFilter` that reads and
writes this state: its ``config``, ``state_dict`` / ``load_state_dict``, ``save`` / ``load`` and the read-only
views of what ``fit`` learned (``thresholds``, ``plausibility_rules``, ``real_scores`` ...). It is a mixin, like
:class:`~monai_pairsynth.quality.centroid_features.CentroidFeaturesMixin`: it reads the filter's settings and
fitted state, and ``load_state_dict`` calls the filter's ``calibrate``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from monai_pairsynth.modalities import ModalitySpec
from monai_pairsynth.utils import atomic_save_torch

from .filter_options import FilterNotFittedError, StrataMethod
from .plausibility_settings import PlausibilitySettings
from .triplet_batches import IntensityUnits

__all__ = [
    "READABLE_STATE_VERSIONS",
    "STATE_VERSION",
    "FilterStateMixin",
    "fitted_from_state",
    "fitted_to_state",
    "read_state_file",
]

STATE_VERSION = 2
READABLE_STATE_VERSIONS = (1, 2)
# config keys of the plausibility rules (absent from version-1 states: those load with the defaults)
PLAUSIBILITY_CONFIG = PlausibilitySettings.field_names()
# ...of which these change the stored real measurements, so a saved state must match them when it has them
PLAUSIBILITY_FIXED_BY_FIT = ("ct_key", "pet_key", "pet_ring")
# settings that only set thresholds (recomputed on load with the loading filter's values), or change nothing
_FREE_ON_LOAD = frozenset(
    {
        "batch_size",
        "distance_quantile",
        "certainty_quantile",
        "entropy_quantile",
        "memorisation_quantile",
        *(k for k in PLAUSIBILITY_CONFIG if k not in PLAUSIBILITY_FIXED_BY_FIT),
    }
)


def fitted_to_state(fitted: Mapping[str, Any]) -> dict[str, Any]:
    """The ``"fitted"`` entry of a state: copies of what ``fit`` learned, as plain lists and tensors."""
    return {
        "spatial_shape": list(fitted["spatial_shape"]),
        "layer_shapes": [list(s) for s in fitted["layer_shapes"]],
        "centroids": [c.clone() for c in fitted["centroids"]],
        "strata_centers": fitted["strata_centers"].clone(),
        "size_edges": fitted["size_edges"].clone(),
        "real_embeddings": fitted["real_embeddings"].clone(),
        "real_scores": {k: v.clone() for k, v in fitted["real_scores"].items()},
        "num_real": fitted["num_real"],
        "plausibility": {k: v.clone() for k, v in (fitted.get("plausibility") or {}).items()},
    }


def fitted_from_state(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a state against a filter's ``config`` and return its fitted part (on the CPU, float32).

    Raises:
        ValueError: not a state, an unknown version, or a configuration that defines the scores differently
            (named key by key).
    """
    if not isinstance(state, Mapping) or "config" not in state or "fitted" not in state:
        raise ValueError(
            "state must be a dict with 'config' and 'fitted' entries, as written by state_dict()."
        )
    if state.get("version") not in READABLE_STATE_VERSIONS:
        raise ValueError(
            f"unsupported filter state version {state.get('version')!r}; expected one of "
            f"{list(READABLE_STATE_VERSIONS)}."
        )
    theirs = dict(state["config"])
    # a state saved before the plausibility rules has none of their keys: nothing to compare
    absent = {k for k in PLAUSIBILITY_FIXED_BY_FIT if k not in theirs}
    differing = sorted(
        k for k in config if k not in _FREE_ON_LOAD and k not in absent and config[k] != theirs.get(k)
    )
    if differing:
        details = "; ".join(f"{k}: saved {theirs.get(k)!r}, this filter {config[k]!r}" for k in differing)
        raise ValueError(f"the saved filter state was made with a different configuration ({details}).")
    f = state["fitted"]
    return {
        "spatial_shape": tuple(int(s) for s in f["spatial_shape"]),
        "layer_shapes": [tuple(int(x) for x in s) for s in f["layer_shapes"]],
        "centroids": [c.float().cpu() for c in f["centroids"]],
        "strata_centers": f["strata_centers"].float().cpu(),
        "size_edges": f["size_edges"].float().cpu(),
        "real_embeddings": f["real_embeddings"].float().cpu(),
        "real_scores": {k: v.cpu() for k, v in f["real_scores"].items()},
        "num_real": int(f["num_real"]),
        # None: saved before the plausibility rules (version 1), nothing learned
        "plausibility": (
            {k: v.cpu() for k, v in f["plausibility"].items()} if f.get("plausibility") is not None else None
        ),
    }


def read_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """A state written by ``FeatureCentroidFilter.save``; ``FileNotFoundError`` / ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"filter state file {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read filter state file {str(path)!r}: {err}") from err
    if not isinstance(state, Mapping) or "config" not in state:
        raise ValueError(f"file {str(path)!r} is not a FeatureCentroidFilter state (no 'config').")
    return dict(state)


_Filter = TypeVar("_Filter", bound="FilterStateMixin")


class FilterStateMixin:
    """Config, saved state and the fitted views of :class:`~monai_pairsynth.quality.FeatureCentroidFilter`."""

    # provided by the filter
    layers: list[str]
    image_keys: list[str]
    label_key: str
    mc_passes: int
    num_strata: int
    strata: StrataMethod
    certainty: bool
    distance_quantile: float
    certainty_quantile: float
    entropy_quantile: float | None
    memorisation_quantile: float
    units: IntensityUnits
    specs: dict[str, ModalitySpec]
    embedding_size: int | None
    batch_size: int
    seed: int
    plausibility: PlausibilitySettings
    _fitted: dict[str, Any] | None
    _thresholds: dict[str, Any] | None
    _rules: dict[str, dict[str, Any]]
    _device_cache: dict[str, Any]

    calibrate: Callable[[], dict[str, Any]]

    def config(self) -> dict[str, Any]:
        """The constructor arguments (except the network) as plain values."""
        return {
            "layers": list(self.layers),
            "image_keys": list(self.image_keys),
            "label_key": self.label_key,
            "mc_passes": self.mc_passes,
            "num_strata": self.num_strata,
            "strata": self.strata.value,
            "certainty": self.certainty,
            "distance_quantile": self.distance_quantile,
            "certainty_quantile": self.certainty_quantile,
            "entropy_quantile": self.entropy_quantile,
            "memorisation_quantile": self.memorisation_quantile,
            "units": self.units.value,
            "specs": {k: v.to_dict() for k, v in self.specs.items()},
            "embedding_size": self.embedding_size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            **self.plausibility.to_config(),
        }

    @property
    def is_fitted(self) -> bool:
        return self._fitted is not None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of the triplets the filter was fitted on."""
        return tuple(self._require_fitted("spatial_shape")["spatial_shape"])

    @property
    def thresholds(self) -> dict[str, Any]:
        """Streaming thresholds: ``distance`` (one per stratum, a list), ``min_certainty``, ``max_entropy``
        (``inf`` when disabled) and ``min_nearest_real``; and those of the plausibility rules (both modes):
        ``min_mask_in_body``, ``min_mask_voxels``, ``min_pet_uptake`` (``None`` where the rule is off, see
        :attr:`plausibility_rules`)."""
        self._require_fitted("thresholds")
        assert self._thresholds is not None
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._thresholds.items()}

    @property
    def plausibility_rules(self) -> dict[str, dict[str, Any]]:
        """Per rule (``mask_outside_body``, ``empty_mask``, ``no_pet_uptake``): ``active`` (bool),
        ``threshold`` (``None`` when off) and ``note`` (why it is on or off, e.g. what was learned at ``fit``)."""
        self._require_fitted("plausibility_rules")
        return {k: dict(v) for k, v in self._rules.items()}

    @property
    def real_plausibility(self) -> dict[str, torch.Tensor]:
        """The plausibility measurements of the real *training* samples the rules were learned from
        (``mask_in_body``, ``mask_voxels``, ``pet_uptake``, those computed; empty for a state saved before the
        rules existed)."""
        fitted = self._require_fitted("real_plausibility")
        return {k: v.clone() for k, v in (fitted.get("plausibility") or {}).items()}

    @property
    def real_scores(self) -> dict[str, torch.Tensor]:
        """Scores of the real calibration samples (``distance``, ``certainty``, ``entropy``, ``stratum``), the
        real leave-one-out nearest-neighbour distances (``nearest_real``, training set) and, when ``fit`` had a
        calibration set, the calibration cases' distances to their nearest training sample
        (``calibration_nearest_real``)."""
        fitted = self._require_fitted("real_scores")
        return {k: v.clone() for k, v in fitted["real_scores"].items()}

    def _require_fitted(self, what: str) -> dict[str, Any]:
        if self._fitted is None:
            raise FilterNotFittedError(
                f"FeatureCentroidFilter.{what} needs a fitted filter: call fit(real_data) first or load a saved "
                "state with FeatureCentroidFilter.load(path, network) / load_state_dict(state)."
            )
        return self._fitted

    def state_dict(self) -> dict[str, Any]:
        """Centroids, strata, thresholds, real scores, real embeddings (for the guard) and the config."""
        fitted = self._require_fitted("state_dict")
        return {"version": STATE_VERSION, "config": self.config(), "fitted": fitted_to_state(fitted)}

    def load_state_dict(self: _Filter, state: Mapping[str, Any]) -> _Filter:
        """Restore a fitted state; its config must match this filter's (the network is not part of it).

        The plausibility rules' thresholds are this filter's (like the quantiles). A state saved before the rules
        existed (version 1) has no real measurements to learn from: ``mask_outside_body`` applies with this
        filter's settings (it learns nothing), ``empty_mask="auto"`` and ``min_pet_uptake="auto"`` are off
        (``"on"`` and a fixed number still apply); :attr:`plausibility_rules` says so.
        """
        self._fitted = fitted_from_state(state, self.config())
        self._device_cache = {}
        self.calibrate()
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Atomically write :meth:`state_dict` to ``path`` (``torch.save`` format)."""
        return atomic_save_torch(self.state_dict(), path)

    @classmethod
    def load(
        cls: type[_Filter], path: str | os.PathLike, feature_network: nn.Module, **overrides: Any
    ) -> _Filter:
        """Rebuild a filter saved by :meth:`save` around ``feature_network`` (the same trained network).

        ``overrides`` may change ``batch_size`` only (everything else defines the saved scores).
        """
        state = read_state_file(path)
        unknown = sorted(set(overrides) - {"batch_size"})
        if unknown:
            raise ValueError(f"load() can only override batch_size, got {unknown}.")
        config = {**state["config"], **overrides}
        return cls(feature_network, **config).load_state_dict(  # type: ignore[call-arg]
            {**state, "config": {**state["config"], "batch_size": config["batch_size"]}}
        )
