"""One-token decode steps: the model's own forward call, eager or compiled over a static KV cache.

A batch-1 decode step of a small model is bound by per-operator overhead, not arithmetic: the eager step spends
most of its time dispatching ~30 small operators per layer. gpt-fast's remedy is a `decode_one_token` under
`torch.compile` over a preallocated cache whose shapes never change (`StaticKVCache`), so one graph serves every
step. What the compiled step runs is `GPT.forward` itself (no second model path), traced once.

Compiler settings, per device (chosen by `compile_options` and `freezes_weights`):
- CUDA: CUDA graphs (`triton.cudagraphs`): one graph launch per token instead of hundreds of kernel launches.
- CPU: weights frozen into the graph as constants (`freezing`), the generated C++ called without a Python wrapper
  (`cpp_wrapper`), and inductor's own kernels where autotuning finds them faster (`max_autotune`, with coordinate
  descent): on the `cpu` preset ~2–3× the eager step, after a compile of tens of seconds. Freezing is read before
  `torch.compile`'s per-call options apply, so it is patched into inductor's config around the compiling call.
  A frozen step may keep copies of the weights it was compiled with: build a new one after changing them.

Compilation can fail where eager runs (no C++ compiler, an unsupported backend): the step then falls back to the
eager forward once, says why on stderr, and decodes the same tokens, only slower.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
import torch._inductor.config as inductor_config
from torch import Tensor

from alrt_core.model.gpt import GPT
from alrt_core.model.kv_cache import StaticKVCache


def compile_options(device: torch.device) -> dict[str, Any]:
    """Inductor options of the compiled decode step on `device` (see the module doc)."""
    if device.type == "cuda":
        return {"triton.cudagraphs": True}
    return {"cpp_wrapper": True, "max_autotune": True, "coordinate_descent_tuning": True}


def freezes_weights(device: torch.device) -> bool:
    """Whether the step on `device` compiles its weights in as constants (CPU; CUDA graphs gain nothing from it)."""
    return device.type == "cpu"


class CompiledDecodeStep:
    """`GPT.forward` of one token per row over a `StaticKVCache`, compiled once (on first use or `warm_up`)."""

    def __init__(self, model: GPT) -> None:
        self.model = model
        self._compiled = torch.compile(self._forward, fullgraph=True, dynamic=False,
                                       options=compile_options(model.device))
        self.compile_seconds: float | None = None  # set by the first call
        self.fallback_reason: str | None = None  # why the eager forward runs instead, if it does

    def _forward(self, token_ids: Tensor, cache: StaticKVCache) -> Tensor:
        return self.model(token_ids, cache=cache)

    @torch.no_grad()
    def __call__(self, token_ids: Tensor, cache: StaticKVCache) -> Tensor:
        """Logits (rows, 1, vocab) of `token_ids` (rows, 1) at each row's next position; advances the cache."""
        if self.fallback_reason is None:
            try:
                if self.compile_seconds is None:
                    started = time.perf_counter()
                    with inductor_config.patch(freezing=freezes_weights(self.model.device)):
                        logits = self._compiled(token_ids, cache)
                    self.compile_seconds = time.perf_counter() - started
                else:
                    logits = self._compiled(token_ids, cache)
                # A CUDA graph's output is overwritten by its next replay: hand out a copy (one row of logits).
                return logits.clone() if logits.is_cuda else logits
            except Exception as error:  # noqa: BLE001 - any compiler failure: decode eagerly instead
                self.fallback_reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                print(f"warning: the compiled decode step failed ({self.fallback_reason}); decoding eagerly",
                      file=sys.stderr)
        return self._forward(token_ids, cache)

    def warm_up(self, cache: StaticKVCache) -> float:
        """Compile now on a scratch cache shaped like `cache` (so the first real token does not wait); seconds."""
        scratch = self.model.new_cache(cache.position.shape[0], cache.max_len, cache.keys.dtype, static=True)
        assert isinstance(scratch, StaticKVCache)
        started = time.perf_counter()
        self(torch.zeros((scratch.position.shape[0], 1), dtype=torch.long, device=scratch.keys.device), scratch)
        return time.perf_counter() - started
