"""Lossless compression of the artifact payload: brotli (quality 11), zstd (level 22) or lzma (preset 9e).

`auto` tries each and keeps the smallest; the chosen name is stored so the reader knows how to decompress.

A payload is compressed in frames: consecutive slices of about FRAME_BYTES, each compressed on its own, on as many
threads as the process may use (all three libraries release the GIL while they work). One brotli-11 stream is
single-threaded and took 164 s for a 25 MB golf payload on two cores; frames make a pass as many times faster as
there are cores, for a loss in ratio too small to measure (see FRAME_BYTES). The frame boundaries depend only on the payload's
length, never on the machine, so the same payload gives the same bytes everywhere. The artifact stores each frame's
compressed length (its manifest's `frames`); a payload without them is one stream (artifacts before format 3).
"""

from __future__ import annotations

import itertools
import lzma
import os
import typing
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import brotli
import zstandard

Compressor = Literal["brotli", "zstd", "lzma"]
COMPRESSORS: tuple[Compressor, ...] = typing.get_args(Compressor)

# Frames cost almost nothing in ratio and are faster per byte (a smaller window to search). Brotli-11 on 8 MB of a
# golf payload (35.9M parameters at int4-5, byte-stored), two threads: one 8 MB stream 3,339,519 bytes in 28.6 s;
# 4 MB frames 3,340,502 in 11.8 s; 2 MB frames 3,339,538 in 11.2 s; 1 MB frames 3,340,951 in 10.8 s.
FRAME_BYTES = 2_000_000


def compress(data: bytes, method: str) -> bytes:
    if method == "brotli":
        return brotli.compress(data, quality=11, lgwin=24)
    if method == "zstd":
        return zstandard.ZstdCompressor(level=22).compress(data)
    if method == "lzma":
        return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    raise ValueError(f"unknown compressor {method!r}")


def decompress(data: bytes, method: str) -> bytes:
    """The bytes `compress` was given; a stream that does not decode is a ValueError, whichever library read it."""
    try:
        if method == "brotli":
            return brotli.decompress(data)
        if method == "zstd":
            return zstandard.ZstdDecompressor().decompress(data)
        if method == "lzma":
            return lzma.decompress(data)
    except (brotli.error, zstandard.ZstdError, lzma.LZMAError) as error:
        raise ValueError(f"{method} stream does not decode: {error}") from None
    raise ValueError(f"unknown compressor {method!r}")


def frame_bounds(length: int, frame_bytes: int = FRAME_BYTES) -> list[tuple[int, int]]:
    """(start, end) of each frame: slices of about `frame_bytes` (the nearest count), all of one size (±1)."""
    count = max(1, round(length / frame_bytes))
    edges = [length * index // count for index in range(count + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compress_frames(data: bytes, method: str, workers: int | None = None,
                    frame_bytes: int = FRAME_BYTES) -> tuple[bytes, list[int]]:
    """(the frames' compressed bytes, one after another; each frame's compressed length)."""
    pieces = [data[start:end] for start, end in frame_bounds(len(data), frame_bytes)]
    with ThreadPoolExecutor(max_workers=min(len(pieces), workers or available_cpus())) as pool:
        parts = list(pool.map(lambda piece: compress(piece, method), pieces))
    return b"".join(parts), [len(part) for part in parts]


def decompress_frames(data: bytes, method: str, frames: list[int] | None) -> bytes:
    """The payload of `compress_frames` (`frames`: its lengths; None: one stream, as format 1 and 2 wrote)."""
    if frames is None:
        return decompress(data, method)
    if sum(frames) != len(data) or any(length <= 0 for length in frames):
        raise ValueError("frame lengths do not add up to the payload")
    starts = [0, *itertools.accumulate(frames[:-1])]
    with ThreadPoolExecutor(max_workers=min(len(frames), available_cpus())) as pool:
        pieces = pool.map(lambda start, length: decompress(data[start:start + length], method), starts, frames)
        return b"".join(pieces)


def compress_best(data: bytes, method: str = "auto") -> tuple[str, bytes]:
    """(method, compressed bytes): the given method, or the smallest of all for `auto`."""
    methods = COMPRESSORS if method == "auto" else (method,)
    results = [(name, compress(data, name)) for name in methods]
    return min(results, key=lambda item: len(item[1]))
