"""Preallocated key/value cache for incremental decoding: one slot per layer application.

Shapes follow the attention layout after the GQA projection: (batch, kv_heads, max_len, head_dim), so the cache
costs num_kv_heads (not num_heads) per slot. With depth recurrence a looped block runs several times per token
and each of its applications has its own slot (`GPT.new_cache` sizes the cache by the number of applications).
The model advances `length` once per forward call, after all slots have written their keys and values at the
same positions. `tokens` keeps the token ids when the model needs the history (document mask, SmearGate,
BigramHash read earlier tokens); `truncate` keeps it consistent since it only moves `length`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    def __init__(
        self,
        num_slots: int,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_slots, batch_size, num_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.tokens = torch.full((batch_size, max_len), -1, dtype=torch.long, device=device)
        self.max_len = max_len
        self.length = 0

    @property
    def remaining(self) -> int:
        return self.max_len - self.length

    def write(self, slot: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store this call's keys/values in `slot` (a layer application, not a block: see the module doc) and
        return all cached ones of that slot up to and including them."""
        new = keys.shape[2]
        end = self.length + new
        if end > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {new} positions exceed its {self.max_len}")
        self.keys[slot, :, :, self.length : end] = keys.to(self.keys.dtype)
        self.values[slot, :, :, self.length : end] = values.to(self.values.dtype)
        return self.keys[slot, :, :, :end], self.values[slot, :, :, :end]

    def write_tokens(self, input_ids: Tensor) -> None:
        """Record this call's token ids at positions length.. (before the layers run)."""
        end = self.length + input_ids.shape[1]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {input_ids.shape[1]} positions exceed its {self.max_len}")
        self.tokens[:, self.length : end] = input_ids

    def advance(self, count: int) -> None:
        self.length += count

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (e.g. to regenerate a reply)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length
