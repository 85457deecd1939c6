"""Saved states of the quality filter: the format, its versions, and the check that a state fits a filter.

A state is ``{"version", "config", "fitted"}``: the filter's constructor arguments as plain values (the network
is not part of it) and what ``fit`` learned (centroids, strata, real embeddings and scores, the real
plausibility measurements). Version 2 added the plausibility rules (their config keys and
``fitted["plausibility"]``); version-1 states still load, with the rules' defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .plausibility_settings import PlausibilitySettings

__all__ = [
    "READABLE_STATE_VERSIONS",
    "STATE_VERSION",
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
