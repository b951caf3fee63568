"""Lossless compression of the artifact payload: brotli (quality 11), zstd (level 22) or lzma (preset 9e).

`auto` tries each and keeps the smallest; the chosen name is stored so the reader knows how to decompress.
"""

from __future__ import annotations

import lzma
import typing
from typing import Literal

import brotli
import zstandard

Compressor = Literal["brotli", "zstd", "lzma"]
COMPRESSORS: tuple[Compressor, ...] = typing.get_args(Compressor)


def compress(data: bytes, method: str) -> bytes:
    if method == "brotli":
        return brotli.compress(data, quality=11, lgwin=24)
    if method == "zstd":
        return zstandard.ZstdCompressor(level=22).compress(data)
    if method == "lzma":
        return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    raise ValueError(f"unknown compressor {method!r}")


def decompress(data: bytes, method: str) -> bytes:
    if method == "brotli":
        return brotli.decompress(data)
    if method == "zstd":
        return zstandard.ZstdDecompressor().decompress(data)
    if method == "lzma":
        return lzma.decompress(data)
    raise ValueError(f"unknown compressor {method!r}")


def compress_best(data: bytes, method: str = "auto") -> tuple[str, bytes]:
    """(method, compressed bytes): the given method, or the smallest of all for `auto`."""
    methods = COMPRESSORS if method == "auto" else (method,)
    results = [(name, compress(data, name)) for name in methods]
    return min(results, key=lambda item: len(item[1]))
