"""What decoding needs from a model: exactly the calls `Session`, the chat and the server make on it.

The eager `GPT` (with its `KVCache`) has them structurally; `export.onnx_runtime.OnnxDecoder` (with its `OnnxCache`)
implements them over an onnxruntime session, so `alrt generate` and `alrt serve` decode either one unchanged.
Training, scoring and export need the `GPT` itself and take that type instead.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import torch
from torch import Tensor

from alrt_core.config import ModelConfig


class DecoderCache(Protocol):
    """The keys and values of the positions decoded so far, as `Session` and the chat use them."""

    @property
    def remaining(self) -> int: ...

    def truncate(self, length: int) -> None: ...


CacheT = TypeVar("CacheT", bound=DecoderCache)  # a decoder reads only the kind of cache it makes


class Decoder(Protocol[CacheT]):
    """A model that continues a cached context: its forward call reads and extends a cache of its own kind."""

    @property
    def config(self) -> ModelConfig: ...

    @property
    def device(self) -> torch.device: ...

    def eval(self) -> Decoder[CacheT]: ...

    def new_cache(self, batch_size: int, *, dtype: torch.dtype = torch.float32) -> CacheT: ...

    def __call__(self, input_ids: Tensor, *, cache: CacheT, logits_from: int = 0) -> Tensor:
        """Logits (batch, positions from `logits_from`, vocab) of `input_ids` after the cached context."""
