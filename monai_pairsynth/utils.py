"""Small shared helpers: atomic file writes (and cleaning up after interrupted ones)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_save_torch",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "remove_stale_tmp_files",
    "state_dict_mismatch",
]

logger = logging.getLogger(__name__)

#: a temporary file of the old naming (no writer id) older than this is an orphan
_LEGACY_TMP_AGE_S = 3600.0


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _tmp_prefix(path: Path) -> str:
    """``.<name>.<pid>@<host>.``: a temporary file names the process that writes it."""
    return f".{path.name}.{os.getpid()}@{_host()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def remove_stale_tmp_files(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that interrupted :func:`atomic_write` calls for ``path`` left behind.

    Only files of our own naming for this very target are touched: ``.<name>.<pid>@<host>.<random>.tmp`` whose
    writer (same host) is no longer running, and ``.<name>.<random>.tmp`` (the naming before the writer id)
    older than an hour. A file being written by a live process, or by another host, is left alone.

    Returns:
        the removed files (each also logged).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / ".pool.pt.999999999@otherhost.abcd1234.tmp").write_bytes(b"x")  # another host: kept
        >>> remove_stale_tmp_files(d / "pool.pt")
        []
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        return []
    name = re.escape(path.name)
    with_writer = re.compile(rf"^\.{name}\.(\d+)@([A-Za-z0-9-]+)\.[A-Za-z0-9_]+\.tmp$")
    legacy = re.compile(rf"^\.{name}\.[A-Za-z0-9_]{{8}}\.tmp$")
    host, now, removed = _host(), time.time(), []
    for f in folder.glob(f".{_glob_escape(path.name)}.*.tmp"):
        m = with_writer.match(f.name)
        try:
            if m is not None:
                stale = (
                    m.group(2) == host and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))
                )
            else:
                stale = legacy.match(f.name) is not None and now - f.stat().st_mtime > _LEGACY_TMP_AGE_S
            if stale:
                size = f.stat().st_size
                f.unlink()
                removed.append(f)
                logger.info("removed %s (%d bytes), left behind by an interrupted write of %s", f, size, path)
        except FileNotFoundError:
            continue  # removed meanwhile
    return removed


def _glob_escape(text: str) -> str:
    """Escape ``*?[`` for :meth:`Path.glob`."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename the temporary file onto ``path``.

    The temporary file lives in the destination folder (same file system, so ``os.replace`` is atomic) and is
    named after the writing process (``.<name>.<pid>@<host>.<random>.tmp``); on any error it is removed and
    ``path`` is left as it was. A process killed mid-write cannot remove its file: the next write of the same
    target does (:func:`remove_stale_tmp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
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
