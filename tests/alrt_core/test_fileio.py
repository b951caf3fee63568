from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from alrt_core.fileio import FILE_MODE, atomic_write_bytes, atomic_write_text, atomic_writer


def test_atomic_writes_get_the_permissions_a_plain_write_would(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = tmp_path / "atomic.txt"
    atomic_write_text(atomic, "x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == FILE_MODE


def test_a_failed_write_leaves_neither_the_target_nor_a_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")

    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted), atomic_writer(target) as stream:
        stream.write(b"new, half written")
        raise Interrupted
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
