"""Validation loss and exact bits per byte over non-overlapping windows of the trained context.

bpb = Σ NLL / (ln 2 · Σ bytes): NLL summed in float64 over every scored token, bytes from the tokenizer's pieces
(`Tokenizer.count_bytes`, the parameter-golf accounting) so that they add up to the UTF-8 length of the text.
Under torch.distributed, windows are split across ranks and the sums all-reduced.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from alrt_core.data.tokenizer import Tokenizer
from alrt_core.model.gpt import GPT
from alrt_core.precision import autocast_context
from alrt_core.training.distributed import DistributedContext


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean NLL per token, nats
    bpb: float
    tokens: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bits_per_byte(nll_sum: float, byte_count: int) -> float:
    return nll_sum / (math.log(2.0) * byte_count)


@torch.no_grad()
def evaluate(
    model: GPT,
    tokens: np.ndarray,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_sequences: int,
    device: torch.device,
    autocast: bool,
    max_tokens: int | None = None,
    dist_ctx: DistributedContext | None = None,
) -> EvalResult:
    """Score every token of `tokens` (a BOS-separated stream) once, in windows of `seq_len`.

    The first token is context only. Windows do not overlap; a shorter last window scores the remainder, so no
    validation token is dropped.
    """
    usable = tokens.shape[0] - 1
    if max_tokens is not None:
        usable = min(usable, max_tokens)
    if usable < 1:
        raise ValueError("validation data needs at least two tokens")
    windows = -(-usable // seq_len)
    rank, world = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx else (0, 1)
    first, last = windows * rank // world, windows * (rank + 1) // world
    sums = torch.zeros(3, dtype=torch.float64)  # nll, tokens, bytes
    was_training = model.training
    model.eval()
    try:
        start = first
        while start < last:
            # Full windows go in batches; the final partial window (if any) runs alone with its own length.
            full_end = min(start + batch_sequences, last, usable // seq_len)
            stop = full_end if full_end > start else start + 1
            begin, end = start * seq_len, min(stop * seq_len, usable)
            chunk = np.asarray(tokens[begin : end + 1], dtype=np.int64)
            length = min(seq_len, end - begin)
            inputs = torch.from_numpy(chunk[:-1].reshape(-1, length))
            targets = torch.from_numpy(chunk[1:].reshape(-1, length))
            with autocast_context(device, autocast):
                nll = model(inputs.to(device), targets.to(device), reduction="sum")
            sums[0] += float(nll)
            sums[1] += targets.numel()
            sums[2] += int(tokenizer.count_bytes(chunk[:-1], chunk[1:]))
            start = stop
    finally:
        model.train(was_training)
    if dist_ctx is not None and dist_ctx.enabled:
        sums = dist_ctx.all_reduce(sums.to(dist_ctx.device)).cpu()
    nll_sum, token_count, byte_count = float(sums[0]), int(sums[1]), int(sums[2])
    return EvalResult(loss=nll_sum / token_count, bpb=bits_per_byte(nll_sum, byte_count), tokens=token_count, bytes=byte_count)
