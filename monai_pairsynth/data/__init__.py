"""Data: the phantom benchmark, HECKTOR / datalist loading, preprocessing transforms."""

from __future__ import annotations

from .phantom import PhantomDataset, PhantomTissue, make_phantom_case, phantom_affine

__all__ = ["PhantomDataset", "PhantomTissue", "make_phantom_case", "phantom_affine"]
