"""Which arithmetic precision runs fastest here, and the autocast context that applies it."""

from __future__ import annotations

import functools

import torch


@functools.cache
def bf16_is_fast(device_type: str) -> bool:
    """bf16 pays off on CUDA and on CPUs with AMX tiles; on plain AVX-512/AVX2 CPUs fp32 matmuls are faster."""
    if device_type == "cuda":
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx()) if amx is not None else False


def resolve_autocast(mode: str, device: torch.device) -> bool:
    """Whether to run under bf16 autocast for train.autocast = auto | bf16 | off."""
    return mode == "bf16" or (mode == "auto" and bf16_is_fast(device.type))


def autocast_context(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
