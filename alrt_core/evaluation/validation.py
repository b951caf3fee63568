"""Validation loss and exact bits per byte over windows of the trained context (the trainer's evaluation).

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
from alrt_core.evaluation.scoring import gather_scores, score_windows, sliding_windows, split_for_rank
from alrt_core.model.gpt import GPT
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
    stride: int | None = None,
) -> EvalResult:
    """Score every token of `tokens` (a BOS-separated stream) once: non-overlapping windows of `seq_len`, or
    sliding windows every `stride` tokens (see `scoring.sliding_windows`). The first token is context only."""
    usable = tokens.shape[0] - 1
    if max_tokens is not None:
        usable = min(usable, max_tokens)
    if usable < 1:
        raise ValueError("validation data needs at least two tokens")
    stream = np.asarray(tokens[: usable + 1])
    windows = sliding_windows(usable, seq_len, stride or seq_len)
    scores = gather_scores(
        score_windows(model, stream, split_for_rank(windows, dist_ctx), batch_windows=batch_sequences,
                      device=device, autocast=autocast),
        dist_ctx,
    )
    nll_sum = float(scores["nll"].sum())
    byte_count = int(tokenizer.count_bytes(stream[:-1], stream[1:]))
    return EvalResult(loss=nll_sum / usable, bpb=bits_per_byte(nll_sum, byte_count), tokens=usable, bytes=byte_count)
