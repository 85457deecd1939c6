"""Small shared helpers: atomic file writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_save_torch",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "state_dict_mismatch",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename the temporary file onto ``path``.

    The temporary file lives in the destination folder (same file system, so ``os.replace`` is atomic);
    on any error it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the permissions an ordinary open() would (0666 minus umask)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _w)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file behind."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def state_dict_mismatch(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str, target: str, limit: int = 10
) -> str | None:
    """Describe how ``state`` fails to fit ``own`` (missing/unexpected keys, shape mismatches), or ``None``.

    Example:
        >>> state_dict_mismatch({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, "file", "model")
        'shape mismatches [w: file (3,) vs model (2,)]'
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {source} {tuple(state[k].shape)} vs {target} {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:limit]}{' ...' if len(missing) > limit else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:limit]}{' ...' if len(unexpected) > limit else ''}")
    if shapes:
        parts.append(f"shape mismatches [{'; '.join(shapes[:limit])}]")
    return ", ".join(parts) if parts else None
