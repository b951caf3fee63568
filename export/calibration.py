"""Hessians for GPTQ: H = Σ x xᵀ of every quantised matrix's input, from training batches (never validation).

Each projection's input is captured by a forward hook (Q, K and V share theirs, but each gets its own sum: it
costs nothing and keeps the bookkeeping per layer). For a layer kept as factors, `V` sees the layer input and
`U` sees `V·x`, whose Hessian `V̂·H·V̂ᵀ` follows from the input's (computed after `V` is quantised, so `U` corrects
`V`'s error). The tied embedding is the output head too: its Hessian comes from the final normed hidden state,
the input of the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from alrt_core.model.gpt import GPT
from alrt_core.training.batches import TrainBatches

HEAD_INPUT = "head_input"


@torch.no_grad()
def collect_hessians(
    model: GPT,
    batches: TrainBatches,
    tokens: int,
    *,
    batch_sequences: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Tensor], int]:
    """(name -> H (in×in, fp32, summed), tokens used); names are the projections' plus `head_input`."""
    model.eval()
    sums: dict[str, Tensor] = {}

    def accumulate(name: str, x: Tensor) -> None:
        flat = x.detach().float().reshape(-1, x.shape[-1])
        product = flat.T @ flat
        sums[name] = sums[name] + product if name in sums else product

    handles = []
    for name, layer in model.projections().items():
        handles.append(layer.register_forward_hook(lambda module, args, output, name=name: accumulate(name, args[0])))
    # The logits' input is the final norm's output (hooked there, not at the last block: with depth recurrence
    # the last block may run more than once per forward).
    handles.append(model.final_norm.register_forward_hook(lambda module, args, output: accumulate(HEAD_INPUT, output)))
    seq_len = model.config.seq_len
    used = 0
    try:
        while used < tokens:
            sequences = max(1, min(batch_sequences, -(-(tokens - used) // seq_len)))
            inputs, _ = batches.next_batch(sequences)
            model(inputs.to(model.embed.weight.device))
            used += inputs.numel()
            if on_progress is not None:
                on_progress(min(used, tokens), tokens)
    finally:
        for handle in handles:
            handle.remove()
    return sums, used


