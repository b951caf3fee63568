"""Integer and float tensors to bytes that compress well, and back, exactly.

- `pack_bits`: signed integers of `bits` width, offset to unsigned and packed densely (6 bits: 4 values in 3 bytes).
- Byte storage (`int8` as is) often compresses *better* than dense packing, because the compressor sees whole
  symbols; the quantizer measures both and keeps the smaller.
- `shuffle_bytes`: a 2-byte type (fp16) stored as its low-byte plane then its high-byte plane; the high bytes of
  similar scales repeat, which the compressor exploits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def pack_bits(values: Tensor, bits: int) -> bytes:
    """Pack signed integers in [-(2^(bits-1)), 2^(bits-1) - 1] into a dense little-endian bit stream."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    offset = 1 << (bits - 1)
    unsigned = (values.flatten().to(torch.int16) + offset).numpy().astype(np.uint8)
    if unsigned.size and (int(unsigned.max()) >> bits):
        raise ValueError(f"values do not fit in {bits} bits")
    bit_matrix = np.unpackbits(unsigned[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> Tensor:
    """Inverse of `pack_bits`: `count` signed integers as int8."""
    bit_stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * bits]
    bit_matrix = np.zeros((count, 8), dtype=np.uint8)
    bit_matrix[:, :bits] = bit_stream.reshape(count, bits)
    unsigned = np.packbits(bit_matrix, axis=1, bitorder="little").reshape(count).astype(np.int16)
    return torch.from_numpy((unsigned - (1 << (bits - 1))).astype(np.int8))


def shuffle_bytes(values: Tensor) -> bytes:
    """fp16 (or any 2-byte dtype) as two byte planes: all low bytes, then all high bytes."""
    raw = values.contiguous().view(torch.uint8).numpy().reshape(-1, values.element_size())
    return raw.T.copy().tobytes()


def unshuffle_bytes(data: bytes, dtype: torch.dtype, count: int) -> Tensor:
    width = torch.empty((), dtype=dtype).element_size()
    planes = np.frombuffer(data, dtype=np.uint8).reshape(width, count)
    return torch.from_numpy(planes.T.copy().reshape(-1)).view(dtype)
