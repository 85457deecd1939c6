"""Deprecation aliases for public names that moved to another module (issue 16's package layout).

An old module keeps working as a thin alias: ``__getattr__ = moved_names(__name__, {...})`` resolves each old
name lazily from its new home and warns once per access with a :class:`MovedNameWarning` (a
``DeprecationWarning``). Lazy resolution keeps the alias from adding an import arrow at import time, so an
alias in a low folder (``data/``) never imports a higher one (``inferers/``, ``mixing/``) unless an old name
is actually used.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MovedNameWarning", "moved_names"]


class MovedNameWarning(DeprecationWarning):
    """A public name was imported from the module it lived in before the package layout of issue 16."""


def moved_names(old_module: str, new_homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that finds each name of ``new_homes`` (``{name: new module}``) in its new module.

    Example:
        >>> getattr_ = moved_names("pkg.old", {"sqrt": "math"})
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     getattr_("sqrt")(4.0), str(seen[0].message)
        (2.0, 'pkg.old.sqrt moved to math.sqrt; import it from there (the old path is deprecated).')
    """
    homes = dict(new_homes)

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        new = homes[name]
        warnings.warn(
            f"{old_module}.{name} moved to {new}.{name}; import it from there (the old path is deprecated).",
            MovedNameWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new), name)

    return __getattr__
