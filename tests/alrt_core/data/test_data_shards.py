"""The parameter-golf shard format: header, exact size, memory-mapped reads, validation, naming."""

from __future__ import annotations

import numpy as np
import pytest

from alrt_core.data.shards import HEADER_BYTES, SHARD_MAGIC, list_shards, read_shard, write_shard
from alrt_core.errors import UserError


def test_header_fields_file_size_and_round_trip(tmp_path):
    tokens = np.array([1, 5, 65535, 0, 42], dtype=np.uint16)
    path = tmp_path / "train_000000.bin"
    write_shard(path, tokens)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert (int(header[0]), int(header[1]), int(header[2])) == (20240520, 1, 5)
    assert SHARD_MAGIC == 20240520 and not header[3:].any()
    assert path.stat().st_size == 1024 + 2 * 5 == HEADER_BYTES + 10
    assert path.read_bytes()[1024:] == b"\x01\x00\x05\x00\xff\xff\x00\x00\x2a\x00"  # little-endian uint16
    read = read_shard(path)
    assert isinstance(read, np.memmap) and read.dtype == np.uint16 and np.array_equal(read, tokens)
    with pytest.raises(ValueError):
        read[0] = 7  # read-only map
    assert [p.name for p in tmp_path.iterdir()] == ["train_000000.bin"]  # no temp file left behind


def test_write_accepts_wider_integer_arrays_and_overwrites(tmp_path):
    path = tmp_path / "val_000000.bin"
    write_shard(path, np.arange(10, dtype=np.int64))
    write_shard(path, np.array([3, 2, 1], dtype=np.int32))
    assert read_shard(path).tolist() == [3, 2, 1]


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", np.array([], dtype=np.uint16))
    assert read_shard(tmp_path / "e.bin").shape == (0,)
    assert (tmp_path / "e.bin").stat().st_size == 1024


@pytest.mark.parametrize("tokens", [np.array([70000]), np.array([1, 65536]), np.array([-1])])
def test_tokens_outside_uint16_are_refused(tmp_path, tokens):
    with pytest.raises(ValueError, match=r"\[0, 65535\] \(uint16\)"):
        write_shard(tmp_path / "x.bin", tokens)
    assert not list(tmp_path.iterdir())


def test_corrupt_shards_are_user_errors_naming_the_file(tmp_path):
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(5))
    data = good.read_bytes()
    cases = {
        "truncated.bin": (
            data[:-2], r"truncated.bin: header says 5 tokens but the file holds 4 \(1032 bytes, expected 1034"
        ),
        "longer.bin": (data + b"\0\0\0\0", r"longer.bin: header says 5 tokens but the file holds 7"),
        "magic.bin": (b"\x00" * 2048, r"magic.bin: not a shard: bad magic 0 \(expected 20240520\)"),
        "version.bin": (data[:4] + np.int32(2).tobytes() + data[8:], r"version.bin: unsupported shard version 2"),
        "tiny.bin": (b"abc", r"tiny.bin: not a shard: 3 bytes is smaller than the 1024-byte header"),
        "negative.bin": (data[:8] + np.int32(-4).tobytes() + data[12:], r"negative.bin: header says -4 tokens"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=message):
            read_shard(tmp_path / name)
    with pytest.raises(UserError, match="shard not found: .*missing.bin"):
        read_shard(tmp_path / "missing.bin")


def test_list_shards_finds_ours_and_parameter_golf_names_sorted(tmp_path):
    for name in ["train_000001.bin", "train_000000.bin", "fineweb_train_000000.bin", "val_000000.bin",
                 "fineweb_val_000003.bin", "train.bin", "train_000002.txt", "mytrain_000000.bin"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_shards(tmp_path, "train")] == [
        "fineweb_train_000000.bin", "train_000000.bin", "train_000001.bin"
    ]
    assert [p.name for p in list_shards(tmp_path, "val")] == ["fineweb_val_000003.bin", "val_000000.bin"]
    assert list_shards(tmp_path / "missing", "train") == []
    with pytest.raises(ValueError, match="split must be"):
        list_shards(tmp_path, "test")  # type: ignore[arg-type]
