"""The parameter-golf shard format: 256 little-endian int32 header words, then uint16 tokens.

Header: word 0 = magic 20240520, word 1 = version 1, word 2 = token count; the rest are zero. Shards are read
memory-mapped and validated (magic, version, exact file size) so a truncated download is an error, not garbage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from alrt_core.errors import UserError
from alrt_core.fileio import atomic_writer

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4
MAX_TOKEN_ID = (1 << 16) - 1  # tokens are stored as uint16
MAX_SHARD_TOKENS = (1 << 31) - 1  # the count is an int32 header word

Split = Literal["train", "val"]


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write `tokens` as one shard, atomically (temp file in the same folder, then rename over `path`)."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"shard tokens must be one-dimensional, got shape {tokens.shape}")
    if tokens.size > MAX_SHARD_TOKENS:
        raise ValueError(f"a shard holds at most {MAX_SHARD_TOKENS} tokens, got {tokens.size}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > MAX_TOKEN_ID):
        low, high = int(tokens.min()), int(tokens.max())
        raise ValueError(f"shard tokens must be in [0, {MAX_TOKEN_ID}] (uint16), got {low}..{high}")
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    # Streamed rather than concatenated in memory: a full shard is 200 MB of tokens.
    with atomic_writer(path) as stream:
        stream.write(header.tobytes())
        stream.write(tokens.astype("<u2", copy=False).tobytes())


def read_shard(path: Path) -> np.ndarray:
    """The tokens of one shard as a read-only uint16 memory map, after checking the header against the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"shard not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(f"{path}: not a shard: {size} bytes is smaller than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=3)
    if header[0] != SHARD_MAGIC:
        raise UserError(f"{path}: not a shard: bad magic {int(header[0])} (expected {SHARD_MAGIC})")
    if header[1] != SHARD_VERSION:
        raise UserError(f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION})")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        held = (size - HEADER_BYTES) / 2
        raise UserError(
            f"{path}: header says {count} tokens but the file holds {held:g} "
            f"({size} bytes, expected {expected}; truncated or corrupt)"
        )
    if count == 0:  # np.memmap refuses empty maps
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def list_shards(folder: Path, split: Split) -> list[Path]:
    """`train_*.bin` / `val_*.bin` (ours) or `fineweb_train_*.bin` / `fineweb_val_*.bin` (parameter golf), sorted."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    folder = Path(folder)
    found = set(folder.glob(f"{split}_*.bin")) | set(folder.glob(f"fineweb_{split}_*.bin"))
    return sorted(path for path in found if path.is_file())
