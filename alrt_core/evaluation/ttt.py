"""Legal score-first test-time training (TTT) over the validation stream.

The targets are split into chunks (default 32,768 tokens). For each chunk in order: first every window whose first
scored target lies in the chunk is scored under no-grad, then (except for the last chunk) the model trains on the
chunk's tokens: SGD with momentum, a cosine learning rate across chunks, several epochs, gradient clipping, and
optionally the first blocks frozen. A window assigned to a chunk may score targets past the chunk's end; those are
scored before any training on them too. So no token's score depends on an update that used that token — or any
later token (tested). Under torchrun windows and training sequences are split across ranks, gradients averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alrt_core.evaluation.scoring import Window, gather_scores, score_windows, split_for_rank
from alrt_core.model.gpt import GPT
from alrt_core.precision import autocast_context
from alrt_core.training.distributed import DistributedContext


@dataclass(frozen=True)
class TTTConfig:
    """Defaults follow the parameter-golf legal-TTT records."""

    chunk_tokens: int = 32768
    lr: float = 0.002
    epochs: int = 3
    momentum: float = 0.9
    batch_sequences: int = 32
    grad_clip: float = 1.0
    freeze_blocks: int = 2  # the first N blocks keep their weights

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def chunk_windows(windows: list[Window], num_targets: int, chunk_tokens: int) -> list[list[Window]]:
    """Windows grouped by the chunk of their first scored target (targets 1..N, chunk c = targets
    c·chunk+1 .. (c+1)·chunk)."""
    count = max(1, -(-num_targets // chunk_tokens))
    groups: list[list[Window]] = [[] for _ in range(count)]
    for window in windows:
        groups[min((window.first_target - 1) // chunk_tokens, count - 1)].append(window)
    return groups


def score_first_ttt(
    model: GPT,
    tokens: np.ndarray,
    windows: list[Window],
    config: TTTConfig,
    *,
    seq_len: int,
    batch_windows: int,
    device: torch.device,
    autocast: bool,
    ctx: DistributedContext | None = None,
    on_event: Callable[[str, int, int], None] | None = None,
) -> np.ndarray:
    """Per-target NLL (targets 1..N) under score-first TTT. `model` is trained in place (pass a copy).

    `on_event(kind, first_target, last_target)` reports each scoring ("score") and training ("train") range in
    the order they happen, for progress displays and for the ordering test."""
    num_targets = tokens.shape[0] - 1
    groups = chunk_windows(windows, num_targets, config.chunk_tokens)
    frozen = tuple(f"blocks.{index}." for index in range(min(config.freeze_blocks, len(model.blocks))))
    trainable = [p for name, p in model.named_parameters() if not name.startswith(frozen)]
    saved_flags = {id(p): p.requires_grad for p in model.parameters()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(frozen))
    optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum)
    nll = np.zeros(num_targets, dtype=np.float64)
    world = ctx.world_size if ctx is not None and ctx.enabled else 1
    rank = ctx.rank if ctx is not None and ctx.enabled else 0
    try:
        for index, group in enumerate(groups):
            mine = split_for_rank(group, ctx)
            nll += score_windows(model, tokens, mine, batch_windows=batch_windows, device=device, autocast=autocast)["nll"]
            if on_event is not None and group:
                on_event("score", group[0].first_target, group[-1].end)
            last = index == len(groups) - 1
            if last or config.epochs <= 0:
                continue
            chunk_start = index * config.chunk_tokens  # first input token of the chunk's targets
            chunk_end = min((index + 1) * config.chunk_tokens, num_targets)
            sequences = (chunk_end - chunk_start) // seq_len
            if sequences == 0:
                continue
            lr = config.lr * 0.5 * (1.0 + math.cos(math.pi * index / max(len(groups) - 1, 1)))
            for group_params in optimizer.param_groups:
                group_params["lr"] = lr
            own = range(sequences * rank // world, sequences * (rank + 1) // world)
            # Every rank takes the same number of steps (the largest share decides), so gradient all-reduces pair up.
            steps = math.ceil(math.ceil(sequences / world) / config.batch_sequences)
            model.train()
            for _ in range(config.epochs):
                for step in range(steps):
                    picked = own[step * config.batch_sequences : (step + 1) * config.batch_sequences]
                    optimizer.zero_grad(set_to_none=True)
                    if len(picked):
                        rows = np.stack([np.asarray(tokens[chunk_start + s * seq_len : chunk_start + (s + 1) * seq_len + 1],
                                                    dtype=np.int64) for s in picked])
                        inputs, targets = torch.from_numpy(rows[:, :-1]).to(device), torch.from_numpy(rows[:, 1:]).to(device)
                        with autocast_context(device, autocast):
                            loss = model(inputs, targets)
                        loss.backward()
                    if world > 1:
                        for parameter in trainable:
                            if parameter.grad is None:
                                parameter.grad = torch.zeros_like(parameter)
                            ctx.all_reduce(parameter.grad)  # type: ignore[union-attr]
                            parameter.grad.div_(world)
                    if config.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                    optimizer.step()
            model.eval()
            if on_event is not None:
                on_event("train", chunk_start + 1, chunk_start + sequences * seq_len)
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(saved_flags[id(parameter)])
            parameter.grad = None
        model.eval()
    return gather_scores({"nll": nll}, ctx)["nll"]
