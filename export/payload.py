"""The artifact payload: quantised matrices, fp16 small tensors and the tokenizer as one safetensors blob.

Every entry is stored as a flat uint8 tensor (safetensors does the framing), with its decoding scheme in the
manifest: `int` (bits, packed or byte storage, shape, per-row fp16 scales stored byte-shuffled) or `fp16`
(byte-shuffled). Decoding gives back float tensors that are bit-for-bit the quantiser's dequantised weights.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from export.gptq import QuantizedMatrix
from export.packing import pack_bits, shuffle_bytes, unpack_bits, unshuffle_bytes

Storage = Literal["packed", "bytes"]  # bits packed densely | one byte per value
STORAGES: tuple[Storage, ...] = typing.get_args(Storage)
TOKENIZER_ENTRY = "tokenizer.model"


def _bytes_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def integer_bytes(matrix: QuantizedMatrix, storage: Storage) -> bytes:
    """A quantised matrix's integers as stored: packed at its bits, or one byte per value."""
    return pack_bits(matrix.q, matrix.bits) if storage == "packed" else matrix.q.contiguous().numpy().tobytes()


def scale_bytes(matrix: QuantizedMatrix) -> bytes:
    return shuffle_bytes(matrix.scale.half())


def fp16_bytes(tensor: Tensor) -> bytes:
    return shuffle_bytes(tensor.detach().half().flatten())


def encode_payload(
    quantized: dict[str, QuantizedMatrix], passthrough: dict[str, Tensor], tokenizer: bytes, storage: Storage,
) -> tuple[bytes, dict[str, dict[str, Any]], dict[str, int]]:
    """(raw safetensors bytes, scheme per tensor, raw bytes per tensor)."""
    blobs: dict[str, Tensor] = {}
    schemes: dict[str, dict[str, Any]] = {}
    sizes: dict[str, int] = {}
    for name, matrix in quantized.items():
        values = integer_bytes(matrix, storage)
        blobs[f"{name}.q"] = _bytes_tensor(values)
        blobs[f"{name}.scale"] = _bytes_tensor(scale_bytes(matrix))
        schemes[name] = {
            "type": "int", "bits": matrix.bits, "storage": storage, "shape": list(matrix.q.shape),
            "clip": matrix.clip, "error": matrix.error,
        }
        sizes[name] = len(values) + 2 * matrix.scale.numel()
    for name, tensor in passthrough.items():
        blobs[name] = _bytes_tensor(fp16_bytes(tensor))
        schemes[name] = {"type": "fp16", "shape": list(tensor.shape)}
        sizes[name] = 2 * tensor.numel()
    blobs[TOKENIZER_ENTRY] = _bytes_tensor(tokenizer)
    sizes[TOKENIZER_ENTRY] = len(tokenizer)
    return safetensors_save(blobs), schemes, sizes


def decode_payload(raw: bytes, schemes: dict[str, dict[str, Any]]) -> tuple[dict[str, Tensor], bytes]:
    """(name -> float32 tensor, tokenizer bytes)."""
    blobs = safetensors_load(raw)
    tensors: dict[str, Tensor] = {}
    for name, scheme in schemes.items():
        shape = scheme["shape"]
        count = int(np.prod(shape)) if shape else 1
        if scheme["type"] == "int":
            data = blobs[f"{name}.q"].numpy().tobytes()
            if scheme["storage"] == "packed":
                q = unpack_bits(data, scheme["bits"], count)
            else:
                q = torch.from_numpy(np.frombuffer(data, dtype=np.int8).copy())
            rows = shape[0]
            scale = unshuffle_bytes(blobs[f"{name}.scale"].numpy().tobytes(), torch.float16, rows)
            tensors[name] = q.view(*shape).float() * scale.float()[:, None]
        elif scheme["type"] == "fp16":
            values = unshuffle_bytes(blobs[name].numpy().tobytes(), torch.float16, count)
            tensors[name] = values.float().view(*shape)
        else:
            raise ValueError(f"unknown tensor scheme {scheme['type']!r} for {name}")
    return tensors, blobs[TOKENIZER_ENTRY].numpy().tobytes()
