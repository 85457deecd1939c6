from __future__ import annotations

import os
import stat

import pytest

from monai_pairsynth.utils import atomic_write, atomic_write_json, atomic_write_text


def test_atomic_write_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    p = atomic_write_json(tmp_path / "m.json", {"a": 1})

    def boom(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, boom)
    assert p.read_text() == '{\n  "a": 1\n}\n'
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]
