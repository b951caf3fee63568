"""Hessians for GPTQ: H = Σ x xᵀ of every quantised matrix's input, from training batches (never validation).

Each projection's input is captured by a forward hook. Q, K and V read the same tensor: its x·xᵀ is computed
once and added to each one's sum (at golf scale these products are most of calibration's time). For a layer kept as factors, `V` sees the layer input and
`U` sees `V·x`, whose Hessian `V̂·H·V̂ᵀ` follows from the input's (computed after `V` is quantised, when `U` is
fitted to `V̂`: see `export.budget_fit.fit_factor`). The tied embedding is the output head too: its Hessian comes
from the final normed hidden state, the input of the logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from alrt_core.errors import UserError
from alrt_core.model.gpt import GPT

HEAD_INPUT = "head_input"
GRAM_BLOCK = 512  # inputs of at least 4 blocks (the golf MLP's 2,048) get their Gram matrix by blocks (`gram`)


class _HeadInputSeen(Exception):
    """Raised by the final norm's hook to end a calibration forward there: the logits after it are not needed
    (at golf scale the 8,192-way head is 2·512·8,192 FLOPs per token, ~4% of calibration's)."""


def gram(flat: Tensor) -> Tensor:
    """flatᵀ·flat (tokens × inputs → inputs × inputs). H is symmetric, so wide inputs compute only the row blocks
    on and right of the diagonal and mirror them: 10 of 16 blocks at 2,048 inputs, whose products were most of
    calibration's time at golf scale."""
    width = flat.shape[1]
    if width < 4 * GRAM_BLOCK:
        return flat.T @ flat
    result = torch.empty(width, width, dtype=flat.dtype, device=flat.device)
    for start in range(0, width, GRAM_BLOCK):
        end = min(start + GRAM_BLOCK, width)
        rows = flat[:, start:end].T @ flat[:, start:]
        diagonal = rows[:, : end - start]
        rows[:, : end - start] = torch.triu(diagonal) + torch.triu(diagonal, 1).T  # exactly symmetric, as mirrored
        result[start:end, start:] = rows
        result[end:, start:end] = rows[:, end - start:].T
    return result


class Batches(Protocol):
    def next_batch(self, sequences: int) -> tuple[Tensor, Tensor]: ...


class TokenWindows:
    """Calibration batches: windows of seq_len+1 tokens cut from token streams (shards, memory-mapped, or text
    tokenised in memory), visited in a seeded random order and again from the start if more are asked for.

    Not `TrainBatches`: calibration needs no epochs, phases, ranks or resumable state, and reads arrays, not files.
    """

    def __init__(self, streams: list[np.ndarray], seq_len: int, seed: int, vocab_size: int) -> None:
        self.streams, self.seq_len, self.vocab_size = streams, seq_len, vocab_size
        counts = [max(0, (int(stream.shape[0]) - 1) // seq_len) for stream in streams]
        if not sum(counts):
            raise UserError(f"calibration data has fewer than {seq_len + 1} tokens")
        self.ids = np.concatenate([np.full(count, index, dtype=np.int64) for index, count in enumerate(counts)])
        self.offsets = np.concatenate([seq_len * np.arange(count, dtype=np.int64) for count in counts])
        self.order = np.random.default_rng(seed).permutation(self.ids.shape[0])
        self.position = 0

    def next_batch(self, sequences: int) -> tuple[Tensor, Tensor]:
        picks = self.order[(self.position + np.arange(sequences)) % self.order.shape[0]]
        self.position += sequences
        windows = np.stack([
            np.asarray(self.streams[self.ids[p]][self.offsets[p] : self.offsets[p] + self.seq_len + 1], dtype=np.int64)
            for p in picks
        ])
        if int(windows.max()) >= self.vocab_size:  # an embedding lookup would fail with an IndexError
            raise UserError(f"calibration tokens reach id {int(windows.max())}, beyond the model's vocabulary of "
                            f"{self.vocab_size}")
        tokens = torch.from_numpy(windows)
        return tokens[:, :-1], tokens[:, 1:]


@torch.no_grad()
def collect_hessians(
    model: GPT,
    batches: Batches,
    tokens: int,
    *,
    batch_sequences: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Tensor], int]:
    """(name -> H (in×in, fp32, summed), tokens used); names are the projections' plus `head_input`."""
    model.eval()
    sums: dict[str, Tensor] = {}
    last: list[tuple[Tensor, Tensor]] = []  # (the last input seen, its x·xᵀ): the same tensor's product is reused

    def accumulate(name: str, x: Tensor) -> None:
        if last and last[0][0] is x:
            product = last[0][1]
        else:
            product = gram(x.detach().float().reshape(-1, x.shape[-1]))
            last[:] = [(x, product)]
        sums[name] = sums[name] + product if name in sums else product  # never updated in place

    handles = []
    for name, layer in model.projections().items():
        handles.append(layer.register_forward_hook(lambda module, args, output, name=name: accumulate(name, args[0])))
    # The logits' input is the final norm's output (hooked there, not at the last block: with depth recurrence
    # the last block may run more than once per forward).
    def head_input(module: torch.nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        accumulate(HEAD_INPUT, output)
        raise _HeadInputSeen

    handles.append(model.final_norm.register_forward_hook(head_input))
    seq_len = model.config.seq_len
    used = 0
    try:
        while used < tokens:
            sequences = max(1, min(batch_sequences, -(-(tokens - used) // seq_len)))
            inputs, _ = batches.next_batch(sequences)
            try:
                model(inputs.to(model.embed.weight.device))
            except _HeadInputSeen:
                pass
            used += inputs.numel()
            if on_progress is not None:
                on_progress(min(used, tokens), tokens)
    finally:
        last.clear()
        for handle in handles:
            handle.remove()
    return sums, used


