"""The parameter-golf shard format: 256 little-endian int32 header words, then uint16 tokens.

Header: word 0 = magic 20240520, word 1 = version 1, word 2 = token count. Shards are read memory-mapped and
validated (magic, version, exact file size) so a truncated download is an error, not silent garbage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alrt_core.errors import UserError
from alrt_core.fileio import atomic_write_bytes

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4


def write_shard(path: Path, tokens: np.ndarray) -> None:
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 1 << 16):
        raise ValueError("shard tokens must fit in uint16")
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    atomic_write_bytes(path, header.tobytes() + tokens.astype("<u2").tobytes())


def read_shard(path: Path) -> np.ndarray:
    """The tokens of one shard as a read-only uint16 memory map."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"shard not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(f"{path}: too small for a shard header ({size} bytes)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_WORDS)
    if header[0] != SHARD_MAGIC:
        raise UserError(f"{path}: bad shard magic {int(header[0])} (expected {SHARD_MAGIC})")
    if header[1] != SHARD_VERSION:
        raise UserError(f"{path}: unsupported shard version {int(header[1])}")
    count = int(header[2])
    if size != HEADER_BYTES + 2 * count:
        raise UserError(f"{path}: header says {count} tokens but the file holds {(size - HEADER_BYTES) / 2:g} (truncated?)")
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def list_shards(folder: Path, split: str) -> list[Path]:
    """`train_*.bin` / `val_*.bin` (ours) or `fineweb_train_*.bin` / `fineweb_val_*.bin` (parameter golf)."""
    found = set(folder.glob(f"{split}_*.bin")) | set(folder.glob(f"fineweb_{split}_*.bin"))
    return sorted(found)
